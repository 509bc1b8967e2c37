//! Postcopy's destination memory: userfaultfd in MISSING mode, page faults handed to a thread of
//! the migration engine, and atomic page placement.
//!
//! ```text
//! register()  userfaultfd() + UFFDIO_API (MISSING_SHMEM for memfd / shared file blocks)
//!             UFFDIO_REGISTER(MODE_MISSING) every block
//! guest touches a page that is not there ─▶ the vCPU thread sleeps in the kernel
//!             read(uffd) ─▶ uffd_msg { event 0x12 PAGEFAULT, flags, address } ─▶ next_fault()
//! the page arrives ─▶ place_page(): UFFDIO_COPY (4 KiB, copies and maps, wakes the sleepers)
//!                     place_zero(): UFFDIO_ZEROPAGE (anonymous) or a copy of a zero page
//! end          UFFDIO_UNREGISTER every block (pending faults are woken and retried normally)
//! ```
//!
//! `uffd_msg` is 32 bytes: `u8 event, u8, u16, u32` then for a page fault `u64 flags,
//! u64 address, u32 ptid`. `UFFDIO_COPY` takes `{dst, src, len, mode, copy}` (5 × 64 bits; `copy`
//! returns the bytes copied or `-errno`), `UFFDIO_ZEROPAGE` `{start, len, mode, zeropage}`.
//!
//! [`RamBlock::discard_range`](crate::RamBlock::discard_range) (in `block/mapping.rs`) makes
//! received pages missing again: `MADV_DONTNEED` for private anonymous memory, a punched hole
//! (`fallocate`) plus `MADV_DONTNEED` for shared memory.
//!
//! Only anonymous, memfd and shared-file blocks can be registered; a private file mapping
//! cannot (the kernel refuses MISSING mode on it), which [`probe`] reports before any guest
//! state moves.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use crate::dirty::uffd::{
    ioc, open_uffd, range, uffd_ioctl, UffdioApi, UffdioRange, UffdioRegister, IOC_RW, UFFDIO_API,
    UFFDIO_REGISTER, UFFDIO_UNREGISTER, UFFD_API,
};
use crate::{Backing, Error, GuestRam, RamBlock, PAGE_SIZE};

/// `UFFD_FEATURE_MISSING_SHMEM`: MISSING faults on shmem (memfd, shared files on tmpfs).
const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `_UFFDIO_ZEROPAGE` bit of the ioctls a registration allows.
const UFFDIO_ZEROPAGE_BIT: u64 = 1 << 0x04;

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

const UFFDIO_COPY: u64 = ioc(IOC_RW, 0x03, std::mem::size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: u64 = ioc(IOC_RW, 0x04, std::mem::size_of::<UffdioZeropage>());
const _: () = assert!(UFFDIO_COPY == 0xC028_AA03);
const _: () = assert!(UFFDIO_ZEROPAGE == 0xC020_AA04);

/// The features a MISSING registration of `ram` needs.
fn needed_for(ram: &GuestRam) -> u64 {
    if ram
        .blocks()
        .iter()
        .any(|b| !matches!(b.backing(), Backing::Anonymous))
    {
        UFFD_FEATURE_MISSING_SHMEM
    } else {
        0
    }
}

/// What a placement found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// The page was missing and now holds the data; faulting threads were woken.
    Placed,
    /// The page was already there (a duplicate): nothing changed.
    AlreadyPresent,
}

/// A page fault on registered memory: which block and which 4 KiB page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingFault {
    /// Index of the block in the [`GuestRam`].
    pub block: usize,
    /// Page index inside the block.
    pub page: u64,
}

/// Guest RAM registered with userfaultfd in MISSING mode (postcopy destination). Placing and
/// reading faults may happen on different threads (`Send + Sync`). Unregistered on drop.
#[derive(Debug)]
pub struct MissingPages {
    ram: Arc<GuestRam>,
    uffd: OwnedFd,
    /// Blocks registered so far (a prefix).
    registered: usize,
    /// Per block: the registration allows UFFDIO_ZEROPAGE.
    zeropage: Vec<bool>,
}

/// Checks, without registering anything for good, that every block of `ram` can be registered
/// in MISSING mode (the postcopy ADVISE check: a destination that cannot must refuse before the
/// source stops its guest).
pub fn probe(ram: &Arc<GuestRam>) -> Result<(), Error> {
    MissingPages::register(ram.clone()).map(drop)
}

impl MissingPages {
    /// Registers every block of `ram` for MISSING faults.
    pub fn register(ram: Arc<GuestRam>) -> Result<MissingPages, Error> {
        let uffd = open_uffd()?;
        let needed = needed_for(&ram);
        let mut api = UffdioApi {
            api: UFFD_API,
            features: needed,
            ..UffdioApi::default()
        };
        // SAFETY: UFFDIO_API takes a `struct uffdio_api`.
        if let Err(source) = unsafe { uffd_ioctl(&uffd, UFFDIO_API, &mut api) } {
            return Err(match source.raw_os_error() {
                Some(libc::EINVAL) => Error::UffdFeatures { missing: needed },
                _ => Error::UffdUnavailable { source },
            });
        }
        let mut me = MissingPages {
            ram,
            uffd,
            registered: 0,
            zeropage: Vec::new(),
        };
        let ram = me.ram.clone();
        for block in ram.blocks() {
            let mut reg = UffdioRegister {
                range: range(block),
                mode: UFFDIO_REGISTER_MODE_MISSING,
                ..UffdioRegister::default()
            };
            // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`; the range is the
            // block's own live mapping.
            unsafe { uffd_ioctl(&me.uffd, UFFDIO_REGISTER, &mut reg) }.map_err(|source| {
                Error::UnsupportedBacking {
                    idstr: block.idstr().to_owned(),
                    backing: block.backing().to_string(),
                    source,
                }
            })?;
            me.registered += 1;
            me.zeropage.push(reg.ioctls & UFFDIO_ZEROPAGE_BIT != 0);
        }
        Ok(me)
    }

    /// The registered RAM.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    fn page_addr(&self, block: usize, page: u64) -> Result<(&RamBlock, u64), Error> {
        let b = self
            .ram
            .blocks()
            .get(block)
            .ok_or(Error::BlockIndex { block })?;
        if page >= b.pages() {
            return Err(Error::PageOutOfRange {
                idstr: b.idstr().to_owned(),
                page,
                pages: b.pages(),
            });
        }
        Ok((b, b.host_ptr() as u64 + page * PAGE_SIZE))
    }

    /// Places `data` (4096 bytes) at page `page` of block `block` atomically: no thread sees
    /// the page before all of it is there.
    pub fn place_page(&self, block: usize, page: u64, data: &[u8]) -> Result<Placed, Error> {
        if data.len() != PAGE_SIZE as usize {
            return Err(Error::BadPageBuffer { len: data.len() });
        }
        let (b, dst) = self.page_addr(block, page)?;
        let mut c = UffdioCopy {
            dst,
            src: data.as_ptr() as u64,
            len: PAGE_SIZE,
            ..UffdioCopy::default()
        };
        // SAFETY: UFFDIO_COPY takes a `struct uffdio_copy`; `src` points to 4096 readable bytes
        // borrowed for the call; `dst` is a page of a registered block.
        let r = unsafe { uffd_ioctl(&self.uffd, UFFDIO_COPY, &mut c) };
        outcome(b, page, r)
    }

    /// Places a zero page at page `page` of block `block`.
    pub fn place_zero(&self, block: usize, page: u64) -> Result<Placed, Error> {
        let (b, dst) = self.page_addr(block, page)?;
        if !self.zeropage.get(block).copied().unwrap_or(false) {
            return self.place_page(block, page, &[0u8; PAGE_SIZE as usize]);
        }
        let mut z = UffdioZeropage {
            range: UffdioRange {
                start: dst,
                len: PAGE_SIZE,
            },
            ..UffdioZeropage::default()
        };
        // SAFETY: UFFDIO_ZEROPAGE takes a `struct uffdio_zeropage`; the range is one page of a
        // registered block.
        let r = unsafe { uffd_ioctl(&self.uffd, UFFDIO_ZEROPAGE, &mut z) };
        outcome(b, page, r)
    }

    /// Waits up to `timeout_ms` for the next page fault; `Ok(None)` on timeout. Faults outside
    /// the registered blocks and other events are skipped.
    pub fn next_fault(&self, timeout_ms: i32) -> Result<Option<MissingFault>, Error> {
        let mut pfd = libc::pollfd {
            fd: self.uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(Error::UffdRead { source: e });
        }
        if n == 0 {
            return Ok(None);
        }
        let mut msg = [0u8; 32];
        // SAFETY: reads at most 32 bytes into the local buffer.
        let r = unsafe { libc::read(self.uffd.as_raw_fd(), msg.as_mut_ptr().cast(), msg.len()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(Error::UffdRead { source: e }),
            };
        }
        if r as usize != msg.len() || msg[0] != UFFD_EVENT_PAGEFAULT {
            return Ok(None);
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&msg[16..24]);
        let addr = u64::from_ne_bytes(a);
        Ok(self.locate(addr))
    }

    fn locate(&self, addr: u64) -> Option<MissingFault> {
        self.ram.blocks().iter().enumerate().find_map(|(i, b)| {
            let start = b.host_ptr() as u64;
            (addr >= start && addr < start + b.len()).then(|| MissingFault {
                block: i,
                page: (addr - start) / PAGE_SIZE,
            })
        })
    }
}

fn outcome(b: &RamBlock, page: u64, r: io::Result<()>) -> Result<Placed, Error> {
    match r {
        Ok(()) => Ok(Placed::Placed),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(Placed::AlreadyPresent),
        Err(source) => Err(Error::Place {
            idstr: b.idstr().to_owned(),
            page,
            source,
        }),
    }
}

impl Drop for MissingPages {
    fn drop(&mut self) {
        for block in &self.ram.blocks()[..self.registered] {
            let mut r = range(block);
            // SAFETY: UFFDIO_UNREGISTER takes a `struct uffdio_range` of a registered mapping.
            if let Err(e) = unsafe { uffd_ioctl(&self.uffd, UFFDIO_UNREGISTER, &mut r) } {
                tracing::debug!(block = block.idstr(), error = %e, "UFFDIO_UNREGISTER failed");
            }
        }
    }
}
