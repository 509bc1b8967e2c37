//! Rate limiting and convergence as pure functions over a few numbers (STYLE practice 12).
//!
//! QEMU's rules, kept: bandwidth is measured over windows of at least [`WINDOW`] (100 ms);
//! `max-bandwidth` becomes a byte budget of `max/10` per window; the completion threshold is
//! `bandwidth × downtime-limit` and starts at 0, so before the first window is measured only
//! an empty dirty set completes.
//!
//! One rule is livemig's own: QEMU switches over as soon as the pending bytes fall below the
//! threshold, which lets a 300 ms limit produce a 300 ms pause even when a few more iterations
//! with the guest running would have emptied the dirty set. [`decide`] keeps iterating below the
//! threshold while the iterations still make real progress (the pending set shrank by at least
//! [`PROGRESS_NUM`]/[`PROGRESS_DEN`] of the bytes sent meanwhile, i.e. the guest dirties clearly
//! less than what is sent) and the set is larger than what can be
//! sent in [`TARGET_DOWNTIME_MS`]; the downtime limit stays a hard upper bound, and
//! [`MAX_EXTRA_ITERATIONS`] bounds the extra time.

use std::time::Duration;

/// Length of one rate-limit / bandwidth window.
pub const WINDOW: Duration = Duration::from_millis(100);

/// Below this estimated pause (ms) livemig switches over without trying another pass.
pub const TARGET_DOWNTIME_MS: u64 = 5;

/// Below the threshold, the pending set must have shrunk by at least `PROGRESS_NUM /
/// PROGRESS_DEN` of the bytes sent since the previous decision for another iteration.
pub const PROGRESS_NUM: u64 = 1;
/// See [`PROGRESS_NUM`].
pub const PROGRESS_DEN: u64 = 2;

/// At most this many extra iterations (about 50 ms each) are made below the threshold.
pub const MAX_EXTRA_ITERATIONS: u32 = 40;

/// Bytes that may be sent in one window for `max_bandwidth` bytes/s (0 = unlimited).
pub fn window_budget(max_bandwidth: u64) -> u64 {
    max_bandwidth / (1000 / WINDOW.as_millis() as u64)
}

/// Result of measuring one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowMeasurement {
    /// Bytes per millisecond.
    pub bandwidth: f64,
    /// Completion threshold in bytes.
    pub threshold: u64,
    /// Megabits per second.
    pub mbps: f64,
    /// Pages per second.
    pub pages_per_second: u64,
}

/// Measures a window of `elapsed` during which `bytes` and `pages` were sent.
pub fn measure_window(
    bytes: u64,
    pages: u64,
    elapsed: Duration,
    downtime_limit_ms: u64,
) -> WindowMeasurement {
    let ms = elapsed.as_secs_f64() * 1000.0;
    let bandwidth = if ms > 0.0 { bytes as f64 / ms } else { 0.0 };
    let secs = ms / 1000.0;
    WindowMeasurement {
        bandwidth,
        threshold: (bandwidth * downtime_limit_ms as f64) as u64,
        mbps: if secs > 0.0 {
            bytes as f64 * 8.0 / secs / 1e6
        } else {
            0.0
        },
        pages_per_second: if secs > 0.0 {
            (pages as f64 / secs) as u64
        } else {
            0
        },
    }
}

/// Expected downtime in ms for `remaining` bytes at `bandwidth` bytes/ms.
pub fn expected_downtime_ms(remaining: u64, bandwidth: f64) -> Option<u64> {
    (bandwidth > 0.0).then(|| (remaining as f64 / bandwidth) as u64)
}

/// What the migration thread does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send more while the guest runs.
    Iterate,
    /// Stop the guest and send the rest.
    Complete,
}

/// Input of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvergenceInput {
    /// Bytes still to send (after a sync if the estimate was below the threshold).
    pub pending: u64,
    /// `bandwidth × downtime-limit`.
    pub threshold: u64,
    /// Bandwidth in bytes/ms (0 before the first window).
    pub bandwidth: f64,
    /// Pending bytes at the previous decision below the threshold, if there was one.
    pub previous_pending: Option<u64>,
    /// Bytes sent since that decision.
    pub sent_since_previous: u64,
    /// Iterations already made below the threshold.
    pub extra_iterations: u32,
}

/// Decides between another iteration and switchover.
pub fn decide(i: ConvergenceInput) -> Decision {
    if i.pending == 0 {
        return Decision::Complete;
    }
    if i.pending >= i.threshold {
        return Decision::Iterate;
    }
    let quick = (i.bandwidth * TARGET_DOWNTIME_MS as f64) as u64;
    let progress = i.previous_pending.is_none_or(|prev| {
        prev.saturating_sub(i.pending) * PROGRESS_DEN >= i.sent_since_previous * PROGRESS_NUM
    });
    if i.pending > quick && progress && i.extra_iterations < MAX_EXTRA_ITERATIONS {
        Decision::Iterate
    } else {
        Decision::Complete
    }
}

/// Auto-converge settings (the `cpu-throttle-*` and `throttle-trigger-threshold` parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleParams {
    /// Percent of the transferred bytes the guest may dirty in a period before it counts as
    /// too fast.
    pub trigger_threshold: u64,
    /// First throttle step.
    pub initial: u8,
    /// Later steps.
    pub increment: u8,
    /// Smaller steps near the goal.
    pub tailslow: bool,
    /// Upper bound.
    pub max: u8,
}

/// True when the guest dirtied more in the last period than `trigger_threshold` % of what was
/// sent in it (QEMU's `migration_trigger_throttle`).
pub fn dirty_rate_too_high(
    bytes_xfer_period: u64,
    bytes_dirty_period: u64,
    trigger_threshold: u64,
) -> bool {
    bytes_dirty_period > bytes_xfer_period.saturating_mul(trigger_threshold) / 100
}

/// The next throttle after two periods with a too-high dirty rate (QEMU's
/// `mig_throttle_guest_down`).
pub fn next_throttle(
    current: u8,
    p: &ThrottleParams,
    bytes_xfer_period: u64,
    bytes_dirty_period: u64,
) -> u8 {
    let next = if current == 0 {
        u64::from(p.initial)
    } else if p.tailslow && bytes_dirty_period > 0 {
        let cpu_now = 100 - u64::from(current);
        let threshold = bytes_xfer_period.saturating_mul(p.trigger_threshold) / 100;
        let cpu_ideal = cpu_now.saturating_mul(threshold) / bytes_dirty_period;
        let step = (cpu_now.saturating_sub(cpu_ideal)).min(u64::from(p.increment));
        u64::from(current) + step
    } else {
        u64::from(current) + u64::from(p.increment)
    };
    next.clamp(1, u64::from(p.max.min(99))) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(pending: u64, threshold: u64, prev: Option<u64>, extra: u32) -> ConvergenceInput {
        ConvergenceInput {
            pending,
            threshold,
            bandwidth: 1000.0,
            previous_pending: prev,
            sent_since_previous: 60_000,
            extra_iterations: extra,
        }
    }

    #[test]
    fn budget_and_measurement() {
        assert_eq!(window_budget(0), 0);
        assert_eq!(window_budget(1_000_000), 100_000);
        let m = measure_window(1_000_000, 100, Duration::from_millis(100), 300);
        assert_eq!(m.bandwidth, 10_000.0);
        assert_eq!(m.threshold, 3_000_000);
        assert_eq!(m.mbps, 80.0);
        assert_eq!(m.pages_per_second, 1000);
        assert_eq!(expected_downtime_ms(50_000, 1000.0), Some(50));
        assert_eq!(expected_downtime_ms(50_000, 0.0), None);
    }

    #[test]
    fn throttle_steps() {
        let p = ThrottleParams {
            trigger_threshold: 50,
            initial: 20,
            increment: 10,
            tailslow: false,
            max: 99,
        };
        assert!(dirty_rate_too_high(1000, 600, 50));
        assert!(!dirty_rate_too_high(1000, 500, 50));
        assert_eq!(next_throttle(0, &p, 1000, 600), 20);
        assert_eq!(next_throttle(20, &p, 1000, 600), 30);
        assert_eq!(next_throttle(95, &p, 1000, 600), 99);
        let slow = ThrottleParams {
            tailslow: true,
            ..p
        };
        // 70 % of CPU left; ideal share = 70 × 500 / 600 = 58 → step 12, capped at 10.
        assert_eq!(next_throttle(30, &slow, 1000, 600), 40);
        // Nearly there: ideal 70 × 500 / 520 = 67 → step 3.
        assert_eq!(next_throttle(30, &slow, 1000, 520), 33);
    }

    #[test]
    fn qemu_rules() {
        assert_eq!(decide(input(0, 0, None, 0)), Decision::Complete);
        assert_eq!(decide(input(1, 0, None, 0)), Decision::Iterate);
        assert_eq!(
            decide(input(10_000_000, 300_000, None, 0)),
            Decision::Iterate
        );
    }

    #[test]
    fn extra_iterations_while_making_progress() {
        // Below the threshold, large and shrinking: iterate once more.
        assert_eq!(decide(input(200_000, 300_000, None, 0)), Decision::Iterate);
        // 60 000 bytes sent, pending fell by 50 000: the guest dirties little, go on.
        assert_eq!(
            decide(input(150_000, 300_000, Some(200_000), 1)),
            Decision::Iterate
        );
        // Pending fell by only 20 000 of the 60 000 sent: switch over.
        assert_eq!(
            decide(input(180_000, 300_000, Some(200_000), 1)),
            Decision::Complete
        );
        // Small enough for the target pause: switch over.
        assert_eq!(
            decide(input(4_000, 300_000, Some(2_000_000), 0)),
            Decision::Complete
        );
        // Bounded number of extra iterations.
        let n = MAX_EXTRA_ITERATIONS;
        assert_eq!(
            decide(input(200_000, 300_000, Some(2_000_000), n)),
            Decision::Complete
        );
    }
}
