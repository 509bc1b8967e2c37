//! Analyze streams produced at test time by the installed QEMU 7.2
//! (`migrate exec:cat > FILE` over QMP). Skipped with a visible message when QEMU is absent.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use analyze::report::SectionKind;
use analyze::{analyze, AnalyzeOptions, Report};
use common::{base_args, make_stream, qemu_or_skip, ram_pattern, Run};

/// A reader that hands out the stream in small, uneven pieces, like a pipe.
struct Trickle<R> {
    inner: R,
    n: usize,
}

impl<R: Read> Read for Trickle<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.n = self.n.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let want = 1 + self.n % 7000;
        let k = want.min(buf.len());
        self.inner.read(&mut buf[..k])
    }
}

fn run_analyze(stream: &Path, opts: &AnalyzeOptions) -> (Report, String) {
    let file = std::fs::File::open(stream).unwrap();
    let input = Box::new(Trickle { inner: file, n: 7 });
    let mut out = Vec::new();
    let report = analyze(input, opts, &mut out).unwrap_or_else(|e| panic!("analyze: {e:?}"));
    (report, String::from_utf8(out).unwrap())
}

fn vmdesc_of(stream: &Path) -> serde_json::Value {
    let opts = AnalyzeOptions {
        desc: true,
        ..Default::default()
    };
    let (_, out) = run_analyze(stream, &opts);
    serde_json::from_str(&out).expect("--desc prints JSON")
}

/// Every section/device assertion shared by the machine cases.
fn check_sections_and_devices(report: &Report, desc: &serde_json::Value) {
    // Sections tile the stream: header + body + 5-byte footer reaches the next record.
    for pair in report.sections.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(a.footer, "section {} has a footer", a.idstr);
        assert_eq!(
            a.offset + a.header_bytes + a.body_bytes + 5,
            b.offset,
            "section {} ({:?}) is followed directly by the next record",
            a.idstr,
            a.kind
        );
    }
    let last = report.sections.last().unwrap();
    assert_eq!(
        Some(last.offset + last.header_bytes + last.body_bytes + 5),
        report.totals.eof_offset
    );
    // The FULL sections are exactly the devices the description names.
    let full: BTreeSet<(String, u32)> = report
        .sections
        .iter()
        .filter(|s| s.kind == SectionKind::Full)
        .map(|s| (s.idstr.clone(), s.instance_id))
        .collect();
    let described: BTreeSet<(String, u32)> = desc["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["instance_id"].as_u64().unwrap() as u32,
            )
        })
        .collect();
    assert_eq!(full, described);
    assert_eq!(report.devices.len(), full.len());
    for d in &report.devices {
        assert_eq!(d.error, None, "device {} decoded cleanly", d.name);
        assert_eq!(
            d.decoded_bytes,
            Some(d.body_bytes),
            "device {} fields consumed exactly its body",
            d.name
        );
        assert!(d.state.is_some());
    }
    assert!(report.totals.vmdesc_size.unwrap() > 0);
    assert_eq!(report.totals.trailing_bytes, 0);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

fn assert_same_file(extracted: &Path, original: &Path) {
    let a = std::fs::read(extracted).unwrap();
    let b = std::fs::read(original).unwrap();
    assert_eq!(
        a.len(),
        b.len(),
        "{} has the block's length",
        extracted.display()
    );
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!(
            "{} differs from guest RAM at byte {i:#x}",
            extracted.display()
        );
    }
}

#[test]
fn machine_none_lists_sections_and_extracts_ram() {
    let Some(qemu) = qemu_or_skip("machine_none_lists_sections_and_extracts_ram") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mem = dir.path().join("guest.ram");
    let pattern = ram_pattern(16 << 20, 0x1234_5678);
    std::fs::write(&mem, &pattern).unwrap();
    let stream = make_stream(
        &qemu,
        Run {
            args: base_args("none", "ram", &mem, 16),
            run_before_migrate: Duration::ZERO,
            capabilities: &[],
            dir: dir.path(),
        },
    );
    let out_dir = dir.path().join("extract");
    let opts = AnalyzeOptions {
        extract_dir: Some(out_dir.clone()),
        ..Default::default()
    };
    let (report, text) = run_analyze(&stream, &opts);
    let cfg = report.header.configuration.as_ref().unwrap();
    assert_eq!(cfg.machine, "none");
    let names: BTreeSet<&str> = report.sections.iter().map(|s| s.idstr.as_str()).collect();
    for want in ["ram", "timer", "globalstate"] {
        assert!(names.contains(want), "section {want} listed: {names:?}");
        assert!(text.contains(want));
    }
    assert_eq!(report.sections[0].kind, SectionKind::Start);
    assert!(report.sections.iter().any(|s| s.kind == SectionKind::End));
    let ram = report.ram.as_ref().unwrap();
    assert_eq!(ram.blocks.len(), 1);
    let b = &ram.blocks[0];
    assert_eq!((b.idstr.as_str(), b.used_length), ("ram", 16 << 20));
    assert_eq!(b.distinct_pages, 4096);
    let zero_pages = pattern
        .chunks(4096)
        .filter(|p| p.iter().all(|&x| x == 0))
        .count();
    assert!(
        b.zero_pages >= zero_pages as u64,
        "{} zero records",
        b.zero_pages
    );
    assert!(ram.passes >= 2);
    check_sections_and_devices(&report, &vmdesc_of(&stream));
    assert_same_file(&out_dir.join("ram"), &mem);
    // Zero pages stay holes: the extracted file is sparse.
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(out_dir.join("ram")).unwrap();
        assert!(
            meta.blocks() * 512 < meta.len(),
            "{} bytes allocated for {} bytes",
            meta.blocks() * 512,
            meta.len()
        );
    }
    let json_opts = AnalyzeOptions {
        json: true,
        ..Default::default()
    };
    let (_, json) = run_analyze(&stream, &json_opts);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["header"]["configuration"]["machine"], "none");
    assert_eq!(v["ram"]["blocks"][0]["idstr"], "ram");
    assert_eq!(v["devices"][0]["name"], "timer");
}

#[test]
fn machine_pc_paused_decodes_every_device() {
    let Some(qemu) = qemu_or_skip("machine_pc_paused_decodes_every_device") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mem = dir.path().join("guest.ram");
    std::fs::write(&mem, ram_pattern(32 << 20, 99)).unwrap();
    let mut args = base_args("pc", "pc.ram", &mem, 32);
    args.push("-S".into());
    let stream = make_stream(
        &qemu,
        Run {
            args,
            run_before_migrate: Duration::ZERO,
            capabilities: &[],
            dir: dir.path(),
        },
    );
    let out_dir = dir.path().join("extract");
    let opts = AnalyzeOptions {
        extract_dir: Some(out_dir.clone()),
        ..Default::default()
    };
    let (report, text) = run_analyze(&stream, &opts);
    assert!(report
        .header
        .configuration
        .as_ref()
        .unwrap()
        .machine
        .starts_with("pc-i440fx-"));
    let desc = vmdesc_of(&stream);
    check_sections_and_devices(&report, &desc);
    for d in &report.devices {
        assert!(text.contains(&d.name), "text lists device {}", d.name);
    }
    let ram = report.ram.as_ref().unwrap();
    let blocks: Vec<&str> = ram.blocks.iter().map(|b| b.idstr.as_str()).collect();
    assert!(blocks.contains(&"pc.ram") && blocks.contains(&"/rom@etc/acpi/tables"));
    assert_eq!(
        ram.total,
        ram.blocks.iter().map(|b| b.used_length).sum::<u64>()
    );
    assert_same_file(&out_dir.join("pc.ram"), &mem);
    // Blocks named like paths land under the directory.
    let tables = out_dir.join("rom@etc/acpi/tables");
    assert_eq!(std::fs::metadata(tables).unwrap().len(), 0x20000);
    // A decoded value that is known: the paused CPU sits at the reset vector.
    let cpu = report.devices.iter().find(|d| d.name == "cpu").unwrap();
    let eip = cpu
        .state
        .as_ref()
        .unwrap()
        .fields
        .iter()
        .find(|f| f.name == "env.eip")
        .unwrap();
    assert_eq!(eip.value, analyze::devices::Value::Unsigned(0xfff0));
}

#[test]
fn machine_pc_with_many_devices_decodes_every_device() {
    let Some(qemu) = qemu_or_skip("machine_pc_with_many_devices_decodes_every_device") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mem = dir.path().join("guest.ram");
    std::fs::write(&mem, vec![0u8; 32 << 20]).unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut args = base_args("pc", "pc.ram", &mem, 32);
    args.push("-S".into());
    // Devices whose state uses many VMState shapes: virtio (custom codec), PCI config,
    // MSI-X, USB, SCSI requests, HDA/AC97, nested structs with subsections.
    let drive = format!("file={},format=raw,if=none,id=d0", disk.display());
    for a in [
        "-device",
        "VGA",
        "-device",
        "e1000",
        "-device",
        "virtio-net-pci",
        "-device",
        "virtio-blk-pci,drive=d0",
        "-drive",
        &drive,
        "-device",
        "qemu-xhci",
        "-device",
        "usb-tablet",
        "-device",
        "usb-ehci",
        "-device",
        "virtio-balloon",
        "-device",
        "virtio-serial",
        "-device",
        "virtio-rng-pci",
        "-chardev",
        "null,id=c0",
        "-device",
        "isa-serial,chardev=c0",
        "-device",
        "ahci",
        "-device",
        "virtio-scsi-pci",
        "-device",
        "pci-bridge,chassis_nr=1",
        "-audiodev",
        "none,id=a0",
        "-device",
        "intel-hda",
        "-device",
        "hda-duplex,audiodev=a0",
        "-device",
        "AC97,audiodev=a0",
    ] {
        args.push(a.to_string());
    }
    let stream = make_stream(
        &qemu,
        Run {
            args,
            run_before_migrate: Duration::ZERO,
            capabilities: &[],
            dir: dir.path(),
        },
    );
    let (report, _) = run_analyze(&stream, &AnalyzeOptions::default());
    check_sections_and_devices(&report, &vmdesc_of(&stream));
    assert!(
        report.devices.len() > 40,
        "{} devices",
        report.devices.len()
    );
    assert!(report
        .devices
        .iter()
        .any(|d| d.name.ends_with("/virtio-net")));
}

#[test]
fn machine_microvm_running_decodes_every_device() {
    let Some(qemu) = qemu_or_skip("machine_microvm_running_decodes_every_device") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mem = dir.path().join("guest.ram");
    std::fs::write(&mem, ram_pattern(32 << 20, 7)).unwrap();
    let stream = make_stream(
        &qemu,
        Run {
            args: base_args("microvm", "mem", &mem, 32),
            run_before_migrate: Duration::from_millis(300),
            capabilities: &[],
            dir: dir.path(),
        },
    );
    let out_dir = dir.path().join("extract");
    let opts = AnalyzeOptions {
        extract_dir: Some(out_dir.clone()),
        ..Default::default()
    };
    let (report, _) = run_analyze(&stream, &opts);
    assert_eq!(
        report.header.configuration.as_ref().unwrap().machine,
        "microvm"
    );
    check_sections_and_devices(&report, &vmdesc_of(&stream));
    assert_same_file(&out_dir.join("mem"), &mem);
}

/// A 64 KiB BIOS whose reset vector jumps to a real-mode loop incrementing a word in each of
/// 128 pages at 64 KiB..576 KiB forever. `invlpg` before each write makes TCG re-check
/// dirty tracking (without a TLB flush QEMU 7.2 TCG stops reporting writes to a page after
/// the first one, so the pages would never be re-sent).
fn dirtying_bios() -> Vec<u8> {
    let mut code = vec![
        0xB8, 0x00, 0x10, // mov ax, 0x1000
        0x8E, 0xD8, // mov ds, ax
        0x0F, 0x01, 0x3E, 0x00, 0x00, // l: invlpg [0]
        0xFF, 0x06, 0x00, 0x00, // inc word [0]
        0x8C, 0xD8, // mov ax, ds
        0x05, 0x00, 0x01, // add ax, 0x100
        0x3D, 0x00, 0x90, // cmp ax, 0x9000
        0x72, 0x03, // jb s
        0xB8, 0x00, 0x10, // mov ax, 0x1000
        0x8E, 0xD8, // s: mov ds, ax
    ];
    let back = 5i32 - (code.len() as i32 + 2);
    code.extend_from_slice(&[0xEB, back as u8]); // jmp l
    let mut bios = vec![0xF4u8; 0x10000]; // hlt everywhere else
    bios[0xFF00..0xFF00 + code.len()].copy_from_slice(&code);
    let rel = (0xFF00i32 - (0xFFF0 + 3)) as u16;
    bios[0xFFF0..0xFFF3].copy_from_slice(&[0xE9, rel as u8, (rel >> 8) as u8]); // jmp near
    bios
}

#[test]
fn xbzrle_pages_are_applied_in_stream_order() {
    let Some(qemu) = qemu_or_skip("xbzrle_pages_are_applied_in_stream_order") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mem = dir.path().join("guest.ram");
    std::fs::write(&mem, vec![0u8; 16 << 20]).unwrap();
    let bios = dir.path().join("loop.bin");
    std::fs::write(&bios, dirtying_bios()).unwrap();
    let mut args = base_args("pc", "pc.ram", &mem, 16);
    args.extend(["-bios".to_string(), bios.display().to_string()]);
    let stream = common::make_stream_converging(&qemu, args, dir.path());
    let out_dir = dir.path().join("extract");
    let opts = AnalyzeOptions {
        extract_dir: Some(out_dir.clone()),
        ..Default::default()
    };
    let (report, _) = run_analyze(&stream, &opts);
    let ram = report.ram.as_ref().unwrap();
    let pc_ram = ram.blocks.iter().find(|b| b.idstr == "pc.ram").unwrap();
    assert!(pc_ram.xbzrle_pages > 0, "XBZRLE pages were sent");
    assert!(pc_ram.xbzrle_bytes > 0);
    assert!(ram.passes > 3);
    check_sections_and_devices(&report, &vmdesc_of(&stream));
    assert_same_file(&out_dir.join("pc.ram"), &mem);
}

#[test]
fn block_migration_records_per_drive() {
    let Some(qemu) = qemu_or_skip("block_migration_records_per_drive") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mem = dir.path().join("guest.ram");
    std::fs::write(&mem, vec![0u8; 16 << 20]).unwrap();
    let disk = dir.path().join("disk.raw");
    // 2.5 MiB: three 1 MiB chunks, the last one partial.
    std::fs::write(&disk, ram_pattern(2_622_976, 5)).unwrap();
    let mut args = base_args("none", "ram", &mem, 16);
    args.extend([
        "-drive".to_string(),
        format!("file={},format=raw,if=none,id=drv0", disk.display()),
    ]);
    let stream = make_stream(
        &qemu,
        Run {
            args,
            run_before_migrate: Duration::ZERO,
            capabilities: &["block"],
            dir: dir.path(),
        },
    );
    let (report, text) = run_analyze(&stream, &AnalyzeOptions::default());
    let block = report.block.as_ref().expect("block section parsed");
    assert_eq!(block.devices.len(), 1);
    let d = &block.devices[0];
    assert_eq!(d.name, "drv0");
    assert_eq!(d.data_chunks + d.zero_chunks, 3);
    assert_eq!(block.progress.last(), Some(&100));
    assert!(text.contains("drv0"));
    // block precedes ram in every phase.
    let first = &report.sections[0];
    assert_eq!(
        (first.idstr.as_str(), first.kind),
        ("block", SectionKind::Start)
    );
    check_sections_and_devices(&report, &vmdesc_of(&stream));
}
