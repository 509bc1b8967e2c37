//! Source side of block migration: the bulk pass over every drive, then dirty chunks.
//!
//! ```text
//! setup     dirty tracking on for every drive; body = EOS
//! iterate   while not rate limited and < 50 ms:
//!             bulk unfinished → send the next chunk of the first unfinished drive
//!                               (-i: skip what is not allocated in the top image)
//!             else            → send the next dirty chunk (round robin over the drives)
//!           progress record whenever the bulk percentage changes; EOS
//! complete  (guest stopped) rest of the bulk, every dirty chunk, progress 100, EOS
//! ```
//!
//! A chunk's dirty bit is cleared *before* it is read, so a guest write racing with the read
//! sets it again and the chunk is re-sent (see `block::dirty`). A chunk whose 1 MiB buffer is
//! all zero is sent as a ZERO record (no payload); see the module doc of [`super`] for why.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use block::{Disk, CHUNK_SIZE};
use savevm::block as wire;
use savevm::qemu_file::QemuFileWriter;

use super::error::BlockMigrationError;
use crate::counters::DiskCounters;

/// An iteration returns to the migration thread after this long (as RAM does).
const MAX_ITERATION_TIME: Duration = Duration::from_millis(50);

/// Allocation queries look at most this far per call (QEMU's `MAX_IS_ALLOCATED_SEARCH`).
const MAX_ALLOCATION_SEARCH: u64 = 32 << 20;

const SECTOR: u64 = savevm::block::BDRV_SECTOR_SIZE;

struct Device {
    disk: Arc<Disk>,
    /// Next byte offset of the bulk pass.
    cursor: u64,
    /// Bytes the bulk pass has covered.
    completed: u64,
    bulk_done: bool,
}

/// Source-side block-migration state of one migration.
pub struct BlockSaver {
    devices: Vec<Device>,
    shared_base: bool,
    bulk_completed: bool,
    /// Dirty-phase position: device index and chunk.
    dirty_pos: (usize, u64),
    last_progress: Option<u64>,
    buf: Vec<u8>,
    counters: Arc<DiskCounters>,
}

/// True when every byte is zero (word-wise; no `unsafe` needed).
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let words = buf.chunks_exact(8);
    let tail = words.remainder();
    words
        .map(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
        .fold(0u64, |acc, w| acc | w)
        == 0
        && tail.iter().all(|&b| b == 0)
}

impl BlockSaver {
    /// Starts dirty tracking on every drive. `shared_base` is `migrate -i`.
    pub fn new(disks: &[Arc<Disk>], shared_base: bool, counters: Arc<DiskCounters>) -> Self {
        for d in disks {
            d.dirty().start();
        }
        let devices = disks
            .iter()
            .map(|d| Device {
                disk: d.clone(),
                cursor: 0,
                completed: 0,
                bulk_done: d.size() == 0,
            })
            .collect();
        let mut s = Self {
            devices,
            shared_base,
            bulk_completed: false,
            dirty_pos: (0, 0),
            last_progress: None,
            buf: vec![0u8; CHUNK_SIZE as usize],
            counters,
        };
        s.bulk_completed = s.devices.iter().all(|d| d.bulk_done);
        s.counters.active.store(true, Ordering::Relaxed);
        s.update_counters();
        s
    }

    fn total(&self) -> u64 {
        self.devices.iter().map(|d| d.disk.size()).sum()
    }

    fn completed(&self) -> u64 {
        self.devices.iter().map(|d| d.completed).sum()
    }

    fn dirty_bytes(&self) -> u64 {
        self.devices
            .iter()
            .map(|d| d.disk.dirty().count() * CHUNK_SIZE)
            .sum()
    }

    fn update_counters(&self) {
        let (total, completed) = (self.total(), self.completed());
        self.counters
            .set(completed, total - completed + self.dirty_bytes(), total);
    }

    /// Bytes still to send: dirty chunks plus what the bulk pass has not covered. While the
    /// bulk pass runs the estimate is kept above `threshold`, so the switchover cannot happen
    /// before every drive was copied once (QEMU does the same).
    pub fn pending(&self, threshold: u64) -> u64 {
        let pending = self.dirty_bytes() + (self.total() - self.completed());
        self.update_counters();
        if self.bulk_completed {
            pending
        } else {
            pending.max(threshold.saturating_add(CHUNK_SIZE))
        }
    }

    /// Reads chunk `chunk` of device `dev` and writes it as a DATA or ZERO record.
    fn send_chunk(
        &mut self,
        f: &mut QemuFileWriter,
        dev: usize,
        chunk: u64,
    ) -> Result<(), BlockMigrationError> {
        let disk = &self.devices[dev].disk;
        let offset = chunk * CHUNK_SIZE;
        let len = (disk.size() - offset).min(CHUNK_SIZE) as usize;
        disk.dirty().take(chunk);
        self.buf[len..].fill(0);
        disk.read(offset, &mut self.buf[..len])?;
        let sector = offset / SECTOR;
        if is_zero(&self.buf) {
            wire::write_zero(f, sector, disk.id());
        } else {
            wire::write_data(f, sector, disk.id(), &self.buf);
        }
        Ok(())
    }

    /// One bulk step: sends the next chunk of the first unfinished drive, or marks the bulk
    /// pass complete. Returns whether a chunk was sent.
    fn bulk_step(&mut self, f: &mut QemuFileWriter) -> Result<bool, BlockMigrationError> {
        let Some(dev) = self.devices.iter().position(|d| !d.bulk_done) else {
            self.bulk_completed = true;
            return Ok(false);
        };
        let d = &mut self.devices[dev];
        let size = d.disk.size();
        let mut cur = d.cursor;
        if self.shared_base {
            while cur < size {
                let (allocated, n) = d.disk.block_status(cur, MAX_ALLOCATION_SEARCH)?;
                if allocated {
                    break;
                }
                cur += n;
            }
        }
        if cur >= size {
            d.cursor = size;
            d.completed = size;
            d.bulk_done = true;
            return Ok(false);
        }
        let chunk = cur / CHUNK_SIZE;
        d.completed = cur;
        d.cursor = ((chunk + 1) * CHUNK_SIZE).min(size);
        self.send_chunk(f, dev, chunk)?;
        let d = &mut self.devices[dev];
        d.completed = d.cursor;
        if d.cursor >= size {
            d.bulk_done = true;
        }
        Ok(true)
    }

    /// Finds and takes the next dirty chunk (round robin from the dirty-phase position).
    fn next_dirty(&mut self) -> Option<(usize, u64)> {
        let n = self.devices.len();
        let (start_dev, start_chunk) = self.dirty_pos;
        for step in 0..=n {
            let dev = (start_dev + step) % n.max(1);
            let from = if step == 0 { start_chunk } else { 0 };
            let d = self.devices.get(dev)?;
            if let Some(chunk) = d.disk.dirty().next_dirty(from) {
                self.dirty_pos = (dev, chunk + 1);
                return Some((dev, chunk));
            }
        }
        None
    }

    fn progress(&mut self, f: &mut QemuFileWriter) {
        let total = self.total();
        let pct = (self.completed() * 100).checked_div(total).unwrap_or(100);
        if self.last_progress != Some(pct) {
            wire::write_progress(f, pct);
            self.last_progress = Some(pct);
        }
    }

    /// One PART body.
    pub fn iterate(&mut self, f: &mut QemuFileWriter) -> Result<(), BlockMigrationError> {
        let start = Instant::now();
        while !f.is_rate_limited() && start.elapsed() < MAX_ITERATION_TIME {
            if !self.bulk_completed {
                let sent = self.bulk_step(f)?;
                self.progress(f);
                if !sent && self.bulk_completed {
                    tracing::info!("block migration: bulk phase complete");
                }
            } else {
                // Dirty phase: one chunk per round (QEMU's `blk_mig_save_dirty_block`), so a
                // guest that keeps rewriting its disk cannot starve RAM of the window's budget.
                if let Some((dev, chunk)) = self.next_dirty() {
                    self.send_chunk(f, dev, chunk)?;
                }
                break;
            }
        }
        wire::write_eos(f);
        self.update_counters();
        Ok(())
    }

    /// The END body, with the guest stopped: everything left, progress 100, EOS.
    pub fn complete(&mut self, f: &mut QemuFileWriter) -> Result<(), BlockMigrationError> {
        while !self.bulk_completed {
            self.bulk_step(f)?;
        }
        while let Some((dev, chunk)) = self.next_dirty() {
            self.send_chunk(f, dev, chunk)?;
        }
        wire::write_progress(f, 100);
        wire::write_eos(f);
        self.update_counters();
        Ok(())
    }

    /// Stops dirty tracking (a later migration starts over with a full bulk pass).
    pub fn cleanup(&mut self) {
        for d in &self.devices {
            d.disk.dirty().stop();
        }
        self.counters.active.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn zero_detection() {
        let mut b = vec![0u8; 1 << 20];
        assert!(is_zero(&b));
        b[(1 << 20) - 1] = 1;
        assert!(!is_zero(&b));
        assert!(is_zero(&b[1..100]));
    }
}
