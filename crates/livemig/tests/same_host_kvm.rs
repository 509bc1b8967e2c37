//! Same-host migration of a running KVM guest (the built-in payload) to a new `livemig run`
//! process without copying its RAM: through `x-local-handover` (the memfd behind guest RAM
//! passed over the unix: channel) and through `x-ignore-shared` on a shared file on /dev/shm.
//! The destination's KVM memory slot then sits on the source's very memory: `ram-verify`
//! hashes it on both sides, the payload's self-check re-reads its whole region on the
//! destination, and its serial counter continues without a reboot. Prints SKIP without a
//! usable /dev/kvm.

mod common;

use std::path::Path;

use common::guest::{assert_continues, output, serial_of, wait_serial};
use common::{configure, deferred_destination_on, Vm};
use serde_json::{json, Value};

/// A small workload: guest code runs about 1000 times slower under nested KVM. The payload
/// fills 512 KiB, rewrites 256 KiB and re-checks the region every 3 steps.
const GUEST: [&str; 7] = [
    "--accel",
    "kvm",
    "-m",
    "64M",
    "--smp",
    "1",
    "--append=fill=524288 ws=262144 selfcheck=3",
];

const HANDOVER: [&str; 4] = [
    "x-ignore-shared",
    "x-local-handover",
    "ram-verify",
    "events",
];
const SHARED: [&str; 3] = ["x-ignore-shared", "ram-verify", "events"];

fn args(dir: &Path, name: &str, backing: &str) -> Vec<String> {
    let mut v: Vec<String> = GUEST.iter().map(|s| s.to_string()).collect();
    v.extend(["--backing".into(), backing.into()]);
    v.extend([
        "--serial".into(),
        format!("file:{}", serial_of(dir, name).display()),
    ]);
    v
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Moves a counting KVM guest on `backing` to a new process with `caps` on both sides, and
/// checks that no page crossed the socket and that the guest continues on the destination.
fn moves_without_copying(dir: &Path, backing: &str, caps: &[&str]) {
    let uri = format!("unix:{}", dir.join("mig.sock").display());
    let dst_args = args(dir, "dst", backing);
    let mut dst = deferred_destination_on(dir, "dst", &refs(&dst_args), caps, &uri);
    let src_args = args(dir, "src", backing);
    let mut src = Vm::start(dir, "src", &refs(&src_args));
    src.wait_status("running");
    wait_serial(dir, "src", "the guest does not count", |o| {
        o.counts.len() >= 2
    });
    configure(&mut src, caps, Value::Null);
    src.cmd("migrate", json!({ "uri": uri }));
    let info = src.wait_completed(&dst);
    // ram-verify passed, and not one page went over the socket.
    let ram = &info["ram"];
    assert_eq!(ram["normal"], 0, "{info}");
    assert_eq!(ram["duplicate"], 0, "{info}");
    assert!(ram["transferred"].as_u64().unwrap() < 4096, "{info}");
    dst.wait_status("running");
    assert_eq!(src.status(), "postmigrate");
    let last = *output(dir, "src").counts.last().unwrap();
    // A guest stopped between a count and its self-check prints the self-check first here.
    wait_serial(dir, "dst", "no self-check on the destination", |o| {
        !o.selfchecks.is_empty() && !o.counts.is_empty()
    });
    assert_continues(last, &output(dir, "dst"));
    let _ = dst.cmd("quit", Value::Null);
}

#[test]
fn kvm_guest_on_a_memfd_is_handed_over_as_a_descriptor() {
    if !testkit::require_kvm("kvm_guest_on_a_memfd_is_handed_over_as_a_descriptor") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    moves_without_copying(dir.path(), "memfd", &HANDOVER);
}

#[test]
fn kvm_guest_moves_over_a_shared_file() {
    if !testkit::require_kvm("kvm_guest_moves_over_a_shared_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shm = Path::new("/dev/shm");
    let ram_dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let backing = format!("file:{}", ram_dir.path().join("guest.ram").display());
    moves_without_copying(dir.path(), &backing, &SHARED);
}
