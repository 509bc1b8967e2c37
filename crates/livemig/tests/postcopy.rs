//! Postcopy between two `livemig run` processes with the software guest: two vCPUs rewrite
//! their working set on the source, the migration switches to postcopy over QMP, the guest goes
//! on writing on the destination while its pages arrive, and `ram-verify` checks the RAM as the
//! source delivered it.

mod common;

use common::postcopy_switch::migrate_with_switch;
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
    migrate_with_switch(&mut src, &mut dst, &uri, 2 << 20);
    let text = src.cmd(
        "human-monitor-command",
        json!({"command-line": "info migrate"}),
    );
    let text = text.as_str().unwrap_or_default();
    assert!(text.contains("postcopy request count: "), "{text}");
    assert!(text.contains("postcopy ram: "), "{text}");
}
