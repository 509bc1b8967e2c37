//! KVM tests: boot the payload under [`KvmVm`], read its serial output, track its writes with
//! the KVM dirty log, and live-migrate a running guest between two `KvmVm`s of this process
//! over loopback TCP with RAM verification: the serial counter continues on the destination
//! where it stopped on the source (no reboot) and the guest's self-check passes after the move.
//! Each test prints `SKIP: /dev/kvm not available` and passes when KVM cannot be used.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use guest_ram::{Backing, GuestRam, RamBlock};
use migration::ram::RamHandler;
use migration::verify::RamVerify;
use migration::{Capability, GlobalState, MigrationStatus, Registry, RunState, VmControl};
use payload::{Output, Params, SelfCheck};
use testkit::Side;
use vmm::kvm::{KernelImage, KvmConfig, KvmError, KvmState, KvmVm, SerialSink, StopReason};

const MIB: u64 = 1 << 20;

fn skip() -> bool {
    !testkit::require_kvm("vmm kvm tests")
}

fn ram(size: u64) -> Arc<GuestRam> {
    Arc::new(GuestRam::new(vec![RamBlock::new(
        "pc.ram",
        size,
        Backing::Anonymous,
    )
    .unwrap()]))
}

fn vm_with(params: &Params, vcpus: usize) -> KvmVm {
    let cfg = KvmConfig {
        vcpus,
        cmdline: params.cmdline(),
        ..KvmConfig::default()
    };
    KvmVm::new(ram(params.min_ram().max(16 * MIB)), cfg).unwrap()
}

fn output(vm: &KvmVm) -> Output {
    Output::parse(&String::from_utf8_lossy(&vm.serial_output()))
}

/// Waits until `pred` holds for the guest's output (60 s cap, to fail instead of hanging).
fn wait_output(vm: &KvmVm, what: &str, pred: impl Fn(&Output) -> bool) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = output(vm);
        if pred(&o) {
            return o;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; serial output:\n{}",
            String::from_utf8_lossy(&vm.serial_output())
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn payload_boots_prints_counter_and_powers_off() {
    if skip() {
        return;
    }
    let p = Params {
        fill: 256 << 10,
        ws: 64 << 10,
        selfcheck: 2,
        max: 4,
        ..Default::default()
    };
    let vm = vm_with(&p, 2);
    vm.boot().unwrap();
    vm.start().unwrap();
    let reason = vm.wait_stopped(Duration::from_secs(60));
    assert_eq!(
        reason,
        Some(StopReason::PowerOff),
        "{}",
        String::from_utf8_lossy(&vm.serial_output())
    );
    assert_eq!(vm.state(), KvmState::Stopped(StopReason::PowerOff));
    let o = output(&vm);
    assert_eq!(o.starts, 1);
    assert_eq!(o.counts, vec![1, 2, 3, 4]);
    assert_eq!(o.selfchecks.len(), 2);
    assert!(!o.any_selfcheck_failed());
    assert_eq!(o.poweroff, Some(4));
    assert!(vm.resume().is_err(), "a powered-off guest cannot resume");
}

#[test]
fn dirty_log_reports_the_working_set_only() {
    if skip() {
        return;
    }
    let p = Params {
        fill: MIB,
        ws: 64 << 10,
        burst: 2,
        ..Default::default()
    };
    let vm = vm_with(&p, 1);
    vm.boot().unwrap();
    vm.start().unwrap();
    let first = wait_output(&vm, "the fill", |o| o.counts.len() >= 2)
        .last_count()
        .unwrap();
    let mut log = vm.dirty_log();
    log.start().unwrap();
    let e = vm.dirty_log().start().unwrap_err();
    assert!(matches!(e, guest_ram::Error::AlreadyTracked { .. }), "{e}");
    let mut dirty = vm.ram().new_bitmaps();
    log.sync(&mut dirty).unwrap();
    dirty[0].clear_all();
    wait_output(&vm, "more counts", |o| o.last_count() >= Some(first + 20));
    vm.pause().unwrap();
    let n = log.sync(&mut dirty).unwrap();
    let base = p.base / 4096;
    let ws_pages = base..base + p.ws / 4096;
    let gen_page = (p.base + p.fill) / 4096;
    // 20 steps x 2 pages cover the 16-page working set; every rewritten page and the
    // generation table are reported, the rest of the filled region is not.
    for pg in ws_pages.clone() {
        assert!(
            dirty[0].test(pg),
            "working-set page {pg} not reported dirty"
        );
    }
    assert!(
        dirty[0].test(gen_page),
        "generation table page not reported dirty"
    );
    for pg in base + p.ws / 4096..base + p.fill / 4096 {
        assert!(
            !dirty[0].test(pg),
            "page {pg} outside the working set reported dirty"
        );
    }
    assert_eq!(n, dirty[0].count_ones());
    // Paused: nothing more is written, and VMM writes are merged in.
    let mut again = vm.ram().new_bitmaps();
    log.sync(&mut again).unwrap();
    assert_eq!(again[0].count_ones(), 0, "guest wrote while paused");
    vm.ram().blocks()[0]
        .write_range(100 * 4096, b"vmm")
        .unwrap();
    assert_eq!(log.sync(&mut again).unwrap(), 1);
    assert!(again[0].test(100));
    log.stop();
    vm.dirty_log()
        .start()
        .expect("a new log may start once the first stopped");
}

#[test]
fn triple_fault_stops_the_vm() {
    if skip() {
        return;
    }
    let p = Params {
        fill: 64 << 10,
        ws: 16 << 10,
        fault: 2,
        ..Default::default()
    };
    let vm = vm_with(&p, 1);
    vm.boot().unwrap();
    vm.start().unwrap();
    // Polled without wait_stopped: the state turns to Stopped once the guest stopped.
    let deadline = Instant::now() + Duration::from_secs(60);
    while vm.stop_reason().is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let reason = vm.stop_reason();
    assert_eq!(
        reason,
        Some(StopReason::TripleFault),
        "{}",
        String::from_utf8_lossy(&vm.serial_output())
    );
    assert_eq!(output(&vm).fault, Some(2));
    assert_eq!(vm.run_state(), RunState::Shutdown);
}

#[test]
fn pause_resume_continues_the_counter_and_serial_goes_to_a_file() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serial.out");
    let p = Params {
        fill: 64 << 10,
        ws: 16 << 10,
        max: 12,
        ..Default::default()
    };
    let cfg = KvmConfig {
        cmdline: p.cmdline(),
        serial: SerialSink::File(path.clone()),
        ..KvmConfig::default()
    };
    let vm = KvmVm::new(ram(16 * MIB), cfg).unwrap();
    assert!(
        matches!(vm.start(), Err(KvmError::BadState { .. })),
        "start before boot"
    );
    vm.boot().unwrap();
    assert!(
        matches!(vm.boot(), Err(KvmError::BadState { .. })),
        "boot twice"
    );
    vm.start().unwrap();
    let file = || Output::parse(&std::fs::read_to_string(&path).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(60);
    while file().counts.len() < 3 {
        assert!(Instant::now() < deadline, "no output in {}", path.display());
        thread::sleep(Duration::from_millis(10));
    }
    vm.pause().unwrap();
    assert_eq!(vm.state(), KvmState::Paused);
    let paused_at = std::fs::read(&path).unwrap();
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        paused_at,
        "the guest printed while paused"
    );
    vm.resume().unwrap();
    assert_eq!(
        vm.wait_stopped(Duration::from_secs(60)),
        Some(StopReason::PowerOff)
    );
    let o = file();
    assert_eq!(o.counts, (1..=12).collect::<Vec<u64>>());
    assert!(
        vm.serial_output().is_empty(),
        "file sink keeps no in-memory copy"
    );
}

#[test]
fn bad_configurations_are_rejected() {
    if skip() {
        return;
    }
    let big = ram(4 << 30);
    let e = KvmVm::new(big, KvmConfig::default()).unwrap_err();
    assert!(matches!(e, KvmError::RamLayout(_)), "{e}");
    let two = Arc::new(GuestRam::new(vec![
        RamBlock::new("a", 4 * MIB, Backing::Anonymous).unwrap(),
        RamBlock::new("b", 4 * MIB, Backing::Anonymous).unwrap(),
    ]));
    assert!(matches!(
        KvmVm::new(two, KvmConfig::default()),
        Err(KvmError::RamLayout(_))
    ));
    // An ELF without the PVH note (the payload with its note type changed).
    let mut elf = payload::PAYLOAD_ELF.to_vec();
    let note = [4u32.to_le_bytes(), 4u32.to_le_bytes(), 18u32.to_le_bytes()].concat();
    let pos = elf.windows(12).position(|w| w == note.as_slice()).unwrap();
    elf[pos + 8] = 17;
    let cfg = KvmConfig {
        kernel: KernelImage::Bytes(elf),
        ..KvmConfig::default()
    };
    let vm = KvmVm::new(ram(16 * MIB), cfg).unwrap();
    assert!(matches!(vm.boot(), Err(KvmError::NoPvhEntry)));
    let cfg = KvmConfig {
        kernel: KernelImage::Bytes(b"not an elf".to_vec()),
        ..KvmConfig::default()
    };
    let vm = KvmVm::new(ram(16 * MIB), cfg).unwrap();
    assert!(matches!(vm.boot(), Err(KvmError::Load(_))));
}

#[test]
fn a_booted_vm_refuses_migrated_state() {
    if skip() {
        return;
    }
    let src = KvmVm::new(ram(16 * MIB), KvmConfig::default()).unwrap();
    src.boot().unwrap();
    let dst = KvmVm::new(ram(16 * MIB), KvmConfig::default()).unwrap();
    dst.boot().unwrap();
    let saved: Vec<_> = src
        .devices()
        .into_iter()
        .map(|(id, i, d)| (id, i, d.save()))
        .collect();
    for ((id, i, mut dev), (sid, si, v)) in dst.devices().into_iter().zip(&saved) {
        assert_eq!((&id, i), (sid, *si));
        if id != "kvm-serial" {
            assert!(dev.load(v, 1).is_err(), "{id} loaded into a booted VM");
        }
    }
    // A fresh VM takes the same state and starts from it without booting.
    let fresh = KvmVm::new(ram(16 * MIB), KvmConfig::default()).unwrap();
    for ((id, _, mut dev), (_, _, v)) in fresh.devices().into_iter().zip(&saved) {
        dev.load(v, 1).unwrap_or_else(|e| panic!("{id}: {e}"));
    }
    fresh.start().unwrap();
    fresh.pause().unwrap();
}

/// MSR values this host's KVM refuses (each MSR in turn set to all ones: reserved bits) are
/// refused when loaded, with KVM's word, instead of when the destination starts (after the
/// source was told the migration succeeded); the unmodified state loads.
#[test]
fn vcpu_states_kvm_refuses_are_refused_at_load() {
    use savevm::vmstate::Value;
    if skip() {
        return;
    }
    let src = KvmVm::new(ram(16 * MIB), KvmConfig::default()).unwrap();
    src.boot().unwrap();
    let (_, _, cpu) = src
        .devices()
        .into_iter()
        .find(|(id, _, _)| id == "kvm-cpu")
        .unwrap();
    let good = cpu.save();
    let dst = KvmVm::new(ram(16 * MIB), KvmConfig::default()).unwrap();
    let (_, _, mut dev) = dst
        .devices()
        .into_iter()
        .find(|(id, _, _)| id == "kvm-cpu")
        .unwrap();
    let n = good.get_list("msr_value").unwrap().len();
    let mut refused = Vec::new();
    for i in 0..n {
        let mut values = good.get_list("msr_value").unwrap().to_vec();
        values[i] = Value::Uint(u64::MAX);
        let mut bad = good.clone();
        bad.set("msr_value", Value::List(values));
        if let Err(e) = dev.load(&bad, 1) {
            let e = e.to_string();
            assert!(e.contains("KVM refuses it") && e.contains("MSRs"), "{e}");
            refused.push(good.get_list("msr_index").unwrap()[i].as_u64().unwrap());
        }
    }
    assert!(
        !refused.is_empty(),
        "KVM accepted all ones in each of {n} MSRs"
    );
    eprintln!("all ones refused at load in MSRs {refused:x?}");
    dev.load(&good, 1).unwrap();
}

// ---- live migration between two VMs ----

const MIGRATION_RAM: u64 = 16 * MIB;

/// The guest of the migration tests: small, self-checking every 4 steps.
fn migration_params() -> Params {
    Params {
        fill: MIB,
        ws: 128 << 10,
        burst: 4,
        selfcheck: 4,
        ..Default::default()
    }
}

/// A KVM VM with everything registered for migration: RAM (KVM dirty log), the KVM device
/// sections, `globalstate` and the RAM-verify section.
fn side(serial: SerialSink) -> Side<KvmVm> {
    let ram = ram(MIGRATION_RAM);
    let cfg = KvmConfig {
        vcpus: 2,
        cmdline: migration_params().cmdline(),
        serial,
        ..KvmConfig::default()
    };
    let vm = Arc::new(KvmVm::new(ram.clone(), cfg).unwrap());
    let global = GlobalState::new();
    let mut reg = Registry::new();
    reg.register_live(Box::new(RamHandler::new(ram.clone(), vm.dirty_log())));
    for (idstr, instance, dev) in vm.devices() {
        reg.register_device(&idstr, Some(instance), dev);
    }
    reg.register_device("globalstate", Some(0), Box::new(global.clone()));
    let verify = Box::new(RamVerify::new(ram));
    reg.register_device(migration::verify::IDSTR, Some(0), verify);
    Side::new(reg, vm, global)
}

fn text(vm: &KvmVm) -> String {
    String::from_utf8_lossy(&vm.serial_output()).into_owned()
}

fn wait_for(what: &str, read: impl Fn() -> String, pred: impl Fn(&Output) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pred(&Output::parse(&read())) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            read()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Makes `dst` listen on an ephemeral loopback port; returns the URI. The destination's
/// thread loads the stream and then starts the vCPUs.
fn listen(dst: &Side<KvmVm>) -> String {
    dst.vm.set_run_state(RunState::Inmigrate);
    dst.listen("tcp:127.0.0.1:0")
}

/// Boots the source and lets it count a little.
fn running_source() -> Side<KvmVm> {
    let src = side(SerialSink::Buffer);
    src.enable(&[Capability::RamVerify]);
    src.vm.boot().unwrap();
    src.vm.vm_start().unwrap();
    wait_for(
        "the source to count",
        || text(&src.vm),
        |o| o.last_count() >= Some(6),
    );
    src
}

/// Migrates the running `src` to `uri` and waits for the outcome; returns the source's serial
/// output, which is final since the source stays stopped.
fn migrate(src: &Side<KvmVm>, uri: &str) -> String {
    src.migrate(uri).unwrap();
    let status = src.wait_final();
    let info = src.state.info();
    assert_eq!(status, MigrationStatus::Completed, "{info:?}");
    src.finish().unwrap();
    let ram = info.ram.unwrap();
    assert!(ram.dirty_sync_count >= 2 && ram.normal > 0, "{ram:?}");
    assert_eq!(src.vm.run_state(), RunState::Postmigrate);
    assert_eq!(src.vm.state(), KvmState::Paused);
    text(&src.vm)
}

/// True once the destination counted 6 steps past the source and self-checked after it.
fn continued(o: &Output, last_src: u64) -> bool {
    o.last_count() >= Some(last_src + 6)
        && o.selfchecks
            .iter()
            .any(|s| matches!(s, SelfCheck::Ok { count } if *count > last_src))
}

/// The destination's output continues the source's exactly: no reboot, the counter goes on
/// without a gap or a repeat, and every self-check passed.
fn assert_continues(before: &str, after: &str) {
    let last_src = Output::parse(before).last_count().unwrap();
    assert!(
        !after.contains("payload start"),
        "the destination rebooted:\n{after}"
    );
    let whole = Output::parse(&format!("{before}{after}"));
    let both = format!("{before}\n--- destination ---\n{after}");
    assert_eq!(whole.starts, 1, "{both}");
    assert!(whole.counts_consecutive(), "counter jumped:\n{both}");
    assert!(!whole.any_selfcheck_failed(), "{both}");
    assert!(continued(&Output::parse(after), last_src), "{both}");
}

#[test]
fn running_guest_migrates_over_tcp_and_continues() {
    if skip() {
        return;
    }
    let dst = side(SerialSink::Buffer);
    let uri = listen(&dst);
    let src = running_source();
    let before = migrate(&src, &uri);
    dst.finish()
        .expect("destination loads the stream (RAM verified)");
    assert_eq!(dst.vm.run_state(), RunState::Running);
    assert_eq!(dst.vm.state(), KvmState::Running);
    let last_src = Output::parse(&before).last_count().unwrap();
    wait_for(
        "the destination to continue",
        || text(&dst.vm),
        |o| continued(o, last_src),
    );
    assert_continues(&before, &text(&dst.vm));
}

// ---- the same between two processes: this test binary re-runs itself as the destination ----

const CHILD_ENV: &str = "LIVEMIG_KVM_DEST_DIR";

/// The destination process of [`running_guest_migrates_to_another_process`]; run only by it
/// (ignored otherwise). Writes its URI to `uri` and its serial output to `serial` in the
/// directory named by `LIVEMIG_KVM_DEST_DIR`, loads one migration, then runs the guest until
/// the parent kills it.
#[test]
#[ignore = "destination process of running_guest_migrates_to_another_process"]
fn kvm_destination_process() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(std::path::PathBuf::from) else {
        testkit::print_skip("runs only as the child of running_guest_migrates_to_another_process");
        return;
    };
    let dst = side(SerialSink::File(dir.join("serial")));
    let uri = listen(&dst);
    std::fs::write(dir.join("uri.tmp"), &uri).unwrap();
    std::fs::rename(dir.join("uri.tmp"), dir.join("uri")).unwrap();
    let res = dst.finish();
    let status = match &res {
        Ok(()) => format!("ok {:?}", dst.vm.run_state()),
        Err(e) => format!("error {}", e.report()),
    };
    std::fs::write(dir.join("status"), status).unwrap();
    res.unwrap();
    thread::sleep(Duration::from_secs(60));
}

/// Kills the child process when the test ends, also on a failed assertion.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn running_guest_migrates_to_another_process() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "kvm_destination_process",
            "--nocapture",
        ])
        .env(CHILD_ENV, dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let uri_path = dir.path().join("uri");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !uri_path.exists() {
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!("destination process exited early: {st}");
        }
        assert!(
            Instant::now() < deadline,
            "destination process did not listen"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let uri = std::fs::read_to_string(&uri_path).unwrap();
    let src = running_source();
    let before = migrate(&src, &uri);
    let status_path = dir.path().join("status");
    let read_status = || std::fs::read_to_string(&status_path).unwrap_or_default();
    while read_status().is_empty() {
        assert!(
            Instant::now() < deadline + Duration::from_secs(60),
            "no destination status"
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(read_status(), "ok Running");
    let serial = dir.path().join("serial");
    let read = || std::fs::read_to_string(&serial).unwrap_or_default();
    let last_src = Output::parse(&before).last_count().unwrap();
    wait_for("the destination process to continue", read, |o| {
        continued(o, last_src)
    });
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "destination process died"
    );
    assert_continues(&before, &read());
}
