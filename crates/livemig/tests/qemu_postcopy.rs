//! Postcopy interop with QEMU 7.2 (`-M none`): a slow pre-copy (low `max-bandwidth`), then
//! `migrate-start-postcopy`; QEMU → livemig and livemig → QEMU over tcp, the RAM files compared
//! byte for byte. RAM lives on /dev/shm: a postcopy destination can only catch missing pages of
//! anonymous or shmem memory (QEMU refuses other shared files). Skipped (visible SKIP line)
//! without QEMU.

mod common;

use std::path::Path;
use std::time::Duration;

use common::qemu::{assert_same_ram, random_ram_image, Qemu, RAM};
use common::Vm;
use serde_json::{json, Value};

const QEMU: &str = "qemu-system-x86_64";

/// Pre-copy speed: slow enough that postcopy starts with pages still to send.
const SLOW: u64 = 8 << 20;

fn shm_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").expect("a directory on /dev/shm")
}

fn postcopy_caps() -> Value {
    json!({"capabilities": [{"capability": "postcopy-ram", "state": true}]})
}

/// Polls `query` until more than `bytes` of RAM went out.
fn wait_transferred(mut query: impl FnMut() -> Value, bytes: u64) {
    testkit::wait_for(Duration::from_secs(60), "some pre-copy", || {
        query()["ram"]["transferred"].as_u64().unwrap_or(0) > bytes
    });
}

#[test]
fn qemu_to_livemig_postcopy() {
    if testkit::require_qemu_system("QEMU to livemig, postcopy").is_none() {
        return;
    }
    let dir = shm_dir();
    let qemu_ram = dir.path().join("qemu.ram");
    std::fs::write(&qemu_ram, random_ram_image()).unwrap();
    let our_ram = dir.path().join("livemig.ram");
    let backing = format!("file:{}", our_ram.display());
    let args = [
        "--machine",
        "none",
        "-m",
        "64M",
        "--smp",
        "0",
        "--backing",
        &backing,
    ];
    let (mut dst, uri) =
        common::deferred_destination(dir.path(), "dst", &args, &["postcopy-ram"], Value::Null);
    let mut qemu = Qemu::start(Path::new(QEMU), dir.path(), &qemu_ram, &[]);
    qemu.cmd("migrate-set-capabilities", postcopy_caps());
    qemu.cmd("migrate-set-parameters", json!({"max-bandwidth": SLOW}));
    qemu.cmd("migrate", json!({ "uri": uri }));
    wait_transferred(|| qemu.cmd("query-migrate", Value::Null), 4 << 20);
    qemu.cmd("migrate-start-postcopy", Value::Null);
    let info = qemu.wait_migration();
    assert_eq!(info["status"], "completed", "{info}\n{}", dst.stderr());
    assert!(
        info["ram"]["postcopy-bytes"].as_u64().unwrap() > 0,
        "{info}"
    );
    dst.wait_status("running");
    assert_eq!(dst.wait_migration()["status"], "completed");
    assert_same_ram(&qemu_ram, &our_ram);
}

#[test]
fn livemig_to_qemu_postcopy() {
    if testkit::require_qemu_system("livemig to QEMU, postcopy").is_none() {
        return;
    }
    let dir = shm_dir();
    let qemu_ram = dir.path().join("qemu.ram");
    std::fs::File::create(&qemu_ram)
        .and_then(|f| f.set_len(RAM))
        .unwrap();
    let our_ram = dir.path().join("livemig.ram");
    let backing = format!("file:{}", our_ram.display());
    let port = testkit::free_tcp_port();
    let uri = format!("tcp:127.0.0.1:{port}");
    let incoming = ["-incoming".to_string(), "defer".to_string()];
    let mut qemu = Qemu::start(Path::new(QEMU), dir.path(), &qemu_ram, &incoming);
    qemu.cmd("migrate-set-capabilities", postcopy_caps());
    qemu.cmd("migrate-incoming", json!({ "uri": uri }));
    let args = [
        "--machine",
        "none",
        "-m",
        "64M",
        "--backing",
        &backing,
        "--fill",
        "32M",
        "--smp",
        "1",
        "--working-set",
        "4M",
        "--write-rate",
        "16M",
        "--pattern",
        "random",
        "--fill-pattern",
        "random",
    ];
    let mut src = Vm::start(dir.path(), "src", &args);
    src.wait_status("running");
    common::configure(
        &mut src,
        &["postcopy-ram"],
        json!({"max-bandwidth": SLOW, "max-postcopy-bandwidth": SLOW}),
    );
    src.cmd("migrate", json!({ "uri": uri }));
    wait_transferred(|| src.cmd("query-migrate", Value::Null), 4 << 20);
    src.cmd("migrate-start-postcopy", Value::Null);
    let info = src.wait_migration();
    assert_eq!(info["status"], "completed", "{info}\n{}", src.stderr());
    assert!(
        info["ram"]["postcopy-bytes"].as_u64().unwrap() > 0,
        "{info}"
    );
    let qinfo = qemu.wait_migration();
    assert_eq!(qinfo["status"], "completed", "{qinfo}");
    assert_eq!(qemu.cmd("query-status", Value::Null)["status"], "running");
    assert_eq!(src.status(), "postmigrate");
    assert_same_ram(&our_ram, &qemu_ram);
}
