//! [`DiskWriter`]: the software guest's disk workload — a thread writing 4 KiB blocks of
//! pseudo-random data into a region of a [`Disk`] at a configurable rate and pattern, through
//! the block layer (so every write is dirty-tracked).
//!
//! Like a software vCPU it can be paused and resumed: [`DiskWriter::pause`] returns only once
//! no write is in flight, so after it the disk content is stable (what the VMM needs before the
//! final block-migration pass). Run state machine:
//!
//! ```text
//! Running ──pause()──▶ Paused (pause returns when the in-flight write finished)
//! Paused ──resume()──▶ Running
//! any ──stop()──▶ thread exits, final statistics returned
//! ```

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::disk::Disk;
use crate::error::BlockError;

/// Size of one guest write.
pub const WRITE_BLOCK: u64 = 4096;

/// Where in the region the next block goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePattern {
    /// Uniformly random blocks in the region.
    Random,
    /// Block after block, wrapping at the end of the region.
    Sequential,
}

/// Workload parameters.
#[derive(Debug, Clone)]
pub struct DiskWriterConfig {
    /// Byte range written (clipped to the disk, aligned to [`WRITE_BLOCK`]).
    pub region: Range<u64>,
    /// Writes per second; 0 = as fast as possible.
    pub rate: u64,
    /// Placement of the writes.
    pub pattern: WritePattern,
    /// Seed of the pseudo-random placement and data.
    pub seed: u64,
}

/// Counters of a writer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Completed writes.
    pub writes: u64,
    /// The first write error, if the writer stopped because of one.
    pub error: Option<String>,
}

#[derive(Default)]
struct Ctl {
    paused: bool,
    stop: bool,
    in_flight: bool,
    stats: WriterStats,
}

struct Shared {
    ctl: Mutex<Ctl>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running disk workload. Dropping it stops the thread.
pub struct DiskWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// xorshift64* — deterministic and cheap; quality is irrelevant here.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

impl DiskWriter {
    /// Starts the thread (running, not paused).
    pub fn start(disk: Arc<Disk>, config: DiskWriterConfig) -> Result<Self, BlockError> {
        Self::spawn(disk, config, false)
    }

    /// Starts the thread paused (a VM created stopped); [`resume`](Self::resume) starts it.
    pub fn start_paused(disk: Arc<Disk>, config: DiskWriterConfig) -> Result<Self, BlockError> {
        Self::spawn(disk, config, true)
    }

    fn spawn(disk: Arc<Disk>, config: DiskWriterConfig, paused: bool) -> Result<Self, BlockError> {
        let shared = Arc::new(Shared {
            ctl: Mutex::new(Ctl {
                paused,
                ..Default::default()
            }),
            cv: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("disk-writer-{}", disk.id()))
            .spawn(move || run(&disk, &config, &s))
            .map_err(BlockError::Thread)?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Pauses the workload; returns once no write is in flight.
    pub fn pause(&self) {
        let mut c = self.shared.lock();
        c.paused = true;
        while c.in_flight {
            c = self.shared.cv.wait(c).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Resumes a paused workload.
    pub fn resume(&self) {
        self.shared.lock().paused = false;
        self.shared.cv.notify_all();
    }

    /// Whether the workload is paused.
    pub fn is_paused(&self) -> bool {
        self.shared.lock().paused
    }

    /// Statistics so far.
    pub fn stats(&self) -> WriterStats {
        self.shared.lock().stats.clone()
    }

    /// Stops the thread and returns the final statistics.
    pub fn stop(mut self) -> WriterStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        self.shared.lock().stop = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("disk writer thread panicked");
            }
        }
    }
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(disk: &Disk, cfg: &DiskWriterConfig, shared: &Shared) {
    let start = cfg.region.start.min(disk.size()) / WRITE_BLOCK;
    let end = cfg.region.end.min(disk.size()) / WRITE_BLOCK;
    let blocks = end.saturating_sub(start);
    let mut rng = cfg.seed | 1;
    let mut seq = 0u64;
    let mut buf = vec![0u8; WRITE_BLOCK as usize];
    let interval = (cfg.rate > 0).then(|| Duration::from_nanos(1_000_000_000 / cfg.rate));
    let mut due = Instant::now();
    loop {
        {
            let mut c = shared.lock();
            while c.paused && !c.stop {
                c = shared.cv.wait(c).unwrap_or_else(|p| p.into_inner());
            }
            if c.stop || blocks == 0 {
                return;
            }
            c.in_flight = true;
        }
        let block = match cfg.pattern {
            WritePattern::Random => start + next(&mut rng) % blocks,
            WritePattern::Sequential => {
                seq += 1;
                start + (seq - 1) % blocks
            }
        };
        for word in buf.chunks_exact_mut(8) {
            word.copy_from_slice(&next(&mut rng).to_le_bytes());
        }
        let result = disk.write(block * WRITE_BLOCK, &buf);
        {
            let mut c = shared.lock();
            c.in_flight = false;
            match result {
                Ok(()) => c.stats.writes += 1,
                Err(e) => {
                    tracing::error!(drive = disk.id(), "disk writer stopped: {e}");
                    c.stats.error = Some(e.to_string());
                    c.stop = true;
                }
            }
        }
        shared.cv.notify_all();
        if let Some(iv) = interval {
            due += iv;
            let now = Instant::now();
            if due > now {
                // Sleep in short steps so pause/stop are not delayed by a slow rate.
                let mut c = shared.lock();
                while !c.stop && Instant::now() < due {
                    let left = due.saturating_duration_since(Instant::now());
                    c = shared
                        .cv
                        .wait_timeout(c, left)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
            } else {
                due = now;
            }
        }
    }
}
