//! QMP driven by QEMU's own client library (`qemu.qmp` from PyPI): a complete live migration
//! with its events, and a cancelled one. Skipped (visible SKIP) without python3 + qemu.qmp.

mod common;

use std::process::Command;

use common::{destination, Vm, SMALL};

#[test]
fn qemu_qmp_library_drives_migrations() {
    if !testkit::require_python_qmp("qemu_qmp_library_drives_migrations") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut dst, uri) = destination(dir.path(), "dst", SMALL, "tcp:127.0.0.1:0");
    let mut src_args = SMALL.to_vec();
    src_args.extend(["--fill", "16M"]);
    let mut src = Vm::start(dir.path(), "src", &src_args);
    src.wait_status("running");
    let (_dst2, uri2) = destination(dir.path(), "dst2", SMALL, "tcp:127.0.0.1:0");
    let mut src2_args = SMALL.to_vec();
    src2_args.extend(["--fill", "48M"]);
    let mut src2 = Vm::start(dir.path(), "src2", &src2_args);
    src2.wait_status("running");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/qmp_migration.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&src.qmp_path)
        .arg(&uri)
        .arg(&src2.qmp_path)
        .arg(&uri2)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "{stdout}\n{stderr}\n{}",
        src.stderr()
    );
    dst.wait_status("running");
}
