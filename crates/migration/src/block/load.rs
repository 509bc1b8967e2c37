//! Destination side of block migration: validates each record against the local drives, then
//! writes the chunk into the drive's image, in place.
//!
//! Per DATA/ZERO record, before anything is written:
//! 1. the device name must be a local drive ("Unknown block device"),
//! 2. the chunk must start inside the drive (sector × 512 < size, no overflow).
//!
//! On the first record of a drive, the drive's image is journalled ([`Disk::begin_incoming`]:
//! an undo journal next to the image), then written in place; [`BlockLoader::commit`] (at
//! `load_complete`) drops the journals. A failed load leaves every image as it was
//! ([`BlockLoader::abort`] replays the journals).
//!
//! The chunk is applied cluster by cluster (the drive's cluster size, or 1 MiB if larger): a
//! cluster whose received content equals what the drive reads there already is skipped, an
//! all-zero cluster becomes write-zeroes, anything else is written. So under `migrate -i` a
//! cluster the source read through from the shared base is not copied into the destination's
//! overlay, and the overlay ends up with the clusters the source overlay holds (QEMU writes
//! every cluster of the chunk).

use std::sync::Arc;

use block::{Disk, CHUNK_SIZE};
use savevm::block::{self as wire, BlockRecord, BDRV_SECTOR_SIZE};
use savevm::qemu_file::QemuFileReader;

use super::error::BlockMigrationError;
use super::save::is_zero;
use crate::error::MigrationError;

/// Destination-side state for one incoming stream.
pub struct BlockLoader {
    disks: Vec<Arc<Disk>>,
    staged: Vec<bool>,
    buf: Vec<u8>,
    current: Vec<u8>,
    last_progress: Option<u64>,
}

impl BlockLoader {
    /// A loader writing into `disks`.
    pub fn new(disks: Vec<Arc<Disk>>) -> Self {
        Self {
            staged: vec![false; disks.len()],
            disks,
            buf: vec![0u8; CHUNK_SIZE as usize],
            current: vec![0u8; CHUNK_SIZE as usize],
            last_progress: None,
        }
    }

    /// Resets for a new stream, discarding what a previous failed stream left.
    pub fn setup(&mut self) -> Result<(), BlockMigrationError> {
        self.abort()?;
        self.last_progress = None;
        Ok(())
    }

    /// Validates a chunk address; returns (drive index, byte offset).
    fn target(&self, device: &str, sector: u64) -> Result<(usize, u64), BlockMigrationError> {
        let idx = self
            .disks
            .iter()
            .position(|d| d.id() == device)
            .ok_or_else(|| BlockMigrationError::UnknownDevice(device.to_string()))?;
        let size = self.disks[idx].size();
        match sector.checked_mul(BDRV_SECTOR_SIZE) {
            Some(offset) if offset < size => Ok((idx, offset)),
            _ => Err(BlockMigrationError::OutOfRange {
                device: device.to_string(),
                sector,
                size,
            }),
        }
    }

    fn activate(&mut self, idx: usize) -> Result<(), BlockMigrationError> {
        if !self.staged[idx] {
            let disk = &self.disks[idx];
            tracing::info!(drive = disk.id(), "receiving block device image");
            // A destination opens its images inactive; a copied image is its own to write.
            disk.activate()?;
            disk.begin_incoming()?;
            self.staged[idx] = true;
        }
        Ok(())
    }

    /// Writes the first `len` bytes of `self.buf` at `offset`, cluster by cluster.
    fn apply(&mut self, idx: usize, offset: u64, len: u64) -> Result<(), BlockMigrationError> {
        let disk = &self.disks[idx];
        let step = disk.cluster_size().min(CHUNK_SIZE);
        let mut pos = 0;
        while pos < len {
            // Clusters are aligned to the disk, and chunks to 1 MiB, a multiple of the step.
            let n = (step - (offset + pos) % step).min(len - pos);
            let (start, end) = (pos as usize, (pos + n) as usize);
            disk.read(offset + pos, &mut self.current[start..end])?;
            let data = &self.buf[start..end];
            if self.current[start..end] != *data {
                if is_zero(data) {
                    disk.write_zeroes(offset + pos, n)?;
                } else {
                    disk.write(offset + pos, data)?;
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// Loads one section body (records up to EOS).
    pub fn load(&mut self, f: &mut QemuFileReader) -> Result<(), MigrationError> {
        loop {
            match wire::read_record(f)? {
                BlockRecord::Data { sector, device } => {
                    let (idx, offset) = self
                        .target(&device, sector)
                        .map_err(MigrationError::BlockLoad)?;
                    // The payload is always a full chunk, also past the end of the drive.
                    f.get_buffer(&mut self.buf)?;
                    let len = (self.disks[idx].size() - offset).min(CHUNK_SIZE);
                    self.activate(idx).map_err(MigrationError::BlockLoad)?;
                    self.apply(idx, offset, len)
                        .map_err(MigrationError::BlockLoad)?;
                }
                BlockRecord::Zero { sector, device } => {
                    let (idx, offset) = self
                        .target(&device, sector)
                        .map_err(MigrationError::BlockLoad)?;
                    self.buf.fill(0);
                    let len = (self.disks[idx].size() - offset).min(CHUNK_SIZE);
                    self.activate(idx).map_err(MigrationError::BlockLoad)?;
                    self.apply(idx, offset, len)
                        .map_err(MigrationError::BlockLoad)?;
                }
                BlockRecord::Progress(pct) => {
                    if self.last_progress != Some(pct) {
                        tracing::debug!(percent = pct, "receiving block device images");
                        self.last_progress = Some(pct);
                    }
                }
                BlockRecord::Eos => return Ok(()),
            }
        }
    }

    /// The whole stream loaded: writes every received image to stable storage, so a full or
    /// failing disk shows before the destination reports success. The journals stay until
    /// [`commit`](Self::commit).
    pub fn prepare(&mut self) -> Result<(), BlockMigrationError> {
        for (disk, staged) in self.disks.iter().zip(&self.staged) {
            if *staged {
                disk.flush()?;
            }
        }
        Ok(())
    }

    /// The guest starts here: drops every drive's undo journal.
    pub fn commit(&mut self) -> Result<(), BlockMigrationError> {
        for (disk, staged) in self.disks.iter().zip(self.staged.iter_mut()) {
            if *staged {
                disk.commit_incoming()?;
                *staged = false;
                tracing::info!(drive = disk.id(), "block device image received");
            }
        }
        Ok(())
    }

    /// Replays every drive's undo journal; the images are as they were before the stream.
    pub fn abort(&mut self) -> Result<(), BlockMigrationError> {
        let mut first = None;
        for (disk, staged) in self.disks.iter().zip(self.staged.iter_mut()) {
            if let Err(e) = disk.abort_incoming() {
                first.get_or_insert(e);
            }
            *staged = false;
        }
        first.map_or(Ok(()), |e| Err(e.into()))
    }
}
