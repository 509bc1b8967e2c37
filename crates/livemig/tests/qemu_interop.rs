//! Wire interop with QEMU 7.2 (`-M none`, file-backed RAM): QEMU migrates into livemig and
//! livemig migrates into QEMU over tcp; the RAM each side ends up with is compared byte for byte
//! with the other side's RAM file. Skipped (with a visible SKIP line) when QEMU is missing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::qemu::{assert_same_ram, Qemu, RAM};
use common::Vm;
use monitor::QmpClient;
use serde_json::{json, Value};

const QEMU: &str = "qemu-system-x86_64";

fn have_qemu(test: &str) -> bool {
    testkit::require_qemu_system(test).is_some()
}

/// The first half: every fourth page zero, every other page random data, the rest text-like
/// (words of lowercase letters, which compress); the second half zero.
fn ram_image() -> Vec<u8> {
    let mut data = vec![0u8; RAM as usize];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (i, page) in data[..(RAM / 2) as usize].chunks_mut(4096).enumerate() {
        match i % 4 {
            3 => {}
            1 => {
                for c in page.iter_mut() {
                    let r = next() % 64;
                    *c = if r < 8 { b' ' } else { b'a' + (r % 8) as u8 };
                }
            }
            _ => {
                for w in page.chunks_mut(8) {
                    w.copy_from_slice(&next().to_le_bytes());
                }
            }
        }
    }
    data
}

fn set_params(qmp: &mut QmpClient, params: &Value) {
    if !params.is_null() {
        qmp.execute("migrate-set-parameters", Some(params.clone()))
            .unwrap();
    }
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

#[test]
fn qemu_to_livemig() {
    qemu_to_livemig_with(&[], Value::Null);
}

#[test]
fn qemu_to_livemig_with_multifd() {
    qemu_to_livemig_with(&["multifd"], Value::Null);
}

// QEMU 7.2 counts multifd bytes uncompressed, so its statistics cannot show the compression;
// livemig's destination refuses any page packet without the method's flag bits, and the RAM
// files are compared byte for byte.
#[test]
fn qemu_to_livemig_with_multifd_zlib() {
    qemu_to_livemig_with(
        &["multifd"],
        json!({"multifd-channels": 3, "multifd-compression": "zlib", "multifd-zlib-level": 6}),
    );
}

#[test]
fn qemu_to_livemig_with_multifd_zstd() {
    qemu_to_livemig_with(
        &["multifd"],
        json!({"multifd-channels": 2, "multifd-compression": "zstd", "multifd-zstd-level": 1}),
    );
}

/// livemig's channels carried fewer bytes than the pages they sent (text-filled guest);
/// nothing to check when QEMU is missing.
fn assert_compressed(info: &Option<Value>) {
    let Some(info) = info else {
        return;
    };
    let ram = &info["ram"];
    let (normal, multifd) = (
        ram["normal"].as_u64().unwrap(),
        ram["multifd-bytes"].as_u64().unwrap(),
    );
    assert!(multifd > 0 && multifd < normal * 4096 / 2, "{info}");
}

#[test]
fn qemu_to_livemig_with_return_path() {
    // QEMU opens the return path, PINGs, and waits for livemig's SHUT.
    qemu_to_livemig_with(&["return-path"], Value::Null);
}

/// QEMU 7.2 migrates into livemig with `caps` and `params` set on both; returns QEMU's final
/// query-migrate, or None when QEMU is not installed (SKIP).
fn qemu_to_livemig_with(caps: &[&str], params: Value) -> Option<Value> {
    if !have_qemu(&format!("QEMU to livemig with {caps:?} {params}")) {
        return None;
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
    let (mut dst, uri) =
        common::deferred_destination(dir.path(), "dst", &args, caps, params.clone());
    let mut qemu = Qemu::start(Path::new(QEMU), dir.path(), &qemu_ram, &[]);
    set_caps(&mut qemu.qmp, caps);
    set_params(&mut qemu.qmp, &params);
    qemu.cmd("migrate", json!({ "uri": uri }));
    let info = qemu.wait_migration();
    assert_eq!(info["status"], "completed", "{info}");
    assert!(
        info["ram"]["duplicate"].as_u64().unwrap() > 0
            && info["ram"]["normal"].as_u64().unwrap() > 0
    );
    dst.wait_status("running");
    // The destination starts the guest before it reports `completed` (as QEMU does).
    assert_eq!(dst.wait_migration()["status"], "completed");
    assert_same_ram(&qemu_ram, &our_ram);
    Some(info)
}

#[test]
fn livemig_to_qemu() {
    livemig_to_qemu_with(&[], Value::Null);
}

#[test]
fn livemig_to_qemu_with_return_path() {
    let Some(info) = livemig_to_qemu_with(&["return-path"], Value::Null) else {
        return;
    };
    assert_eq!(info["status"], "completed");
}

#[test]
fn livemig_to_qemu_with_multifd() {
    let Some(info) = livemig_to_qemu_with(&["multifd"], Value::Null) else {
        return;
    };
    assert!(info["ram"]["multifd-bytes"].as_u64().unwrap() > 0, "{info}");
}

#[test]
fn livemig_to_qemu_with_xbzrle() {
    let Some(info) = livemig_to_qemu_with(&["xbzrle"], Value::Null) else {
        return;
    };
    let x = &info["xbzrle-cache"];
    assert!(
        x["pages"].as_u64().unwrap() > 0,
        "no page went as an XBZRLE delta: {info}"
    );
}

#[test]
fn livemig_to_qemu_with_multifd_zlib() {
    let info = livemig_to_qemu_with(
        &["multifd"],
        json!({"multifd-channels": 2, "multifd-compression": "zlib", "multifd-zlib-level": 1}),
    );
    assert_compressed(&info);
}

#[test]
fn livemig_to_qemu_with_multifd_zstd() {
    let info = livemig_to_qemu_with(
        &["multifd"],
        json!({"multifd-channels": 3, "multifd-compression": "zstd", "multifd-zstd-level": 5}),
    );
    assert_compressed(&info);
}

/// livemig (`--machine none`, running writer) into QEMU 7.2 with `caps` and `params` on both
/// sides (text-filled RAM when `params` set a compression); returns livemig's final
/// query-migrate, or None when QEMU is not installed (SKIP).
fn livemig_to_qemu_with(caps: &[&str], params: Value) -> Option<Value> {
    if !have_qemu(&format!("livemig to QEMU with {caps:?} {params}")) {
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
    set_params(&mut qemu.qmp, &params);
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
        "--fill-pattern",
        if params.get("multifd-compression").is_some() {
            "text"
        } else {
            "random"
        },
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
        set_params(src.qmp(), &params);
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
    assert_same_ram(&our_ram, &qemu_ram);
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
    assert_eq!(dst.wait_migration()["status"], "completed");
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
