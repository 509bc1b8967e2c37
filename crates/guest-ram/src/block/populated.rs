//! Which pages of a block hold data ([`RamBlock::populated_pages`]), and file holes.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::PoisonError;

use super::{Backing, RamBlock};
use crate::pagemap::{self, PagemapScanner, ScanQuery};
use crate::{Bitmap, Error, PAGE_SIZE};

impl RamBlock {
    /// The pages that hold data at all (were ever written, by anyone). Never-populated pages read
    /// as zero and need not be migrated.
    ///
    /// Anonymous memory asks the page tables (`PAGEMAP_SCAN`: present and not the shared zero
    /// page, or swapped); shared file and memfd memory asks the file (`SEEK_DATA`/`SEEK_HOLE`),
    /// which also sees pages written by other processes. May over-report (e.g. a page written
    /// with zeros, or a whole file extent), never under-reports a page written before the call.
    /// Migration should start its dirty log *before* calling this, so that a page first written
    /// between the two calls is reported by one of them.
    pub fn populated_pages(&self) -> Result<Bitmap, Error> {
        let mut bm = Bitmap::new(self.pages());
        match &self.backing {
            Backing::Anonymous => self.populated_from_ptes(&mut bm)?,
            Backing::Memfd | Backing::File { share: true, .. } => {
                self.populated_from_file(&mut bm)?
            }
            Backing::File { share: false, .. } => {
                self.populated_from_file(&mut bm)?;
                self.populated_from_ptes(&mut bm)?;
            }
        }
        Ok(bm)
    }

    fn populated_from_ptes(&self, bm: &mut Bitmap) -> Result<(), Error> {
        let scan_err = |source| Error::PageScan {
            idstr: self.idstr.clone(),
            source,
        };
        let mut scanner = PagemapScanner::open().map_err(|source| Error::Pagemap { source })?;
        let known = self
            .known_populated
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let q = ScanQuery {
            // Not the shared zero page, not a page-cache page (a private file mapping maps those
            // on read; their data, if any, is found through the file), and present or swapped.
            inverted: pagemap::PAGE_IS_PFNZERO | pagemap::PAGE_IS_FILE,
            mask: pagemap::PAGE_IS_PFNZERO | pagemap::PAGE_IS_FILE,
            anyof: pagemap::PAGE_IS_PRESENT | pagemap::PAGE_IS_SWAPPED,
            ret: pagemap::PAGE_IS_PRESENT | pagemap::PAGE_IS_SWAPPED | pagemap::PAGE_IS_WRITTEN,
            ..ScanQuery::default()
        };
        let scanned = scanner.scan(self.host_ptr() as u64, self.len(), q, |first, end, cat| {
            let data = cat & pagemap::PAGE_IS_PRESENT != 0
                || cat & pagemap::PAGE_IS_WRITTEN != 0
                || known.is_none();
            if data {
                bm.set_range(first, end);
            } else if let Some(known) = known.as_ref() {
                // Swap-like entry with write protection: a uffd-wp marker on a never-touched
                // page, or a real swap entry of a page we already know about.
                for p in first..end {
                    if known.test(p) {
                        bm.set(p);
                    }
                }
            }
        });
        match scanned {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
                // Kernel before 6.7: no PAGEMAP_SCAN (and hence no uffd-wp markers either).
                self.populated_from_pagemap_file(bm).map_err(scan_err)
            }
            other => other.map_err(scan_err),
        }
    }

    /// `/proc/self/pagemap` fallback of [`RamBlock::populated_from_ptes`]; may also report pages
    /// that were only read (mapped to the shared zero page).
    pub(crate) fn populated_from_pagemap_file(&self, bm: &mut Bitmap) -> io::Result<()> {
        let private_file = matches!(self.backing, Backing::File { share: false, .. });
        pagemap::read_pagemap_entries(self.host_ptr() as u64, self.len(), |p, e| {
            let data = e & (pagemap::PM_PRESENT | pagemap::PM_SWAP) != 0;
            // Page-cache pages of a private file mapping are accounted through the file.
            if data && !(private_file && e & pagemap::PM_FILE != 0) {
                bm.set(p);
            }
        })
    }

    fn populated_from_file(&self, bm: &mut Bitmap) -> Result<(), Error> {
        let Some(file) = self.file() else {
            return Ok(());
        };
        let err = |source| Error::SeekData {
            idstr: self.idstr.clone(),
            source,
        };
        let size = self.len();
        if shmem_without_holes(file, size) {
            bm.set_range(0, self.pages());
            return Ok(());
        }
        let mut pos = 0u64;
        while pos < size {
            let Some(data) = seek(file, pos, libc::SEEK_DATA).map_err(err)? else {
                break;
            };
            if data >= size {
                break;
            }
            let hole = seek(file, data, libc::SEEK_HOLE)
                .map_err(err)?
                .unwrap_or(size)
                .min(size);
            bm.set_range(data / PAGE_SIZE, hole.div_ceil(PAGE_SIZE));
            pos = hole.max(data + 1);
        }
        Ok(())
    }

    /// Called by the uffd dirty log when tracking starts/stops on an anonymous block.
    pub(crate) fn set_known_populated(&self, known: Option<Bitmap>) {
        *self
            .known_populated
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = known;
    }

    /// Adds pages `first..end` to the known-populated set, if one is kept.
    pub(crate) fn note_populated(&self, first: u64, end: u64) {
        if let Some(k) = self
            .known_populated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            k.set_range(first, end);
        }
    }

    /// True if the page at `off` is a hole of a shared file backing (so it reads as zero).
    pub(super) fn file_hole_at(&self, off: u64) -> bool {
        let shared = matches!(
            self.backing,
            Backing::Memfd | Backing::File { share: true, .. }
        );
        match self.file() {
            Some(file) if shared => match seek(file, off, libc::SEEK_DATA) {
                Ok(Some(data)) => data >= off + PAGE_SIZE,
                Ok(None) => true,
                Err(_) => false,
            },
            _ => false,
        }
    }

    fn file(&self) -> Option<&File> {
        self.shared_file()
    }
}

/// Whether `file` is on tmpfs (a memfd or a `/dev/shm` file) and has no hole in `0..len`:
/// shmem counts in `st_blocks` exactly the pages it holds (in memory or in swap), so a file
/// whose blocks cover its size has none. Then the `SEEK_HOLE` that would find the end of its
/// data, a walk over the whole page cache (about 13 ms for 256 MiB here, every migration's
/// setup), is not needed. Other file systems count metadata blocks too, so they are walked.
fn shmem_without_holes(file: &File, len: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if meta.size() < len || meta.blocks().saturating_mul(512) < meta.size() {
        return false;
    }
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs writes one `struct statfs` through the pointer, which points to enough
    // space for it, and reads only the descriptor, open for the call.
    let r = unsafe { libc::fstatfs(file.as_raw_fd(), fs.as_mut_ptr()) };
    if r != 0 {
        return false;
    }
    // SAFETY: fstatfs succeeded, so it filled the struct.
    let fs = unsafe { fs.assume_init() };
    // memfds are on tmpfs too.
    fs.f_type == libc::TMPFS_MAGIC
}

/// `lseek` that maps ENXIO ("no more data") to `None`.
fn seek(file: &File, off: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off = libc::off_t::try_from(off).map_err(io::Error::other)?;
    // SAFETY: lseek on a file descriptor we own; it only moves the file position, which this crate
    // never otherwise uses (all I/O goes through the mapping).
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}
