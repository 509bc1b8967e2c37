//! Statistics of one migration: [`RamCounters`], [`DiskCounters`] and [`Timings`]. The
//! migration thread and the handlers update them with relaxed atomics (statistics only, never
//! used for decisions); `query-migrate` reads them through [`crate::Runtime`].
//!
//! Disk counters (QEMU 7.2's `blk_mig_bytes_*`, with one livemig addition):
//! * `total` — sum of the migrated drives' sizes;
//! * `transferred` — bytes the bulk phase has covered (sent, or skipped under `-i` because the
//!   shared base holds them);
//! * `remaining` — `total − transferred` (QEMU) **plus** the bytes of chunks dirtied again and
//!   not yet re-sent (livemig: so `remaining` does not read 0 while dirty chunks are pending).
//!
//! `disk` is shown only while block migration runs (`active`), never after completion.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

/// RAM counters of one migration.
#[derive(Debug, Default)]
pub struct RamCounters {
    /// Bytes of RAM records written.
    pub transferred: AtomicU64,
    /// Zero pages sent.
    pub duplicate: AtomicU64,
    /// Full pages sent.
    pub normal: AtomicU64,
    /// Dirty pages left × page size.
    pub remaining: AtomicU64,
    /// Total RAM bytes.
    pub total: AtomicU64,
    /// Bitmap syncs.
    pub dirty_sync_count: AtomicU64,
    /// Dirty pages per second in the last ≥1 s period.
    pub dirty_pages_rate: AtomicU64,
    /// Bytes sent while the guest ran.
    pub precopy_bytes: AtomicU64,
    /// Bytes sent while the guest was stopped.
    pub downtime_bytes: AtomicU64,
    /// Bytes sent after the switch to postcopy.
    pub postcopy_bytes: AtomicU64,
    /// Page requests received from the destination in postcopy.
    pub postcopy_requests: AtomicU64,
    /// Destination, postcopy: fault read → page placed, per requested page.
    pub postcopy_latency: crate::latency::LatencyHistogram,
    /// XBZRLE: cache size in bytes (0 when XBZRLE is off).
    pub xbzrle_cache_size: AtomicU64,
    /// XBZRLE: bytes of delta records.
    pub xbzrle_bytes: AtomicU64,
    /// XBZRLE: cache hits.
    pub xbzrle_pages: AtomicU64,
    /// XBZRLE: cache misses.
    pub xbzrle_cache_miss: AtomicU64,
    /// XBZRLE: deltas that overflowed.
    pub xbzrle_overflow: AtomicU64,
    /// XBZRLE: page bytes sent as deltas.
    pub xbzrle_unencoded: AtomicU64,
    /// Auto-converge: the vCPU throttle in effect, in percent (0 = not throttling).
    pub cpu_throttle_percentage: AtomicU64,
    /// Bytes written on multifd channels.
    pub multifd_bytes: AtomicU64,
    /// Multifd channel syncs at which the kernel copied zero-copy pages after all.
    pub dirty_sync_missed_zero_copy: AtomicU64,
}

impl RamCounters {
    /// Reads a counter.
    pub fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }

    /// Adds `n` to a counter.
    pub fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets a counter.
    pub fn set(a: &AtomicU64, n: u64) {
        a.store(n, Ordering::Relaxed);
    }

    /// Pages sent so far, zero pages included.
    pub fn pages_sent(&self) -> u64 {
        Self::get(&self.normal) + Self::get(&self.duplicate)
    }
}

/// Block-migration counters of one migration.
#[derive(Debug, Default)]
pub struct DiskCounters {
    /// Bytes covered by the bulk phase.
    pub transferred: AtomicU64,
    /// Bytes still to send.
    pub remaining: AtomicU64,
    /// Total bytes of the migrated drives.
    pub total: AtomicU64,
    /// True from the block handler's setup to its cleanup.
    pub active: AtomicBool,
}

impl DiskCounters {
    /// Sets all three byte counters.
    pub fn set(&self, transferred: u64, remaining: u64, total: u64) {
        self.transferred.store(transferred, Ordering::Relaxed);
        self.remaining.store(remaining, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    /// The `disk` member while block migration runs, else `None`.
    pub fn stats(&self) -> Option<DiskStats> {
        self.active.load(Ordering::Relaxed).then(|| DiskStats {
            transferred: self.transferred.load(Ordering::Relaxed),
            remaining: self.remaining.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
        })
    }
}

/// Timing and rate figures of one migration.
#[derive(Debug, Clone)]
pub struct Timings {
    /// When the migration started (`migrate` accepted, or the source connected).
    pub start: Instant,
    /// Setup time in ms.
    pub setup_time: Option<u64>,
    /// Total time in ms (set at the end).
    pub total_time: Option<u64>,
    /// Downtime in ms (set at completion).
    pub downtime: Option<u64>,
    /// Expected downtime in ms.
    pub expected_downtime: Option<u64>,
    /// Last measured throughput in Mbit/s.
    pub mbps: f64,
    /// Last measured pages per second.
    pub pages_per_second: u64,
}

impl Timings {
    /// Figures of a migration starting now.
    pub fn starting_now() -> Self {
        Self {
            start: Instant::now(),
            setup_time: None,
            total_time: None,
            downtime: None,
            expected_downtime: None,
            mbps: 0.0,
            pages_per_second: 0,
        }
    }

    /// Milliseconds since the start.
    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// Block migration progress (`disk` member).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiskStats {
    /// Bytes of disk data sent.
    pub transferred: u64,
    /// Bytes still to send.
    pub remaining: u64,
    /// Total size of the migrated disks.
    pub total: u64,
}
