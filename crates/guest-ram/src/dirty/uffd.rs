//! Dirty tracking with userfaultfd asynchronous write protection (Linux 6.7+).
//!
//! How it works:
//!
//! 1. `userfaultfd()` + `UFFDIO_API` with `UFFD_FEATURE_WP_ASYNC` (write faults on protected
//!    pages are resolved by the kernel itself: it just clears the PTE's uffd-wp bit, no thread
//!    has to read fault events), `UFFD_FEATURE_WP_UNPOPULATED` (never-touched anonymous pages get
//!    a write-protect marker too, so their first write is seen) and
//!    `UFFD_FEATURE_WP_HUGETLBFS_SHMEM` (needed to register shmem, i.e. memfd, mappings).
//! 2. `UFFDIO_REGISTER` each block with `UFFDIO_REGISTER_MODE_WP`, then `UFFDIO_WRITEPROTECT`
//!    it, in 8 MiB chunks. A chunk whose every page holds data is deferred: the caller sends
//!    it anyway and arms it just before its first read (`arm`), so arming overlaps the first
//!    pass instead of delaying it (~40 ms per GiB of populated shmem here).
//! 3. `sync`: `PAGEMAP_SCAN` over each block with `PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC`
//!    and category `PAGE_IS_WRITTEN`: returns the runs of pages whose uffd-wp bit is clear
//!    (written since protected) and protects them again in the same page-table walk.
//! 4. `stop`: `UFFDIO_UNREGISTER` (which removes the protection) and close the fd.
//!
//! Limits: only writes through *this process's* page tables are seen, i.e. by vCPU threads of the
//! software guest and by the VMM. A page of a shared file written by another process through its
//! own mapping is not reported, and neither are writes done by KVM guests (use the KVM dirty log
//! for those). If the kernel reclaims a written-but-not-yet-synced page of a shared file mapping
//! the PTE disappears with its "written" state; keep shared-file guests small enough to stay
//! resident during migration (memfd/anonymous memory without swap is not reclaimed).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use tracing::debug;

use super::{check_bitmaps, merge_vmm_writes, DirtyLog};
use crate::pagemap::{self, PagemapScanner, ScanQuery};
use crate::{Backing, Bitmap, Error, GuestRam, RamBlock, PAGE_SIZE};

pub(crate) const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;

/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`: write protection on shmem and hugetlbfs.
pub(crate) const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
/// `UFFD_FEATURE_WP_UNPOPULATED`: protect never-touched anonymous pages with markers.
pub(crate) const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_WP_ASYNC`: the kernel resolves write-protect faults itself.
pub(crate) const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

/// Features every tracked guest needs.
const NEEDED: u64 = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;

/// Features needed for `ram`: shmem (memfd) and shared file blocks also need
/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`.
fn needed_for(ram: &GuestRam) -> u64 {
    let shared = ram
        .blocks()
        .iter()
        .any(|b| !matches!(b.backing(), Backing::Anonymous));
    if shared {
        NEEDED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM
    } else {
        NEEDED
    }
}

const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

#[repr(C)]
#[derive(Default)]
pub(crate) struct UffdioApi {
    pub(crate) api: u64,
    pub(crate) features: u64,
    pub(crate) ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct UffdioRange {
    pub(crate) start: u64,
    pub(crate) len: u64,
}

#[repr(C)]
#[derive(Default)]
pub(crate) struct UffdioRegister {
    pub(crate) range: UffdioRange,
    pub(crate) mode: u64,
    pub(crate) ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

pub(crate) const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (UFFD_API << 8) | nr
}
pub(crate) const IOC_RW: u64 = 3;
pub(crate) const IOC_R: u64 = 2;
pub(crate) const UFFDIO_API: u64 = ioc(IOC_RW, 0x3F, std::mem::size_of::<UffdioApi>());
pub(crate) const UFFDIO_REGISTER: u64 = ioc(IOC_RW, 0x00, std::mem::size_of::<UffdioRegister>());
pub(crate) const UFFDIO_UNREGISTER: u64 = ioc(IOC_R, 0x01, std::mem::size_of::<UffdioRange>());
const UFFDIO_WRITEPROTECT: u64 = ioc(IOC_RW, 0x06, std::mem::size_of::<UffdioWriteprotect>());
const _: () = assert!(UFFDIO_API == 0xC018_AA3F);
const _: () = assert!(UFFDIO_REGISTER == 0xC020_AA00);
const _: () = assert!(UFFDIO_UNREGISTER == 0x8010_AA01);
const _: () = assert!(UFFDIO_WRITEPROTECT == 0xC018_AA06);

/// `ioctl` on a uffd with a pointer argument.
///
/// # Safety
/// `arg` must point to the structure type that `req` expects.
pub(crate) unsafe fn uffd_ioctl<T>(fd: &OwnedFd, req: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: the caller guarantees `arg` has the layout `req` expects; it is a live exclusive
    // reference for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn open_uffd() -> Result<OwnedFd, Error> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: plain syscall with integer flags.
    let mut fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
        // Unprivileged processes may only handle user-mode faults; async write protection never
        // delivers faults to us anyway.
        // SAFETY: as above.
        fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY) };
    }
    if fd < 0 {
        return Err(Error::UffdUnavailable {
            source: io::Error::last_os_error(),
        });
    }
    let fd = libc::c_int::try_from(fd).map_err(|e| Error::UffdUnavailable {
        source: io::Error::other(e),
    })?;
    // SAFETY: `fd` is a fresh descriptor returned by userfaultfd and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Returns the userfaultfd features this kernel supports (`UFFDIO_API` handshake with none
/// requested, on a throw-away fd since the handshake can only be done once per fd).
pub(crate) fn uffd_supported_features() -> Result<u64, Error> {
    let fd = open_uffd()?;
    let mut api = UffdioApi {
        api: UFFD_API,
        ..UffdioApi::default()
    };
    // SAFETY: UFFDIO_API takes a `struct uffdio_api`.
    unsafe { uffd_ioctl(&fd, UFFDIO_API, &mut api) }
        .map_err(|source| Error::UffdUnavailable { source })?;
    Ok(api.features)
}

/// Opens a uffd with the write-protect features `needed` enabled.
fn open_wp_uffd(needed: u64) -> Result<OwnedFd, Error> {
    let supported = uffd_supported_features()?;
    if supported & needed != needed {
        return Err(Error::UffdFeatures {
            missing: needed & !supported,
        });
    }
    let fd = open_uffd()?;
    let mut api = UffdioApi {
        api: UFFD_API,
        features: needed,
        ..UffdioApi::default()
    };
    // SAFETY: UFFDIO_API takes a `struct uffdio_api`.
    unsafe { uffd_ioctl(&fd, UFFDIO_API, &mut api) }
        .map_err(|source| Error::UffdUnavailable { source })?;
    Ok(fd)
}

pub(crate) fn range(block: &RamBlock) -> UffdioRange {
    UffdioRange {
        start: block.host_ptr() as u64,
        len: block.len(),
    }
}

struct Active {
    uffd: OwnedFd,
    scanner: PagemapScanner,
    /// Blocks registered so far (a prefix of the guest's blocks).
    registered: usize,
    /// Per registered block, its chunks not yet write-protected (see `arm`).
    deferred: Vec<Bitmap>,
}

/// Pages armed together when arming is deferred: 8 MiB, so a GiB costs 128 calls.
const CHUNK_PAGES: u64 = 2048;

/// Pages `first..end` of chunk `c` of `block`.
fn chunk_pages(block: &RamBlock, c: u64) -> (u64, u64) {
    let first = c * CHUNK_PAGES;
    (first, (first + CHUNK_PAGES).min(block.pages()))
}

/// True when bits `first..end` of `bm` are all set; `first` is a multiple of 64.
fn all_set(bm: &Bitmap, first: u64, end: u64) -> bool {
    let words = bm.words();
    (first / 64..end.div_ceil(64)).all(|w| {
        let bits = (end - w * 64).min(64);
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        words.get(w as usize).is_some_and(|&x| x & mask == mask)
    })
}

/// The runs `first..end` of consecutive chunks below `n` for which `pick` holds.
fn chunk_runs(n: u64, pick: impl Fn(u64) -> bool) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    let mut c = 0;
    while c < n {
        let first = c;
        while c < n && pick(c) {
            c += 1;
        }
        if c > first {
            runs.push((first, c));
        }
        c += 1;
    }
    runs
}

/// Write-protects chunks `first..end` of `block`.
fn protect_chunks(uffd: &OwnedFd, block: &RamBlock, first: u64, end: u64) -> Result<(), Error> {
    write_protect(
        uffd,
        block,
        chunk_pages(block, first).0,
        chunk_pages(block, end - 1).1,
    )
}

/// Write-protects pages `first..end` of `block` (registered with `uffd`).
fn write_protect(uffd: &OwnedFd, block: &RamBlock, first: u64, end: u64) -> Result<(), Error> {
    let mut wp = UffdioWriteprotect {
        range: UffdioRange {
            start: block.host_ptr() as u64 + first * PAGE_SIZE,
            len: (end - first) * PAGE_SIZE,
        },
        mode: UFFDIO_WRITEPROTECT_MODE_WP,
    };
    // SAFETY: UFFDIO_WRITEPROTECT takes a `struct uffdio_writeprotect`; the range lies within
    // the block's mapping, which the caller registered with `uffd`.
    unsafe { uffd_ioctl(uffd, UFFDIO_WRITEPROTECT, &mut wp) }.map_err(|source| {
        Error::WriteProtect {
            idstr: block.idstr().to_owned(),
            source,
        }
    })
}

/// The userfaultfd-wp + `PAGEMAP_SCAN` dirty log over all blocks of a [`GuestRam`].
pub struct UffdDirtyLog {
    ram: Arc<GuestRam>,
    active: Option<Active>,
}

impl std::fmt::Debug for UffdDirtyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UffdDirtyLog")
            .field("blocks", &self.ram.blocks().len())
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl UffdDirtyLog {
    /// A (stopped) log over all blocks of `ram`.
    pub fn new(ram: Arc<GuestRam>) -> Self {
        UffdDirtyLog { ram, active: None }
    }

    /// Checks that this kernel offers the userfaultfd features `start` needs for `ram`'s
    /// backings (registration of each block is only tried by `start`).
    pub fn probe(ram: &GuestRam) -> Result<(), Error> {
        let needed = needed_for(ram);
        let supported = uffd_supported_features()?;
        if supported & needed != needed {
            return Err(Error::UffdFeatures {
                missing: needed & !supported,
            });
        }
        Ok(())
    }

    /// True between a successful `start` and `stop`.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn start_block(act: &mut Active, block: &RamBlock) -> Result<(), Error> {
        if !block.vmm_dirty().activate() {
            return Err(Error::AlreadyTracked {
                idstr: block.idstr().to_owned(),
            });
        }
        let mut reg = UffdioRegister {
            range: range(block),
            mode: UFFDIO_REGISTER_MODE_WP,
            ..UffdioRegister::default()
        };
        // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`; the range is the block's
        // own live mapping.
        if let Err(source) = unsafe { uffd_ioctl(&act.uffd, UFFDIO_REGISTER, &mut reg) } {
            block.vmm_dirty().deactivate();
            return Err(Error::UnsupportedBacking {
                idstr: block.idstr().to_owned(),
                backing: block.backing().to_string(),
                source,
            });
        }
        act.registered += 1;
        let populated = if matches!(
            block.backing(),
            Backing::Anonymous | Backing::File { share: false, .. }
        ) {
            // Snapshot before markers appear, so populated_pages can tell markers from data.
            block.set_known_populated(None);
            let known = block.populated_pages()?;
            block.set_known_populated(Some(known.clone()));
            known
        } else {
            block.populated_pages()?
        };
        // Chunks whose every page holds data wait for `arm`; the others are armed now, so a
        // first write to a never-touched page is seen.
        let chunks = block.pages().div_ceil(CHUNK_PAGES);
        let mut deferred = Bitmap::new(chunks);
        for c in 0..chunks {
            let (first, end) = chunk_pages(block, c);
            if all_set(&populated, first, end) {
                deferred.set(c);
            }
        }
        for (first, end) in chunk_runs(chunks, |c| !deferred.test(c)) {
            protect_chunks(&act.uffd, block, first, end)?;
        }
        act.deferred.push(deferred);
        Ok(())
    }

    /// Arms every chunk of block `b` still deferred.
    fn arm_all(act: &mut Active, b: usize, block: &RamBlock) -> Result<(), Error> {
        let Some(d) = act.deferred.get_mut(b) else {
            return Ok(());
        };
        for (first, end) in chunk_runs(d.len(), |c| d.test(c)) {
            protect_chunks(&act.uffd, block, first, end)?;
        }
        d.clear_all();
        Ok(())
    }

    fn unregister(&self, act: &Active) {
        for block in &self.ram.blocks()[..act.registered] {
            let mut r = range(block);
            // SAFETY: UFFDIO_UNREGISTER takes a `struct uffdio_range` of a registered mapping.
            if let Err(e) = unsafe { uffd_ioctl(&act.uffd, UFFDIO_UNREGISTER, &mut r) } {
                debug!(block = block.idstr(), error = %e, "UFFDIO_UNREGISTER failed");
            }
            block.set_known_populated(None);
            block.vmm_dirty().deactivate();
        }
    }
}

impl DirtyLog for UffdDirtyLog {
    fn start(&mut self) -> Result<(), Error> {
        if self.active.is_some() {
            return Ok(());
        }
        let mut act = Active {
            uffd: open_wp_uffd(needed_for(&self.ram))?,
            scanner: PagemapScanner::open().map_err(|source| Error::Pagemap { source })?,
            registered: 0,
            deferred: Vec::new(),
        };
        for block in self.ram.blocks() {
            if let Err(e) = Self::start_block(&mut act, block) {
                self.unregister(&act);
                return Err(e);
            }
        }
        debug!(blocks = act.registered, "uffd-wp dirty tracking started");
        self.active = Some(act);
        Ok(())
    }

    fn sync(&mut self, dirty: &mut [Bitmap]) -> Result<u64, Error> {
        let act = self.active.as_mut().ok_or(Error::NotStarted)?;
        check_bitmaps(self.ram.blocks(), dirty)?;
        let q = ScanQuery {
            flags: pagemap::PM_SCAN_WP_MATCHING | pagemap::PM_SCAN_CHECK_WPASYNC,
            mask: pagemap::PAGE_IS_WRITTEN,
            ret: pagemap::PAGE_IS_WRITTEN,
            ..ScanQuery::default()
        };
        for (b, block) in self.ram.blocks().iter().enumerate() {
            Self::arm_all(act, b, block)?;
        }
        let mut newly = 0u64;
        for (block, bm) in self.ram.blocks().iter().zip(dirty.iter_mut()) {
            act.scanner
                .scan(block.host_ptr() as u64, block.len(), q, |first, end, _| {
                    newly += bm.set_range(first, end);
                    block.note_populated(first, end);
                })
                .map_err(|source| Error::PageScan {
                    idstr: block.idstr().to_owned(),
                    source,
                })?;
        }
        newly += merge_vmm_writes(self.ram.blocks(), dirty);
        Ok(newly)
    }

    fn stop(&mut self) {
        if let Some(act) = self.active.take() {
            self.unregister(&act);
            debug!("uffd-wp dirty tracking stopped");
        }
    }

    fn mark_deferred(&self, block: usize, dirty: &mut Bitmap) {
        let (Some(act), Some(b)) = (self.active.as_ref(), self.ram.blocks().get(block)) else {
            return;
        };
        if let Some(d) = act.deferred.get(block) {
            for c in d.iter_ones() {
                let (first, end) = chunk_pages(b, c);
                dirty.set_range(first, end);
            }
        }
    }

    fn arm(&mut self, block: usize, page: u64) -> Result<(), Error> {
        let (Some(act), Some(b)) = (self.active.as_mut(), self.ram.blocks().get(block)) else {
            return Ok(());
        };
        let c = page / CHUNK_PAGES;
        match act.deferred.get_mut(block) {
            Some(d) if c < d.len() && d.test(c) => {
                d.clear(c);
                let (first, end) = chunk_pages(b, c);
                write_protect(&act.uffd, b, first, end)
            }
            _ => Ok(()),
        }
    }
}

impl Drop for UffdDirtyLog {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_runs_and_full_chunks() {
        let set = [false, true, true, false, true];
        assert_eq!(chunk_runs(5, |c| set[c as usize]), vec![(1, 3), (4, 5)]);
        assert_eq!(chunk_runs(5, |c| !set[c as usize]), vec![(0, 1), (3, 4)]);
        assert!(chunk_runs(0, |_| true).is_empty());
        let mut bm = Bitmap::new(130);
        bm.set_range(0, 129);
        assert!(all_set(&bm, 0, 129));
        assert!(!all_set(&bm, 64, 130));
        assert!(all_set(&bm, 128, 129));
    }
}
