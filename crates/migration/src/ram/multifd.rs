//! Multifd (QEMU 7.2): page payloads travel over N extra connections, one thread each, while
//! the main stream keeps everything else (headers, zero pages, EOS). Before every RAM EOS the
//! source sends a SYNC packet on every channel, and the destination waits for one SYNC per
//! channel when it reads that EOS, so a section never ends with its pages still in flight.
//!
//! ```text
//! source: RamSaver --pages--> MultifdSender --job--> channel thread i --packet--> socket i
//!                   --EOS-->  sync(): SYNC on every channel, wait until all are written
//! dest:   socket i --> receiver thread i --pages--> guest RAM;  SYNC --> main thread waits
//! ```
//!
//! Pages are sent from guest memory in place: a job holds the offsets of its pages and a handle
//! on their block's memory ([`BlockMemory`]), which keeps the mapping alive until it is sent.

use std::io::{IoSlice, Read, Write};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use guest_ram::{BlockMemory, GuestRam};
use savevm::multifd::{
    MultifdInit, PacketHeader, MULTIFD_FLAG_COMPRESSION_MASK, MULTIFD_FLAG_SYNC,
    MULTIFD_HEADER_LEN, MULTIFD_INIT_LEN, MULTIFD_PAGES,
};
use savevm::ram::TARGET_PAGE_SIZE;
use transport::{ChannelReader, ChannelWriter};

use crate::error::MigrationError;

const PAGE: usize = TARGET_PAGE_SIZE;

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

struct SendChannel {
    jobs: SyncSender<Job>,
    busy: bool,
    thread: Option<JoinHandle<()>>,
}

/// Source side: batches pages per block and hands full batches to idle channels.
pub struct MultifdSender {
    channels: Vec<SendChannel>,
    done: Receiver<(usize, Result<u64, MigrationError>)>,
    next: usize,
    packet_num: u64,
    batch: Option<(usize, String, Vec<u64>, Arc<BlockMemory>)>,
    /// Bytes written on the channels so far (headers and payload).
    pub bytes: u64,
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

/// Starts the sender on channels that sent their hello ([`send_hello`], `id` = position).
pub fn start_sender(writers: Vec<ChannelWriter>) -> Result<MultifdSender, MigrationError> {
    let (done_tx, done) = channel();
    let mut channels = Vec::new();
    for (id, w) in writers.into_iter().enumerate() {
        let (jobs, rx) = sync_channel::<Job>(1);
        let done_tx = done_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("multifdsend_{id}"))
            .spawn(move || send_loop(id, w, rx, done_tx))
            .map_err(MigrationError::Spawn)?;
        channels.push(SendChannel {
            jobs,
            busy: false,
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
        bytes,
    })
}

fn send_loop(
    id: usize,
    mut w: ChannelWriter,
    jobs: Receiver<Job>,
    done: Sender<(usize, Result<u64, MigrationError>)>,
) {
    for job in jobs {
        let result = write_job(&mut w, job);
        let failed = result.is_err();
        if done.send((id, result)).is_err() || failed {
            return;
        }
    }
    // The sender is done: end the stream cleanly (TLS: close_notify).
    if let Err(e) = w.finish() {
        tracing::debug!("multifd channel {id}: {}", crate::error_report(&e));
    }
}

fn write_job(w: &mut ChannelWriter, job: Job) -> Result<u64, MigrationError> {
    let (header, memory) = match job {
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
    let head = header.encode()?;
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(1 + header.offsets.len());
    slices.push(IoSlice::new(&head));
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
            slices.push(IoSlice::new(page));
        }
    }
    let total = (head.len() + (slices.len() - 1) * PAGE) as u64;
    let mut rest = &mut slices[..];
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
    Ok(total)
}

impl MultifdSender {
    fn collect(
        &mut self,
        (id, result): (usize, Result<u64, MigrationError>),
    ) -> Result<(), MigrationError> {
        if let Some(c) = self.channels.get_mut(id) {
            c.busy = false;
        }
        self.bytes += result?;
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
        while self.channels[to].busy {
            self.wait_one()?;
        }
        self.channels[to].busy = true;
        self.channels[to]
            .jobs
            .send(job)
            .map_err(|_| MigrationError::MultifdThreadEnded)
    }

    fn flush_batch(&mut self) -> Result<(), MigrationError> {
        if let Some((_, block, offsets, memory)) = self.batch.take() {
            let packet_num = self.packet_num;
            self.packet_num += 1;
            let to = self.next;
            self.next = (self.next + 1) % self.channels.len();
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

    /// Sends what is batched, then a SYNC packet on every channel, and waits until every
    /// channel has written it (QEMU's `multifd_send_sync_main`, before each RAM EOS).
    pub fn sync(&mut self) -> Result<(), MigrationError> {
        self.flush_batch()?;
        for to in 0..self.channels.len() {
            let packet_num = self.packet_num;
            self.packet_num += 1;
            self.dispatch(Job::Sync { packet_num }, to)?;
        }
        while self.channels.iter().any(|c| c.busy) {
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

/// Reads and checks the hello of each channel; returns the readers ordered by channel id.
pub fn accept_channels(readers: Vec<ChannelReader>) -> Result<Vec<ChannelReader>, MigrationError> {
    let n = readers.len();
    let mut slots: Vec<Option<ChannelReader>> = (0..n).map(|_| None).collect();
    for mut r in readers {
        let mut hello = [0u8; MULTIFD_INIT_LEN];
        r.read_exact(&mut hello).map_err(savevm::Error::from)?;
        let init = MultifdInit::decode(&hello)?;
        if init.uuid != [0; 16] {
            return Err(MigrationError::MultifdUuid);
        }
        let id = usize::from(init.id);
        match slots.get_mut(id) {
            Some(slot @ None) => *slot = Some(r),
            Some(Some(_)) => return Err(MigrationError::MultifdDuplicateChannel(id)),
            None => return Err(MigrationError::MultifdChannelRange(id)),
        }
    }
    Ok(slots.into_iter().flatten().collect())
}

/// Destination side: one thread per channel writing pages into guest RAM.
pub struct MultifdReceiver {
    syncs: Receiver<Result<(), MigrationError>>,
    release: Vec<SyncSender<()>>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts one receiver thread per channel.
pub fn start_receiver(
    ram: Arc<GuestRam>,
    readers: Vec<ChannelReader>,
) -> Result<MultifdReceiver, MigrationError> {
    let (sync_tx, syncs) = channel();
    let mut release = Vec::new();
    let mut threads = Vec::new();
    for (id, r) in readers.into_iter().enumerate() {
        let (rel_tx, rel_rx) = sync_channel(1);
        release.push(rel_tx);
        let (ram, sync_tx) = (ram.clone(), sync_tx.clone());
        let t = std::thread::Builder::new()
            .name(format!("multifdrecv_{id}"))
            .spawn(move || recv_loop(r, &ram, &sync_tx, &rel_rx))
            .map_err(MigrationError::Spawn)?;
        threads.push(t);
    }
    Ok(MultifdReceiver {
        syncs,
        release,
        threads,
    })
}

fn recv_loop(
    mut r: ChannelReader,
    ram: &GuestRam,
    syncs: &Sender<Result<(), MigrationError>>,
    release: &Receiver<()>,
) {
    let mut head = vec![0u8; MULTIFD_HEADER_LEN];
    loop {
        // A clean end of stream between packets ends the channel.
        match read_full(&mut r, &mut head) {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => {
                let _ = syncs.send(Err(e));
                return;
            }
        }
        let result = PacketHeader::decode(&head)
            .map_err(MigrationError::from)
            .and_then(|h| {
                if h.flags & MULTIFD_FLAG_COMPRESSION_MASK != 0 {
                    return Err(MigrationError::MultifdCompressedPacket);
                }
                load_pages(&mut r, ram, &h)?;
                Ok(h.flags & MULTIFD_FLAG_SYNC != 0)
            });
        match result {
            Ok(false) => {}
            Ok(true) => {
                if syncs.send(Ok(())).is_err() || release.recv().is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = syncs.send(Err(e));
                return;
            }
        }
    }
}

/// Fills `buf`; `Ok(false)` if the stream ended before its first byte.
fn read_full(r: &mut ChannelReader, buf: &mut [u8]) -> Result<bool, MigrationError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            // QEMU 7.2 closes TLS channels without close_notify. Between packets that loses
            // nothing: every page batch is accounted for by the SYNC the main stream waits for.
            Err(e) if got == 0 && transport::tls::is_truncation(&e) => return Ok(false),
            Ok(0) => return Err(savevm::Error::UnexpectedEof { offset: got as u64 }.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(savevm::Error::from(e).into()),
        }
    }
    Ok(true)
}

fn load_pages(
    r: &mut ChannelReader,
    ram: &GuestRam,
    h: &PacketHeader,
) -> Result<(), MigrationError> {
    if h.normal_pages == 0 {
        return Ok(());
    }
    let block = ram
        .block_by_name(&h.ramblock)
        .ok_or_else(|| MigrationError::UnknownRamBlock(h.ramblock.clone()))?;
    for &offset in &h.offsets {
        if offset % PAGE as u64 != 0 || offset >= block.len() {
            return Err(MigrationError::IllegalRamOffset {
                block: h.ramblock.clone(),
                offset,
            });
        }
        let page = offset / PAGE as u64;
        // Read in place: the destination's vCPUs do not run while RAM is loaded, and each page
        // is sent once per packet, by one channel, between two SYNCs.
        block
            .fill_page(page, |p| r.read_exact(p))?
            .map_err(savevm::Error::from)?;
    }
    Ok(())
}

impl MultifdReceiver {
    /// Waits for one SYNC from every channel, then lets them go on (at each RAM EOS).
    pub fn sync(&self) -> Result<(), MigrationError> {
        for _ in 0..self.release.len() {
            self.syncs
                .recv()
                .map_err(|_| MigrationError::MultifdThreadEnded)??;
        }
        for r in &self.release {
            let _ = r.send(());
        }
        Ok(())
    }
}

impl Drop for MultifdReceiver {
    fn drop(&mut self) {
        self.release.clear();
        for t in self.threads.drain(..) {
            // Threads end at the end of their stream; a failed load may leave one blocked on a
            // socket the process is about to close, so do not wait for unfinished ones.
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}
