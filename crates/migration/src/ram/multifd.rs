//! Multifd (QEMU 7.2): page payloads travel over N extra connections, one thread each, while
//! the main stream keeps everything else (headers, zero pages, EOS). Before every RAM EOS the
//! source sends a SYNC packet on every channel, and the destination waits for one SYNC per
//! channel when it reads that EOS, so a section never ends with its pages still in flight.
//!
//! ```text
//! source: RamSaver --pages--> MultifdSender --job--> channel thread i --packet--> socket i
//!                   --EOS-->  sync(): SYNC on every channel, wait until all are written
//! dest:   socket i --> receiver thread i --pages--> guest RAM;  SYNC --> main thread waits
//!         (the destination side is in `multifd_recv.rs`, re-exported here)
//! ```
//!
//! A packet of pages goes to the least loaded channel, the next in turn among equals; each
//! channel holds up to two jobs (one being written, one waiting), so a channel thread never
//! waits for the main thread to gather its next packet. SYNCs go to every channel in turn.
//!
//! Pages are sent from guest memory in place: a job holds the offsets of its pages and a handle
//! on their block's memory ([`BlockMemory`]), which keeps the mapping alive until it is sent.
//!
//! With `multifd-compression` zlib or zstd each channel thread owns one compression stream for
//! the whole migration ([`savevm::multifd_codec`]): it compresses its packet's pages itself, so
//! N channels use N cores, and writes the header with `next_packet_size` = the compressed bytes
//! and the method's flag bits, then those bytes. The receiver thread (`multifd_recv.rs`) reads
//! at most [`MULTIFD_COMPRESSED_MAX`](savevm::multifd_codec::MULTIFD_COMPRESSED_MAX) bytes and
//! decodes them page by page straight into guest RAM.
//! Packets without pages (SYNCs) carry no payload and no method bits, as QEMU 7.2's.
//!
//! With `zero-copy-send` (uncompressed only) a channel writes each header normally and its
//! pages with `MSG_ZEROCOPY` ([`ZeroCopyWriter`]): the kernel reads guest memory after the
//! call returned, so the channel keeps every job's [`BlockMemory`] until its SYNC, where it
//! waits for the kernel's completions (QEMU flushes at each sync too) and reports whether the
//! kernel copied after all (`dirty-sync-missed-zero-copy`).
//!
//! What the channels hold that the destination has not received yet — pages queued (in the
//! batch, or handed to a channel thread and not yet written) and the bytes in the channels'
//! sockets (`SIOCOUTQ`) — is [`MultifdSender::backlog`]. On a slow link that is megabytes the
//! destination must still receive after the guest stopped, so the switchover decision counts
//! it, as it counts the main channel's.

use std::io::{IoSlice, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use guest_ram::BlockMemory;
use savevm::multifd::{
    MultifdInit, PacketHeader, MULTIFD_FLAG_SYNC, MULTIFD_INIT_LEN, MULTIFD_PAGES,
};
use savevm::multifd_codec::{Compression, Compressor};
use savevm::ram::TARGET_PAGE_SIZE;
use transport::{ChannelWriter, UnsentProbe, ZeroCopyWriter};

use crate::error::MigrationError;
use crate::params::{MigrationParameters, MultifdCompression};

pub use super::multifd_recv::{accept_channels, start_receiver, MultifdReceiver};

const PAGE: usize = TARGET_PAGE_SIZE;

/// The channels' compression method and level from the operator's parameters.
pub fn compression(p: &MigrationParameters) -> Compression {
    match p.multifd_compression {
        MultifdCompression::None => Compression::None,
        MultifdCompression::Zlib => Compression::Zlib(p.multifd_zlib_level),
        MultifdCompression::Zstd => Compression::Zstd(p.multifd_zstd_level),
    }
}

/// What the multifd channels hold that the destination has not received: pages handed to a
/// channel thread and not yet written, and the channels' unsent socket bytes. Readable from
/// any thread ([`MultifdSender::backlog_meter`]).
#[derive(Clone, Debug)]
pub struct BacklogMeter {
    /// Bytes of the pages handed to a channel thread and not yet written (uncompressed: with
    /// compression, at most this much goes on the wire). Counted per packet, not per page.
    queued: Arc<AtomicU64>,
    sockets: Vec<UnsentProbe>,
}

impl BacklogMeter {
    /// The bytes in the channels that the destination has not received yet.
    pub fn bytes(&self) -> u64 {
        let unsent: u64 = self.sockets.iter().filter_map(|p| p.unsent_bytes()).sum();
        self.queued.load(Ordering::Relaxed) + unsent
    }
}

enum Job {
    Pages {
        block: String,
        offsets: Vec<u64>,
        memory: Arc<BlockMemory>,
        packet_num: u64,
    },
    Sync {
        packet_num: u64,
    },
}

/// Jobs a channel may hold: one being written and one waiting, so that its thread goes on
/// writing while the main thread gathers the next packet.
const CHANNEL_DEPTH: usize = 2;

struct SendChannel {
    jobs: SyncSender<Job>,
    /// Jobs handed to the thread and not yet reported done.
    pending_jobs: usize,
    thread: Option<JoinHandle<()>>,
}

/// What a channel reports for one job.
struct Written {
    bytes: u64,
    /// A SYNC's flush found that the kernel copied zero-copy pages after all.
    zero_copy_missed: bool,
}

type Done = (usize, Result<Written, MigrationError>);

/// Source side: batches pages per block and hands full batches to idle channels.
pub struct MultifdSender {
    channels: Vec<SendChannel>,
    done: Receiver<Done>,
    next: usize,
    packet_num: u64,
    batch: Option<(usize, String, Vec<u64>, Arc<BlockMemory>)>,
    compresses: bool,
    rate_accounted: u64,
    meter: BacklogMeter,
    /// Bytes written on the channels so far (headers and payload).
    pub bytes: u64,
    /// Channel syncs at which the kernel had copied zero-copy pages (QEMU's
    /// `dirty-sync-missed-zero-copy`).
    pub zero_copy_missed: u64,
}

/// Writes the hello a channel starts with (`id` = its position), as soon as it is connected:
/// a QEMU 7.2 destination reads it on its main loop before it answers the next channel's TLS
/// handshake.
pub fn send_hello(w: &mut ChannelWriter, id: usize) -> Result<(), MigrationError> {
    let id = u8::try_from(id).map_err(|_| MigrationError::MultifdChannelRange(id))?;
    let hello = MultifdInit { uuid: [0; 16], id }.encode();
    w.write_all(&hello).map_err(savevm::Error::from)?;
    Ok(())
}

/// Starts the sender on channels that sent their hello ([`send_hello`], `id` = position);
/// each channel compresses its packets with `compression`, or sends its pages zero-copy with
/// `zero_copy`.
pub fn start_sender(
    writers: Vec<ChannelWriter>,
    compression: Compression,
    zero_copy: bool,
) -> Result<MultifdSender, MigrationError> {
    let (done_tx, done) = channel();
    let mut channels = Vec::new();
    let queued = Arc::new(AtomicU64::new(0));
    let sockets = writers.iter().map(ChannelWriter::unsent_probe).collect();
    for (id, w) in writers.into_iter().enumerate() {
        let (jobs, rx) = sync_channel::<Job>(1);
        let done_tx = done_tx.clone();
        let queued = queued.clone();
        let w = if zero_copy {
            Output::ZeroCopy(ZeroCopyWriter::new(w).map_err(MigrationError::ZeroCopyUnsupported)?)
        } else {
            Output::Plain(w)
        };
        let out = ChannelOut {
            w,
            compressor: Compressor::new(compression).map_err(savevm::Error::from)?,
            buf: Vec::new(),
            in_flight: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("multifdsend_{id}"))
            .spawn(move || send_loop(id, out, rx, done_tx, &queued))
            .map_err(MigrationError::Spawn)?;
        channels.push(SendChannel {
            jobs,
            pending_jobs: 0,
            thread: Some(thread),
        });
    }
    let bytes = (channels.len() * MULTIFD_INIT_LEN) as u64;
    Ok(MultifdSender {
        channels,
        done,
        next: 0,
        packet_num: 0,
        batch: None,
        compresses: compression != Compression::None,
        rate_accounted: bytes,
        meter: BacklogMeter { queued, sockets },
        bytes,
        zero_copy_missed: 0,
    })
}

/// A channel's socket: ordinary writes, or pages sent zero-copy.
enum Output {
    Plain(ChannelWriter),
    ZeroCopy(ZeroCopyWriter),
}

/// One channel's socket and compression stream (with its output buffer, reused).
struct ChannelOut {
    w: Output,
    compressor: Option<Compressor>,
    buf: Vec<u8>,
    /// The memory of the pages sent zero-copy since the last SYNC: the kernel may still read
    /// them.
    in_flight: Vec<Arc<BlockMemory>>,
}

/// Runs one channel: writes each job, takes its pages off `queued`, reports to `done`.
fn send_loop(
    id: usize,
    mut out: ChannelOut,
    jobs: Receiver<Job>,
    done: Sender<Done>,
    queued: &AtomicU64,
) {
    for job in jobs {
        let pages = match &job {
            Job::Pages { offsets, .. } => offsets.len(),
            Job::Sync { .. } => 0,
        };
        let result = write_job(&mut out, job);
        queued.fetch_sub((pages * PAGE) as u64, Ordering::Relaxed);
        let failed = result.is_err();
        if done.send((id, result)).is_err() || failed {
            return;
        }
    }
    // The sender is done: end the stream cleanly (TLS: close_notify).
    if let Output::Plain(w) = out.w {
        if let Err(e) = w.finish() {
            tracing::debug!("multifd channel {id}: {}", crate::error_report(&e));
        }
    }
}

fn write_job(out: &mut ChannelOut, job: Job) -> Result<Written, MigrationError> {
    let (mut header, memory) = match job {
        Job::Sync { packet_num } => (
            PacketHeader {
                flags: MULTIFD_FLAG_SYNC,
                pages_alloc: MULTIFD_PAGES as u32,
                packet_num,
                ..Default::default()
            },
            None,
        ),
        Job::Pages {
            block,
            offsets,
            memory,
            packet_num,
        } => (
            PacketHeader {
                flags: 0,
                pages_alloc: MULTIFD_PAGES as u32,
                normal_pages: offsets.len() as u32,
                next_packet_size: (offsets.len() * PAGE) as u32,
                packet_num,
                ramblock: block,
                offsets,
            },
            Some(memory),
        ),
    };
    let mut pages: Vec<&[u8]> = Vec::with_capacity(header.offsets.len());
    if let Some(memory) = &memory {
        let bytes = (**memory).as_ref();
        for &offset in &header.offsets {
            let page = usize::try_from(offset)
                .ok()
                .and_then(|o| bytes.get(o..o.checked_add(PAGE)?))
                .ok_or_else(|| MigrationError::IllegalRamOffset {
                    block: header.ramblock.clone(),
                    offset,
                })?;
            pages.push(page);
        }
    }
    if let Output::ZeroCopy(zc) = &mut out.w {
        return write_zero_copy(zc, &mut out.in_flight, &header, memory.clone(), &pages);
    }
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(1 + pages.len());
    let head;
    match &mut out.compressor {
        Some(c) if !pages.is_empty() => {
            c.compress(&pages, &mut out.buf)
                .map_err(savevm::Error::from)?;
            header.flags |= c.flag();
            header.next_packet_size = out.buf.len() as u32;
            head = header.encode()?;
            slices.push(IoSlice::new(&head));
            slices.push(IoSlice::new(&out.buf));
        }
        _ => {
            head = header.encode()?;
            slices.push(IoSlice::new(&head));
            slices.extend(pages.iter().map(|p| IoSlice::new(p)));
        }
    }
    let bytes = slices.iter().map(|s| s.len() as u64).sum();
    if let Output::Plain(w) = &mut out.w {
        write_all_vectored(w, &mut slices)?;
    }
    Ok(Written {
        bytes,
        zero_copy_missed: false,
    })
}

/// The header copied, the pages zero-copy; a SYNC waits until the kernel is done with every
/// page sent so far and lets their memory go.
fn write_zero_copy(
    zc: &mut ZeroCopyWriter,
    in_flight: &mut Vec<Arc<BlockMemory>>,
    header: &PacketHeader,
    memory: Option<Arc<BlockMemory>>,
    pages: &[&[u8]],
) -> Result<Written, MigrationError> {
    let io = |e: std::io::Error| MigrationError::from(savevm::Error::from(e));
    let head = header.encode()?;
    zc.writer().write_all(&head).map_err(io)?;
    let mut slices: Vec<IoSlice<'_>> = pages.iter().map(|p| IoSlice::new(p)).collect();
    zc.write_all_zero_copy(&mut slices).map_err(io)?;
    in_flight.extend(memory);
    let mut zero_copy_missed = false;
    if header.flags & MULTIFD_FLAG_SYNC != 0 {
        zero_copy_missed = zc.flush().map_err(io)?;
        in_flight.clear();
    }
    Ok(Written {
        bytes: (head.len() + pages.len() * PAGE) as u64,
        zero_copy_missed,
    })
}

fn write_all_vectored(
    w: &mut ChannelWriter,
    slices: &mut [IoSlice<'_>],
) -> Result<(), MigrationError> {
    let mut rest = slices;
    while !rest.is_empty() {
        match w.write_vectored(rest) {
            Ok(0) => {
                return Err(savevm::Error::from(std::io::Error::from(
                    std::io::ErrorKind::WriteZero,
                ))
                .into())
            }
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(savevm::Error::from(e).into()),
        }
    }
    Ok(())
}

impl MultifdSender {
    /// What the queued pages cost against the rate limit since the last call: with
    /// compression the bytes the channels have written (the link's bytes, known only once a
    /// channel compressed its packet), without it `None` (the caller counts each page when
    /// queued, as QEMU 7.2 does).
    pub fn take_wire_bytes(&mut self) -> Option<u64> {
        if !self.compresses {
            return None;
        }
        let delta = self.bytes - self.rate_accounted;
        self.rate_accounted = self.bytes;
        Some(delta)
    }

    fn collect(&mut self, (id, result): Done) -> Result<(), MigrationError> {
        if let Some(c) = self.channels.get_mut(id) {
            c.pending_jobs = c.pending_jobs.saturating_sub(1);
        }
        let written = result?;
        self.bytes += written.bytes;
        self.zero_copy_missed += u64::from(written.zero_copy_missed);
        Ok(())
    }

    fn wait_one(&mut self) -> Result<(), MigrationError> {
        let msg = self
            .done
            .recv()
            .map_err(|_| MigrationError::MultifdThreadEnded)?;
        self.collect(msg)
    }

    fn dispatch(&mut self, job: Job, to: usize) -> Result<(), MigrationError> {
        self.collect_done()?;
        while self.channels[to].pending_jobs >= CHANNEL_DEPTH {
            self.wait_one()?;
        }
        self.channels[to].pending_jobs += 1;
        self.channels[to]
            .jobs
            .send(job)
            .map_err(|_| MigrationError::MultifdThreadEnded)
    }

    /// Reports already in: the byte count (and a channel's failure) is known at once.
    fn collect_done(&mut self) -> Result<(), MigrationError> {
        while let Ok(msg) = self.done.try_recv() {
            self.collect(msg)?;
        }
        Ok(())
    }

    /// The channel for the next packet of pages: the least loaded, the next in turn among
    /// equals (as QEMU, any channel may carry any packet); waits while every channel is full.
    fn pick(&mut self) -> Result<usize, MigrationError> {
        self.collect_done()?;
        let n = self.channels.len();
        loop {
            let best = (0..n)
                .map(|i| (self.next + i) % n)
                .min_by_key(|&c| self.channels[c].pending_jobs)
                .ok_or(MigrationError::MultifdThreadEnded)?;
            if self.channels[best].pending_jobs < CHANNEL_DEPTH {
                self.next = (best + 1) % n;
                return Ok(best);
            }
            self.wait_one()?;
        }
    }

    fn flush_batch(&mut self) -> Result<(), MigrationError> {
        if let Some((_, block, offsets, memory)) = self.batch.take() {
            let bytes = (offsets.len() * PAGE) as u64;
            self.meter.queued.fetch_add(bytes, Ordering::Relaxed);
            let packet_num = self.packet_num;
            self.packet_num += 1;
            let to = self.pick()?;
            self.dispatch(
                Job::Pages {
                    block,
                    offsets,
                    memory,
                    packet_num,
                },
                to,
            )?;
        }
        Ok(())
    }

    /// Queues the page at offset `offset` of block `block_index` named `block`, whose memory
    /// is `memory` (held by the batch until it is sent).
    pub fn queue(
        &mut self,
        block_index: usize,
        block: &str,
        offset: u64,
        memory: &Arc<BlockMemory>,
    ) -> Result<(), MigrationError> {
        let same = matches!(&self.batch, Some((b, _, o, _)) if *b == block_index && o.len() < MULTIFD_PAGES);
        if !same {
            self.flush_batch()?;
            self.batch = Some((
                block_index,
                block.to_string(),
                Vec::with_capacity(MULTIFD_PAGES),
                memory.clone(),
            ));
        }
        if let Some((_, _, offsets, _)) = &mut self.batch {
            offsets.push(offset);
        }
        Ok(())
    }

    /// The bytes in the channels that the destination has not received yet: pages batched
    /// or queued and not yet written, and the sockets' unsent bytes.
    pub fn backlog(&self) -> u64 {
        let batched = self.batch.as_ref().map_or(0, |(_, _, o, _)| o.len() * PAGE);
        self.meter.bytes() + batched as u64
    }

    /// A handle on what the channels hold, for another thread: [`backlog`](Self::backlog)
    /// without the batch still being gathered.
    pub fn backlog_meter(&self) -> BacklogMeter {
        self.meter.clone()
    }

    /// Sends what is batched, then a SYNC packet on every channel, and waits until every
    /// channel has written it (QEMU's `multifd_send_sync_main`, before each RAM EOS).
    pub fn sync(&mut self) -> Result<(), MigrationError> {
        self.flush_batch()?;
        for to in 0..self.channels.len() {
            let packet_num = self.packet_num;
            self.packet_num += 1;
            self.dispatch(Job::Sync { packet_num }, to)?;
        }
        while self.channels.iter().any(|c| c.pending_jobs > 0) {
            self.wait_one()?;
        }
        Ok(())
    }
}

impl Drop for MultifdSender {
    fn drop(&mut self) {
        // Closing the job queues ends the threads; their writers close the sockets.
        for c in &mut self.channels {
            let (tx, _) = sync_channel(0);
            drop(std::mem::replace(&mut c.jobs, tx));
        }
        for c in &mut self.channels {
            if let Some(t) = c.thread.take() {
                let _ = t.join();
            }
        }
    }
}
