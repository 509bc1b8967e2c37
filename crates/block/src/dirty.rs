//! [`DirtyBitmap`]: which 1 MiB chunks of a disk the guest wrote since tracking started.
//!
//! One bit per [`CHUNK_SIZE`] chunk (QEMU's block-migration dirty granularity), in atomic
//! 64-bit words so the guest's writer threads mark and the migration thread takes bits without
//! a lock. Ordering rule (see [`Disk::write`](crate::Disk::write)): a write marks its chunks
//! *after* its data reached the image, and the migration thread clears a bit *before* it reads
//! the chunk; so a write racing with a read either lands before the read or marks the chunk
//! again, and is never lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Dirty-tracking granularity: 1 MiB, the block-migration chunk.
pub const CHUNK_SIZE: u64 = 1 << 20;

/// A thread-safe bitmap of dirty chunks with an on/off switch.
#[derive(Debug)]
pub struct DirtyBitmap {
    words: Vec<AtomicU64>,
    chunks: u64,
    tracking: AtomicBool,
}

impl DirtyBitmap {
    /// A clean bitmap for a disk of `size` bytes, tracking off.
    pub fn new(size: u64) -> Self {
        let chunks = size.div_ceil(CHUNK_SIZE);
        Self {
            words: (0..chunks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            chunks,
            tracking: AtomicBool::new(false),
        }
    }

    /// Number of chunks.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Clears every bit and starts recording writes.
    pub fn start(&self) {
        self.clear_all();
        self.tracking.store(true, Ordering::SeqCst);
    }

    /// Stops recording and clears every bit.
    pub fn stop(&self) {
        self.tracking.store(false, Ordering::SeqCst);
        self.clear_all();
    }

    /// Whether writes are being recorded.
    pub fn is_tracking(&self) -> bool {
        self.tracking.load(Ordering::SeqCst)
    }

    fn clear_all(&self) {
        for w in &self.words {
            w.store(0, Ordering::SeqCst);
        }
    }

    /// Marks the chunks overlapping `offset..offset+len` if tracking is on.
    pub fn mark(&self, offset: u64, len: u64) {
        if len == 0 || !self.is_tracking() {
            return;
        }
        let first = offset / CHUNK_SIZE;
        let last = (offset.saturating_add(len - 1) / CHUNK_SIZE).min(self.chunks.saturating_sub(1));
        for chunk in first..=last {
            self.set(chunk);
        }
    }

    /// Sets the bit of `chunk` (ignored past the end).
    pub fn set(&self, chunk: u64) {
        if chunk < self.chunks {
            self.words[(chunk / 64) as usize].fetch_or(1 << (chunk % 64), Ordering::SeqCst);
        }
    }

    /// Whether `chunk` is dirty.
    pub fn get(&self, chunk: u64) -> bool {
        chunk < self.chunks
            && self.words[(chunk / 64) as usize].load(Ordering::SeqCst) & (1 << (chunk % 64)) != 0
    }

    /// Clears the bit of `chunk`; returns whether it was set.
    pub fn take(&self, chunk: u64) -> bool {
        if chunk >= self.chunks {
            return false;
        }
        let bit = 1u64 << (chunk % 64);
        self.words[(chunk / 64) as usize].fetch_and(!bit, Ordering::SeqCst) & bit != 0
    }

    /// The first dirty chunk at or after `from`.
    pub fn next_dirty(&self, from: u64) -> Option<u64> {
        let mut chunk = from;
        while chunk < self.chunks {
            let word = self.words[(chunk / 64) as usize].load(Ordering::SeqCst) >> (chunk % 64);
            if word != 0 {
                let found = chunk + u64::from(word.trailing_zeros());
                return (found < self.chunks).then_some(found);
            }
            chunk = (chunk / 64 + 1) * 64;
        }
        None
    }

    /// Number of dirty chunks.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::SeqCst).count_ones()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_only_while_tracking() {
        let b = DirtyBitmap::new(130 * CHUNK_SIZE + 5);
        assert_eq!(b.chunks(), 131);
        b.mark(0, 1);
        assert_eq!(b.count(), 0);
        b.start();
        b.mark(CHUNK_SIZE - 1, 2);
        b.mark(130 * CHUNK_SIZE, 5);
        assert_eq!(b.count(), 3);
        assert_eq!(b.next_dirty(0), Some(0));
        assert_eq!(b.next_dirty(2), Some(130));
        assert!(b.take(1));
        assert!(!b.take(1));
        assert_eq!(b.next_dirty(1), Some(130));
        assert!(b.take(130));
        assert_eq!(b.next_dirty(1), None);
        b.stop();
        assert_eq!(b.count(), 0);
        b.mark(0, 1);
        assert_eq!(b.count(), 0);
    }
}
