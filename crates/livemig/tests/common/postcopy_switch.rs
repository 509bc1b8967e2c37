//! The postcopy tests' common run: migrate, switch to postcopy after some pre-copy, and check
//! that it ended where a postcopy must (pages sent after the switch and requested by the
//! destination, the destination's load completed — `ram-verify` included — and timed its
//! page requests, and the guest running there only).

use std::time::Duration;

use serde_json::{json, Value};

use super::Vm;

/// Starts the migration of `src` to `uri`, calls `migrate-start-postcopy` once more than
/// `switch_after` bytes went, waits for both sides to complete and checks the outcome. Returns
/// the source's final `query-migrate`.
pub fn migrate_with_switch(src: &mut Vm, dst: &mut Vm, uri: &str, switch_after: u64) -> Value {
    src.cmd("migrate", json!({ "uri": uri }));
    testkit::wait_for(Duration::from_secs(60), "some pre-copy", || {
        let info = src.cmd("query-migrate", Value::Null);
        info["ram"]["transferred"].as_u64().unwrap_or(0) > switch_after
    });
    src.cmd("migrate-start-postcopy", Value::Null);
    let info = src.wait_completed(dst);
    let ram = &info["ram"];
    assert!(ram["postcopy-bytes"].as_u64().unwrap() > 0, "{info}");
    assert!(ram["postcopy-requests"].as_u64().unwrap() > 0, "{info}");
    // ram-verify failing would fail the destination's load.
    let dst_info = dst.wait_migration();
    assert_eq!(dst_info["status"], "completed", "{}", dst.stderr());
    // The destination timed its requests (livemig's x-postcopy-latency).
    let lat = &dst_info["x-postcopy-latency"];
    let n = |k: &str| lat[k].as_u64().unwrap_or_else(|| panic!("{k}: {dst_info}"));
    assert!(n("count") > 0, "{dst_info}");
    assert!(
        n("p50-us") <= n("p99-us") && n("p99-us") <= n("max-us"),
        "{dst_info}"
    );
    assert_eq!(dst.status(), "running");
    assert_eq!(src.status(), "postmigrate");
    info
}
