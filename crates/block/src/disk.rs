//! [`Disk`]: one drive of the VM, opened with imago, shared (as `Arc<Disk>`) by the guest's
//! disk writer and the migration thread.
//!
//! * I/O: [`Disk::read`], [`Disk::write`], [`Disk::write_zeroes`], [`Disk::flush`] at byte
//!   offsets; every guest write marks its 1 MiB chunks in the [`DirtyBitmap`] after the data
//!   reached the image (see `dirty` for why that order).
//! * Allocation: [`Disk::block_status`] / [`Disk::is_allocated`] look at the *top* image only —
//!   data that lives in a qcow2 backing file is not allocated here (what `migrate -i` needs).
//! * Locking: every file of the chain is locked as QEMU locks it (see `lock`) for as long as
//!   the `Disk` lives.
//! * Incoming migration: [`Disk::begin_incoming`] journals the image (see `undo`) and the
//!   migration then writes the image in place, so it keeps its inode, owner, mode, xattrs and
//!   hard links; [`Disk::commit_incoming`] drops the journal once the whole stream loaded,
//!   [`Disk::abort_incoming`] (or dropping the disk) replays it, so a failed migration leaves
//!   the image as it was. A journal left by a killed process is replayed by the next
//!   [`Disk::open`].
//!
//! The image handle sits behind a `RwLock` that I/O takes shared (imago's `FormatAccess` is
//! `Sync` and does its own locking); only the incoming-migration switches take it exclusively.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use imago::file::File;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{FormatAccess, FormatDriverBuilder, ShallowMapping};

use crate::dirty::DirtyBitmap;
use crate::error::BlockError;
use crate::lock::{ImageLock, LockingGate, Perms};
use crate::spec::{DiskFormat, DriveSpec};
use crate::undo;

/// qcow2 magic: `QFI\xfb`.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Comparison granularity used for raw images (they have no clusters).
const RAW_GRANULARITY: u64 = 64 << 10;

struct Active {
    access: FormatAccess<File>,
    /// QEMU-compatible locks on the image and its backing chain.
    locks: Vec<ImageLock>,
    /// An incoming migration is writing the image; its undo journal exists.
    incoming: bool,
    /// The image is inactive: it holds no locks and refuses writes (see [`Disk::inactivate`]).
    inactive: bool,
}

/// One drive.
pub struct Disk {
    spec: DriveSpec,
    size: u64,
    cluster_size: u64,
    image: RwLock<Active>,
    dirty: DirtyBitmap,
    /// The undo journal's path (see `undo`).
    journal: PathBuf,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("id", &self.spec.id)
            .field("path", &self.spec.path)
            .field("format", &self.spec.format)
            .field("size", &self.size)
            .finish()
    }
}

/// Opens the image read-write (its backing chain read-only), locking every file as QEMU does.
/// `held` are locks the caller already holds on files of the chain; with `inactive` the other
/// files are opened without taking their locks yet.
fn open_access(
    path: &Path,
    format: DiskFormat,
    held: Vec<ImageLock>,
    inactive: bool,
) -> Result<(FormatAccess<File>, Vec<ImageLock>), BlockError> {
    let gate = LockingGate::new(held, inactive);
    let opened = match format {
        DiskFormat::Qcow2 => Qcow2::<File>::builder_path(path)
            .write(true)
            .open(gate.clone())
            .map(FormatAccess::new),
        DiskFormat::Raw => Raw::<File>::builder_path(path)
            .write(true)
            .open(gate.clone())
            .map(FormatAccess::new),
    };
    match opened {
        Ok(access) => Ok((access, gate.into_locks())),
        Err(source) => Err(gate.take_error().unwrap_or(BlockError::Open {
            path: path.to_path_buf(),
            format: format.as_str(),
            source,
        })),
    }
}

/// Reads the first bytes of the file: the format check and the qcow2 cluster size.
fn probe(path: &Path, format: DiskFormat) -> Result<u64, BlockError> {
    let mut head = [0u8; 24];
    let mut n = 0;
    let mut f = fs::File::open(path).map_err(|source| BlockError::Open {
        path: path.to_path_buf(),
        format: format.as_str(),
        source,
    })?;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(BlockError::Open {
                    path: path.to_path_buf(),
                    format: format.as_str(),
                    source,
                })
            }
        }
    }
    let is_qcow2 = n >= 4 && head[..4] == QCOW2_MAGIC;
    match format {
        DiskFormat::Raw if is_qcow2 => Err(BlockError::FormatMismatch(path.to_path_buf())),
        DiskFormat::Raw => Ok(RAW_GRANULARITY),
        DiskFormat::Qcow2 => {
            // cluster_bits: be32 at offset 20; imago validates the header when it opens it.
            let bits = u32::from_be_bytes([head[20], head[21], head[22], head[23]]);
            Ok(if (9..=21).contains(&bits) {
                1 << bits
            } else {
                RAW_GRANULARITY
            })
        }
    }
}

impl Disk {
    /// Opens the image of `spec` read-write (a qcow2 backing chain is opened read-only),
    /// locking every file as QEMU does. An undo journal left by an incoming migration that was
    /// killed is replayed first, so the image is as it was before that migration.
    pub fn open(spec: &DriveSpec) -> Result<Self, BlockError> {
        let lock = ImageLock::acquire(&spec.path, Perms::WRITER)?;
        let journal = undo::journal_path(&spec.path).map_err(|source| BlockError::Open {
            path: spec.path.clone(),
            format: spec.format.as_str(),
            source,
        })?;
        replay_left_journal(spec, &journal)?;
        Self::open_with(spec, vec![lock], false, journal)
    }

    /// Opens the image of `spec` *inactive*, as QEMU opens the images of an incoming migration
    /// on shared storage: no lock is taken (the source still writes the image) and writes are
    /// refused until [`activate`](Self::activate). No undo journal is replayed: one next to the
    /// image belongs to whoever has it active.
    pub fn open_inactive(spec: &DriveSpec) -> Result<Self, BlockError> {
        let journal = undo::journal_path(&spec.path).map_err(|source| BlockError::Open {
            path: spec.path.clone(),
            format: spec.format.as_str(),
            source,
        })?;
        Self::open_with(spec, Vec::new(), true, journal)
    }

    fn open_with(
        spec: &DriveSpec,
        held: Vec<ImageLock>,
        inactive: bool,
        journal: PathBuf,
    ) -> Result<Self, BlockError> {
        let cluster_size = probe(&spec.path, spec.format)?;
        let (access, locks) = open_access(&spec.path, spec.format, held, inactive)?;
        let size = access.size();
        Ok(Self {
            spec: spec.clone(),
            size,
            cluster_size,
            image: RwLock::new(Active {
                access,
                locks,
                incoming: false,
                inactive,
            }),
            dirty: DirtyBitmap::new(size),
            journal,
        })
    }

    /// Drive id (the device name on the migration wire).
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// Image path.
    pub fn path(&self) -> &Path {
        &self.spec.path
    }

    /// Image format.
    pub fn format(&self) -> DiskFormat {
        self.spec.format
    }

    /// The drive's option.
    pub fn spec(&self) -> &DriveSpec {
        &self.spec
    }

    /// Virtual disk size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// qcow2 cluster size; for raw images a 64 KiB comparison granularity.
    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    /// The dirty-chunk bitmap.
    pub fn dirty(&self) -> &DirtyBitmap {
        &self.dirty
    }

    fn active(&self) -> RwLockReadGuard<'_, Active> {
        self.image.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The image for a write: refused while inactive.
    fn writable(&self) -> Result<RwLockReadGuard<'_, Active>, BlockError> {
        let active = self.active();
        if active.inactive {
            return Err(BlockError::Staging {
                id: self.spec.id.clone(),
                what: "the drive is inactive (migrated away, or not yet migrated in)",
            });
        }
        Ok(active)
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if offset <= self.size && len <= self.size - offset {
            Ok(())
        } else {
            Err(BlockError::OutOfRange {
                id: self.spec.id.clone(),
                offset,
                len,
                size: self.size,
            })
        }
    }

    fn io_err(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> BlockError + '_ {
        move |source| BlockError::Io {
            id: self.spec.id.clone(),
            what,
            source,
        }
    }

    /// Reads `buf.len()` bytes at `offset` (the whole range must lie inside the disk).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.active()
            .access
            .read(buf, offset)
            .map_err(self.io_err("read"))
    }

    /// Writes `data` at `offset`, then marks the written chunks dirty (if tracking).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        self.check(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let active = self.writable()?;
        active
            .access
            .write(data, offset)
            .map_err(self.io_err("write"))?;
        drop(active);
        self.dirty.mark(offset, data.len() as u64);
        Ok(())
    }

    /// Makes `offset..offset+len` read as zeroes (qcow2: zero clusters where aligned), then
    /// marks the chunks dirty (if tracking).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let active = self.writable()?;
        active
            .access
            .write_zeroes(offset, len)
            .map_err(self.io_err("write zeroes"))?;
        drop(active);
        self.dirty.mark(offset, len);
        Ok(())
    }

    /// Allocation status in the top image at `offset`: whether the range starting there is
    /// allocated in this image (data, an explicit zero cluster, or compressed data — not data
    /// of a backing file, not an unallocated hole) and for how many bytes (at most `max_len`)
    /// the answer holds. Raw images are allocated everywhere (as in QEMU).
    pub fn block_status(&self, offset: u64, max_len: u64) -> Result<(bool, u64), BlockError> {
        let max_len = max_len.min(self.size.saturating_sub(offset));
        if max_len == 0 {
            return Ok((false, 0));
        }
        let active = self.active();
        let (mapping, len) = active
            .access
            .get_shallow_mapping(offset, max_len)
            .map_err(self.io_err("block status"))?;
        let allocated = match mapping {
            ShallowMapping::Raw { .. } | ShallowMapping::Special { .. } => true,
            ShallowMapping::Zero { explicit, .. } => explicit,
            ShallowMapping::Indirect { .. } | ShallowMapping::Eof { .. } => false,
            // A mapping kind newer than this code: sending too much is safe, too little is not.
            _ => true,
        };
        Ok((allocated, len.clamp(1, max_len)))
    }

    /// Whether any byte of `offset..offset+len` is allocated in the top image.
    pub fn is_allocated(&self, offset: u64, len: u64) -> Result<bool, BlockError> {
        self.check(offset, len)?;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let (allocated, n) = self.block_status(pos, end - pos)?;
            if allocated {
                return Ok(true);
            }
            pos += n;
        }
        Ok(false)
    }

    /// Writes imago's cached metadata and syncs the image to stable storage.
    pub fn flush(&self) -> Result<(), BlockError> {
        let active = self.active();
        active.access.flush().map_err(self.io_err("flush"))?;
        active.access.sync().map_err(self.io_err("sync"))
    }

    /// Whether an incoming migration is writing the image.
    pub fn is_incoming(&self) -> bool {
        self.active().incoming
    }

    /// The undo journal's path: `.<file name>.livemig-undo` next to the image file (symlinks
    /// resolved). It exists only while an incoming migration writes the image.
    pub fn journal_path(&self) -> &Path {
        &self.journal
    }

    fn journal_err(&self) -> impl FnOnce(std::io::Error) -> BlockError + '_ {
        move |source| BlockError::Journal {
            path: self.journal.clone(),
            source,
        }
    }

    /// Starts an incoming migration: writes the undo journal (a sparse copy of the image file)
    /// and syncs it; from then on writes go to the image in place. A file or symlink already at
    /// the journal path is refused and left alone.
    pub fn begin_incoming(&self) -> Result<(), BlockError> {
        let mut active = self.image.write().unwrap_or_else(|p| p.into_inner());
        if active.incoming {
            return Err(BlockError::Staging {
                id: self.spec.id.clone(),
                what: "an incoming migration is already writing this drive",
            });
        }
        active.access.flush().map_err(self.io_err("flush"))?;
        active.access.sync().map_err(self.io_err("sync"))?;
        undo::create(&self.spec.path, &self.journal).map_err(self.journal_err())?;
        active.incoming = true;
        Ok(())
    }

    /// Finishes an incoming migration: syncs the image and removes the undo journal.
    pub fn commit_incoming(&self) -> Result<(), BlockError> {
        let mut active = self.image.write().unwrap_or_else(|p| p.into_inner());
        if !active.incoming {
            return Err(BlockError::Staging {
                id: self.spec.id.clone(),
                what: "no incoming migration to commit",
            });
        }
        active.access.flush().map_err(self.io_err("flush"))?;
        active.access.sync().map_err(self.io_err("sync"))?;
        undo::discard(&self.journal).map_err(self.journal_err())?;
        active.incoming = false;
        Ok(())
    }

    /// Abandons an incoming migration: replays the undo journal (the image is as it was before
    /// [`begin_incoming`](Self::begin_incoming)) and reopens the image, whose cached metadata
    /// is stale. Does nothing when no incoming migration is active.
    pub fn abort_incoming(&self) -> Result<(), BlockError> {
        let mut active = self.image.write().unwrap_or_else(|p| p.into_inner());
        if !active.incoming {
            return Ok(());
        }
        // Nothing imago caches may reach the file after the replay.
        if let Err(e) = active.access.flush() {
            tracing::warn!(drive = %self.spec.id, error = %e, "flush before replaying the undo journal failed");
        }
        undo::replay(&self.spec.path, &self.journal).map_err(self.journal_err())?;
        active.incoming = false;
        // Reopen with the locks we hold, so nobody can slip in between.
        let held = std::mem::take(&mut active.locks);
        let (access, locks) = open_access(&self.spec.path, self.spec.format, held, false)?;
        active.access = access;
        active.locks = locks;
        Ok(())
    }

    /// Whether the image is inactive (see [`inactivate`](Self::inactivate)).
    pub fn is_inactive(&self) -> bool {
        self.active().inactive
    }

    /// Gives the image up at a migration's switchover on shared storage (QEMU's
    /// `bdrv_inactivate_all` on the source): flushes and syncs it, then drops every lock, so the
    /// destination can [`activate`](Self::activate) it. Writes are refused from then on.
    pub fn inactivate(&self) -> Result<(), BlockError> {
        let mut active = self.image.write().unwrap_or_else(|p| p.into_inner());
        if active.inactive {
            return Ok(());
        }
        active.access.flush().map_err(self.io_err("flush"))?;
        active.access.sync().map_err(self.io_err("sync"))?;
        for lock in &mut active.locks {
            lock.set(Perms::INACTIVE)?;
        }
        active.inactive = true;
        Ok(())
    }

    /// Takes the image (back) over (QEMU's `bdrv_activate_all`: the destination after the
    /// switchover, or the source after a failed migration): takes the locks of every file of
    /// the chain — failing with [`BlockError::Locked`] while another process still holds it —
    /// replays an undo journal a killed incoming migration left, and reopens the image, since
    /// the other side may have changed it.
    pub fn activate(&self) -> Result<(), BlockError> {
        let mut active = self.image.write().unwrap_or_else(|p| p.into_inner());
        if !active.inactive {
            return Ok(());
        }
        for i in 0..active.locks.len() {
            if let Err(e) = active.locks[i].activate() {
                for lock in &mut active.locks[..i] {
                    let _ = lock.set(Perms::INACTIVE);
                }
                return Err(e);
            }
        }
        // With the write lock held no live process owns a journal next to the image: one left
        // by a killed incoming migration is replayed, as `open` does.
        if let Err(e) = replay_left_journal(&self.spec, &self.journal) {
            for lock in &mut active.locks {
                let _ = lock.set(Perms::INACTIVE);
            }
            return Err(e);
        }
        let held = std::mem::take(&mut active.locks);
        let (access, locks) = open_access(&self.spec.path, self.spec.format, held, false)?;
        if access.size() != self.size {
            return Err(BlockError::Staging {
                id: self.spec.id.clone(),
                what: "the image changed size while it was inactive",
            });
        }
        active.access = access;
        active.locks = locks;
        active.inactive = false;
        Ok(())
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let active = self.image.get_mut().unwrap_or_else(|p| p.into_inner());
        if active.incoming {
            let _ = active.access.flush();
            if let Err(e) = undo::replay(&self.spec.path, &self.journal) {
                tracing::error!(drive = %self.spec.id, error = %e, "cannot undo an unfinished incoming migration; the next open retries");
            }
        }
    }
}

/// Replays the undo journal a killed incoming migration left next to `spec`'s image, if any.
/// The caller holds the image's write lock, so no live process owns that journal.
fn replay_left_journal(spec: &DriveSpec, journal: &Path) -> Result<(), BlockError> {
    let replayed = undo::replay(&spec.path, journal).map_err(|source| BlockError::Journal {
        path: journal.to_path_buf(),
        source,
    })?;
    if replayed {
        tracing::warn!(drive = %spec.id, "replayed the undo journal of an interrupted incoming migration");
    }
    Ok(())
}
