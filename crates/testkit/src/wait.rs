//! Polling with a timeout. Tests wait for *conditions*, never for fixed times: a loaded CI
//! machine makes every sleep too short. Timeouts are liveness bounds, so make them generous.

use std::time::{Duration, Instant};

/// Interval between two polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// Calls `f` until it returns `Some`, for at most `timeout`; `None` if it never did. `f` is
/// called at least once, and once more after the deadline so a condition that became true
/// while the test was descheduled still counts.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return f();
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Polls `cond` until it is true, for at most `timeout`; returns whether it became true.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    poll(timeout, || cond().then_some(())).is_some()
}

/// Like [`wait_until`], but panics with `what` when `cond` stays false for `timeout`.
#[track_caller]
pub fn wait_for(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    if !wait_until(timeout, cond) {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn poll_returns_the_first_value() {
        let n = AtomicU32::new(0);
        let v = poll(Duration::from_secs(5), || {
            let i = n.fetch_add(1, Ordering::SeqCst);
            (i == 3).then_some(i * 10)
        });
        assert_eq!(v, Some(30));
        assert_eq!(n.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn wait_until_gives_up_after_the_timeout() {
        let t = Instant::now();
        assert!(!wait_until(Duration::from_millis(30), || false));
        assert!(t.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    #[should_panic(expected = "timed out after 10ms waiting for nothing")]
    fn wait_for_panics_with_the_reason() {
        wait_for(Duration::from_millis(10), "nothing", || false);
    }
}
