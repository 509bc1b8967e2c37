//! Postcopy between two `livemig run` processes with the software guest: two vCPUs rewrite
//! their working set on the source, the migration switches to postcopy over QMP, the guest goes
//! on writing on the destination while its pages arrive, and `ram-verify` checks the RAM as the
//! source delivered it.

mod common;

use std::time::Duration;

use common::{configure, deferred_destination, Vm, SMALL};
use serde_json::{json, Value};

const CAPS: [&str; 3] = ["postcopy-ram", "ram-verify", "events"];

/// A `--fill 32M` source migrating into a deferred destination, switched to postcopy over QMP
/// after some pre-copy; the background phase runs at `postcopy_bw` bytes/s.
fn postcopy_started(dir: &std::path::Path, postcopy_bw: u64) -> (Vm, Vm) {
    let (dst, uri) = deferred_destination(dir, "dst", SMALL, &CAPS, Value::Null);
    let mut args = SMALL.to_vec();
    args.extend(["--fill", "32M"]);
    let mut src = Vm::start(dir, "src", &args);
    src.wait_status("running");
    configure(
        &mut src,
        &CAPS,
        json!({"max-bandwidth": 8 << 20, "max-postcopy-bandwidth": postcopy_bw}),
    );
    src.cmd("migrate", json!({ "uri": uri }));
    testkit::wait_for(Duration::from_secs(60), "some pre-copy", || {
        let info = src.cmd("query-migrate", Value::Null);
        info["ram"]["transferred"].as_u64().unwrap_or(0) > 2 << 20
    });
    src.cmd("migrate-start-postcopy", Value::Null);
    (src, dst)
}

/// Both sides completed (`ram-verify` failing would fail the destination's load), the guest
/// running on the destination only; returns the source's `query-migrate`.
fn both_completed(src: &mut Vm, dst: &mut Vm) -> Value {
    let info = src.wait_completed(dst);
    assert!(
        info["ram"]["postcopy-bytes"].as_u64().unwrap() > 0,
        "{info}"
    );
    let dst_info = dst.wait_migration();
    assert_eq!(dst_info["status"], "completed", "{}", dst.stderr());
    // The destination timed the pages it asked for (livemig's x-postcopy-latency).
    if info["ram"]["postcopy-requests"].as_u64().unwrap_or(0) > 0 {
        let lat = &dst_info["x-postcopy-latency"];
        let n = |k: &str| lat[k].as_u64().unwrap_or_else(|| panic!("{k}: {dst_info}"));
        assert!(
            n("count") > 0 && n("p50-us") <= n("p99-us") && n("p99-us") <= n("max-us"),
            "{dst_info}"
        );
    }
    assert_eq!(dst.status(), "running");
    assert_eq!(src.status(), "postmigrate");
    info
}

#[test]
fn soft_guest_switches_to_postcopy_with_ram_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (mut src, mut dst) = postcopy_started(dir.path(), 8 << 20);
    let info = both_completed(&mut src, &mut dst);
    assert!(
        info["ram"]["postcopy-requests"].as_u64().unwrap() > 0,
        "{info}"
    );
    let text = src.cmd(
        "human-monitor-command",
        json!({"command-line": "info migrate"}),
    );
    let text = text.as_str().unwrap_or_default();
    assert!(text.contains("postcopy request count: "), "{text}");
    assert!(text.contains("postcopy ram: "), "{text}");
}

fn wait_migration_status(vm: &mut Vm, want: &str) {
    testkit::wait_for(Duration::from_secs(60), want, || {
        vm.cmd("query-migrate", Value::Null)["status"] == want
    });
}

fn hmp(vm: &mut Vm, line: &str) -> String {
    let out = vm.cmd("human-monitor-command", json!({ "command-line": line }));
    out.as_str().unwrap_or_default().to_string()
}

/// Postcopy recovery between two processes, over QMP and HMP as an operator would: the link
/// is broken twice in the background phase (`migrate-pause` on the source, then
/// `migrate_pause` on the destination), each time both sides report `postcopy-paused` with the
/// guest running on the destination only; `migrate-recover` / `migrate_recover` on the
/// destination and `migrate resume=true` / `migrate -r` on the source resume it over a new
/// unix socket, and the migration completes with `ram-verify`.
#[test]
fn soft_guest_postcopy_recovers_after_pauses_over_qmp_and_hmp() {
    let dir = tempfile::tempdir().unwrap();
    let (mut src, mut dst) = postcopy_started(dir.path(), 1 << 20);
    wait_migration_status(&mut dst, "postcopy-active");
    dst.wait_status("running");
    let paused_both = |src: &mut Vm, dst: &mut Vm| {
        wait_migration_status(src, "postcopy-paused");
        wait_migration_status(dst, "postcopy-paused");
        assert_eq!(dst.status(), "running", "{}", dst.stderr());
        assert_ne!(src.status(), "running");
        let text = hmp(src, "info migrate");
        assert!(text.contains("Migration status: postcopy-paused"), "{text}");
    };
    // First break: migrate-pause on the source; recover with QMP on both sides.
    src.cmd("migrate-pause", Value::Null);
    paused_both(&mut src, &mut dst);
    assert_eq!(
        src.cmd_err("migrate-recover", json!({"uri": "tcp:127.0.0.1:1"})),
        "Migrate recover can only be run when postcopy is paused."
    );
    assert_eq!(
        dst.cmd_err("migrate", json!({"uri": "tcp:127.0.0.1:1", "resume": true})),
        "Cannot resume if there is no paused migration"
    );
    let first = format!("unix:{}", dir.path().join("recover1.sock").display());
    dst.cmd("migrate-recover", json!({ "uri": first }));
    src.cmd("migrate", json!({ "uri": first, "resume": true }));
    wait_migration_status(&mut src, "postcopy-active");
    wait_migration_status(&mut dst, "postcopy-active");
    // Second break: migrate_pause on the destination; recover with HMP on both sides.
    assert_eq!(hmp(&mut dst, "migrate_pause"), "");
    paused_both(&mut src, &mut dst);
    let second = format!("unix:{}", dir.path().join("recover2.sock").display());
    assert_eq!(hmp(&mut dst, &format!("migrate_recover {second}")), "");
    assert_eq!(hmp(&mut src, &format!("migrate -d -r {second}")), "");
    both_completed(&mut src, &mut dst);
    // MIGRATION events on both sides, as QEMU 7.2 sends them.
    let cycle = ["postcopy-paused", "postcopy-recover", "postcopy-active"];
    let mut want = vec!["postcopy-active"];
    want.extend(cycle);
    want.extend(cycle);
    want.push("completed");
    for vm in [&mut src, &mut dst] {
        let mut seen = Vec::new();
        while let Some(ev) = vm.qmp().next_event(Duration::from_millis(200)).unwrap() {
            if ev["event"] == "MIGRATION" {
                seen.push(
                    ev["data"]["status"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
        let from = seen
            .iter()
            .position(|s| s == "postcopy-active")
            .unwrap_or(0);
        assert_eq!(seen[from..], want, "{seen:?}");
    }
}
