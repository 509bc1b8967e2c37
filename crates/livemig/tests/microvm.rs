//! A running guest moves live from QEMU 7.2's `microvm` machine (KVM) into
//! `livemig run --machine microvm --accel kvm` and on into a second QEMU, over TCP sockets:
//! the payload's serial counter goes on where the previous VMM stopped it, with no reboot and
//! no gap, and its self-check passes after each hop. And the refusals: a QEMU microvm with devices livemig does not model is
//! refused naming the device, and the QEMU source keeps its guest running.
//!
//! QEMU runs `-cpu host,-arch-capabilities` (livemig's vCPUs get what KVM supports, i.e. the
//! host model; QEMU 7.2 cannot set IA32_ARCH_CAPABILITIES under nested KVM). Prints SKIP
//! without qemu-system-x86_64 or a usable /dev/kvm.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{destination, retry_connect};
use monitor::QmpClient;
use payload::{Output, SelfCheck};
use serde_json::{json, Value};

/// The QEMU options livemig's microvm presents.
const MICROVM: &str = "microvm,x-option-roms=off,rtc=off,acpi=off,isa-serial=on";
const GUEST: &str = "fill=1048576 ws=262144 selfcheck=5";
/// `livemig run` arguments of the machine that matches [`MICROVM`].
/// Two vCPUs on every side: the guest runs on vCPU 0, vCPU 1 waits for its SIPI, and both
/// vCPUs' and LAPICs' state crosses each hop.
const LIVEMIG_MICROVM: [&str; 8] = [
    "--machine",
    "microvm",
    "--accel",
    "kvm",
    "--smp",
    "2",
    "-m",
    "256M",
];

/// [`LIVEMIG_MICROVM`] followed by `more`.
fn livemig_args<'a>(more: &[&'a str]) -> Vec<&'a str> {
    LIVEMIG_MICROVM
        .iter()
        .copied()
        .chain(more.iter().copied())
        .collect()
}

/// QEMU 7.2 microvm running the payload on KVM; killed on drop.
struct QemuMicrovm {
    child: Child,
    qmp: QmpClient,
    serial: PathBuf,
}

impl Drop for QemuMicrovm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl QemuMicrovm {
    fn start(qemu: &Path, dir: &Path, machine: &str) -> QemuMicrovm {
        Self::start_named(qemu, dir, "qemu", machine, &[])
    }

    /// QEMU `name` (its files in `dir` carry the name) with `extra` arguments.
    fn start_named(
        qemu: &Path,
        dir: &Path,
        name: &str,
        machine: &str,
        extra: &[&str],
    ) -> QemuMicrovm {
        let elf = dir.join("payload.elf");
        std::fs::write(&elf, payload::PAYLOAD_ELF).unwrap();
        let serial = dir.join(format!("{name}.serial"));
        let sock = dir.join(format!("{name}.qmp"));
        let mut cmd = Command::new(qemu);
        cmd.args([
            "-M",
            machine,
            "-accel",
            "kvm",
            "-cpu",
            "host,-arch-capabilities",
        ])
        .args([
            "-smp",
            "2",
            "-m",
            "256M",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .arg("-kernel")
        .arg(&elf)
        .args(["-append", GUEST])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args(extra);
        let child = common::qemu::spawn_with_qmp(cmd, &sock);
        let qmp = retry_connect(|| QmpClient::connect_unix(&sock));
        QemuMicrovm { child, qmp, serial }
    }

    fn cmd(&mut self, name: &str, args: Value) -> Value {
        let args = if args.is_null() { None } else { Some(args) };
        self.qmp
            .execute(name, args)
            .unwrap_or_else(|e| panic!("QEMU {name}: {e}"))
    }

    fn status(&mut self) -> String {
        self.cmd("query-status", Value::Null)["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits until the guest printed at least `n` counts.
    fn wait_counts(&self, n: usize) -> Output {
        wait_output(&self.serial, |o| o.counts.len() >= n)
    }
}

/// Waits (up to 120 s: nested KVM is slow) until `done` holds for the serial output at `path`.
/// Waits until the guest went on at `path` (counted twice and ran a self-check there) and
/// checks that `who` did not reboot it and that every self-check passed.
fn wait_resumed(path: &Path, who: &str) -> Output {
    let out = wait_output(path, |o| !o.selfchecks.is_empty() && o.counts.len() >= 2);
    assert_eq!(out.starts, 0, "{who} rebooted the guest: {out:?}");
    assert!(
        out.selfchecks
            .iter()
            .all(|c| matches!(c, SelfCheck::Ok { .. })),
        "{out:?}"
    );
    out
}

fn wait_output(path: &Path, done: impl Fn(&Output) -> bool) -> Output {
    let t = Instant::now();
    loop {
        let out = Output::parse(&std::fs::read_to_string(path).unwrap_or_default());
        if done(&out) {
            return out;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "serial output {} stalled: {out:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_final(q: &mut QemuMicrovm) -> Value {
    common::wait_final_migration(|| q.cmd("query-migrate", Value::Null))
}

fn ready(test: &str) -> Option<PathBuf> {
    let qemu = testkit::require_qemu_system(test)?;
    testkit::require_kvm(test).then_some(qemu)
}

/// Reads serial outputs `parts` as one stream (a line may be cut where a VMM stopped the
/// vCPU) and asserts one boot and a counter without gap or repeat.
fn assert_one_run(parts: &[String]) -> Output {
    let both = Output::parse(&parts.concat());
    assert_eq!(both.starts, 1, "the guest rebooted: {both:?}");
    let first = both.counts[0];
    assert!(
        both.counts.iter().zip(first..).all(|(c, want)| *c == want),
        "a gap or a repeat in the counter across the hops: {both:?}"
    );
    both
}

/// QEMU → livemig → QEMU, live over TCP, the guest running throughout.
#[test]
fn qemu_microvm_guest_moves_live_into_livemig_and_back() {
    let Some(qemu) = ready("qemu_microvm_guest_moves_live_into_livemig_and_back") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dst_serial = dir.path().join("livemig.serial");
    let spec = format!("file:{}", dst_serial.display());
    let args = livemig_args(&["--serial", &spec]);
    let (mut dst, uri) = destination(dir.path(), "dst", &args, "tcp:127.0.0.1:0");
    let mut src = QemuMicrovm::start(&qemu, dir.path(), MICROVM);
    src.wait_counts(2);

    // Hop 1: QEMU → livemig.
    src.cmd("migrate", json!({ "uri": uri }));
    let info = wait_final(&mut src);
    assert_eq!(info["status"], "completed", "{info}\n{}", dst.stderr());
    assert_eq!(src.status(), "postmigrate");
    dst.wait_status("running");
    // The guest goes on on livemig's side: its next self-check runs there.
    wait_resumed(&dst_serial, "livemig");
    let livemig_out = || std::fs::read_to_string(&dst_serial).unwrap();
    let last_qemu = *Output::parse(&src.output()).counts.last().unwrap();
    let both = assert_one_run(&[src.output(), livemig_out()]);
    assert!(
        both.counts.last().unwrap() > &(last_qemu + 1),
        "livemig did not count on: {both:?}"
    );

    // Hop 2: livemig → a second QEMU.
    let port = testkit::free_tcp_port();
    let mut back =
        QemuMicrovm::start_named(&qemu, dir.path(), "back", MICROVM, &["-incoming", "defer"]);
    let back_uri = format!("tcp:127.0.0.1:{port}");
    back.cmd("migrate-incoming", json!({ "uri": back_uri }));
    dst.cmd("migrate", json!({ "uri": back_uri }));
    let info = dst.wait_migration();
    assert_eq!(info["status"], "completed", "{info}\n{}", dst.stderr());
    assert_eq!(dst.status(), "postmigrate");
    let t = Instant::now();
    while back.status() != "running" {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "QEMU did not start the guest"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_resumed(&back.serial, "QEMU");
    let all = assert_one_run(&[src.output(), livemig_out(), back.output()]);
    let last_livemig = *Output::parse(&livemig_out()).counts.last().unwrap();
    assert!(
        all.counts.last().unwrap() > &(last_livemig + 1),
        "QEMU did not count on: {all:?}"
    );
    let _ = dst.cmd("quit", Value::Null);
}

/// A guest livemig booted moves live into QEMU 7.2 microvm: QEMU accepts livemig's sections.
#[test]
fn livemig_microvm_guest_moves_live_into_qemu() {
    let Some(qemu) = ready("livemig_microvm_guest_moves_live_into_qemu") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src_serial = dir.path().join("livemig.serial");
    let spec = format!("file:{}", src_serial.display());
    let args = livemig_args(&["--append", GUEST, "--serial", &spec]);
    let mut src = common::Vm::start(dir.path(), "src", &args);
    wait_output(&src_serial, |o| o.counts.len() >= 2);
    let port = testkit::free_tcp_port();
    let mut dst =
        QemuMicrovm::start_named(&qemu, dir.path(), "dst", MICROVM, &["-incoming", "defer"]);
    let uri = format!("tcp:127.0.0.1:{port}");
    dst.cmd("migrate-incoming", json!({ "uri": uri }));
    src.cmd("migrate", json!({ "uri": uri }));
    let info = src.wait_migration();
    assert_eq!(info["status"], "completed", "{info}\n{}", src.stderr());
    assert_eq!(src.status(), "postmigrate");
    wait_resumed(&dst.serial, "QEMU");
    let src_out = std::fs::read_to_string(&src_serial).unwrap();
    let all = assert_one_run(&[src_out.clone(), dst.output()]);
    let last = *Output::parse(&src_out).counts.last().unwrap();
    assert!(
        all.counts.last().unwrap() > &(last + 1),
        "QEMU did not count on: {all:?}"
    );
    assert_eq!(dst.status(), "running");
}

/// The VMDESCRIPTION JSON of a stream file, via `livemig analyze --desc`.
fn vmdesc(stream: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_livemig"))
        .args(["analyze", "--desc"])
        .arg(stream)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Each device's description without its subsections (which depend on the state: QEMU sends
/// a subsection only when its values differ from the defaults), keyed by idstr and instance.
fn main_fields(desc: &Value) -> Vec<(String, Value)> {
    desc["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let mut d = d.clone();
            d.as_object_mut().unwrap().remove("subsections");
            (format!("{} {}", d["name"], d["instance_id"]), d)
        })
        .collect()
}

/// livemig's microvm stream describes the same sections, field for field (names, types,
/// sizes, struct versions), as QEMU 7.2's: tools reading QEMU's streams read livemig's.
#[test]
fn livemig_microvm_describes_its_sections_as_qemu_does() {
    let Some(qemu) = ready("livemig_microvm_describes_its_sections_as_qemu_does") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let q_stream = dir.path().join("qemu.stream");
    let l_stream = dir.path().join("livemig.stream");
    let mut q = QemuMicrovm::start(&qemu, dir.path(), MICROVM);
    q.wait_counts(1);
    q.cmd(
        "migrate",
        json!({ "uri": format!("exec:cat > {}", q_stream.display()) }),
    );
    assert_eq!(wait_final(&mut q)["status"], "completed");
    let args = livemig_args(&["--append", GUEST]);
    let mut l = common::Vm::start(dir.path(), "src", &args);
    l.wait_status("running");
    l.cmd(
        "migrate",
        json!({ "uri": format!("exec:cat > {}", l_stream.display()) }),
    );
    assert_eq!(l.wait_migration()["status"], "completed", "{}", l.stderr());
    let (qd, ld) = (vmdesc(&q_stream), vmdesc(&l_stream));
    assert_eq!(qd["page_size"], ld["page_size"]);
    let (qm, lm) = (main_fields(&qd), main_fields(&ld));
    assert_eq!(qm.len(), lm.len(), "{qm:?}\n{lm:?}");
    for ((qk, qv), (lk, lv)) in qm.iter().zip(&lm) {
        assert_eq!(qk, lk);
        assert_eq!(qv, lv, "device {qk} is described differently");
    }
}

/// Migrates QEMU microvm `machine` into livemig, which refuses it: asserts that QEMU's
/// migration failed and its guest goes on counting; returns livemig's error output.
fn refused(qemu: &Path, machine: &str, return_path: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (mut dst, uri) = destination(dir.path(), "dst", &LIVEMIG_MICROVM, "tcp:127.0.0.1:0");
    let mut src = QemuMicrovm::start(qemu, dir.path(), machine);
    if return_path {
        src.cmd(
            "migrate-set-capabilities",
            json!({ "capabilities": [{ "capability": "return-path", "state": true }] }),
        );
    }
    let seen = src.wait_counts(1).counts.len();
    src.cmd("migrate", json!({ "uri": uri }));
    let info = wait_final(&mut src);
    assert_eq!(info["status"], "failed", "{info}");
    assert_eq!(src.status(), "running", "QEMU's guest must keep running");
    src.wait_counts(seen + 2);
    let out = dst.wait_exit();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned() + &dst.stderr()
}

/// Default `-M microvm` has ACPI (device acpi-ged, its ROM blocks announced in the RAM setup):
/// livemig refuses the stream before QEMU stops its guest, naming the device.
#[test]
fn qemu_microvm_with_acpi_is_refused_and_keeps_running() {
    let Some(qemu) = ready("qemu_microvm_with_acpi_is_refused_and_keeps_running") else {
        return;
    };
    let err = refused(&qemu, "microvm", false);
    assert!(
        err.contains("acpi-ged"),
        "the refusal names the device: {err}"
    );
}

/// A device section livemig does not model (rtc=on adds `mc146818rtc`) comes after QEMU
/// stopped its guest: with the return path, livemig reports the failure and QEMU resumes.
#[test]
fn qemu_microvm_with_rtc_is_refused_and_qemu_resumes() {
    let Some(qemu) = ready("qemu_microvm_with_rtc_is_refused_and_qemu_resumes") else {
        return;
    };
    let machine = "microvm,x-option-roms=off,rtc=on,acpi=off,isa-serial=on";
    let err = refused(&qemu, machine, true);
    assert!(
        err.contains("mc146818rtc"),
        "the refusal names the device: {err}"
    );
}
