//! Postcopy with a KVM guest (the built-in PVH payload) between two `livemig run --accel kvm`
//! processes: slow pre-copy, `migrate-start-postcopy`, then the destination's vCPUs run while
//! their missing pages arrive — KVM resolves a guest access through get_user_pages, which sleeps
//! on the userfaultfd until the fault thread's request is answered. The serial counter goes on
//! where it stopped (no gap, no reboot), the payload's self-check passes on the destination,
//! `ram-verify` passes, and the guest runs on one side only. Prints SKIP without /dev/kvm.

mod common;

use common::guest::{assert_continues, output, serial_of, wait_serial};
use common::postcopy_switch::migrate_with_switch;
use common::{configure, deferred_destination, Vm};
use serde_json::{json, Value};

const CAPS: [&str; 3] = ["postcopy-ram", "ram-verify", "events"];

#[test]
fn kvm_guest_switches_to_postcopy_and_keeps_counting() {
    if !testkit::require_kvm("kvm_guest_switches_to_postcopy_and_keeps_counting") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = |side: &str| format!("file:{}", serial_of(dir.path(), side).display());
    let (src_serial, dst_serial) = (spec("src"), spec("dst"));
    // 8 MiB of pattern (2048 pages the guest verifies), 256 KiB rewritten: small, since guest
    // code is slow under nested KVM, but more than the postcopy phase carries before the guest
    // touches pages that are not there yet.
    let guest = [
        "--accel",
        "kvm",
        "-m",
        "32M",
        "--smp",
        "1",
        "--append",
        "fill=8388608 ws=262144 selfcheck=5",
    ];
    let mut dst_args = guest.to_vec();
    dst_args.extend(["--serial", &dst_serial]);
    let (mut dst, uri) = deferred_destination(dir.path(), "dst", &dst_args, &CAPS, Value::Null);
    let mut src_args = guest.to_vec();
    src_args.extend(["--serial", &src_serial]);
    let mut src = Vm::start(dir.path(), "src", &src_args);
    src.wait_status("running");
    wait_serial(dir.path(), "src", "the guest does not count", |o| {
        o.counts.len() >= 3
    });
    // 2 MiB/s: pre-copy of the 8 MiB region would take seconds; switch after the first
    // megabyte, and carry the rest at 1 MiB/s so that the guest runs ahead of its pages.
    configure(
        &mut src,
        &CAPS,
        json!({"max-bandwidth": 2 << 20, "max-postcopy-bandwidth": 1 << 20}),
    );
    migrate_with_switch(&mut src, &mut dst, &uri, 1 << 20);
    // The source's guest is stopped for good: its output no longer grows.
    let before = output(dir.path(), "src");
    // A self-check on the destination (the whole region read back, its pages fetched on demand)
    // and two counter steps.
    wait_serial(dir.path(), "dst", "no self-check and steps", |o| {
        !o.selfchecks.is_empty() && o.counts.len() >= 2
    });
    assert_eq!(
        output(dir.path(), "src"),
        before,
        "the source's guest still runs"
    );
    assert_continues(*before.counts.last().unwrap(), &output(dir.path(), "dst"));
    let _ = dst.cmd("quit", Value::Null);
}
