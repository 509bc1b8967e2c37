//! Wire interop with QEMU 7.2 (`-M none`, file-backed RAM): QEMU migrates into livemig and
//! livemig migrates into QEMU over tcp; the RAM each side ends up with is compared byte for byte
//! with the other side's RAM file. Skipped (with a visible SKIP line) when QEMU is missing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::qemu::{Qemu, RAM};
use common::Vm;
use monitor::QmpClient;
use serde_json::{json, Value};

const QEMU: &str = "qemu-system-x86_64";

fn have_qemu(test: &str) -> bool {
    testkit::require_qemu_system(test).is_some()
}

/// Random data in the first half with every fourth page zero; the second half zero.
fn ram_image() -> Vec<u8> {
    let mut data = vec![0u8; RAM as usize];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for (i, page) in data[..(RAM / 2) as usize].chunks_mut(4096).enumerate() {
        if i % 4 == 3 {
            continue;
        }
        for w in page.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
    }
    data
}

fn set_caps(qmp: &mut QmpClient, caps: &[&str]) {
    let list: Vec<Value> = caps
        .iter()
        .map(|c| json!({"capability": c, "state": true}))
        .collect();
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": list })),
    )
    .unwrap();
}

fn assert_same_file(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(x.len(), y.len());
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("RAM differs at byte {i:#x} (page {})", i / 4096);
    }
}

#[test]
fn qemu_to_livemig() {
    qemu_to_livemig_with(&[]);
}

#[test]
fn qemu_to_livemig_with_multifd() {
    qemu_to_livemig_with(&["multifd"]);
}

#[test]
fn qemu_to_livemig_with_return_path() {
    // QEMU opens the return path, PINGs, and waits for livemig's SHUT.
    qemu_to_livemig_with(&["return-path"]);
}

fn qemu_to_livemig_with(caps: &[&str]) {
    if !have_qemu(&format!("QEMU to livemig with {caps:?}")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let qemu_ram = dir.path().join("qemu.ram");
    std::fs::write(&qemu_ram, ram_image()).unwrap();
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
    let (mut dst, uri) = common::deferred_destination(dir.path(), "dst", &args, caps, Value::Null);
    let mut qemu = Qemu::start(Path::new(QEMU), dir.path(), &qemu_ram, &[]);
    set_caps(&mut qemu.qmp, caps);
    qemu.cmd("migrate", json!({ "uri": uri }));
    let info = qemu.wait_migration();
    assert_eq!(info["status"], "completed", "{info}");
    assert!(
        info["ram"]["duplicate"].as_u64().unwrap() > 0
            && info["ram"]["normal"].as_u64().unwrap() > 0
    );
    dst.wait_status("running");
    // The guest starts a moment before the status is published (as in QEMU).
    let dinfo = common::wait_final_migration(|| dst.cmd("query-migrate", Value::Null));
    assert_eq!(dinfo["status"], "completed");
    assert_same_file(&qemu_ram, &our_ram);
}

#[test]
fn livemig_to_qemu() {
    livemig_to_qemu_with(&[]);
}

#[test]
fn livemig_to_qemu_with_return_path() {
    let Some(info) = livemig_to_qemu_with(&["return-path"]) else {
        return;
    };
    assert_eq!(info["status"], "completed");
}

#[test]
fn livemig_to_qemu_with_multifd() {
    let Some(info) = livemig_to_qemu_with(&["multifd"]) else {
        return;
    };
    assert!(info["ram"]["multifd-bytes"].as_u64().unwrap() > 0, "{info}");
}

#[test]
fn livemig_to_qemu_with_xbzrle() {
    let Some(info) = livemig_to_qemu_with(&["xbzrle"]) else {
        return;
    };
    let x = &info["xbzrle-cache"];
    assert!(
        x["pages"].as_u64().unwrap() > 0,
        "no page went as an XBZRLE delta: {info}"
    );
}

/// livemig (`--machine none`, running writer) into QEMU 7.2 with `caps` on; returns livemig's
/// final query-migrate, or None when QEMU is not installed (SKIP).
fn livemig_to_qemu_with(caps: &[&str]) -> Option<Value> {
    if !have_qemu(&format!("livemig to QEMU with {caps:?}")) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let qemu_ram = dir.path().join("qemu.ram");
    std::fs::write(&qemu_ram, vec![0u8; RAM as usize]).unwrap();
    let our_ram = dir.path().join("livemig.ram");
    let backing = format!("file:{}", our_ram.display());
    let port = testkit::free_tcp_port();
    let incoming = ["-incoming".to_string(), "defer".to_string()];
    let mut qemu = Qemu::start(Path::new(QEMU), dir.path(), &qemu_ram, &incoming);
    // The destination needs the same capabilities (multifd) before it listens.
    set_caps(&mut qemu.qmp, caps);
    qemu.cmd(
        "migrate-incoming",
        json!({ "uri": format!("tcp:127.0.0.1:{port}") }),
    );
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
    ];
    let mut src = Vm::start(dir.path(), "src", &args);
    src.wait_status("running");
    if !caps.is_empty() {
        let list: Vec<Value> = caps
            .iter()
            .map(|c| json!({"capability": c, "state": true}))
            .collect();
        src.cmd("migrate-set-capabilities", json!({ "capabilities": list }));
        // Slow enough for several passes over the working set, so pages are re-sent.
        src.cmd(
            "migrate-set-parameters",
            json!({"max-bandwidth": 32 << 20, "downtime-limit": 50}),
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    src.cmd("migrate", json!({ "uri": format!("tcp:127.0.0.1:{port}") }));
    let info = src.wait_migration();
    assert_eq!(info["status"], "completed", "{info}\n{}", src.stderr());
    assert!(info["ram"]["duplicate"].as_u64().unwrap() > 0, "{info}");
    let qinfo = qemu.wait_migration();
    assert_eq!(qinfo["status"], "completed", "{qinfo}");
    assert_eq!(qemu.cmd("query-status", Value::Null)["status"], "running");
    // livemig's source stays paused after switchover, so its RAM file is the switchover state.
    assert_eq!(src.status(), "postmigrate");
    assert_same_file(&our_ram, &qemu_ram);
    Some(info)
}

/// `x-ignore-shared` with both processes on one RAM file: no page crosses the socket, and the
/// file keeps the source's RAM.
#[test]
fn qemu_to_livemig_ignoring_shared_ram() {
    if !have_qemu("QEMU to livemig with x-ignore-shared") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ram = dir.path().join("shared.ram");
    let image = ram_image();
    std::fs::write(&ram, &image).unwrap();
    let backing = format!("file:{}", ram.display());
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
    let caps = ["x-ignore-shared"];
    let (mut dst, uri) = common::deferred_destination(dir.path(), "dst", &args, &caps, Value::Null);
    let mut qemu = Qemu::start(Path::new(QEMU), dir.path(), &ram, &[]);
    set_caps(&mut qemu.qmp, &caps);
    qemu.cmd("migrate", json!({ "uri": uri }));
    let info = qemu.wait_migration();
    assert_eq!(info["status"], "completed", "{info}\n{}", dst.stderr());
    assert_eq!(info["ram"]["normal"], 0, "{info}");
    dst.wait_status("running");
    assert_eq!(dst.cmd("query-migrate", Value::Null)["status"], "completed");
    assert!(
        std::fs::read(&ram).unwrap() == image,
        "the shared RAM changed"
    );
}

#[test]
fn livemig_to_qemu_ignoring_shared_ram() {
    if !have_qemu("livemig to QEMU with x-ignore-shared") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ram = dir.path().join("shared.ram");
    std::fs::write(&ram, vec![0u8; RAM as usize]).unwrap();
    let backing = format!("file:{}", ram.display());
    let port = testkit::free_tcp_port();
    let incoming = ["-incoming".to_string(), "defer".to_string()];
    let mut qemu = Qemu::start(Path::new(QEMU), dir.path(), &ram, &incoming);
    let caps = ["x-ignore-shared"];
    set_caps(&mut qemu.qmp, &caps);
    let uri = format!("tcp:127.0.0.1:{port}");
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
    ];
    let mut src = Vm::start(dir.path(), "src", &args);
    src.wait_status("running");
    common::configure(&mut src, &caps, Value::Null);
    std::thread::sleep(Duration::from_millis(100));
    src.cmd("migrate", json!({ "uri": uri }));
    let info = src.wait_migration();
    assert_eq!(info["status"], "completed", "{info}\n{}", src.stderr());
    assert_eq!(info["ram"]["normal"], 0, "{info}");
    let qinfo = qemu.wait_migration();
    assert_eq!(qinfo["status"], "completed", "{qinfo}");
    assert_eq!(qemu.cmd("query-status", Value::Null)["status"], "running");
    assert_eq!(src.status(), "postmigrate");
    // QEMU took the file as it was: the source's data is still there.
    let data = std::fs::read(&ram).unwrap();
    assert!(data[..(RAM / 2) as usize].iter().any(|&b| b != 0));
}
