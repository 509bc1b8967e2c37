//! The `PAGEMAP_SCAN` ioctl on `/proc/self/pagemap` (Linux 6.7+).
//!
//! One ioctl walks the page tables of a virtual range and returns the runs of pages whose
//! *categories* match, optionally write-protecting the matching pages (uffd-wp) in the same walk
//! under the page-table lock. That is what makes it a race-free "read and re-arm" of a dirty log:
//! a guest write lands either before the walk reaches the PTE (reported now) or after it (faults
//! on the fresh write protection and is reported by the next scan).
//!
//! The ABI (`include/uapi/linux/fs.h`), defined here because the libc crate lacks it:
//!
//! ```text
//! struct page_region { u64 start; u64 end; u64 categories; }        // 24 bytes, end exclusive
//! struct pm_scan_arg {                                               // 96 bytes
//!     u64 size;              // sizeof(struct pm_scan_arg)
//!     u64 flags;             // PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC
//!     u64 start, end;        // virtual range, page aligned
//!     u64 walk_end;          // out: where the walk stopped (== end when complete)
//!     u64 vec, vec_len;      // out: array of page_region
//!     u64 max_pages;         // 0 = unlimited
//!     u64 category_inverted; // categories that match when 0
//!     u64 category_mask;     // all of these must match
//!     u64 category_anyof_mask; // at least one of these must match
//!     u64 return_mask;       // categories reported in page_region.categories
//! }
//! PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg)
//! ```
//!
//! The ioctl returns the number of regions written; it stops early when `vec` is full, so callers
//! loop from `walk_end` until it reaches `end`.
//!
//! Kernels before 6.7 lack the ioctl; [`read_pagemap_entries`] is the fallback for "which pages
//! are populated": `/proc/self/pagemap` holds one little-endian `u64` per virtual page at file
//! offset `vaddr / 4096 * 8`, with bit 63 = present, bit 62 = swapped, bit 61 = file page or
//! shared anonymous. It cannot tell the shared zero page apart without `CAP_SYS_ADMIN`, so it may
//! over-report pages that were only read.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Page has async write-protection enabled.
#[allow(dead_code)]
pub(crate) const PAGE_IS_WPALLOWED: u64 = 1 << 0;
/// Page was written since it was last write-protected.
pub(crate) const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// Page is backed by a file's page cache (not anonymous).
pub(crate) const PAGE_IS_FILE: u64 = 1 << 2;
/// Page is present in the page tables.
pub(crate) const PAGE_IS_PRESENT: u64 = 1 << 3;
/// Page is swapped out (or is a swap-like entry).
pub(crate) const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// Page maps the shared zero page (read but never written).
pub(crate) const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// Write-protect the matched pages.
pub(crate) const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// Fail with EPERM if a page without async write protection is met.
pub(crate) const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

const fn iowr(ty: u8, nr: u8, size: usize) -> u64 {
    (3u64 << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64
}

const PAGEMAP_SCAN: u64 = iowr(b'f', 16, std::mem::size_of::<PmScanArg>());
const _: () = assert!(PAGEMAP_SCAN == 0xC060_6610);

/// Number of regions fetched per ioctl; runs of dirty pages merge, so this is rarely exceeded.
const VEC_LEN: usize = 1024;

/// Which pages a scan selects and what it does to them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ScanQuery {
    pub flags: u64,
    pub inverted: u64,
    pub mask: u64,
    pub anyof: u64,
    pub ret: u64,
}

/// An open `/proc/self/pagemap` plus an output buffer.
pub(crate) struct PagemapScanner {
    file: File,
    vec: Vec<PageRegion>,
}

impl PagemapScanner {
    pub(crate) fn open() -> io::Result<Self> {
        Ok(PagemapScanner {
            file: File::open("/proc/self/pagemap")?,
            vec: vec![PageRegion::default(); VEC_LEN],
        })
    }

    /// Scans `[addr, addr + len)` and calls `f(first_page, end_page, categories)` for each
    /// matching run, page numbers relative to `addr`.
    pub(crate) fn scan(
        &mut self,
        addr: u64,
        len: u64,
        q: ScanQuery,
        mut f: impl FnMut(u64, u64, u64),
    ) -> io::Result<()> {
        let end = addr + len;
        let mut cur = addr;
        while cur < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: q.flags,
                start: cur,
                end,
                vec: self.vec.as_mut_ptr() as u64,
                vec_len: self.vec.len() as u64,
                category_inverted: q.inverted,
                category_mask: q.mask,
                category_anyof_mask: q.anyof,
                return_mask: q.ret,
                ..PmScanArg::default()
            };
            // SAFETY: `arg` is a correctly sized and initialised `pm_scan_arg`; `vec`/`vec_len`
            // describe `self.vec`, a live buffer of `PageRegion` (the kernel's `page_region`
            // layout) that the kernel writes at most `vec_len` entries into. The range is a
            // mapping owned by the caller; the kernel validates it and fails with an errno
            // otherwise.
            let ret = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    PAGEMAP_SCAN as _,
                    &mut arg as *mut PmScanArg,
                )
            };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = (ret as usize).min(self.vec.len());
            for r in &self.vec[..n] {
                let first = (r.start.max(addr) - addr) / crate::PAGE_SIZE;
                let last = (r.end.min(end) - addr).div_ceil(crate::PAGE_SIZE);
                f(first, last, r.categories);
            }
            if arg.walk_end <= cur {
                return Err(io::Error::other("PAGEMAP_SCAN made no progress"));
            }
            cur = arg.walk_end;
        }
        Ok(())
    }
}

/// `/proc/self/pagemap` entry bit: page present.
pub(crate) const PM_PRESENT: u64 = 1 << 63;
/// `/proc/self/pagemap` entry bit: page swapped.
pub(crate) const PM_SWAP: u64 = 1 << 62;
/// `/proc/self/pagemap` entry bit: file page or shared anonymous page.
pub(crate) const PM_FILE: u64 = 1 << 61;

/// Reads the pagemap entries of `[addr, addr + len)` and calls `f(page_index, entry)` for each
/// page, page numbers relative to `addr`.
pub(crate) fn read_pagemap_entries(
    addr: u64,
    len: u64,
    mut f: impl FnMut(u64, u64),
) -> io::Result<()> {
    const BATCH: u64 = 4096;
    let file = File::open("/proc/self/pagemap")?;
    let pages = len / crate::PAGE_SIZE;
    let mut buf = vec![0u8; (BATCH * 8) as usize];
    let mut page = 0u64;
    while page < pages {
        let n = BATCH.min(pages - page);
        let bytes = &mut buf[..(n * 8) as usize];
        let vpn = addr / crate::PAGE_SIZE + page;
        file.read_exact_at(bytes, vpn * 8)?;
        for (i, e) in bytes.chunks_exact(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(e);
            f(page + i as u64, u64::from_le_bytes(w));
        }
        page += n;
    }
    Ok(())
}
