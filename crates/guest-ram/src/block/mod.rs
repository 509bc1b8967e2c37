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
//! Concurrency: guest vCPU threads write the mapping while the migration thread reads it. Copies
//! go through `vm-memory`'s volatile slices; the migration's in-place sends and receives use
//! slices of the mapping as QEMU does ([`BlockMemory`] explains both and why a torn page is
//! harmless). All `unsafe` of guest memory access is in `mapping`.
//!
//! | module | concern |
//! | --- | --- |
//! | `mapping` | the `mmap` ([`BlockMemory`]) and every access that needs `unsafe` |
//! | `populated` | which pages hold data ([`RamBlock::populated_pages`]) |
//! | `digest` | [`RamBlock::digest`] for the `ram-verify` capability |

mod digest;
mod mapping;
mod populated;

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use vm_memory::volatile_memory::VolatileSlice;

use crate::{Bitmap, Error, VmmDirtyTracker, PAGE_SIZE};
pub(crate) use digest::{digest_of_page_hashes, page_hash, zero_page_hash};
pub use mapping::BlockMemory;

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
    memory: Arc<BlockMemory>,
    vmm_dirty: VmmDirtyTracker,
    /// While an anonymous block is uffd-wp tracked, write-protect markers on never-touched PTEs
    /// look like swap entries to `PAGEMAP_SCAN`; this records pages known to hold data (populated
    /// when tracking started plus everything reported written since) to tell them apart.
    known_populated: Mutex<Option<Bitmap>>,
    /// A memfd handed over by another process and mapped over this block's memory
    /// ([`RamBlock::adopt_memfd`]); from then on it, not the block's own memfd, is the memory.
    adopted: OnceLock<File>,
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
        let (file, flags) = match &backing {
            Backing::Anonymous => (
                None,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            ),
            Backing::Memfd => (
                Some(mapping::memfd(idstr)?),
                libc::MAP_SHARED | libc::MAP_NORESERVE,
            ),
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
        if let Some(file) = &file {
            file.set_len(size).map_err(|source| Error::Truncate {
                idstr: idstr.to_owned(),
                size,
                source,
            })?;
        }
        let huge_pages = matches!(backing, Backing::Anonymous);
        let memory = BlockMemory::map(idstr, file, len, flags, huge_pages)?;
        Ok(RamBlock {
            idstr: idstr.to_owned(),
            backing,
            memory: Arc::new(memory),
            vmm_dirty: VmmDirtyTracker::new(size / PAGE_SIZE),
            known_populated: Mutex::new(None),
            adopted: OnceLock::new(),
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

    /// Whether another process can map the same memory: a memfd, or a file mapped shared
    /// (QEMU's `qemu_ram_is_shared`). The `x-ignore-shared` capability skips such blocks.
    pub fn is_shared(&self) -> bool {
        match &self.backing {
            Backing::Anonymous => false,
            Backing::Memfd => true,
            Backing::File { share, .. } => *share,
        }
    }

    /// Whether this block can be the very memory another process (a migration source) wrote:
    /// a file mapped shared, which the other process opened by the same path, or a memfd
    /// handed over by that process ([`RamBlock::adopt_memfd`]). A memfd this process created
    /// is reachable by nobody else.
    pub fn is_reachable_from_other_processes(&self) -> bool {
        matches!(self.backing, Backing::File { share: true, .. }) || self.adopted.get().is_some()
    }

    /// The memfd behind a `Memfd` block (the handed-over one once adopted), to pass to another
    /// process; `None` for other backings.
    pub fn memfd(&self) -> Option<BorrowedFd<'_>> {
        match self.backing {
            Backing::Memfd => self.shared_file().map(AsFd::as_fd),
            _ => None,
        }
    }

    /// The file whose pages are this block's memory, if any.
    fn shared_file(&self) -> Option<&File> {
        self.adopted.get().or(self.memory.file())
    }

    /// Maps `fd`, a memfd another process handed over (its guest RAM), over this `Memfd`
    /// block's memory, at the same address: every user of the block (vCPUs, KVM memory slots,
    /// the migration) sees that memory from then on, and this block's own memfd (never
    /// written, on a migration destination) is no longer mapped. Nothing is copied and nothing
    /// is written. Refused unless the block is a `Memfd` block not yet adopted and `fd` is a
    /// regular (shmem) file of exactly the block's size.
    pub fn adopt_memfd(&self, fd: OwnedFd) -> Result<(), Error> {
        let refuse = |reason: &str, source: Option<std::io::Error>| Error::Adopt {
            idstr: self.idstr.clone(),
            reason: reason.to_owned(),
            source,
        };
        if self.backing != Backing::Memfd {
            return Err(refuse("the block is not on a memfd", None));
        }
        if self.adopted.get().is_some() {
            return Err(refuse("the block already took handed-over memory", None));
        }
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| refuse("cannot stat the descriptor", Some(e)))?;
        if !meta.file_type().is_file() {
            return Err(refuse("the descriptor is not a memory file", None));
        }
        if meta.len() != self.len() {
            return Err(refuse(
                &format!("it is {} bytes, the block {}", meta.len(), self.len()),
                None,
            ));
        }
        self.memory
            .remap_shared(&self.idstr, &file)
            .map_err(|e| refuse("mmap over the block failed", Some(e)))?;
        // A second adopt was refused above and nothing else sets it.
        let _ = self.adopted.set(file);
        Ok(())
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.memory.len() as u64
    }

    /// Always false: blocks are at least one page long.
    pub fn is_empty(&self) -> bool {
        self.memory.is_empty()
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
        self.memory.as_ptr()
    }

    /// The block's memory as a shared handle, for sending pages in place after this call has
    /// returned: holding it keeps the mapping alive. Page `n` is bytes `n * 4096..(n + 1) * 4096`.
    pub fn memory(&self) -> &Arc<BlockMemory> {
        &self.memory
    }

    /// Discards `offset..offset + len` (page aligned): the pages become missing, as they were
    /// before anything was written there (postcopy: received pages that the source dirtied
    /// again). Shared memory loses them from its file too.
    pub fn discard_range(&self, offset: u64, len: u64) -> Result<(), Error> {
        let bad = || Error::RangeOutOfBounds {
            idstr: self.idstr.clone(),
            offset,
            len,
            size: self.len(),
        };
        if offset % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || len == 0 {
            return Err(bad());
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.len())
            .ok_or_else(bad)?;
        self.memory
            .discard(offset as usize, (end - offset) as usize)
            .map_err(|source| Error::Discard {
                idstr: self.idstr.clone(),
                offset,
                len,
                source,
            })
    }

    /// Allocates the whole block now instead of on first touch (QEMU's `-mem-prealloc`): a
    /// destination that waits for a stream pays the kernel's page allocation and zeroing
    /// before the migration instead of during it, at the cost of committing all its memory at
    /// start. Contents are unchanged.
    pub fn prealloc(&self) -> Result<(), Error> {
        self.memory.populate().map_err(|source| Error::Prealloc {
            idstr: self.idstr.clone(),
            size: self.len(),
            source,
        })
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
        let offset = usize::try_from(offset).map_err(|_| err())?;
        self.memory.volatile(offset, len).ok_or_else(err)
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

    /// Page `page` as bytes, without copying it (the migration hot path: zero check, XBZRLE).
    ///
    /// Guest vCPUs may store into the page while the slice lives, so its bytes may change
    /// under the reader (see [`BlockMemory`]); a copy of them may be torn, which is harmless
    /// because such a store also dirties the page and it is sent again.
    pub fn page(&self, page: u64) -> Result<&[u8], Error> {
        let off = self.page_offset(page)? as usize;
        Ok(&(*self.memory).as_ref()[off..off + PAGE_SIZE as usize])
    }

    /// Runs `fill` on page `page` as a mutable byte slice: the destination reads a received
    /// page straight from the stream into guest RAM (QEMU's `qemu_get_buffer` into the host
    /// page). The page is recorded as written by the VMM.
    ///
    /// Meant for a guest whose vCPUs are stopped; see [`BlockMemory`] for what a concurrent
    /// store means.
    pub fn fill_page<R>(&self, page: u64, fill: impl FnOnce(&mut [u8]) -> R) -> Result<R, Error> {
        let off = self.page_offset(page)?;
        let r = self
            .memory
            .fill_with(off as usize, PAGE_SIZE as usize, fill)
            .ok_or_else(|| Error::PageOutOfRange {
                idstr: self.idstr.clone(),
                page,
                pages: self.pages(),
            })?;
        self.vmm_dirty.mark_pages(page, page + 1);
        Ok(r)
    }

    /// Like [`fill_page`](Self::fill_page) over `len` bytes at `offset` (whole pages are
    /// marked written): a bulk receive straight into guest RAM.
    pub fn fill_range<R>(
        &self,
        offset: u64,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, Error> {
        let out_of_range = || Error::RangeOutOfBounds {
            idstr: self.idstr.clone(),
            offset,
            len: len as u64,
            size: self.len(),
        };
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let r = self
            .memory
            .fill_with(start, len, fill)
            .ok_or_else(out_of_range)?;
        let end = offset + len as u64;
        self.vmm_dirty
            .mark_pages(offset / PAGE_SIZE, end.div_ceil(PAGE_SIZE));
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
