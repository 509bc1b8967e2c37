//! One named, mmap-backed region of guest RAM (QEMU's `RAMBlock`).
//!
//! The mapping is created with `MAP_NORESERVE`, so untouched pages cost nothing; the kernel
//! allocates them on first write. That is why [`RamBlock::populated_pages`] exists: a fresh 4 GiB
//! guest with 200 MiB in use only has 200 MiB worth of pages to migrate, and the destination's
//! fresh mapping already reads as zero everywhere else.
//!
//! | backing                     | mmap flags                   | "populated" asks            |
//! |-----------------------------|------------------------------|-----------------------------|
//! | `Anonymous`                 | `MAP_PRIVATE\|MAP_ANONYMOUS` | `PAGEMAP_SCAN` (our PTEs)   |
//! | `Memfd`                     | `MAP_SHARED` on a memfd      | `lseek(SEEK_DATA/SEEK_HOLE)`|
//! | `File { share: true }`      | `MAP_SHARED` on the file     | `lseek(SEEK_DATA/SEEK_HOLE)`|
//! | `File { share: false }`     | `MAP_PRIVATE` on the file    | both, ORed                  |
//!
//! For shared memory the file is the truth: a page written by another process through its own
//! mapping has data in the file but no PTE in ours.
//!
//! Concurrency: guest vCPU threads write the mapping while the migration thread reads it. All
//! accesses go through `vm-memory`'s [`VolatileSlice`], i.e. plain `memcpy` into or out of the
//! mapping, never Rust references to guest memory. A page read while the guest writes it may be
//! torn; that is fine because the write also marks the page dirty, so it is sent again in a later
//! pass, and the final pass runs with the guest paused.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use vm_memory::mmap::MmapRegion;
use vm_memory::volatile_memory::{VolatileMemory, VolatileSlice};
use vm_memory::FileOffset;

use crate::pagemap::{self, PagemapScanner, ScanQuery};
use crate::{Bitmap, Error, VmmDirtyTracker, PAGE_SIZE};

/// What backs a RAM block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Private anonymous memory (QEMU's default `memory-backend-ram`).
    Anonymous,
    /// An anonymous `memfd_create` file (shmem) mapped shared (`memory-backend-memfd`).
    Memfd,
    /// A file opened (created if missing) and sized to the block (`memory-backend-file`).
    File {
        /// Path of the file.
        path: PathBuf,
        /// `share=on`: map it `MAP_SHARED` so writes reach the file (and other processes).
        share: bool,
    },
}

impl std::fmt::Display for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backing::Anonymous => f.write_str("anonymous memory"),
            Backing::Memfd => f.write_str("memfd"),
            Backing::File { path, share } => write!(
                f,
                "file {} ({})",
                path.display(),
                if *share { "shared" } else { "private" }
            ),
        }
    }
}

/// A named region of guest RAM. `Send + Sync`; share it as `Arc<RamBlock>`.
#[derive(Debug)]
pub struct RamBlock {
    idstr: String,
    backing: Backing,
    region: MmapRegion<()>,
    vmm_dirty: VmmDirtyTracker,
    /// While an anonymous block is uffd-wp tracked, write-protect markers on never-touched PTEs
    /// look like swap entries to `PAGEMAP_SCAN`; this records pages known to hold data (populated
    /// when tracking started plus everything reported written since) to tell them apart.
    known_populated: Mutex<Option<Bitmap>>,
}

impl RamBlock {
    /// Allocates a block of `size` bytes (a non-zero multiple of 4096) named `idstr`.
    pub fn new(idstr: &str, size: u64, backing: Backing) -> Result<RamBlock, Error> {
        if idstr.is_empty() || idstr.len() > 255 || idstr.contains('\0') {
            return Err(Error::BadName {
                idstr: idstr.to_owned(),
            });
        }
        if size == 0 || size % PAGE_SIZE != 0 || usize::try_from(size).is_err() {
            return Err(Error::BadSize { size });
        }
        let len = size as usize;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let (file, flags) = match &backing {
            Backing::Anonymous => (
                None,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            ),
            Backing::Memfd => (Some(memfd(idstr)?), libc::MAP_SHARED | libc::MAP_NORESERVE),
            Backing::File { path, share } => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(|source| Error::OpenFile {
                        idstr: idstr.to_owned(),
                        path: path.clone(),
                        source,
                    })?;
                let share = if *share {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                };
                (Some(file), share | libc::MAP_NORESERVE)
            }
        };
        let file_offset = match file {
            Some(file) => {
                file.set_len(size).map_err(|source| Error::Truncate {
                    idstr: idstr.to_owned(),
                    size,
                    source,
                })?;
                Some(FileOffset::new(file, 0))
            }
            None => None,
        };
        let region =
            MmapRegion::build(file_offset, len, rw, flags).map_err(|source| Error::Mmap {
                idstr: idstr.to_owned(),
                source,
            })?;
        // Like QEMU: child processes (exec: transports, helpers) must not inherit guest RAM,
        // which would make every guest write a copy-on-write fault while the child lives.
        // SAFETY: advisory call on the mapping we just created, covering exactly its length.
        let r = unsafe { libc::madvise(region.as_ptr().cast(), len, libc::MADV_DONTFORK) };
        if r != 0 {
            tracing::debug!(idstr, error = %io::Error::last_os_error(), "MADV_DONTFORK failed");
        }
        if matches!(backing, Backing::Anonymous) {
            // Like QEMU: back anonymous guest RAM with transparent huge pages where the host
            // allows, so filling it (booting, or receiving a migration) takes 512 times fewer
            // page faults. Dirty tracking stays per 4 KiB page: the kernel splits a huge page
            // when a write hits its uffd-wp protection.
            // SAFETY: advisory call on the mapping we just created, covering exactly its length.
            let r = unsafe { libc::madvise(region.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
            if r != 0 {
                tracing::debug!(idstr, error = %io::Error::last_os_error(), "MADV_HUGEPAGE failed");
            }
        }
        Ok(RamBlock {
            idstr: idstr.to_owned(),
            backing,
            region,
            vmm_dirty: VmmDirtyTracker::new(size / PAGE_SIZE),
            known_populated: Mutex::new(None),
        })
    }

    /// The block's name (QEMU idstr, e.g. `pc.ram`).
    pub fn idstr(&self) -> &str {
        &self.idstr
    }

    /// What backs the block.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.region.size() as u64
    }

    /// Always false: blocks are at least one page long.
    pub fn is_empty(&self) -> bool {
        self.region.size() == 0
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> u64 {
        self.len() / PAGE_SIZE
    }

    /// Host virtual address of the first byte (for KVM memory slots and the uffd/pagemap ioctls).
    ///
    /// Writes through this pointer bypass the [`VmmDirtyTracker`]; call
    /// [`RamBlock::mark_dirty`] afterwards.
    pub fn host_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// The tracker of pages written by the VMM itself.
    pub fn vmm_dirty(&self) -> &VmmDirtyTracker {
        &self.vmm_dirty
    }

    /// Records that the VMM wrote `offset..offset + len` behind the RamBlock API.
    pub fn mark_dirty(&self, offset: u64, len: u64) {
        self.vmm_dirty.mark_bytes(offset, len);
    }

    fn slice(&self, offset: u64, len: usize) -> Result<VolatileSlice<'_>, Error> {
        let err = || Error::RangeOutOfBounds {
            idstr: self.idstr.clone(),
            offset,
            len: len as u64,
            size: self.len(),
        };
        let end = offset.checked_add(len as u64).ok_or_else(err)?;
        if end > self.len() {
            return Err(err());
        }
        self.region
            .get_slice(offset as usize, len)
            .map_err(|_| err())
    }

    fn page_offset(&self, page: u64) -> Result<u64, Error> {
        if page >= self.pages() {
            return Err(Error::PageOutOfRange {
                idstr: self.idstr.clone(),
                page,
                pages: self.pages(),
            });
        }
        Ok(page * PAGE_SIZE)
    }

    /// Copies page `page` into `dst` (exactly 4096 bytes).
    ///
    /// The guest may be writing the page at the same time; the copy may then be torn, which is
    /// harmless because that write also dirties the page and it is sent again.
    pub fn copy_page_to(&self, page: u64, dst: &mut [u8]) -> Result<(), Error> {
        if dst.len() != PAGE_SIZE as usize {
            return Err(Error::BadPageBuffer { len: dst.len() });
        }
        let off = self.page_offset(page)?;
        self.slice(off, dst.len())?.copy_to(dst);
        Ok(())
    }

    /// Runs `f` on page `page` as a byte slice, without copying it (the migration hot path).
    ///
    /// # Safety
    ///
    /// Guest vCPUs may store into the page while `f` runs. The caller must accept bytes that
    /// change under it (a torn view) — the migration does, because such a store also dirties the
    /// page and it is sent again — and must not keep the slice beyond `f`.
    pub unsafe fn with_page<R>(&self, page: u64, f: impl FnOnce(&[u8]) -> R) -> Result<R, Error> {
        let off = self.page_offset(page)?;
        // SAFETY: `page_offset` checked that the page lies inside the mapping, which lives as
        // long as `self`; the caller accepts concurrent guest stores (see above).
        let bytes = unsafe {
            std::slice::from_raw_parts(self.host_ptr().add(off as usize), PAGE_SIZE as usize)
        };
        Ok(f(bytes))
    }

    /// Runs `f` on page `page` as a mutable byte slice (the destination writes received pages
    /// in place). The page is recorded as written by the VMM.
    ///
    /// # Safety
    ///
    /// No other thread may access the page while `f` runs (on a migration destination the vCPUs
    /// do not run while RAM is loaded).
    pub unsafe fn with_page_mut<R>(
        &self,
        page: u64,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, Error> {
        let off = self.page_offset(page)?;
        // SAFETY: in bounds as above; exclusivity is the caller's contract.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(self.host_ptr().add(off as usize), PAGE_SIZE as usize)
        };
        let r = f(bytes);
        self.vmm_dirty.mark_pages(page, page + 1);
        Ok(r)
    }

    /// True if page `page` is all zero bytes. Reads 512-byte chunks and stops at the first
    /// non-zero word, so a typical data page costs one chunk.
    pub fn is_zero_page(&self, page: u64) -> Result<bool, Error> {
        let off = self.page_offset(page)?;
        let slice = self.slice(off, PAGE_SIZE as usize)?;
        Ok(slice_is_zero(&slice))
    }

    /// Overwrites page `page` with `src` (exactly 4096 bytes).
    pub fn write_page(&self, page: u64, src: &[u8]) -> Result<(), Error> {
        if src.len() != PAGE_SIZE as usize {
            return Err(Error::BadPageBuffer { len: src.len() });
        }
        let off = self.page_offset(page)?;
        self.slice(off, src.len())?.copy_from(src);
        self.vmm_dirty.mark_pages(page, page + 1);
        Ok(())
    }

    /// Makes page `page` zero. Does nothing if it already is, so that never-touched pages stay
    /// unpopulated (like QEMU's `ram_handle_zero`); for file-backed blocks a hole in the file is
    /// recognised without reading (reading a shmem hole would allocate it).
    pub fn zero_page(&self, page: u64) -> Result<(), Error> {
        let off = self.page_offset(page)?;
        if self.file_hole_at(off) || self.is_zero_page(page)? {
            return Ok(());
        }
        self.slice(off, PAGE_SIZE as usize)?
            .copy_from(&[0u8; PAGE_SIZE as usize][..]);
        self.vmm_dirty.mark_pages(page, page + 1);
        Ok(())
    }

    /// Copies `dst.len()` bytes starting at byte `offset` into `dst`.
    pub fn read_range(&self, offset: u64, dst: &mut [u8]) -> Result<(), Error> {
        self.slice(offset, dst.len())?.copy_to(dst);
        Ok(())
    }

    /// Writes `src` at byte `offset`.
    pub fn write_range(&self, offset: u64, src: &[u8]) -> Result<(), Error> {
        self.slice(offset, src.len())?.copy_from(src);
        self.vmm_dirty.mark_bytes(offset, src.len() as u64);
        Ok(())
    }

    /// Writes `src` at byte `offset` as the *guest* would (a software vCPU): unlike
    /// [`RamBlock::write_range`] this is not recorded as a VMM write, because the dirty log sees
    /// it through the page tables like any guest store.
    pub fn guest_write(&self, offset: u64, src: &[u8]) -> Result<(), Error> {
        self.slice(offset, src.len())?.copy_from(src);
        Ok(())
    }

    fn file(&self) -> Option<&File> {
        self.region.file_offset().map(|fo| fo.file())
    }

    /// True if the page at `off` is a hole of a shared file backing (so it reads as zero).
    fn file_hole_at(&self, off: u64) -> bool {
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

    /// A hash of the whole block's contents (used for the `ram-verify` capability): BLAKE3 over
    /// the BLAKE3 hashes of consecutive 1 MiB chunks, computed on all cores.
    ///
    /// Never-populated pages are hashed as the zeros they read as without touching them, which
    /// keeps a sparse guest's digest fast and does not fault in memory (reading a shmem hole
    /// would allocate it). Meant for a paused guest; with vCPUs running the result is some mix of
    /// old and new contents.
    pub fn digest(&self) -> [u8; 32] {
        let populated = self.populated_pages().ok();
        let pages = self.pages();
        let chunks = pages.div_ceil(DIGEST_CHUNK_PAGES) as usize;
        let mut hashes = vec![[0u8; 32]; chunks];
        let zero_chunk = hash_zero_pages(DIGEST_CHUNK_PAGES);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8);
        let per_thread = chunks.div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for (t, part) in hashes.chunks_mut(per_thread).enumerate() {
                let populated = populated.as_ref();
                s.spawn(move || {
                    for (i, h) in part.iter_mut().enumerate() {
                        let chunk = (t * per_thread + i) as u64;
                        *h = self.hash_chunk(chunk, pages, populated, &zero_chunk);
                    }
                });
            }
        });
        let mut top = blake3::Hasher::new();
        for h in &hashes {
            top.update(h);
        }
        *top.finalize().as_bytes()
    }

    /// BLAKE3 of chunk `chunk` (pages never populated hash as zeros without being read).
    fn hash_chunk(
        &self,
        chunk: u64,
        pages: u64,
        populated: Option<&Bitmap>,
        zero_chunk: &[u8; 32],
    ) -> [u8; 32] {
        let first = chunk * DIGEST_CHUNK_PAGES;
        let end = (first + DIGEST_CHUNK_PAGES).min(pages);
        let is_populated = |p: u64| populated.is_none_or(|bm| bm.test(p));
        let full = end - first == DIGEST_CHUNK_PAGES;
        if full && !(first..end).any(is_populated) {
            return *zero_chunk;
        }
        let zero = [0u8; PAGE_SIZE as usize];
        let mut hasher = blake3::Hasher::new();
        let mut p = first;
        while p < end {
            if !is_populated(p) {
                hasher.update(&zero);
                p += 1;
                continue;
            }
            // Hash runs of populated pages in one call: BLAKE3 hashes long inputs with SIMD.
            let run_end = (p..end).find(|&q| !is_populated(q)).unwrap_or(end);
            // SAFETY: pages p..run_end are inside the mapping (run_end <= pages); the slice
            // lives only for this call. A concurrent guest store would only make the digest
            // stale, which callers avoid by pausing the guest first.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    self.host_ptr().add((p * PAGE_SIZE) as usize),
                    ((run_end - p) * PAGE_SIZE) as usize,
                )
            };
            hasher.update(bytes);
            p = run_end;
        }
        *hasher.finalize().as_bytes()
    }
}

/// Pages per chunk of [`RamBlock::digest`] (1 MiB).
const DIGEST_CHUNK_PAGES: u64 = 256;

/// BLAKE3 of `pages` zero pages.
fn hash_zero_pages(pages: u64) -> [u8; 32] {
    let zero = [0u8; PAGE_SIZE as usize];
    let mut h = blake3::Hasher::new();
    for _ in 0..pages {
        h.update(&zero);
    }
    *h.finalize().as_bytes()
}

/// True if every byte of `slice` is zero; 512-byte chunks, early exit.
fn slice_is_zero(slice: &VolatileSlice<'_>) -> bool {
    let mut words = [0u64; 64];
    let mut off = 0usize;
    while off < slice.len() {
        let n = (slice.len() - off).min(512);
        let Ok(sub) = slice.subslice(off, n) else {
            return false;
        };
        // Returns the number of u64 elements copied; n is a multiple of 8 for whole pages.
        let copied = sub.copy_to(&mut words[..n / 8]);
        if copied * 8 < n {
            return false;
        }
        // OR-reduce is branch-free and vectorises; check once per chunk.
        if words[..n / 8].iter().fold(0u64, |acc, w| acc | w) != 0 {
            return false;
        }
        off += n;
    }
    true
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

fn memfd(idstr: &str) -> Result<File, Error> {
    let err = |source| Error::Memfd {
        idstr: idstr.to_owned(),
        source,
    };
    // The kernel limits memfd names to 249 bytes; the name is only a debugging aid.
    let mut name = format!("livemig:{idstr}");
    while name.len() > 200 {
        name.pop();
    }
    let name = CString::new(name).map_err(|e| err(io::Error::other(e)))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagemap_file_fallback_agrees_with_pagemap_scan() {
        let b = RamBlock::new("ram", 256 * PAGE_SIZE, Backing::Anonymous).unwrap();
        for p in [0u64, 1, 77, 255] {
            b.write_range(p * PAGE_SIZE + 9, &[1]).unwrap();
        }
        let mut via_file = Bitmap::new(b.pages());
        b.populated_from_pagemap_file(&mut via_file).unwrap();
        assert_eq!(via_file, b.populated_pages().unwrap());
        assert_eq!(
            via_file.iter_ones().collect::<Vec<_>>(),
            vec![0, 1, 77, 255]
        );
    }
}
