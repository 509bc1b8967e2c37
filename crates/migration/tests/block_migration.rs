//! Block migration end to end, in one process: a source registry (block + ram) migrates over a
//! real loopback TCP transport into a destination registry while a disk-writer thread keeps
//! writing the source's disk; afterwards `qemu-img` judges the images.

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use block::DiskFormat;
use migration::block::{BlockHandler, BlockMigrationOptions};
use migration::{
    IncomingSession, LiveHandler, MigrationError, MigrationStatus, RunState, Settings, VmControl,
};
use savevm::block::{read_record, BlockRecord, BLK_MIG_CHUNK_SIZE};
use savevm::qemu_file::{memory_reader, memory_writer};

mod common;

use common::disks::*;

// ---------------------------------------------------------------------------------------------
// Live migrations

#[test]
fn full_copy_of_raw_disks_while_the_guest_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (s0, s1, d0, d1) = (
        dir.path().join("src0.raw"),
        dir.path().join("src1.raw"),
        dir.path().join("dst0.raw"),
        dir.path().join("dst1.raw"),
    );
    // A size that is not a multiple of 1 MiB: the last chunk is partial.
    let size0 = 16 * MIB + 64 * 1024;
    create(&s0, "raw", size0);
    create(&s1, "raw", 8 * MIB);
    create(&d0, "raw", size0);
    create(&d1, "raw", 8 * MIB);
    let src = side(
        vec![
            open(&s0, DiskFormat::Raw, "drive0"),
            open(&s1, DiskFormat::Raw, "drive1"),
        ],
        true,
    );
    fill(&src.disks[0], 0, size0, 1);
    fill(&src.disks[1], 0, 6 * MIB, 2);
    let dst = side(
        vec![
            open(&d0, DiskFormat::Raw, "drive0"),
            open(&d1, DiskFormat::Raw, "drive1"),
        ],
        false,
    );
    start_writer(&src, 0, 2 * MIB..6 * MIB, 7);
    start_writer(&src, 1, 0..2 * MIB, 8);
    migrate(&src, &dst, false).expect("destination load");
    quiesce(&src, &dst);
    assert_identical(&s0, "raw", &d0, "raw");
    assert_identical(&s1, "raw", &d1, "raw");
}

#[test]
fn full_copy_of_a_qcow2_disk_while_the_guest_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (s, d) = (dir.path().join("src.qcow2"), dir.path().join("dst.qcow2"));
    create(&s, "qcow2", 24 * MIB);
    create(&d, "qcow2", 24 * MIB);
    let src = side(vec![open(&s, DiskFormat::Qcow2, "drive0")], true);
    fill(&src.disks[0], 0, 20 * MIB, 3);
    let dst = side(vec![open(&d, DiskFormat::Qcow2, "drive0")], false);
    start_writer(&src, 0, 4 * MIB..10 * MIB, 9);
    migrate(&src, &dst, false).expect("destination load");
    quiesce(&src, &dst);
    assert_identical(&s, "qcow2", &d, "qcow2");
    qemu_img_ok(&["check", "-U", "-q", p(&s)]);
    qemu_img_ok(&["check", "-U", "-q", p(&d)]);
    // Zero regions were not copied: the destination stays sparse where the source is zero.
    let alloc = top_allocation(&d);
    assert!(
        !alloc.iter().any(|&(a, b)| a <= 3 * MIB && b >= 4 * MIB),
        "the zero MiB 3..4 was allocated on the destination: {alloc:?}"
    );
}

#[test]
fn incremental_copy_of_an_overlay_over_a_shared_base() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    let (srcdir, dstdir) = (dir.path().join("src"), dir.path().join("dst"));
    for d in [&shared, &srcdir, &dstdir] {
        std::fs::create_dir(d).unwrap();
    }
    let base = shared.join("base.qcow2");
    create(&base, "qcow2", 32 * MIB);
    {
        let b = open(&base, DiskFormat::Qcow2, "base");
        fill(&b, 0, 28 * MIB, 4);
        b.flush().unwrap();
    }
    let (s, d) = (srcdir.join("top.qcow2"), dstdir.join("top.qcow2"));
    create_overlay(&s, &base);
    create_overlay(&d, &base);
    let src = side(vec![open(&s, DiskFormat::Qcow2, "drive0")], true);
    // Some clusters already differ from the base before the migration: scattered ones, and
    // 12 MiB of new data (enough for the bulk phase to take a while).
    src.disks[0].write(5 * MIB + 8192, &[0xab; 4096]).unwrap();
    src.disks[0].write(30 * MIB, &[0xcd; 65536]).unwrap();
    fill(&src.disks[0], 14 * MIB, 12 * MIB, 12);
    let dst = side(vec![open(&d, DiskFormat::Qcow2, "drive0")], false);
    start_writer(&src, 0, 8 * MIB..12 * MIB, 10);
    migrate(&src, &dst, true).expect("destination load");
    quiesce(&src, &dst);
    assert_identical(&s, "qcow2", &d, "qcow2");
    qemu_img_ok(&["check", "-U", "-q", p(&s)]);
    qemu_img_ok(&["check", "-U", "-q", p(&d)]);
    let (sa, da) = (top_allocation(&s), top_allocation(&d));
    assert!(!sa.is_empty());
    assert_eq!(
        sa, da,
        "the destination overlay holds the source overlay's clusters"
    );
    // Only the overlay was copied: the base's data below 5 MiB is not in the destination's
    // top image.
    assert!(da[0].0 >= 5 * MIB, "{da:?}");
}

#[test]
fn failed_load_leaves_the_destination_image_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (s, d) = (dir.path().join("src.qcow2"), dir.path().join("dst.qcow2"));
    create(&s, "qcow2", 16 * MIB);
    // The destination drive is too small: chunks past 8 MiB are refused.
    create(&d, "qcow2", 8 * MIB);
    let src = side(vec![open(&s, DiskFormat::Qcow2, "drive0")], true);
    fill(&src.disks[0], 0, 16 * MIB, 5);
    let before = std::fs::read(&d).unwrap();
    let dst = side(vec![open(&d, DiskFormat::Qcow2, "drive0")], false);
    start_writer(&src, 0, 0..16 * MIB, 11);
    let err = migrate(&src, &dst, false).expect_err("the load must fail");
    assert!(err.report().contains("outside drive"), "{}", err.report());
    assert_eq!(dst.state.status(), MigrationStatus::Failed);
    // The source keeps running, the destination image is as it was, and the engine's cleanup
    // replayed and removed the undo journal.
    assert_eq!(src.wait_final(), MigrationStatus::Failed);
    assert_eq!(src.vm.run_state(), RunState::Running);
    quiesce(&src, &dst);
    drop(dst);
    assert_eq!(std::fs::read(&d).unwrap(), before);
    qemu_img_ok(&["check", "-U", "-q", p(&s)]);
}

// ---------------------------------------------------------------------------------------------
// The handler on a memory stream

#[test]
fn handler_stream_layout_progress_and_disk_stats() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    create(&base, "qcow2", 8 * MIB);
    {
        let b = open(&base, DiskFormat::Qcow2, "base");
        fill(&b, 0, 8 * MIB, 6);
    }
    let top = dir.path().join("top.qcow2");
    create_overlay(&top, &base);
    let disk = open(&top, DiskFormat::Qcow2, "drv0");
    disk.write(2 * MIB + 4096, &[1u8; 4096]).unwrap();
    disk.write(6 * MIB, &[0u8; 4096]).unwrap(); // allocated, but the chunk reads as base data

    let mut settings = Settings::default();
    BlockMigrationOptions { incremental: true }
        .apply_to(&mut settings)
        .unwrap();
    assert!(
        BlockMigrationOptions { incremental: false }
            .apply_to(&mut settings)
            .is_err(),
        "-b while block migration is already on"
    );
    let (rt, mut s) = session(settings);
    let mut h = BlockHandler::new(vec![disk.clone()]);
    assert!(h.is_active(&rt.settings().caps));
    let (mut f, buf) = memory_writer();
    h.save_setup(&mut f, &mut s).unwrap();
    let stats = rt.disk.stats().expect("disk stats while active");
    assert_eq!((stats.total, stats.transferred), (8 * MIB, 0));
    assert!(h.pending(0, &mut s).unwrap() > 0);
    while h.pending(0, &mut s).unwrap() > 0 {
        h.iterate(&mut f, &mut s).unwrap();
        // A guest write during the dirty phase is picked up.
        if disk.dirty().count() == 0 && rt.disk.stats().unwrap().transferred == 8 * MIB {
            break;
        }
    }
    disk.write(7 * MIB, &[2u8; 4096]).unwrap();
    h.complete(&mut f, &mut s).unwrap();
    f.flush().unwrap();
    let stats = rt.disk.stats().unwrap();
    assert_eq!((stats.transferred, stats.remaining), (8 * MIB, 0));
    h.save_cleanup();
    assert!(rt.disk.stats().is_none());

    let mut r = memory_reader(buf.take());
    let mut data_chunks = Vec::new();
    let mut progress = Vec::new();
    let mut eos = 0;
    while !r.is_eof().unwrap() {
        match read_record(&mut r).unwrap() {
            BlockRecord::Data { sector, device } => {
                assert_eq!(device, "drv0");
                data_chunks.push(sector * 512 / MIB);
                r.skip(BLK_MIG_CHUNK_SIZE as u64).unwrap();
            }
            BlockRecord::Zero { .. } => panic!("no chunk of this disk is zero"),
            BlockRecord::Progress(p) => progress.push(p),
            BlockRecord::Eos => eos += 1,
        }
    }
    // -i: only the chunks allocated in the top image (2 and 6), then the dirty chunk 7.
    assert_eq!(data_chunks, vec![2, 6, 7]);
    // After chunk 2, the bulk pass has covered 3 of 8 MiB (skipped chunks count as covered).
    assert_eq!(progress.first(), Some(&37));
    assert_eq!(progress.last(), Some(&100));
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(eos >= 3);
}

#[test]
fn loader_rejects_unknown_drives_and_out_of_range_chunks_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.raw");
    create(&path, "raw", 2 * MIB);
    let disk = open(&path, DiskFormat::Raw, "drive0");
    let mut h = BlockHandler::new(vec![disk.clone()]);
    let chunk = vec![7u8; BLK_MIG_CHUNK_SIZE];
    for (sector, device) in [(0, "nosuch"), (4096, "drive0"), (u64::MAX >> 9, "drive0")] {
        let (mut f, buf) = memory_writer();
        savevm::block::write_data(&mut f, sector, device, &chunk);
        savevm::block::write_eos(&mut f);
        f.flush().unwrap();
        h.load_setup(&mut IncomingSession::standalone()).unwrap();
        let err = h
            .load(
                &mut memory_reader(buf.take()),
                1,
                &mut IncomingSession::standalone(),
            )
            .unwrap_err();
        assert!(matches!(err, MigrationError::BlockLoad(_)), "{err}");
        assert!(
            !disk.is_incoming(),
            "nothing was staged for an invalid record"
        );
    }
    // Version 0 is too old; a truncated chunk is an error, not a panic.
    assert!(h
        .load(
            &mut memory_reader(Vec::new()),
            0,
            &mut IncomingSession::standalone()
        )
        .is_err());
    let (mut f, buf) = memory_writer();
    savevm::block::write_data(&mut f, 0, "drive0", &chunk);
    f.flush().unwrap();
    let mut bytes = buf.take();
    bytes.truncate(1000);
    h.load_setup(&mut IncomingSession::standalone()).unwrap();
    assert!(h
        .load(
            &mut memory_reader(bytes),
            1,
            &mut IncomingSession::standalone()
        )
        .is_err());
    drop(h);
    assert!(
        !disk.journal_path().exists(),
        "dropping the handler replays and removes the undo journal"
    );
    let mut back = vec![1u8; 4096];
    disk.read(0, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0), "the image was not written");
}

// ---------------------------------------------------------------------------------------------
// Wire compatibility: a stream made by QEMU 7.2 (`migrate -b`) loads into our drives

/// Runs QEMU paused with `image` as drive `drv0` and saves a `migrate -b` stream to `out`.
fn qemu_block_stream(qemu: &Path, image: &Path, out: &Path) {
    use std::io::Write;
    let mut child = Command::new(qemu)
        .args([
            "-machine",
            "pc,accel=tcg",
            "-m",
            "32",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-monitor",
            "stdio",
            "-drive",
        ])
        .arg(format!("file={},format=qcow2,if=none,id=drv0", p(image)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // HMP `migrate` without -d returns when the migration finished; `quit` follows.
    let cmds = format!("migrate -b \"exec:cat > {}\"\nquit\n", p(out));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cmds.as_bytes())
        .unwrap();
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "qemu exited with {status}");
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("qemu did not finish the migration");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Feeds the `block` sections of a QEMU stream to `handler`, skipping the RAM sections, up to
/// and including the block END section. Returns the number of block sections loaded.
fn load_block_sections(stream: &Path, handler: &mut BlockHandler) -> usize {
    use savevm::qemu_file::QemuFileReader;
    use savevm::ram::{RamDecoder, RamRecord, TARGET_PAGE_SIZE};
    use savevm::record::{self, Configuration, Record, SectionHeader};

    let file = std::fs::File::open(stream).unwrap();
    let mut f = QemuFileReader::with_capacity(Box::new(file), 1 << 20);
    record::read_header(&mut f).unwrap();
    assert_eq!(f.get_u8().unwrap(), record::QEMU_VM_CONFIGURATION);
    Configuration::read_from(&mut f).unwrap();
    let (mut block_id, mut ram_id) = (None, None);
    let mut decoder = RamDecoder::new();
    let mut loaded = 0;
    handler
        .load_setup(&mut IncomingSession::standalone())
        .unwrap();
    loop {
        let Record::Section(h) = record::read_record(&mut f).unwrap() else {
            panic!("the stream ended before the block END section");
        };
        let id = h.section_id();
        match h.idstr() {
            Some("block") => block_id = Some(id),
            Some("ram") => ram_id = Some(id),
            Some(other) => panic!("section '{other}' before the block END section"),
            None => {}
        }
        if Some(id) == block_id {
            handler
                .load(
                    &mut f,
                    h.version_id().unwrap_or(1),
                    &mut IncomingSession::standalone(),
                )
                .unwrap();
            record::read_footer(&mut f, id).unwrap();
            loaded += 1;
            if matches!(h, SectionHeader::End { .. }) {
                return loaded;
            }
        } else if Some(id) == ram_id {
            loop {
                match decoder.read_record(&mut f).unwrap() {
                    RamRecord::Page { .. } => f.skip(TARGET_PAGE_SIZE as u64).unwrap(),
                    RamRecord::Xbzrle { len, .. } => f.skip(u64::from(len)).unwrap(),
                    RamRecord::Eos => break,
                    RamRecord::Hook => panic!("RDMA hook in a file stream"),
                    RamRecord::MemSize { .. } | RamRecord::Zero { .. } => {}
                }
            }
            record::read_footer(&mut f, id).unwrap();
        } else {
            panic!("unexpected section {h:?}");
        }
    }
}

#[test]
fn qemu_7_2_block_stream_loads_into_our_drive() {
    let Some(qemu) = testkit::require_qemu_system("qemu_7_2_block_stream_loads_into_our_drive")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (s, d, stream) = (
        dir.path().join("src.qcow2"),
        dir.path().join("dst.qcow2"),
        dir.path().join("stream"),
    );
    // 2.5 MiB: chunk 0 data, chunk 1 zero, chunk 2 partial (QEMU still sends 1 MiB).
    let size = 2 * MIB + 512 * 1024;
    create(&s, "qcow2", size);
    create(&d, "qcow2", size);
    {
        let src = open(&s, DiskFormat::Qcow2, "drv0");
        fill(&src, 0, MIB, 13);
        fill(&src, 2 * MIB, size - 2 * MIB, 14);
        src.flush().unwrap();
    }
    qemu_block_stream(&qemu, &s, &stream);
    let disk = open(&d, DiskFormat::Qcow2, "drv0");
    let mut h = BlockHandler::new(vec![disk.clone()]);
    // START, at least one PART, END.
    assert!(load_block_sections(&stream, &mut h) >= 3);
    assert!(
        disk.is_incoming(),
        "the image stays journalled until the switchover commits"
    );
    h.load_complete(&mut IncomingSession::standalone()).unwrap();
    assert!(disk.is_incoming(), "load_complete only syncs");
    h.load_commit().unwrap();
    assert!(!disk.journal_path().exists());
    drop(h);
    disk.flush().unwrap();
    drop(disk);
    assert_identical(&s, "qcow2", &d, "qcow2");
    qemu_img_ok(&["check", "-U", "-q", p(&d)]);
}

/// Writes a stream holding only the configuration and our `block` sections (no RAM, no
/// devices), as the source's migration thread would order them.
fn write_block_only_stream(
    handler: &mut BlockHandler,
    settings: Settings,
    machine: &str,
    out: &Path,
) {
    let (_rt, mut s) = session(settings);
    use savevm::qemu_file::QemuFileWriter;
    use savevm::record::{self, Configuration, SectionHeader};

    // Not 0: QEMU binds PART/END sections by searching for the entry whose load section id
    // equals the id, and every entry that was never loaded has 0 (its first entry, `timer`,
    // would be found). QEMU's own sources never give a live section id 0.
    const SECTION: u32 = 1;
    let file = std::fs::File::create(out).unwrap();
    let mut f = QemuFileWriter::with_capacity(Box::new(file), 1 << 20);
    record::write_header(&mut f);
    Configuration {
        machine: machine.into(),
        ..Default::default()
    }
    .write_to(&mut f);
    SectionHeader::Start {
        section_id: SECTION,
        idstr: "block".into(),
        instance_id: 0,
        version_id: 1,
    }
    .write_to(&mut f);
    handler.save_setup(&mut f, &mut s).unwrap();
    record::write_footer(&mut f, SECTION);
    while handler.pending(0, &mut s).unwrap() > 0 {
        SectionHeader::Part {
            section_id: SECTION,
        }
        .write_to(&mut f);
        handler.iterate(&mut f, &mut s).unwrap();
        record::write_footer(&mut f, SECTION);
    }
    SectionHeader::End {
        section_id: SECTION,
    }
    .write_to(&mut f);
    handler.complete(&mut f, &mut s).unwrap();
    record::write_footer(&mut f, SECTION);
    handler.save_cleanup();
    record::write_eof(&mut f);
    f.flush().unwrap();
}

/// Runs a paused QEMU destination with `image` as drive `drv0`, loading `stream`; returns the
/// final `info migrate` status line.
fn qemu_load_block_stream(qemu: &Path, image: &Path, stream: &Path) -> String {
    use std::io::{BufRead, Write};
    let mut child = Command::new(qemu)
        .args([
            "-machine",
            "pc,accel=tcg",
            "-m",
            "32",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-monitor",
            "stdio",
            "-drive",
        ])
        .arg(format!("file={},format=qcow2,if=none,id=drv0", p(image)))
        // A device takes the write permission block migration needs on the destination.
        .args(["-device", "virtio-blk-pci,drive=drv0"])
        .arg("-incoming")
        .arg(format!("exec:cat {}", p(stream)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let t = Instant::now();
    let status = loop {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "QEMU did not finish loading"
        );
        stdin.write_all(b"info migrate\n").unwrap();
        thread::sleep(Duration::from_millis(100));
        let done = rx
            .try_iter()
            .filter(|l| l.contains("Migration status:"))
            .find(|l| l.contains("completed") || l.contains("failed"));
        if let Some(line) = done {
            break line;
        }
    };
    let _ = stdin.write_all(b"quit\n");
    drop(stdin);
    let exit = child.wait().unwrap();
    assert!(exit.success(), "qemu exited with {exit}");
    reader.join().unwrap();
    status
}

#[test]
fn our_block_stream_loads_into_qemu_7_2() {
    let Some(qemu) = testkit::require_qemu_system("our_block_stream_loads_into_qemu_7_2") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (s, d, stream) = (
        dir.path().join("src.qcow2"),
        dir.path().join("dst.qcow2"),
        dir.path().join("stream"),
    );
    // A whole number of chunks: QEMU 7.2's receiver writes every cluster of a data chunk,
    // also past the end of the drive, and fails with EIO on a partial last chunk (checked:
    // QEMU → QEMU fails the same way). Our receiver clips; see the tests above.
    let size = 4 * MIB;
    create(&s, "qcow2", size);
    create(&d, "qcow2", size);
    let src = open(&s, DiskFormat::Qcow2, "drv0");
    // Chunk 3 is zero: sent as a ZERO record, which QEMU must accept without zero-blocks.
    fill(&src, 0, size, 15);
    let mut settings = Settings::default();
    BlockMigrationOptions { incremental: false }
        .apply_to(&mut settings)
        .unwrap();
    let mut h = BlockHandler::new(vec![src.clone()]);
    write_block_only_stream(&mut h, settings, "pc-i440fx-7.2", &stream);
    drop(h);
    src.flush().unwrap();
    // Some garbage where the ZERO chunk goes, so writing zeroes is observable.
    qemu_img_ok(&["create", "-q", "-f", "qcow2", p(&d), &size.to_string()]);
    Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x77 3M 64k", p(&d)])
        .output()
        .unwrap();
    let status = qemu_load_block_stream(&qemu, &d, &stream);
    assert!(status.contains("completed"), "{status}");
    assert_identical(&s, "qcow2", &d, "qcow2");
    qemu_img_ok(&["check", "-U", "-q", p(&d)]);
}

#[test]
fn loader_survives_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.raw");
    create(&path, "raw", 2 * MIB);
    let disk = open(&path, DiskFormat::Raw, "drive0");
    let mut h = BlockHandler::new(vec![disk.clone()]);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..300 {
        let len = (round * 7) % 300;
        let mut bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        // Half of the inputs start with a plausible DATA header for drive0.
        if round % 2 == 0 {
            let mut head = ((x % 8192) << 9 | 1).to_be_bytes().to_vec();
            head.push(6);
            head.extend_from_slice(b"drive0");
            head.extend_from_slice(&bytes);
            bytes = head;
        }
        h.load_setup(&mut IncomingSession::standalone()).unwrap();
        let _ = h.load(
            &mut memory_reader(bytes),
            1,
            &mut IncomingSession::standalone(),
        );
    }
    drop(h);
    assert!(!disk.journal_path().exists());
    let mut back = vec![1u8; (2 * MIB) as usize];
    disk.read(0, &mut back).unwrap();
    assert!(
        back.iter().all(|&b| b == 0),
        "garbage never reached the image"
    );
}
