//! TLS interop with QEMU 7.2 (GnuTLS): QEMU migrates into livemig and livemig into QEMU over
//! TLS with the same x509 credential directories, plain and multifd (each multifd channel runs
//! its own handshake), and the RAM each side ends up with is compared byte for byte. Skipped
//! with a visible SKIP line when QEMU is missing.

mod common;

use std::path::Path;

use common::qemu::{assert_same_ram, random_ram_image, Qemu, RAM};
use serde_json::{json, Value};
use testkit::tls::{Leaf, TestCa};

const QEMU: &str = "qemu-system-x86_64";

/// Server and client credential directories under `dir`, QEMU's file names.
fn credentials(dir: &Path) -> (String, String) {
    let ca = TestCa::new("livemig interop CA");
    let (server, client) = (dir.join("pki-server"), dir.join("pki-client"));
    ca.write_server_dir(&server, &Leaf::localhost("destination"));
    ca.write_client_dir(&client, Some(&Leaf::localhost("source")));
    (server.display().to_string(), client.display().to_string())
}

fn caps_json(caps: &[&str]) -> Value {
    let list: Vec<Value> = caps
        .iter()
        .map(|c| json!({"capability": c, "state": true}))
        .collect();
    json!({ "capabilities": list })
}

fn qemu_to_livemig(caps: &[&str]) {
    if testkit::require_qemu_system(&format!("QEMU to livemig over TLS with {caps:?}")).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (server_dir, client_dir) = credentials(dir.path());
    let qemu_ram = dir.path().join("qemu.ram");
    std::fs::write(&qemu_ram, random_ram_image()).unwrap();
    let our_ram = dir.path().join("livemig.ram");
    let backing = format!("file:{}", our_ram.display());
    let object = format!("tls-creds-x509,id=tls0,dir={server_dir},endpoint=server");
    let args = [
        "--machine",
        "none",
        "-m",
        "64M",
        "--smp",
        "0",
        "--backing",
        &backing,
        "--object",
        &object,
    ];
    let params = json!({"tls-creds": "tls0", "multifd-channels": 2});
    let (mut dst, uri) = common::deferred_destination(dir.path(), "dst", &args, caps, params);
    let creds = format!("tls-creds-x509,id=tls0,dir={client_dir},endpoint=client");
    let mut qemu = Qemu::start(
        Path::new(QEMU),
        dir.path(),
        &qemu_ram,
        &["-object".to_string(), creds],
    );
    qemu.cmd("migrate-set-capabilities", caps_json(caps));
    qemu.cmd(
        "migrate-set-parameters",
        json!({"tls-creds": "tls0", "tls-hostname": "localhost", "multifd-channels": 2}),
    );
    qemu.cmd("migrate", json!({ "uri": uri }));
    let info = qemu.wait_migration();
    assert_eq!(info["status"], "completed", "{info}\n{}", dst.stderr());
    dst.wait_status("running");
    assert_eq!(dst.wait_migration()["status"], "completed");
    assert_same_ram(&qemu_ram, &our_ram);
}

fn livemig_to_qemu(caps: &[&str]) -> Option<Value> {
    testkit::require_qemu_system(&format!("livemig to QEMU over TLS with {caps:?}"))?;
    let dir = tempfile::tempdir().unwrap();
    let (server_dir, client_dir) = credentials(dir.path());
    let qemu_ram = dir.path().join("qemu.ram");
    std::fs::write(&qemu_ram, vec![0u8; RAM as usize]).unwrap();
    let our_ram = dir.path().join("livemig.ram");
    let backing = format!("file:{}", our_ram.display());
    let port = testkit::free_tcp_port();
    let extra = [
        "-incoming".to_string(),
        "defer".to_string(),
        "-object".to_string(),
        format!("tls-creds-x509,id=tls0,dir={server_dir},endpoint=server"),
    ];
    let mut qemu = Qemu::start(Path::new(QEMU), dir.path(), &qemu_ram, &extra);
    qemu.cmd("migrate-set-capabilities", caps_json(caps));
    qemu.cmd(
        "migrate-set-parameters",
        json!({"tls-creds": "tls0", "multifd-channels": 2}),
    );
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
        "0",
    ];
    let mut src = common::Vm::start(dir.path(), "src", &args);
    // QMP object-add, as libvirt does.
    src.cmd(
        "object-add",
        json!({"qom-type": "tls-creds-x509", "id": "tls0", "dir": client_dir,
               "endpoint": "client"}),
    );
    src.cmd("migrate-set-capabilities", caps_json(caps));
    src.cmd(
        "migrate-set-parameters",
        json!({"tls-creds": "tls0", "tls-hostname": "localhost", "multifd-channels": 2}),
    );
    src.cmd("migrate", json!({ "uri": format!("tcp:127.0.0.1:{port}") }));
    let info = src.wait_migration();
    assert_eq!(info["status"], "completed", "{info}\n{}", src.stderr());
    let qinfo = qemu.wait_migration();
    assert_eq!(qinfo["status"], "completed", "{qinfo}");
    assert_same_ram(&our_ram, &qemu_ram);
    Some(info)
}

#[test]
fn qemu_to_livemig_over_tls() {
    qemu_to_livemig(&[]);
}

#[test]
fn qemu_to_livemig_over_tls_with_multifd() {
    qemu_to_livemig(&["multifd"]);
}

#[test]
fn livemig_to_qemu_over_tls() {
    livemig_to_qemu(&["return-path"]);
}

#[test]
fn livemig_to_qemu_over_tls_with_multifd() {
    if let Some(info) = livemig_to_qemu(&["multifd"]) {
        assert!(info["ram"]["multifd-bytes"].as_u64().unwrap() > 0, "{info}");
    }
}
