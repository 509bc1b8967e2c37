//! Postcopy page-request latency on the destination: the fault thread notes when it read each
//! fault it requests, the loader looks the page up when it places one, and the time between
//! goes into the migration's [`LatencyHistogram`](crate::latency::LatencyHistogram)
//! (`RamCounters::postcopy_latency`).
//!
//! Requests in flight are kept in a fixed table of [`SLOTS`] entries: at most one fault per
//! guest thread waits at a time, so a few are in flight; should the table be full (a source
//! that never answers), the oldest entry is forgotten and its latency never measured — the
//! memory used never grows with the number of requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::counters::RamCounters;

/// Requests in flight that are timed at once.
const SLOTS: usize = 64;

/// A requested page: block index, page index, when the fault was read.
type Pending = (usize, u64, Instant);

/// The requests in flight and where their latencies go.
pub(super) struct RequestClock {
    pending: Mutex<Vec<Pending>>,
    /// `pending.len()`, read without the lock on every placed page.
    in_flight: AtomicUsize,
    counters: Arc<RamCounters>,
}

impl RequestClock {
    pub(super) fn new(counters: Arc<RamCounters>) -> Self {
        Self {
            pending: Mutex::new(Vec::with_capacity(SLOTS)),
            in_flight: AtomicUsize::new(0),
            counters,
        }
    }

    /// The fault on page `page` of block `block`, read at `at`, was requested.
    pub(super) fn requested(&self, block: usize, page: u64, at: Instant) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() == SLOTS {
            p.remove(0);
        }
        p.push((block, page, at));
        self.in_flight.store(p.len(), Ordering::Relaxed);
    }

    /// The page was placed (the faulting threads woken): record its latency if it had been
    /// requested.
    pub(super) fn placed(&self, block: usize, page: u64) {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            return;
        }
        let now = Instant::now();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = p.iter().position(|&(b, pg, _)| b == block && pg == page) {
            let (_, _, at) = p.swap_remove(i);
            self.counters
                .postcopy_latency
                .record(now.saturating_duration_since(at));
        }
        self.in_flight.store(p.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requested_pages_are_timed_once() {
        let counters = Arc::new(RamCounters::default());
        let clock = RequestClock::new(counters.clone());
        clock.placed(0, 1);
        assert_eq!(counters.postcopy_latency.count(), 0);
        clock.requested(0, 1, Instant::now());
        clock.requested(1, 1, Instant::now());
        clock.placed(0, 2);
        clock.placed(0, 1);
        clock.placed(0, 1);
        assert_eq!(counters.postcopy_latency.count(), 1);
        clock.placed(1, 1);
        assert_eq!(counters.postcopy_latency.count(), 2);
    }

    #[test]
    fn a_full_table_forgets_the_oldest() {
        let counters = Arc::new(RamCounters::default());
        let clock = RequestClock::new(counters.clone());
        for page in 0..SLOTS as u64 + 10 {
            clock.requested(0, page, Instant::now());
        }
        assert_eq!(clock.pending.lock().unwrap().len(), SLOTS);
        clock.placed(0, 0);
        assert_eq!(counters.postcopy_latency.count(), 0);
        clock.placed(0, SLOTS as u64 + 9);
        assert_eq!(counters.postcopy_latency.count(), 1);
    }
}
