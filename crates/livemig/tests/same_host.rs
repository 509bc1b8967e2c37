//! Same-host migration without copying RAM: `x-ignore-shared` with guest RAM in a shared file
//! on /dev/shm that both `livemig run` processes map. Live over a unix: socket, `ram-verify`
//! on (it hashes the shared mapping on both sides).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{configure, deferred_destination_on, Vm, SMALL};
use serde_json::{json, Value};

/// A directory for the shared RAM file: /dev/shm (tmpfs, what such a deployment uses) when
/// present, the temporary directory otherwise.
fn shm_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

fn vm_args(backing: &str, extra: &[&'static str]) -> Vec<String> {
    let mut v: Vec<String> = SMALL.iter().map(|s| s.to_string()).collect();
    v.extend(["--backing".to_string(), backing.to_string()]);
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

struct Pair {
    src: Vm,
    dst: Vm,
    uri: String,
}

/// A running source on `src_backing` (32 MiB of data) and a deferred destination on
/// `dst_backing` listening on a unix socket; `src_caps` / `dst_caps` switched on.
fn pair(
    dir: &Path,
    src_backing: &str,
    dst_backing: &str,
    src_caps: &[&str],
    dst_caps: &[&str],
) -> Pair {
    let uri = format!("unix:{}", dir.join("mig.sock").display());
    let dst = deferred_destination_on(
        dir,
        "dst",
        &refs(&vm_args(dst_backing, &[])),
        dst_caps,
        &uri,
    );
    let mut src = Vm::start(dir, "src", &refs(&vm_args(src_backing, &["--fill", "32M"])));
    configure(&mut src, src_caps, Value::Null);
    src.wait_status("running");
    // Let the vCPUs dirty memory for a while, so the migration is live.
    std::thread::sleep(Duration::from_millis(200));
    Pair { src, dst, uri }
}

fn file_backing(shm: &Path) -> (PathBuf, String) {
    let path = shm.join("guest.ram");
    let backing = format!("file:{}", path.display());
    (path, backing)
}

/// Migrates `src` to `uri` and checks it completed and the guest runs on `dst` only.
fn migrate_completed(src: &mut Vm, dst: &mut Vm, uri: &str) -> Value {
    src.cmd("migrate", json!({ "uri": uri }));
    let info = src.wait_completed(dst);
    dst.wait_status("running");
    assert_eq!(src.status(), "postmigrate");
    assert_eq!(dst.wait_migration()["status"], "completed");
    info
}

/// Migrates `src` to `uri`, expects a failure, and returns what the destination said as it
/// exited.
fn destination_refusal(src: &mut Vm, dst: &mut Vm, uri: &str) -> String {
    src.cmd("migrate", json!({ "uri": uri }));
    let info = src.wait_migration();
    assert_eq!(info["status"], "failed", "{info}");
    String::from_utf8_lossy(&dst.wait_exit().stderr).into_owned()
}

#[test]
fn running_guest_moves_over_a_shared_file_without_sending_ram() {
    let dir = tempfile::tempdir().unwrap();
    let shm = shm_dir();
    let (_, backing) = file_backing(shm.path());
    let caps = ["x-ignore-shared", "ram-verify", "events"];
    let Pair {
        mut src,
        mut dst,
        uri,
    } = pair(dir.path(), &backing, &backing, &caps, &caps);
    let info = migrate_completed(&mut src, &mut dst, &uri);
    // Not one page went over the socket: the RAM stayed where it was.
    let ram = &info["ram"];
    assert_eq!(ram["normal"], 0, "{info}");
    assert_eq!(ram["duplicate"], 0, "{info}");
    assert_eq!(ram["total"], 0, "{info}");
    assert!(ram["transferred"].as_u64().unwrap() < 4096, "{info}");
}

#[test]
fn the_capability_must_be_on_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let shm = shm_dir();
    let (_, backing) = file_backing(shm.path());
    let Pair {
        mut src,
        mut dst,
        uri,
    } = pair(dir.path(), &backing, &backing, &["x-ignore-shared"], &[]);
    let err = destination_refusal(&mut src, &mut dst, &uri);
    assert!(
        err.contains("Capability x-ignore-shared is off, but received capability is on"),
        "{err}"
    );
    // The source runs on, on its own RAM.
    src.cmd("cont", Value::Null);
    assert_eq!(src.status(), "running");
}

#[test]
fn a_destination_on_its_own_memfd_refuses_to_skip_ram() {
    let dir = tempfile::tempdir().unwrap();
    let shm = shm_dir();
    let (_, backing) = file_backing(shm.path());
    let caps = ["x-ignore-shared"];
    let Pair {
        mut src,
        mut dst,
        uri,
    } = pair(dir.path(), &backing, "memfd", &caps, &caps);
    let err = destination_refusal(&mut src, &mut dst, &uri);
    assert!(err.contains("is a memfd of this process"), "{err}");
}

#[test]
fn ram_verify_catches_a_destination_that_does_not_share_the_memory() {
    // The source skips its shared block; a destination on private memory expects pages that
    // never come. Nothing in QEMU's format says which blocks the source skipped, so the
    // digest is what notices.
    let dir = tempfile::tempdir().unwrap();
    let shm = shm_dir();
    let (_, backing) = file_backing(shm.path());
    let caps = ["x-ignore-shared", "ram-verify"];
    let Pair {
        mut src,
        mut dst,
        uri,
    } = pair(dir.path(), &backing, "anon", &caps, &caps);
    let err = destination_refusal(&mut src, &mut dst, &uri);
    assert!(err.contains("ram-verify"), "{err}");
    src.cmd("cont", Value::Null);
    assert_eq!(src.status(), "running");
}

const HANDOVER: [&str; 3] = ["x-ignore-shared", "x-local-handover", "ram-verify"];

#[test]
fn running_guest_on_a_memfd_is_handed_over_as_a_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let Pair {
        mut src,
        mut dst,
        uri,
    } = pair(dir.path(), "memfd", "memfd", &HANDOVER, &HANDOVER);
    let info = migrate_completed(&mut src, &mut dst, &uri);
    // ram-verify passed: the destination's memory is the source's 32 MiB of data, yet no page
    // crossed the socket.
    assert_eq!(info["ram"]["normal"], 0, "{info}");
    assert!(
        info["ram"]["transferred"].as_u64().unwrap() < 4096,
        "{info}"
    );
    dst.wait_status("running");
    assert_eq!(src.status(), "postmigrate");
    assert_eq!(dst.wait_migration()["status"], "completed");
}

#[test]
fn handover_is_refused_on_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let mut src = Vm::start(dir.path(), "src", &refs(&vm_args("memfd", &[])));
    configure(&mut src, &HANDOVER, Value::Null);
    src.wait_status("running");
    let port = testkit::free_tcp_port();
    let _listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    src.cmd("migrate", json!({ "uri": format!("tcp:127.0.0.1:{port}") }));
    let info = src.wait_migration();
    assert_eq!(info["status"], "failed", "{info}");
    let err = info["error-desc"].as_str().unwrap_or_default();
    assert!(err.contains("x-local-handover needs a unix:"), "{info}");
    assert_eq!(src.status(), "running");
}

#[test]
fn a_destination_without_handover_refuses_the_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let dst_caps = ["x-ignore-shared"];
    let Pair {
        mut src,
        mut dst,
        uri,
    } = pair(dir.path(), "memfd", "memfd", &HANDOVER, &dst_caps);
    let err = destination_refusal(&mut src, &mut dst, &uri);
    assert!(
        err.contains("handed over 1 memory descriptor(s), this VM expects 0"),
        "{err}"
    );
}

#[test]
fn a_destination_killed_mid_handover_leaves_the_source_running_on_its_ram() {
    let dir = tempfile::tempdir().unwrap();
    // A disk copied at a low bandwidth keeps the migration going for seconds after the
    // destination took the memfd over (RAM setup comes first).
    let disk = |name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, vec![0x5au8; 32 << 20]).unwrap();
        format!("file={},format=raw", p.display())
    };
    let (src_drive, dst_drive) = (disk("src.img"), disk("dst.img"));
    let uri = format!("unix:{}", dir.path().join("mig.sock").display());
    let quiet = ["-m", "64M", "--smp", "0"];
    let mut dst_args = quiet.to_vec();
    dst_args.extend(["--backing", "memfd", "--drive", &dst_drive]);
    let mut dst = deferred_destination_on(dir.path(), "dst", &dst_args, &HANDOVER, &uri);
    let mut src_args = quiet.to_vec();
    src_args.extend(["--backing", "memfd", "--fill", "32M", "--drive", &src_drive]);
    let mut src = Vm::start(dir.path(), "src", &src_args);
    configure(&mut src, &HANDOVER, json!({"max-bandwidth": 4 << 20}));
    src.wait_status("running");
    src.cmd("migrate", json!({ "uri": uri, "blk": true }));
    let t = std::time::Instant::now();
    while !dst.stderr().contains("RAM taken over") {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", dst.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(src.cmd("query-migrate", Value::Null)["status"], "active");
    dst.kill();
    let info = src.wait_migration();
    assert_eq!(info["status"], "failed", "{info}");
    src.cmd("cont", Value::Null);
    assert_eq!(src.status(), "running");
    // The source's RAM is still its 32 MiB of data: copy it to a fresh destination (no
    // handover, own private memory) with ram-verify on.
    let uri2 = format!("unix:{}", dir.path().join("mig2.sock").display());
    let mut dst2_args = quiet.to_vec();
    dst2_args.extend(["--backing", "anon", "--drive", &dst_drive]);
    let mut dst2 = deferred_destination_on(dir.path(), "dst2", &dst2_args, &["ram-verify"], &uri2);
    configure(&mut src, &[], json!({"max-bandwidth": 1u64 << 40}));
    src.cmd(
        "migrate-set-capabilities",
        json!({"capabilities": [
            {"capability": "x-local-handover", "state": false},
            {"capability": "x-ignore-shared", "state": false}
        ]}),
    );
    src.cmd("migrate", json!({ "uri": uri2, "blk": true }));
    let info = src.wait_migration();
    assert_eq!(info["status"], "completed", "{info}\n{}", dst2.stderr());
    assert!(info["ram"]["normal"].as_u64().unwrap() > 2048, "{info}");
    dst2.wait_status("running");
}
