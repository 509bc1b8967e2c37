//! Dirty-page tracking: which pages changed since the last look.
//!
//! ```text
//!   start()          sync()              sync()              stop()
//!     |--- writes A ---|--- writes B -------|--- ...
//!                      returns A            returns B (and re-arms)
//! ```
//!
//! Arming can be deferred: write-protecting a large block page by page costs tens of
//! milliseconds per GiB before the first page could leave. A log may leave ranges whose every
//! page holds data unarmed at `start`; the caller treats them as dirty anyway
//! ([`DirtyLog::mark_deferred`]) and arms each range just before it first reads from it
//! ([`DirtyLog::arm`]), so a write before the arm is sent with the page and one after it is
//! logged.
//!
//! The dirty set reported by every implementation is *hypervisor/kernel log OR the VMM's own
//! writes* ([`VmmDirtyTracker`], STYLE.md practice 13). Implementations:
//!
//! * [`UffdDirtyLog`]: the real one for RAM the guest touches from user space (the software
//!   guest): userfaultfd asynchronous write protection read back with `PAGEMAP_SCAN`.
//! * [`FullDirtyLog`]: reports every page on every sync. Only for tests and hosts without uffd-wp;
//!   migration never converges with it unless the guest is idle and paused.
//! * A KVM dirty log (`KVM_GET_DIRTY_LOG`) lives in the `vmm` crate and implements the same trait;
//!   it should call [`merge_vmm_writes`] at the end of its `sync`.

pub(crate) mod uffd;
mod vmm_tracker;

pub use uffd::UffdDirtyLog;
pub use vmm_tracker::VmmDirtyTracker;

use std::sync::Arc;

use crate::{Bitmap, Error, GuestRam, RamBlock};

/// A source of dirty-page information for all blocks of a [`GuestRam`].
pub trait DirtyLog: Send {
    /// Starts tracking; pages written from now on are reported by the next `sync`.
    fn start(&mut self) -> Result<(), Error>;

    /// ORs the pages written since the previous `sync` (or since `start`) into `dirty`, one bitmap
    /// per block in [`GuestRam::blocks`] order, and re-arms tracking for them. Returns the number
    /// of bits newly set in `dirty`.
    fn sync(&mut self, dirty: &mut [Bitmap]) -> Result<u64, Error>;

    /// Stops tracking (idempotent). Also done on drop.
    fn stop(&mut self);

    /// ORs into `dirty` the pages of block `block` whose tracking `start` deferred: the caller
    /// must send them, and call [`arm`](Self::arm) before it first reads one. Logs that arm
    /// everything in `start` defer nothing.
    fn mark_deferred(&self, _block: usize, _dirty: &mut Bitmap) {}

    /// Arms tracking of page `page` of block `block` if `start` deferred it; `sync` arms every
    /// deferred page before it looks.
    fn arm(&mut self, _block: usize, _page: u64) -> Result<(), Error> {
        Ok(())
    }
}

/// Checks that `dirty` has one bitmap of the right length per block.
pub fn check_bitmaps(blocks: &[Arc<RamBlock>], dirty: &[Bitmap]) -> Result<(), Error> {
    if blocks.len() != dirty.len() {
        return Err(Error::BitmapCount {
            expected: blocks.len(),
            got: dirty.len(),
        });
    }
    for (b, d) in blocks.iter().zip(dirty) {
        if d.len() != b.pages() {
            return Err(Error::BitmapLen {
                idstr: b.idstr().to_owned(),
                expected: b.pages(),
                got: d.len(),
            });
        }
    }
    Ok(())
}

/// ORs the VMM's own writes ([`RamBlock::vmm_dirty`]) into `dirty` and clears them; returns the
/// number of newly set bits. Call after [`check_bitmaps`].
pub fn merge_vmm_writes(blocks: &[Arc<RamBlock>], dirty: &mut [Bitmap]) -> u64 {
    blocks
        .iter()
        .zip(dirty.iter_mut())
        .map(|(b, d)| b.vmm_dirty().drain_into(d))
        .sum()
}

/// Reports every page as dirty on every sync.
///
/// Only for tests and for hosts without userfaultfd write protection: with it a migration resends
/// all of RAM each iteration and only finishes once the downtime limit allows a full copy.
#[derive(Debug)]
pub struct FullDirtyLog {
    ram: Arc<GuestRam>,
    started: bool,
}

impl FullDirtyLog {
    /// A log over all blocks of `ram`.
    pub fn new(ram: Arc<GuestRam>) -> Self {
        FullDirtyLog {
            ram,
            started: false,
        }
    }
}

impl DirtyLog for FullDirtyLog {
    fn start(&mut self) -> Result<(), Error> {
        self.started = true;
        Ok(())
    }

    fn sync(&mut self, dirty: &mut [Bitmap]) -> Result<u64, Error> {
        if !self.started {
            return Err(Error::NotStarted);
        }
        check_bitmaps(self.ram.blocks(), dirty)?;
        Ok(dirty
            .iter_mut()
            .map(|d| {
                let before = d.count_ones();
                d.set_all();
                d.len() - before
            })
            .sum())
    }

    fn stop(&mut self) {
        self.started = false;
    }
}
