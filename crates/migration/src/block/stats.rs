//! [`DiskCounters`]: block-migration progress for `query-migrate` / `info migrate` (the
//! `disk` member), updated by the migration thread with relaxed atomics.
//!
//! Meaning (QEMU 7.2's `blk_mig_bytes_*`, with one livemig addition):
//! * `total` — sum of the migrated drives' sizes;
//! * `transferred` — bytes the bulk phase has covered (sent, or skipped under `-i` because the
//!   shared base holds them);
//! * `remaining` — `total − transferred` (QEMU) **plus** the bytes of chunks dirtied again and
//!   not yet re-sent (livemig: so `remaining` does not read 0 while dirty chunks are pending).
//!
//! `disk` is shown only while block migration runs (`active`), never after completion.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::info::DiskStats;

/// Block-migration counters of one VM.
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
    /// `migrate -b`/`-i` turned capability `block` (and `block-incremental`) on for this
    /// migration only; the handler's cleanup turns them off again (QEMU's
    /// `must_remove_block_options`).
    pub remove_block_options: AtomicBool,
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
