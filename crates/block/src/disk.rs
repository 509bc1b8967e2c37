//! [`Disk`]: one drive of the VM, opened with imago, shared (as `Arc<Disk>`) by the guest's
//! disk writer and the migration thread.
//!
//! * I/O: [`Disk::read`], [`Disk::write`], [`Disk::write_zeroes`], [`Disk::flush`] at byte
//!   offsets; every guest write marks its 1 MiB chunks in the [`DirtyBitmap`] after the data
//!   reached the image (see `dirty` for why that order).
//! * Allocation: [`Disk::block_status`] / [`Disk::is_allocated`] look at the *top* image only —
//!   data that lives in a qcow2 backing file is not allocated here (what `migrate -i` needs).
//! * Incoming migration: [`Disk::begin_incoming`] switches the disk to a staging copy next to
//!   the image (`.<name>.livemig-incoming`), [`Disk::commit_incoming`] renames it over the image
//!   once the whole stream loaded, [`Disk::abort_incoming`] deletes it and reopens the original.
//!   The user's image is never half-written; a crash leaves at worst a stale staging file, which
//!   the next `begin_incoming` removes.
//!
//! The image handle sits behind a `RwLock` that I/O takes shared (imago's `FormatAccess` is
//! `Sync` and does its own locking); only the staging switches take it exclusively.

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
use crate::lock::{ImageLock, LockingGate};
use crate::spec::{DiskFormat, DriveSpec};
use crate::staging;

/// qcow2 magic: `QFI\xfb`.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Comparison granularity used for raw images (they have no clusters).
const RAW_GRANULARITY: u64 = 64 << 10;

struct Active {
    access: FormatAccess<File>,
    /// QEMU-compatible locks on the image and its backing chain (and the staging copy).
    locks: Vec<ImageLock>,
    /// Staging file in use while an incoming migration writes the disk.
    staging: Option<PathBuf>,
}

/// One drive.
pub struct Disk {
    spec: DriveSpec,
    size: u64,
    cluster_size: u64,
    image: RwLock<Active>,
    dirty: DirtyBitmap,
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
fn open_access(
    path: &Path,
    format: DiskFormat,
) -> Result<(FormatAccess<File>, Vec<ImageLock>), BlockError> {
    let gate = LockingGate::default();
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
    /// Opens the image of `spec` read-write (a qcow2 backing chain is opened read-only).
    pub fn open(spec: &DriveSpec) -> Result<Self, BlockError> {
        let cluster_size = probe(&spec.path, spec.format)?;
        let (access, locks) = open_access(&spec.path, spec.format)?;
        let size = access.size();
        Ok(Self {
            spec: spec.clone(),
            size,
            cluster_size,
            image: RwLock::new(Active {
                access,
                locks,
                staging: None,
            }),
            dirty: DirtyBitmap::new(size),
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
        self.active()
            .access
            .write(data, offset)
            .map_err(self.io_err("write"))?;
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
        self.active()
            .access
            .write_zeroes(offset, len)
            .map_err(self.io_err("write zeroes"))?;
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

    /// Whether an incoming migration is writing to a staging copy.
    pub fn is_incoming(&self) -> bool {
        self.active().staging.is_some()
    }

    /// The staging path used for incoming migrations: `.<file name>.livemig-incoming` next to
    /// the image (same directory, so a relative qcow2 backing file name resolves the same).
    pub fn staging_path(&self) -> PathBuf {
        staging::staging_path(&self.spec.path)
    }

    /// Starts an incoming migration: copies the image (sparsely) to the staging path and
    /// directs all I/O there. The image itself is not modified until
    /// [`commit_incoming`](Self::commit_incoming).
    pub fn begin_incoming(&self) -> Result<(), BlockError> {
        let mut active = self.image.write().unwrap_or_else(|p| p.into_inner());
        if active.staging.is_some() {
            return Err(BlockError::Staging {
                id: self.spec.id.clone(),
                what: "an incoming migration is already writing this drive",
            });
        }
        active.access.flush().map_err(self.io_err("flush"))?;
        let tmp = self.staging_path();
        staging::sparse_copy(&self.spec.path, &tmp).map_err(self.io_err("create staging copy"))?;
        let (access, locks) = match open_access(&tmp, self.spec.format) {
            Ok(a) => a,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if access.size() != self.size {
            let _ = fs::remove_file(&tmp);
            return Err(BlockError::Staging {
                id: self.spec.id.clone(),
                what: "the staging copy has another size than the image",
            });
        }
        active.access = access;
        active.locks.extend(locks);
        active.staging = Some(tmp);
        Ok(())
    }

    /// Finishes an incoming migration: flushes the staging copy and atomically renames it over
    /// the image. I/O continues on the same (now renamed) file.
    pub fn commit_incoming(&self) -> Result<(), BlockError> {
        let mut active = self.image.write().unwrap_or_else(|p| p.into_inner());
        let Some(tmp) = active.staging.clone() else {
            return Err(BlockError::Staging {
                id: self.spec.id.clone(),
                what: "no incoming migration to commit",
            });
        };
        active.access.flush().map_err(self.io_err("flush"))?;
        active.access.sync().map_err(self.io_err("sync"))?;
        fs::rename(&tmp, &self.spec.path).map_err(self.io_err("rename staging copy"))?;
        staging::sync_parent(&self.spec.path);
        active.staging = None;
        Ok(())
    }

    /// Abandons an incoming migration: deletes the staging copy and reopens the untouched
    /// image. Does nothing when no incoming migration is active.
    pub fn abort_incoming(&self) -> Result<(), BlockError> {
        let mut active = self.image.write().unwrap_or_else(|p| p.into_inner());
        let Some(tmp) = active.staging.take() else {
            return Ok(());
        };
        // Our own locks on the image would make the reopen conflict with ourselves.
        active.locks.clear();
        let reopened = open_access(&self.spec.path, self.spec.format);
        let removed = fs::remove_file(&tmp);
        match reopened {
            Ok((access, locks)) => {
                active.access = access;
                active.locks = locks;
            }
            Err(e) => {
                tracing::error!(drive = %self.spec.id, "cannot reopen the image after a failed incoming migration");
                // The staging handle stays open (its file is unlinked): I/O keeps working, but
                // nothing reaches the image.
                removed.map_err(self.io_err("remove staging copy"))?;
                return Err(e);
            }
        }
        removed.map_err(self.io_err("remove staging copy"))
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let active = self.image.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(tmp) = active.staging.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}
