//! The mapping behind a RAM block, and every access to guest memory that needs `unsafe`.
//!
//! [`BlockMemory`] owns the `mmap` of one block; a [`RamBlock`](super::RamBlock) holds it in an
//! `Arc`, and so may anything that sends guest memory in place after the call that found it has
//! returned (the stream writer until it has written a page, a multifd channel until its batch
//! is out). The mapping is unmapped when the last handle is dropped, never before.
//!
//! The concurrency model of guest memory access is documented on [`BlockMemory`].

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

use vm_memory::mmap::MmapRegion;
use vm_memory::volatile_memory::{VolatileMemory, VolatileSlice};
use vm_memory::FileOffset;

use crate::Error;

/// The memory of one RAM block: a shared handle (`Send + Sync`) that keeps the mapping alive.
///
/// Its bytes are the whole block ([`AsRef<[u8]>`]), which may change under the reader.
///
/// # Concurrency
///
/// Guest vCPUs store into this memory at any time, from KVM or from software vCPU threads,
/// without telling the VMM. Two models of access coexist:
///
/// * **Copies** ([`RamBlock::copy_page_to`](crate::RamBlock::copy_page_to), `write_page`,
///   `read_range`, the zero check, …) go through `vm-memory`'s [`VolatileSlice`]: volatile
///   `memcpy` into or out of the mapping, never a Rust reference to guest memory.
/// * **In-place I/O** (the migration hot path) is QEMU's model: the bytes are handed to the
///   kernel (`writev`, `read`) or compared as they are, through `&[u8]` (this type's `AsRef`,
///   [`RamBlock::page`](crate::RamBlock::page)) and `&mut [u8]`
///   ([`RamBlock::fill_page`](crate::RamBlock::fill_page)). A store racing with such an access
///   is a data race in Rust's memory model. We accept it as QEMU does: the accesses are plain
///   byte loads and stores (`u8` has no invalid values, so a race leaves torn bytes, not an
///   invalid value), and every user tolerates torn bytes. The source re-sends a page that a
///   store dirtied during its send, and its final pass runs with the guest paused; the
///   destination fills pages while its vCPUs are stopped. Users must not rely on two reads of a
///   page agreeing (XBZRLE, for instance, encodes from a copy).
#[derive(Debug)]
pub struct BlockMemory {
    region: MmapRegion<()>,
}

impl BlockMemory {
    /// Maps `len` bytes read/write with `flags` (backed by `file` if given) and advises the
    /// kernel like QEMU: no inheritance by children, transparent huge pages if `huge_pages`.
    pub(super) fn map(
        idstr: &str,
        file: Option<File>,
        len: usize,
        flags: libc::c_int,
        huge_pages: bool,
    ) -> Result<BlockMemory, Error> {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let file_offset = file.map(|f| FileOffset::new(f, 0));
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
        if huge_pages {
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
        Ok(BlockMemory { region })
    }

    /// Replaces the mapping's pages, at the same address and length, with `file` mapped
    /// shared from offset 0 (a memfd handed over by another process). The caller checked that
    /// `file` is at least `len()` bytes long.
    pub(super) fn remap_shared(&self, idstr: &str, file: &File) -> io::Result<()> {
        let len = self.len();
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_NORESERVE;
        // SAFETY: MAP_FIXED replaces exactly our own mapping (`as_ptr()..+len`, owned by
        // `self.region` and unmapped only when it drops), so no other Rust object's memory is
        // affected, and every pointer into the block stays valid: it now reads the new file's
        // pages. Concurrent accessors see either the old or the new pages (the kernel swaps
        // the VMA atomically); callers do this on a destination whose vCPUs are stopped.
        let p = unsafe { libc::mmap(self.as_ptr().cast(), len, rw, flags, file.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // The new VMA lost the advice given at creation (see `map`).
        // SAFETY: advisory call on our mapping, covering exactly its length.
        let r = unsafe { libc::madvise(self.as_ptr().cast(), len, libc::MADV_DONTFORK) };
        if r != 0 {
            tracing::debug!(idstr, error = %io::Error::last_os_error(), "MADV_DONTFORK failed");
        }
        Ok(())
    }

    /// Drops the pages of `offset..offset + len` (page aligned, inside the mapping): they read
    /// as missing afterwards (postcopy discard). Shared memory has its file range punched out
    /// first, so the pages leave the page cache, not only our page tables.
    pub(super) fn discard(&self, offset: usize, len: usize) -> io::Result<()> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        if let Some(file) = self.file() {
            // SAFETY: plain syscall on the block's own file descriptor with integer arguments.
            let r = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off_t,
                    (end - offset) as libc::off_t,
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: `offset..end` lies inside our mapping (checked above); MADV_DONTNEED only
        // drops pages, which then read as zero (or fault to userfaultfd when registered). No
        // Rust reference into guest memory is held across it (guest memory is accessed through
        // volatile copies or short-lived slices, see the type's docs).
        let r =
            unsafe { libc::madvise(self.as_ptr().add(offset).cast(), len, libc::MADV_DONTNEED) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Allocates every page of the mapping now, as QEMU's `-mem-prealloc` does: one
    /// `MADV_POPULATE_WRITE` (Linux 5.14+), which faults the pages in writable without changing
    /// their contents (fresh pages read as zero, pages of a file keep their data).
    pub(super) fn populate(&self) -> io::Result<()> {
        // SAFETY: advisory call on our own mapping, covering exactly its length; it only
        // allocates pages, it never changes bytes the guest or a reader can observe.
        let r =
            unsafe { libc::madvise(self.as_ptr().cast(), self.len(), libc::MADV_POPULATE_WRITE) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.region.size()
    }

    /// Always false: blocks are at least one page long.
    pub fn is_empty(&self) -> bool {
        self.region.size() == 0
    }

    /// Host virtual address of the first byte.
    pub(super) fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// The file behind the mapping, if any.
    pub(super) fn file(&self) -> Option<&File> {
        self.region.file_offset().map(|fo| fo.file())
    }

    /// Bytes `offset..offset + len` for volatile copies; `None` if outside the mapping.
    pub(super) fn volatile(&self, offset: usize, len: usize) -> Option<VolatileSlice<'_>> {
        let end = offset.checked_add(len)?;
        if end > self.len() {
            return None;
        }
        self.region.get_slice(offset, len).ok()
    }

    /// Runs `fill` on bytes `offset..offset + len` as a mutable slice (received pages are read
    /// into guest memory in place); `None` if the range is outside the mapping.
    pub(super) fn fill_with<R>(
        &self,
        offset: usize,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> Option<R> {
        let end = offset.checked_add(len)?;
        if end > self.len() {
            return None;
        }
        // SAFETY: `offset..end` lies inside the mapping, which `self` keeps mapped read/write
        // for at least the lifetime of the slice (it ends with this call). The slice is only
        // as exclusive as the concurrency model on the type makes it: the destination's vCPUs are
        // stopped while RAM is loaded, and a hostile stream naming one page on two multifd
        // channels at once races two loader threads on it, which (as in QEMU) only leaves its
        // bytes undefined, never an invalid value, since every byte pattern is a valid `u8`.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.as_ptr().add(offset), len) };
        Some(fill(bytes))
    }
}

impl AsRef<[u8]> for BlockMemory {
    /// The whole block; bytes may change under the reader (see [`BlockMemory`]).
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the mapping is `len()` readable bytes (PROT_READ|PROT_WRITE, mmap'ed with a
        // non-null address and a length that fits in isize) and stays mapped while `self`
        // lives, which the returned lifetime ensures. Concurrent guest stores are accepted as
        // described on the type: readers copy or compare the bytes and treat a
        // torn view as stale data, which the dirty log makes the migration send again.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len()) }
    }
}

/// An anonymous memory file (`memfd_create`) for a `Memfd` block.
pub(super) fn memfd(idstr: &str) -> Result<File, Error> {
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
