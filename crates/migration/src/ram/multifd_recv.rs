//! Multifd, destination side (QEMU 7.2, see [`super::multifd`]): the channels' hellos, then
//! one thread per channel reading packets into guest RAM — decompressing them page by page
//! with `multifd-compression` — and a SYNC handshake with the main thread at every RAM EOS.
//!
//! ```text
//! socket i --> multifdrecv_i: header checks --> pages (or compressed bytes ≤ 1 MiB,
//!              decoded straight into each page) --> guest RAM
//!              SYNC --> main thread (MultifdReceiver::sync) --> released at the RAM EOS
//!              error --> logged, every channel and the main stream interrupted
//! ```

use std::io::Read;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use guest_ram::GuestRam;
use savevm::multifd::{
    MultifdInit, PacketHeader, MULTIFD_FLAG_SYNC, MULTIFD_HEADER_LEN, MULTIFD_INIT_LEN,
};
use savevm::multifd_codec::{CodecError, Compression, Decompressor, MULTIFD_COMPRESSED_MAX};
use savevm::ram::TARGET_PAGE_SIZE;
use transport::ChannelReader;

use crate::cancel::CancelToken;
use crate::error::MigrationError;

const PAGE: usize = TARGET_PAGE_SIZE;

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

/// Starts one receiver thread per channel, expecting packets compressed with `compression`.
pub fn start_receiver(
    ram: Arc<GuestRam>,
    readers: Vec<ChannelReader>,
    compression: Compression,
    cancel: CancelToken,
    ignore_shared: bool,
) -> Result<MultifdReceiver, MigrationError> {
    let (sync_tx, syncs) = channel();
    let mut release = Vec::new();
    let mut threads = Vec::new();
    for (id, r) in readers.into_iter().enumerate() {
        let (rel_tx, rel_rx) = sync_channel(1);
        release.push(rel_tx);
        let (ram, sync_tx, cancel) = (ram.clone(), sync_tx.clone(), cancel.clone());
        let mut input = ChannelIn {
            id,
            cancel,
            r,
            method: compression,
            decompressor: Decompressor::new(compression).map_err(savevm::Error::from)?,
            buf: Vec::new(),
            ignore_shared,
        };
        let t = std::thread::Builder::new()
            .name(format!("multifdrecv_{id}"))
            .spawn(move || recv_loop(&mut input, &ram, &sync_tx, &rel_rx))
            .map_err(MigrationError::Spawn)?;
        threads.push(t);
    }
    Ok(MultifdReceiver {
        syncs,
        release,
        threads,
    })
}

/// One channel's socket and decompression stream (with its input buffer, reused).
struct ChannelIn {
    id: usize,
    cancel: CancelToken,
    r: ChannelReader,
    method: Compression,
    decompressor: Option<Decompressor>,
    /// `x-ignore-shared`: pages of blocks in shared memory are refused.
    ignore_shared: bool,
    buf: Vec<u8>,
}

fn recv_loop(
    input: &mut ChannelIn,
    ram: &GuestRam,
    syncs: &Sender<Result<(), MigrationError>>,
    release: &Receiver<()>,
) {
    let mut head = vec![0u8; MULTIFD_HEADER_LEN];
    loop {
        // A clean end of stream between packets ends the channel.
        match read_full(&mut input.r, &mut head) {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => return input.fail(syncs, e),
        }
        let result = PacketHeader::decode(&head)
            .map_err(MigrationError::from)
            .and_then(|h| {
                load_pages(input, ram, &h)?;
                Ok(h.flags & MULTIFD_FLAG_SYNC != 0)
            });
        match result {
            Ok(false) => {}
            Ok(true) => {
                if syncs.send(Ok(())).is_err() || release.recv().is_err() {
                    return;
                }
            }
            Err(e) => return input.fail(syncs, e),
        }
    }
}

impl ChannelIn {
    /// A channel that cannot go on fails the whole load at once (QEMU terminates every
    /// channel and the main stream): the main thread may be reading the main stream while the
    /// source is blocked writing to this channel.
    fn fail(&self, syncs: &Sender<Result<(), MigrationError>>, e: MigrationError) {
        if !self.cancel.is_cancelled() {
            tracing::error!("multifd channel {} failed: {}", self.id, e.report());
        }
        self.cancel.interrupt_io();
        let _ = syncs.send(Err(e));
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

/// Reads the pages of a packet into guest RAM (nothing for a packet without pages, whose
/// other fields are stale leftovers).
fn load_pages(
    input: &mut ChannelIn,
    ram: &GuestRam,
    h: &PacketHeader,
) -> Result<(), MigrationError> {
    if h.normal_pages == 0 {
        return Ok(());
    }
    // QEMU 7.2 checks the method only on packets that carry pages.
    input
        .method
        .check_flags(h.flags)
        .map_err(savevm::Error::from)?;
    let block = ram
        .block_by_name(&h.ramblock)
        .ok_or_else(|| MigrationError::UnknownRamBlock(h.ramblock.clone()))?;
    if super::shared::is_ignored(block, input.ignore_shared) {
        return Err(MigrationError::IgnoredBlockPage(h.ramblock.clone()));
    }
    let mut pages = Vec::with_capacity(h.offsets.len());
    for &offset in &h.offsets {
        if offset % PAGE as u64 != 0 || offset >= block.len() {
            return Err(MigrationError::IllegalRamOffset {
                block: h.ramblock.clone(),
                offset,
            });
        }
        pages.push(offset / PAGE as u64);
    }
    let ChannelIn {
        r,
        decompressor,
        buf,
        ..
    } = input;
    let Some(d) = decompressor else {
        // Read in place: the destination's vCPUs do not run while RAM is loaded, and each
        // page is sent once per packet, by one channel, between two SYNCs. Consecutive pages
        // (the usual packet) are one read into guest RAM, not one per page.
        for (first, count) in runs(&pages) {
            block
                .fill_range(first * PAGE as u64, count * PAGE, |p| r.read_exact(p))?
                .map_err(savevm::Error::from)?;
        }
        return Ok(());
    };
    let size = h.next_packet_size as usize;
    if size > MULTIFD_COMPRESSED_MAX {
        let e = CodecError::TooLarge {
            size,
            max: MULTIFD_COMPRESSED_MAX,
        };
        return Err(savevm::Error::from(e).into());
    }
    if buf.capacity() < MULTIFD_COMPRESSED_MAX {
        buf.try_reserve_exact(MULTIFD_COMPRESSED_MAX - buf.len())
            .map_err(|_| savevm::Error::from(CodecError::OutOfMemory(MULTIFD_COMPRESSED_MAX)))?;
    }
    buf.resize(size, 0);
    r.read_exact(buf).map_err(savevm::Error::from)?;
    let mut pos = 0;
    for (i, &page) in pages.iter().enumerate() {
        block
            .fill_page(page, |p| d.decompress_page(buf, &mut pos, i, p))?
            .map_err(savevm::Error::from)?;
    }
    d.finish_packet(buf, &mut pos)
        .map_err(savevm::Error::from)?;
    Ok(())
}

/// The runs of consecutive page numbers in `pages`, in order: (first page, count).
fn runs(pages: &[u64]) -> impl Iterator<Item = (u64, usize)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let first = *pages.get(i)?;
        let mut n = 1;
        while first
            .checked_add(n as u64)
            .is_some_and(|next| pages.get(i + n) == Some(&next))
        {
            n += 1;
        }
        i += n;
        Some((first, n))
    })
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

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn runs_split_at_gaps_and_repeats() {
        let r: Vec<_> = runs(&[4, 5, 6, 9, 10, 3, 3, 0]).collect();
        assert_eq!(r, vec![(4, 3), (9, 2), (3, 1), (3, 1), (0, 1)]);
        assert_eq!(runs(&[]).count(), 0);
        assert_eq!(runs(&[u64::MAX]).collect::<Vec<_>>(), vec![(u64::MAX, 1)]);
    }
}
