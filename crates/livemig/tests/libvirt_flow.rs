//! The libvirt flow (`tests/python/libvirt_flow.py`: schema and capability probes, events,
//! `pause-before-switchover`, `late-block-activate`, `migrate-continue`, `cont` on a `-S`
//! destination) run unchanged against livemig ⇄ livemig, livemig → QEMU 7.2 and
//! QEMU 7.2 → QEMU 7.2 — the last one proves the script tests QEMU's behaviour, not livemig's.
//! Skipped (visible SKIP) without python3 + qemu.qmp, or without QEMU for the QEMU pairs.

mod common;

use std::path::Path;
use std::process::Command;

use common::qemu::{QemuProc, QEMU_RAM};
use common::Vm;

/// A livemig destination started paused (`-S`) with `--incoming defer`.
fn livemig_destination(dir: &Path, args: &[&str]) -> Vm {
    let mut all = args.to_vec();
    all.extend(["-S", "--incoming", "defer"]);
    let mut vm = Vm::start(dir, "dst", &all);
    vm.wait_status("inmigrate");
    vm
}

fn run_script(src: &Path, dst: &Path, uri: &str, logs: &[&Vm]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/libvirt_flow.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(src)
        .arg(dst)
        .arg(uri)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs: Vec<String> = logs.iter().map(|v| v.stderr()).collect();
    assert!(
        out.status.success() && stdout.contains("OK"),
        "{stdout}\n{stderr}\n{}",
        logs.join("\n---\n")
    );
}

fn uri() -> String {
    format!("tcp:127.0.0.1:{}", testkit::free_tcp_port())
}

const NONE_MACHINE: &[&str] = &[
    "--machine",
    "none",
    "-m",
    QEMU_RAM,
    "--smp",
    "1",
    "--fill",
    "16M",
    "--working-set",
    "4M",
    "--write-rate",
    "16M",
];

#[test]
fn libvirt_flow_livemig_to_livemig() {
    if !testkit::require_python_qmp("libvirt_flow_livemig_to_livemig") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dst = livemig_destination(dir.path(), NONE_MACHINE);
    let mut src = Vm::start(dir.path(), "src", NONE_MACHINE);
    src.wait_status("running");
    run_script(&src.qmp_path, &dst.qmp_path, &uri(), &[&src, &dst]);
}

#[test]
fn libvirt_flow_livemig_to_qemu() {
    let test = "libvirt_flow_livemig_to_qemu";
    if !testkit::require_python_qmp(test) {
        return;
    }
    let Some(qemu) = testkit::require_qemu_system(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dst = QemuProc::start(&qemu, dir.path(), "dst", &["-S", "-incoming", "defer"]);
    let mut src = Vm::start(dir.path(), "src", NONE_MACHINE);
    src.wait_status("running");
    run_script(&src.qmp_path, &dst.qmp, &uri(), &[&src]);
}

#[test]
fn libvirt_flow_qemu_to_qemu() {
    let test = "libvirt_flow_qemu_to_qemu";
    if !testkit::require_python_qmp(test) {
        return;
    }
    let Some(qemu) = testkit::require_qemu_system(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dst = QemuProc::start(&qemu, dir.path(), "dst", &["-S", "-incoming", "defer"]);
    let src = QemuProc::start(&qemu, dir.path(), "src", &[]);
    run_script(&src.qmp, &dst.qmp, &uri(), &[]);
}
