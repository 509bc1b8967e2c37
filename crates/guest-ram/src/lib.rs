//! Guest RAM for livemig: named mmap-backed RAM blocks and kernel-based dirty-page tracking.
//!
//! * [`RamBlock`]: one region (QEMU `RAMBlock`, idstr such as `pc.ram`), anonymous, memfd or
//!   file backed, with page-granular copy/zero-check/write helpers that are safe to call while
//!   vCPU threads write the same memory, in-place page access for the migration hot path
//!   ([`RamBlock::page`], [`RamBlock::fill_page`], and [`BlockMemory`], a shared handle that
//!   keeps the mapping alive while pages are sent), [`RamBlock::populated_pages`] (which pages
//!   were ever touched) and [`RamBlock::digest`].
//! * [`GuestRam`]: the ordered set of blocks of a guest.
//! * [`Bitmap`]: one bit per 4 KiB page.
//! * [`DirtyLog`]: start / sync / stop. [`UffdDirtyLog`] uses userfaultfd asynchronous write
//!   protection and the `PAGEMAP_SCAN` ioctl; [`FullDirtyLog`] is a test fallback. Every sync also
//!   merges the VMM's own writes ([`VmmDirtyTracker`]).
//!
//! ```
//! use std::sync::Arc;
//! use guest_ram::{Backing, DirtyLog, GuestRam, RamBlock, UffdDirtyLog};
//!
//! let ram = Arc::new(GuestRam::new(vec![RamBlock::new("pc.ram", 1 << 20, Backing::Anonymous)?]));
//! let mut log = UffdDirtyLog::new(ram.clone());
//! if log.start().is_ok() {
//!     ram.blocks()[0].write_range(5 * 4096, b"hello")?;
//!     let mut dirty = ram.new_bitmaps();
//!     assert_eq!(log.sync(&mut dirty)?, 1);
//!     assert!(dirty[0].test(5));
//! }
//! # Ok::<(), guest_ram::Error>(())
//! ```
//!
//! All `unsafe` of the project's RAM handling lives in this crate: guest memory access next to
//! [`BlockMemory`] (whose documentation states the concurrency model), the userfaultfd and
//! `PAGEMAP_SCAN` ioctls in the dirty log and page-table queries.

#![deny(missing_docs)]

mod bitmap;
mod block;
mod delivered;
mod dirty;
mod error;
mod guest_ram;
pub mod missing;
mod pagemap;

pub use bitmap::Bitmap;
pub use block::{Backing, BlockMemory, RamBlock};
pub use delivered::DeliveredPages;
pub use dirty::{
    check_bitmaps, merge_vmm_writes, DirtyLog, FullDirtyLog, UffdDirtyLog, VmmDirtyTracker,
};
pub use error::Error;
pub use guest_ram::GuestRam;

/// Guest page size used for tracking and migration (4 KiB).
pub const PAGE_SIZE: u64 = 4096;

// RamBlock is shared between vCPU threads, the migration thread and the VMM.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RamBlock>();
    assert_send_sync::<GuestRam>();
    assert_send_sync::<BlockMemory>();
};
