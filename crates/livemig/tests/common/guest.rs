//! The KVM tests' view of the payload guest: its serial output in `DIR/NAME.serial`, parsed,
//! waited on, and the check that a migrated guest went on where it stopped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The serial file of the guest `name` (passed as `--serial file:PATH`).
pub fn serial_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.serial"))
}

/// What the guest `name` printed so far.
pub fn output(dir: &Path, name: &str) -> payload::Output {
    payload::Output::parse(&std::fs::read_to_string(serial_of(dir, name)).unwrap_or_default())
}

/// Waits until `until` holds for the guest's serial output on `name` (the guest is slow under
/// nested KVM: up to 120 s).
pub fn wait_serial(dir: &Path, name: &str, what: &str, until: impl Fn(&payload::Output) -> bool) {
    let t = Instant::now();
    while !until(&output(dir, name)) {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{name}: {what}: {:?}",
            output(dir, name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The destination's output `after` continues the source's last step `last`: no reboot, no gap,
/// and every self-check passed.
pub fn assert_continues(last: u64, after: &payload::Output) {
    assert_eq!(after.starts, 0, "the destination rebooted the guest");
    assert_eq!(after.counts.first(), Some(&(last + 1)), "{after:?}");
    assert!(
        after.counts.windows(2).all(|w| w[1] == w[0] + 1),
        "{after:?}"
    );
    assert!(
        after
            .selfchecks
            .iter()
            .all(|c| matches!(c, payload::SelfCheck::Ok { .. })),
        "{after:?}"
    );
}
