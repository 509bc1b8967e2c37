//! Image locking compatible with QEMU's `locking=on` (block/file-posix.c), so livemig, `qemu-io`,
//! `qemu-img` and QEMU VMs never write one image at the same time.
//!
//! QEMU expresses what a user of an image does as *permissions* (bit numbers from
//! `include/block/block-common.h`) and takes one open-file-description (OFD) byte-range lock per
//! permission, all of them shared (`F_RDLCK`) locks of one byte:
//!
//! | byte | meaning |
//! | --- | --- |
//! | `100 + bit` | this user holds the permission |
//! | `200 + bit` | this user does not let others hold it |
//!
//! | bit | permission | livemig writer | livemig reader (backing file) |
//! | --- | --- | --- | --- |
//! | 0 | consistent read | holds | holds |
//! | 1 | write | holds, not shared | not shared |
//! | 2 | write unchanged | shared | shared |
//! | 3 | resize | holds, not shared | not shared |
//!
//! These are the bytes `qemu-io` and a QEMU VM lock on a qcow2 image opened read-write and on its
//! backing file (`/proc/locks` shows 100, 101, 103, 201, 203 and 100, 201, 203).
//!
//! Taking the locks follows `raw_handle_perm_lock`: first set our own bytes, then test with
//! `F_OFD_GETLK` whether another open file description locks a byte that conflicts (the "does not
//! share" byte of a permission we want, the "holds" byte of a permission we do not share). Setting
//! before testing means two processes racing for one image both see each other and both fail,
//! never both succeed. The locks live as long as the [`ImageLock`]'s descriptor; closing it (also
//! by a crash) releases them.
//!
//! Migration on shared storage hands the locks over as QEMU does: the destination opens the
//! image *inactive* (an [`ImageLock`] holding nothing), the source [inactivates] its image at
//! the switchover (flush, then drop every lock) and the destination [activates] it (take the
//! locks, failing while the source still holds them); after a failed migration the source
//! activates again.
//!
//! [inactivates]: crate::Disk::inactivate
//! [activates]: crate::Disk::activate
//!
//! The module's only `unsafe` are the two `fcntl` calls.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use imago::format::gate::ImplicitOpenGate;
use imago::{FormatAccess, FormatDriverBuilder, Storage, StorageOpenOptions};

use crate::error::BlockError;

/// `RAW_LOCK_PERM_BASE` in file-posix.c.
const PERM_BASE: i64 = 100;
/// `RAW_LOCK_SHARED_BASE` in file-posix.c.
const SHARED_BASE: i64 = 200;
/// QEMU's `bdrv_perm_names`, indexed by permission bit.
const PERM_NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];

/// `BLK_PERM_CONSISTENT_READ`.
const CONSISTENT_READ: u8 = 1 << 0;
/// `BLK_PERM_WRITE`.
const WRITE: u8 = 1 << 1;
/// `BLK_PERM_RESIZE`.
const RESIZE: u8 = 1 << 3;

/// Which permissions an image user holds and which it does not share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    /// Permission bits held.
    pub held: u8,
    /// Permission bits others may not hold.
    pub unshared: u8,
}

impl Perms {
    /// A read-write user (a VM's disk): reads, writes and resizes; nobody else may write or
    /// resize.
    pub const WRITER: Perms = Perms {
        held: CONSISTENT_READ | WRITE | RESIZE,
        unshared: WRITE | RESIZE,
    };
    /// A read-only user of a backing file: reads; nobody may change what it reads.
    pub const READER: Perms = Perms {
        held: CONSISTENT_READ,
        unshared: WRITE | RESIZE,
    };
    /// An inactive image (QEMU's `BDRV_O_INACTIVE`: a migration source after the switchover, a
    /// destination before it): holds nothing, shares everything.
    pub const INACTIVE: Perms = Perms {
        held: 0,
        unshared: 0,
    };
}

/// The QEMU-compatible locks of one image file, held as long as this value lives.
#[derive(Debug)]
pub struct ImageLock {
    file: File,
    path: PathBuf,
    /// What this user is (writer or reader): the permissions it holds when active.
    role: Perms,
    perms: Perms,
}

impl ImageLock {
    /// Opens `path` (following symlinks: the locks belong to the file) and takes the locks of
    /// `perms`; fails with [`BlockError::Locked`] when another user conflicts.
    pub fn acquire(path: &Path, perms: Perms) -> Result<ImageLock, BlockError> {
        let mut lock = ImageLock::acquire_inactive(path, perms)?;
        lock.set(perms)?;
        Ok(lock)
    }

    /// Opens `path` for a user whose permissions will be `role` once [activated](Self::activate)
    /// and locks nothing yet (QEMU's inactive image on an incoming migration's destination).
    pub fn acquire_inactive(path: &Path, role: Perms) -> Result<ImageLock, BlockError> {
        let file = File::open(path).map_err(|source| BlockError::Lock {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ImageLock {
            file,
            path: path.to_path_buf(),
            role,
            perms: Perms::INACTIVE,
        })
    }

    /// The permissions this user holds when active.
    pub fn role(&self) -> Perms {
        self.role
    }

    /// Takes the permissions of the role; fails (holding nothing) on a conflict.
    pub fn activate(&mut self) -> Result<(), BlockError> {
        self.set(self.role)
    }

    /// The locked file's path as it was given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The permissions currently locked.
    pub fn perms(&self) -> Perms {
        self.perms
    }

    /// Changes the locked permissions (e.g. to [`Perms::INACTIVE`] at a switchover and back).
    /// On a conflict the previous permissions are restored and the error returned.
    pub fn set(&mut self, perms: Perms) -> Result<(), BlockError> {
        let io_err = |source| BlockError::Lock {
            path: self.path.clone(),
            source,
        };
        self.apply(perms).map_err(io_err)?;
        if let Err(e) = self.check(perms) {
            // Best effort: go back to what we held (dropping permissions cannot conflict).
            let _ = self.apply(self.perms);
            return Err(e);
        }
        self.perms = perms;
        Ok(())
    }

    /// Sets (or clears) our bytes to match `perms`.
    fn apply(&self, perms: Perms) -> io::Result<()> {
        for (bit, _) in PERM_NAMES.iter().enumerate() {
            let mask = 1u8 << bit;
            let held = perms.held & mask != 0;
            let unshared = perms.unshared & mask != 0;
            lock_byte(&self.file, PERM_BASE + bit as i64, held)?;
            lock_byte(&self.file, SHARED_BASE + bit as i64, unshared)?;
        }
        Ok(())
    }

    /// Whether another open file description holds a byte that conflicts with `perms`: first
    /// the permissions we want, then those we do not share (QEMU's order, so the error names
    /// the same lock).
    fn check(&self, perms: Perms) -> Result<(), BlockError> {
        let tests = [
            (perms.held, SHARED_BASE, ""),
            (perms.unshared, PERM_BASE, "shared "),
        ];
        for (bits, base, kind) in tests {
            for (bit, name) in PERM_NAMES.iter().enumerate() {
                if bits & (1 << bit) == 0 {
                    continue;
                }
                let taken = locked_by_other(&self.file, base + bit as i64).map_err(|source| {
                    BlockError::Lock {
                        path: self.path.clone(),
                        source,
                    }
                })?;
                if taken {
                    return Err(BlockError::Locked {
                        path: self.path.clone(),
                        lock: format!("{kind}\"{name}\""),
                    });
                }
            }
        }
        Ok(())
    }
}

/// An imago open gate that locks every file imago opens before it opens it: read-write files as
/// [`Perms::WRITER`], read-only ones (backing files) as [`Perms::READER`], as QEMU does.
#[derive(Clone, Default)]
pub(crate) struct LockingGate {
    state: Arc<Mutex<GateState>>,
}

#[derive(Default)]
struct GateState {
    /// Locks the caller already holds on files of the chain: used instead of taking a second
    /// one, which would conflict with the first.
    held: Vec<ImageLock>,
    /// Open every file inactive (see [`ImageLock::acquire_inactive`]).
    inactive: bool,
    locks: Vec<ImageLock>,
    /// The first lock failure, typed (imago only carries `io::Error`s).
    error: Option<BlockError>,
}

impl LockingGate {
    /// A gate that reuses the `held` locks for their files instead of locking them again and
    /// opens every other file inactive if `inactive`.
    pub(crate) fn new(held: Vec<ImageLock>, inactive: bool) -> LockingGate {
        let gate = LockingGate::default();
        {
            let mut state = gate.state.lock().unwrap_or_else(|p| p.into_inner());
            state.held = held;
            state.inactive = inactive;
        }
        gate
    }

    /// The locks taken by an open that succeeded.
    pub(crate) fn into_locks(self) -> Vec<ImageLock> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut state.locks)
    }

    /// The lock failure that made an open fail, if that was the cause.
    pub(crate) fn take_error(&self) -> Option<BlockError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.error.take()
    }
}

impl<S: Storage + 'static> ImplicitOpenGate<S> for LockingGate {
    fn open_format<F: FormatDriverBuilder<S>>(
        &mut self,
        builder: F,
    ) -> io::Result<FormatAccess<S>> {
        Ok(FormatAccess::new(builder.open(self.clone())?))
    }

    fn open_storage(&mut self, opts: StorageOpenOptions) -> io::Result<S> {
        if let Some(path) = opts.get_filename() {
            let perms = if opts.get_writable() {
                Perms::WRITER
            } else {
                Perms::READER
            };
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let reuse = state
                .held
                .iter()
                .position(|l| l.path() == path && l.role() == perms);
            let lock = match reuse {
                Some(i) => Ok(state.held.swap_remove(i)),
                None if state.inactive => ImageLock::acquire_inactive(path, perms),
                None => ImageLock::acquire(path, perms),
            };
            match lock {
                Ok(lock) => state.locks.push(lock),
                Err(e) => {
                    let msg = e.to_string();
                    state.error.get_or_insert(e);
                    return Err(io::Error::new(io::ErrorKind::WouldBlock, msg));
                }
            }
        }
        S::open(opts)
    }
}

fn flock(kind: libc::c_int, offset: i64) -> libc::flock {
    // SAFETY: `flock` is a plain C struct of integers; all-zero is a valid value (and l_pid must
    // be 0 for OFD locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = offset as libc::off_t;
    fl.l_len = 1;
    fl
}

/// Takes (`on`) or releases a shared OFD lock on one byte.
fn lock_byte(file: &File, offset: i64, on: bool) -> io::Result<()> {
    let fl = flock(if on { libc::F_RDLCK } else { libc::F_UNLCK }, offset);
    // SAFETY: F_OFD_SETLK on an fd we own, reading a fully initialised `flock` that outlives
    // the call; it does not block.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether another open file description holds any lock on the byte at `offset` (QEMU's
/// `qemu_lock_fd_test` with an exclusive lock).
fn locked_by_other(file: &File, offset: i64) -> io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK, offset);
    // SAFETY: F_OFD_GETLK on an fd we own; the kernel writes into `fl`, a valid, exclusively
    // borrowed `flock`.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_exclude_each_other_readers_share() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.img");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let r1 = ImageLock::acquire(&path, Perms::READER).unwrap();
        let _r2 = ImageLock::acquire(&path, Perms::READER).unwrap();
        let err = ImageLock::acquire(&path, Perms::WRITER).unwrap_err();
        assert!(
            err.to_string().contains("\"write\" lock"),
            "{err}: readers do not share write"
        );
        drop(r1);
        drop(_r2);
        let mut w = ImageLock::acquire(&path, Perms::WRITER).unwrap();
        let err = ImageLock::acquire(&path, Perms::READER).unwrap_err();
        assert!(err.to_string().contains("shared \"write\" lock"), "{err}");
        // Inactive: a second writer may take over; the first cannot come back while it holds.
        w.set(Perms::INACTIVE).unwrap();
        let w2 = ImageLock::acquire(&path, Perms::WRITER).unwrap();
        assert!(w.set(Perms::WRITER).is_err());
        assert_eq!(w.perms(), Perms::INACTIVE);
        drop(w2);
        w.set(Perms::WRITER).unwrap();
    }
}
