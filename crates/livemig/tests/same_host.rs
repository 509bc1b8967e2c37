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
    src.cmd("migrate", json!({ "uri": uri }));
    let info = src.wait_migration();
    assert_eq!(
        info["status"],
        "completed",
        "{info}\nsource: {}\ndestination: {}",
        src.stderr(),
        dst.stderr()
    );
    dst.wait_status("running");
    assert_eq!(src.status(), "postmigrate");
    // Not one page went over the socket: the RAM stayed where it was.
    let ram = &info["ram"];
    assert_eq!(ram["normal"], 0, "{info}");
    assert_eq!(ram["duplicate"], 0, "{info}");
    assert_eq!(ram["total"], 0, "{info}");
    assert!(ram["transferred"].as_u64().unwrap() < 4096, "{info}");
    // The destination's guest runs on (its vCPU state came over) and can migrate again.
    assert_eq!(dst.cmd("query-migrate", Value::Null)["status"], "completed");
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
    src.cmd("migrate", json!({ "uri": uri }));
    let info = src.wait_migration();
    assert_eq!(info["status"], "failed", "{info}");
    let out = dst.wait_exit();
    let err = String::from_utf8_lossy(&out.stderr);
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
    src.cmd("migrate", json!({ "uri": uri }));
    assert_eq!(src.wait_migration()["status"], "failed");
    let out = dst.wait_exit();
    let err = String::from_utf8_lossy(&out.stderr);
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
    src.cmd("migrate", json!({ "uri": uri }));
    assert_eq!(src.wait_migration()["status"], "failed");
    let out = dst.wait_exit();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ram-verify"), "{err}");
    src.cmd("cont", Value::Null);
    assert_eq!(src.status(), "running");
}
