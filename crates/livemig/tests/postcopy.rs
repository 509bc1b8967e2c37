//! Postcopy between two `livemig run` processes with the software guest: two vCPUs rewrite
//! their working set on the source, the migration switches to postcopy over QMP, the guest goes
//! on writing on the destination while its pages arrive, and `ram-verify` checks the RAM as the
//! source delivered it.

mod common;

use std::time::Duration;

use common::{configure, deferred_destination, Vm, SMALL};
use serde_json::{json, Value};

const CAPS: [&str; 3] = ["postcopy-ram", "ram-verify", "events"];

#[test]
fn soft_guest_switches_to_postcopy_with_ram_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dst, uri) = deferred_destination(dir.path(), "dst", SMALL, &CAPS, Value::Null);
    let mut args = SMALL.to_vec();
    args.extend(["--fill", "32M"]);
    let mut src = Vm::start(dir.path(), "src", &args);
    src.wait_status("running");
    configure(
        &mut src,
        &CAPS,
        json!({"max-bandwidth": 8 << 20, "max-postcopy-bandwidth": 8 << 20}),
    );
    src.cmd("migrate", json!({ "uri": uri }));
    testkit::wait_for(Duration::from_secs(60), "some pre-copy", || {
        let info = src.cmd("query-migrate", Value::Null);
        info["ram"]["transferred"].as_u64().unwrap_or(0) > 2 << 20
    });
    src.cmd("migrate-start-postcopy", Value::Null);
    let info = src.wait_completed(&dst);
    let ram = &info["ram"];
    assert!(ram["postcopy-bytes"].as_u64().unwrap() > 0, "{info}");
    assert!(ram["postcopy-requests"].as_u64().unwrap() > 0, "{info}");
    // ram-verify failing would fail the destination's load.
    assert_eq!(
        dst.wait_migration()["status"],
        "completed",
        "{}",
        dst.stderr()
    );
    assert_eq!(dst.status(), "running");
    assert_eq!(src.status(), "postmigrate");
    let text = src.cmd(
        "human-monitor-command",
        json!({"command-line": "info migrate"}),
    );
    let text = text.as_str().unwrap_or_default();
    assert!(text.contains("postcopy request count: "), "{text}");
    assert!(text.contains("postcopy ram: "), "{text}");
}
