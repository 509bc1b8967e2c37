//! Pages written by the VMM itself (STYLE.md practice 13).
//!
//! A hypervisor dirty log (KVM's) only sees writes done by the guest through its own page
//! tables; device emulation, loaders and the incoming migration stream write guest memory from
//! the VMM process behind its back. Every write that goes through [`crate::RamBlock::write_page`],
//! [`crate::RamBlock::write_range`] or [`crate::RamBlock::zero_page`] marks the block's
//! [`VmmDirtyTracker`] while a dirty log is active, and every [`crate::DirtyLog::sync`] ORs the
//! tracker into its result.
//!
//! A dirty log claims each block's tracker with [`VmmDirtyTracker::activate`] in `start` (which
//! fails if another log already tracks the block), drains it in `sync` (see
//! [`crate::merge_vmm_writes`]) and releases it with [`VmmDirtyTracker::deactivate`] in `stop`.
//!
//! Ordering: a writer stores the data first and then sets the bit (release); `sync` swaps the words
//! out (acquire). A bit seen by `sync` therefore always covers data that is already in memory; a
//! write whose bit is set just after a `sync` is reported by the next one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::Bitmap;

/// A thread-safe set of pages of one RAM block written by the VMM while tracking is active.
#[derive(Debug)]
pub struct VmmDirtyTracker {
    words: Box<[AtomicU64]>,
    pages: u64,
    active: AtomicBool,
}

impl VmmDirtyTracker {
    /// Creates an inactive tracker for a block of `pages` pages.
    pub fn new(pages: u64) -> Self {
        let words = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        VmmDirtyTracker {
            words,
            pages,
            active: AtomicBool::new(false),
        }
    }

    /// Number of pages covered.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// True while a dirty log is running on the block.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Turns tracking on with an empty set; returns false if it was already on (the block is
    /// claimed by another dirty log).
    pub fn activate(&self) -> bool {
        if self
            .active
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        for w in self.words.iter() {
            w.store(0, Ordering::Relaxed);
        }
        true
    }

    /// Turns tracking off and forgets the recorded pages.
    pub fn deactivate(&self) {
        self.active.store(false, Ordering::Release);
        for w in self.words.iter() {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// Records pages `first..end` (clamped to the block) as written, if tracking is active.
    ///
    /// Call this *after* the data is in memory.
    pub fn mark_pages(&self, first: u64, end: u64) {
        if !self.is_active() {
            return;
        }
        let end = end.min(self.pages);
        let mut page = first;
        while page < end {
            let lo = page % 64;
            let hi = (end - (page - lo)).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            self.words[(page / 64) as usize].fetch_or(mask, Ordering::Release);
            page = page - lo + hi;
        }
    }

    /// Records the pages overlapping the byte range `offset..offset + len` as written.
    pub fn mark_bytes(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / crate::PAGE_SIZE;
        let end = offset.saturating_add(len).div_ceil(crate::PAGE_SIZE);
        self.mark_pages(first, end);
    }

    /// Moves the recorded pages into `dst` (clearing them here); returns the number of bits newly
    /// set in `dst`.
    ///
    /// # Panics
    /// If `dst` does not have one bit per page of the block.
    pub fn drain_into(&self, dst: &mut Bitmap) -> u64 {
        assert_eq!(dst.len(), self.pages, "bitmap length differs from block");
        let mut newly = 0u64;
        for (src, d) in self.words.iter().zip(dst.words_mut()) {
            // Cheap relaxed peek first: most words are zero and a swap would dirty the cache line.
            if src.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let bits = src.swap(0, Ordering::AcqRel);
            newly += u64::from((bits & !*d).count_ones());
            *d |= bits;
        }
        newly
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inactive_tracker_records_nothing() {
        let t = VmmDirtyTracker::new(100);
        t.mark_pages(0, 10);
        let mut b = Bitmap::new(100);
        assert_eq!(t.drain_into(&mut b), 0);
    }

    #[test]
    fn marks_and_drains() {
        let t = VmmDirtyTracker::new(200);
        assert!(t.activate());
        assert!(!t.activate());
        t.mark_bytes(4095, 2); // pages 0 and 1
        t.mark_pages(63, 130);
        t.mark_pages(199, 500);
        let mut b = Bitmap::new(200);
        b.set(0);
        // 70 distinct pages marked, page 0 was already set.
        assert_eq!(t.drain_into(&mut b), 69);
        assert_eq!(b.iter_ones().filter(|&p| p < 2).count(), 2);
        assert!(b.test(63) && b.test(129) && !b.test(130) && b.test(199));
        let mut again = Bitmap::new(200);
        assert_eq!(t.drain_into(&mut again), 0);
        t.deactivate();
        assert!(t.activate());
    }
}
