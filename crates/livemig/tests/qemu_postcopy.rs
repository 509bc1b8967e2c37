//! Postcopy interop with QEMU 7.2 (`-M none`): a slow pre-copy (low `max-bandwidth`), then
//! `migrate-start-postcopy`; QEMU → livemig and livemig → QEMU over tcp, the RAM files compared
//! byte for byte; and postcopy recovery both ways (the link broken with `migrate-pause` in the
//! background phase, `migrate-recover` on the destination, `migrate resume=true` on the
//! source). RAM lives on /dev/shm: a postcopy destination can only catch missing pages of
//! anonymous or shmem memory (QEMU refuses other shared files). Skipped (visible SKIP line)
//! without QEMU.

mod common;

use std::path::{Path, PathBuf};
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

/// A QEMU source migrating into a livemig destination, switched to postcopy after some
/// pre-copy, its background phase at `postcopy_bw` bytes/s (0: unlimited). Returns QEMU, the
/// destination and their RAM files.
fn qemu_source_in_postcopy(dir: &Path, postcopy_bw: u64) -> (Qemu, Vm, PathBuf, PathBuf) {
    let qemu_ram = dir.join("qemu.ram");
    std::fs::write(&qemu_ram, random_ram_image()).unwrap();
    let our_ram = dir.join("livemig.ram");
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
    let (dst, uri) =
        common::deferred_destination(dir, "dst", &args, &["postcopy-ram", "events"], Value::Null);
    let mut qemu = Qemu::start(Path::new(QEMU), dir, &qemu_ram, &[]);
    qemu.cmd("migrate-set-capabilities", postcopy_caps());
    qemu.cmd(
        "migrate-set-parameters",
        json!({"max-bandwidth": SLOW, "max-postcopy-bandwidth": postcopy_bw}),
    );
    qemu.cmd("migrate", json!({ "uri": uri }));
    wait_transferred(|| qemu.cmd("query-migrate", Value::Null), 4 << 20);
    qemu.cmd("migrate-start-postcopy", Value::Null);
    (qemu, dst, qemu_ram, our_ram)
}

/// QEMU completed with postcopy pages, the guest runs on livemig, the RAM is identical.
fn qemu_to_livemig_completed(qemu: &mut Qemu, dst: &mut Vm, qemu_ram: &Path, our_ram: &Path) {
    let info = qemu.wait_migration();
    assert_eq!(info["status"], "completed", "{info}\n{}", dst.stderr());
    assert!(
        info["ram"]["postcopy-bytes"].as_u64().unwrap() > 0,
        "{info}"
    );
    dst.wait_status("running");
    assert_eq!(dst.wait_migration()["status"], "completed");
    assert_same_ram(qemu_ram, our_ram);
}

#[test]
fn qemu_to_livemig_postcopy() {
    if testkit::require_qemu_system("QEMU to livemig, postcopy").is_none() {
        return;
    }
    let dir = shm_dir();
    let (mut qemu, mut dst, qemu_ram, our_ram) = qemu_source_in_postcopy(dir.path(), 0);
    qemu_to_livemig_completed(&mut qemu, &mut dst, &qemu_ram, &our_ram);
}

/// A livemig source (a vCPU rewriting its working set) migrating into a QEMU destination,
/// switched to postcopy after some pre-copy, its background phase at `postcopy_bw` bytes/s.
/// Returns the source, QEMU and their RAM files.
fn livemig_source_in_postcopy(dir: &Path, postcopy_bw: u64) -> (Vm, Qemu, PathBuf, PathBuf) {
    let qemu_ram = dir.join("qemu.ram");
    std::fs::File::create(&qemu_ram)
        .and_then(|f| f.set_len(RAM))
        .unwrap();
    let our_ram = dir.join("livemig.ram");
    let backing = format!("file:{}", our_ram.display());
    let port = testkit::free_tcp_port();
    let uri = format!("tcp:127.0.0.1:{port}");
    let incoming = ["-incoming".to_string(), "defer".to_string()];
    let mut qemu = Qemu::start(Path::new(QEMU), dir, &qemu_ram, &incoming);
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
    let mut src = Vm::start(dir, "src", &args);
    src.wait_status("running");
    common::configure(
        &mut src,
        &["postcopy-ram", "events"],
        json!({"max-bandwidth": SLOW, "max-postcopy-bandwidth": postcopy_bw}),
    );
    src.cmd("migrate", json!({ "uri": uri }));
    wait_transferred(|| src.cmd("query-migrate", Value::Null), 4 << 20);
    src.cmd("migrate-start-postcopy", Value::Null);
    (src, qemu, our_ram, qemu_ram)
}

/// livemig completed with postcopy pages, the guest runs on QEMU only, the RAM is identical.
fn livemig_to_qemu_completed(src: &mut Vm, qemu: &mut Qemu, our_ram: &Path, qemu_ram: &Path) {
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
    assert_same_ram(our_ram, qemu_ram);
}

#[test]
fn livemig_to_qemu_postcopy() {
    if testkit::require_qemu_system("livemig to QEMU, postcopy").is_none() {
        return;
    }
    let dir = shm_dir();
    let (mut src, mut qemu, our_ram, qemu_ram) = livemig_source_in_postcopy(dir.path(), SLOW);
    livemig_to_qemu_completed(&mut src, &mut qemu, &our_ram, &qemu_ram);
}

/// Polls `query` until the migration status is `want`.
fn wait_migration_status(mut query: impl FnMut() -> Value, want: &str) {
    testkit::wait_for(Duration::from_secs(60), want, || query()["status"] == want);
}

/// Polls `query` until more than `bytes` went out in postcopy.
fn wait_postcopy_bytes(mut query: impl FnMut() -> Value, bytes: u64) {
    testkit::wait_for(Duration::from_secs(60), "some postcopy pages", || {
        query()["ram"]["postcopy-bytes"].as_u64().unwrap_or(0) > bytes
    });
}

/// QEMU source, livemig destination: `migrate-pause` on QEMU in the background phase, both
/// sides `postcopy-paused` (the guest running on livemig), `migrate-recover` on livemig and
/// `migrate resume=true` on QEMU: QEMU's RECV_BITMAPs are answered, its RESUME acknowledged,
/// and the RAM ends identical.
#[test]
fn qemu_to_livemig_postcopy_recovery() {
    if testkit::require_qemu_system("QEMU to livemig, postcopy recovery").is_none() {
        return;
    }
    let dir = shm_dir();
    let (mut qemu, mut dst, qemu_ram, our_ram) = qemu_source_in_postcopy(dir.path(), 4 << 20);
    wait_postcopy_bytes(|| qemu.cmd("query-migrate", Value::Null), 1 << 20);
    qemu.cmd("migrate-pause", Value::Null);
    wait_migration_status(|| qemu.cmd("query-migrate", Value::Null), "postcopy-paused");
    wait_migration_status(|| dst.cmd("query-migrate", Value::Null), "postcopy-paused");
    assert_eq!(dst.status(), "running");
    let uri = format!("tcp:127.0.0.1:{}", testkit::free_tcp_port());
    dst.cmd("migrate-recover", json!({ "uri": uri }));
    qemu.cmd("migrate", json!({ "uri": uri, "resume": true }));
    qemu_to_livemig_completed(&mut qemu, &mut dst, &qemu_ram, &our_ram);
}

/// livemig source, QEMU destination: `migrate-pause` on livemig in the background phase, both
/// sides `postcopy-paused`, `migrate-recover` on QEMU and `migrate resume=true` on livemig:
/// QEMU's received-pages bitmaps rebuild what livemig still sends, and the RAM ends identical.
#[test]
fn livemig_to_qemu_postcopy_recovery() {
    if testkit::require_qemu_system("livemig to QEMU, postcopy recovery").is_none() {
        return;
    }
    let dir = shm_dir();
    let (mut src, mut qemu, our_ram, qemu_ram) = livemig_source_in_postcopy(dir.path(), 4 << 20);
    wait_postcopy_bytes(|| src.cmd("query-migrate", Value::Null), 1 << 20);
    src.cmd("migrate-pause", Value::Null);
    wait_migration_status(|| src.cmd("query-migrate", Value::Null), "postcopy-paused");
    wait_migration_status(|| qemu.cmd("query-migrate", Value::Null), "postcopy-paused");
    assert_eq!(qemu.cmd("query-status", Value::Null)["status"], "running");
    assert_ne!(src.status(), "running");
    let uri = format!("tcp:127.0.0.1:{}", testkit::free_tcp_port());
    qemu.cmd("migrate-recover", json!({ "uri": uri }));
    src.cmd("migrate", json!({ "uri": uri, "resume": true }));
    livemig_to_qemu_completed(&mut src, &mut qemu, &our_ram, &qemu_ram);
}
