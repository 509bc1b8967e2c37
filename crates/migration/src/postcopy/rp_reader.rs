//! The source's return path. Without postcopy the migration thread reads it itself once the
//! stream is out ([`SourceReturnPath::Direct`]). With `postcopy-ram` a thread reads it from
//! the start ([`SourceReturnPath::Thread`]), because page requests arrive while the migration
//! thread is busy writing: it decodes them (hostile bytes: typed errors) and hands them over a
//! bounded queue (a flooding destination is slowed by its own socket, not by our memory).
//!
//! In a recovery the new connection gets a new thread that also takes RECV_BITMAP (its bitmap
//! read outside the message framing, refused over the largest block's size) and RESUME_ACK.
//!
//! The thread ends with the destination's SHUT, at the end of the connection, or on an error;
//! it is not joined (it may sit in `read` until the destination closes after a failure).

use std::collections::VecDeque;
use std::io::Read;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::Duration;

use savevm::record::postcopy::{PageRequest, RP_REQ_PAGES, RP_REQ_PAGES_ID};
use savevm::record::recovery::{self as rec, BitmapTail, RP_RECV_BITMAP, RP_RESUME_ACK};
use savevm::record::{self, RpMessage};
use transport::ChannelReader;

use crate::error::MigrationError;

/// Messages queued between the reader thread and the migration thread.
const QUEUE: usize = 4096;

enum RpEvent {
    Request(PageRequest),
    Pong(u32),
    /// Recovery: a block's received-pages bitmap.
    Bitmap(String, BitmapTail),
    /// Recovery: RESUME_ACK's value.
    ResumeAck(u32),
    Shut(u32),
    Closed,
    Failed(savevm::Error),
}

/// The source's end of the return path.
pub(crate) enum SourceReturnPath {
    /// Read by the migration thread when it waits for SHUT.
    Direct(ChannelReader),
    /// Read by a thread from the start (postcopy).
    Thread(RpReader),
}

impl SourceReturnPath {
    /// `reader` read directly, or by a thread when `postcopy`.
    pub(crate) fn new(reader: ChannelReader, postcopy: bool) -> Result<Self, MigrationError> {
        Ok(if postcopy {
            Self::Thread(RpReader::spawn(reader, 0)?)
        } else {
            Self::Direct(reader)
        })
    }

    /// Waits for the destination's verdict: `Ok` for SHUT 0.
    pub(crate) fn await_shut(&mut self) -> Result<(), MigrationError> {
        match self {
            Self::Direct(r) => loop {
                match record::read_rp(r)? {
                    Some(RpMessage::Shut(status)) => return verdict(status),
                    Some(other) => tracing::debug!(?other, "return-path message"),
                    None => return Err(MigrationError::ReturnPathClosed),
                }
            },
            Self::Thread(t) => t.await_shut(),
        }
    }

    /// The reader thread, when there is one.
    pub(crate) fn thread(&mut self) -> Option<&mut RpReader> {
        match self {
            Self::Direct(_) => None,
            Self::Thread(t) => Some(t),
        }
    }
}

fn verdict(status: u32) -> Result<(), MigrationError> {
    match status {
        0 => Ok(()),
        s => Err(MigrationError::DestinationFailed(s)),
    }
}

/// The reader thread's queue, seen from the migration thread.
pub(crate) struct RpReader {
    rx: Receiver<RpEvent>,
    /// Requests taken off the queue but not handed out yet.
    pending: VecDeque<PageRequest>,
    /// The event that ended the thread, once seen.
    end: Option<RpEvent>,
    /// PONG values received.
    pongs: Vec<u32>,
    /// Recovery: bitmaps received, not taken yet.
    bitmaps: VecDeque<(String, BitmapTail)>,
    /// Recovery: the RESUME_ACK value, once received.
    resume_ack: Option<u32>,
}

impl RpReader {
    /// The reader thread over `reader`; `max_bitmap`: the largest received-pages bitmap
    /// accepted, in bytes (0 outside recovery: any bitmap is refused).
    pub(crate) fn spawn(
        mut reader: ChannelReader,
        max_bitmap: u64,
    ) -> Result<Self, MigrationError> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("return_path".into())
            .spawn(move || read_loop(&mut reader, &tx, max_bitmap))
            .map_err(MigrationError::Spawn)?;
        Ok(Self {
            rx,
            pending: VecDeque::new(),
            end: None,
            pongs: Vec::new(),
            bitmaps: VecDeque::new(),
            resume_ack: None,
        })
    }

    fn take(&mut self, e: RpEvent) {
        match e {
            RpEvent::Request(r) => self.pending.push_back(r),
            RpEvent::Pong(v) => {
                tracing::debug!(v, "return path: PONG");
                if self.pongs.len() < 16 {
                    self.pongs.push(v);
                }
            }
            RpEvent::Bitmap(block, tail) => self.bitmaps.push_back((block, tail)),
            RpEvent::ResumeAck(v) => self.resume_ack = Some(v),
            end => self.end = Some(end),
        }
    }

    /// Moves what arrived into `pending`, without waiting.
    fn fill(&mut self) {
        while self.end.is_none() {
            match self.rx.try_recv() {
                Ok(e) => self.take(e),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.end = Some(RpEvent::Closed),
            }
        }
    }

    /// An error if the destination reported a failure, went away or sent garbage; a SHUT 0
    /// before the end is kept for [`Self::await_shut`].
    fn check_end(&self) -> Result<(), MigrationError> {
        match &self.end {
            None
            | Some(
                RpEvent::Shut(0)
                | RpEvent::Request(_)
                | RpEvent::Pong(_)
                | RpEvent::Bitmap(..)
                | RpEvent::ResumeAck(_),
            ) => Ok(()),
            Some(RpEvent::Shut(s)) => Err(MigrationError::DestinationFailed(*s)),
            Some(RpEvent::Closed) => Err(MigrationError::ReturnPathClosed),
            Some(RpEvent::Failed(e)) => Err(e.clone().into()),
        }
    }

    /// Waits for the PONG of PING `value`: the destination has handled every command before
    /// it (postcopy: ADVISE was accepted). Fails if the destination fails or goes away first.
    pub(crate) fn await_pong(
        &mut self,
        value: u32,
        cancel: &crate::cancel::CancelToken,
    ) -> Result<(), MigrationError> {
        self.await_with(cancel, |me| me.pongs.contains(&value).then_some(()))
    }

    /// Recovery: waits for the next received-pages bitmap.
    pub(crate) fn await_bitmap(
        &mut self,
        cancel: &crate::cancel::CancelToken,
    ) -> Result<(String, BitmapTail), MigrationError> {
        self.await_with(cancel, |me| me.bitmaps.pop_front())
    }

    /// Recovery: waits for RESUME_ACK and returns its value.
    pub(crate) fn await_resume_ack(
        &mut self,
        cancel: &crate::cancel::CancelToken,
    ) -> Result<u32, MigrationError> {
        self.await_with(cancel, |me| me.resume_ack.take())
    }

    /// Waits until `got` finds what it wants in what arrived; fails if the destination fails
    /// or goes away first.
    fn await_with<T>(
        &mut self,
        cancel: &crate::cancel::CancelToken,
        mut got: impl FnMut(&mut Self) -> Option<T>,
    ) -> Result<T, MigrationError> {
        loop {
            self.fill();
            if let Some(t) = got(self) {
                return Ok(t);
            }
            self.check_end()?;
            if self.end.is_some() {
                return Err(MigrationError::ReturnPathClosed);
            }
            cancel.check()?;
            match self.rx.recv_timeout(Duration::from_millis(10)) {
                Ok(e) => self.take(e),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.end = Some(RpEvent::Closed),
            }
        }
    }

    /// An error if the return path failed (requests stay queued).
    pub(crate) fn check(&mut self) -> Result<(), MigrationError> {
        self.fill();
        self.check_end()
    }

    /// True when page requests are waiting.
    pub(crate) fn has_requests(&mut self) -> bool {
        self.fill();
        !self.pending.is_empty()
    }

    /// The page requests that arrived; an error if the return path failed.
    pub(crate) fn poll_requests(&mut self) -> Result<Vec<PageRequest>, MigrationError> {
        self.fill();
        if self.pending.is_empty() {
            self.check_end()?;
        }
        Ok(self.pending.drain(..).collect())
    }

    /// Waits for SHUT; requests still arriving (for pages already on their way) are dropped.
    fn await_shut(&mut self) -> Result<(), MigrationError> {
        self.pending.clear();
        while self.end.is_none() {
            match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(e) => self.take(e),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => self.end = Some(RpEvent::Closed),
            }
        }
        self.pending.clear();
        match &self.end {
            Some(RpEvent::Shut(s)) => verdict(*s),
            _ => self.check_end(),
        }
    }
}

fn read_loop(r: &mut dyn Read, tx: &SyncSender<RpEvent>, max_bitmap: u64) {
    loop {
        let event = match record::read_rp(r) {
            Ok(Some(RpMessage::Other { kind, data })) if kind == RP_RECV_BITMAP => {
                read_bitmap(r, &data, max_bitmap)
            }
            Ok(Some(RpMessage::Other { kind, data })) if kind == RP_RESUME_ACK => {
                match <[u8; 4]>::try_from(data.as_slice()) {
                    Ok(v) => RpEvent::ResumeAck(u32::from_be_bytes(v)),
                    Err(_) => RpEvent::Failed(savevm::Error::BadPostcopyCommand {
                        what: "RESUME_ACK",
                        why: "not 4 bytes",
                    }),
                }
            }
            Ok(Some(RpMessage::Shut(s))) => RpEvent::Shut(s),
            Ok(Some(RpMessage::Pong(v))) => RpEvent::Pong(v),
            Ok(Some(RpMessage::Other { kind, data }))
                if kind == RP_REQ_PAGES || kind == RP_REQ_PAGES_ID =>
            {
                match PageRequest::decode(kind, &data) {
                    Ok(req) => RpEvent::Request(req),
                    Err(e) => RpEvent::Failed(e),
                }
            }
            Ok(Some(other)) => {
                tracing::debug!(?other, "return-path message ignored");
                continue;
            }
            Ok(None) => RpEvent::Closed,
            Err(e) => RpEvent::Failed(e),
        };
        let last = matches!(
            event,
            RpEvent::Shut(_) | RpEvent::Closed | RpEvent::Failed(_)
        );
        if tx.send(event).is_err() || last {
            return;
        }
    }
}

/// An RP RECV_BITMAP: the block name in the message, then the bitmap outside it. Refused
/// outside recovery (`max` 0) and when larger than any block's.
fn read_bitmap(r: &mut dyn Read, data: &[u8], max: u64) -> RpEvent {
    if max == 0 {
        return RpEvent::Failed(savevm::Error::BadPostcopyCommand {
            what: "RECV_BITMAP",
            why: "no bitmap was asked for",
        });
    }
    let read = rec::decode_block_name("RECV_BITMAP", data)
        .and_then(|block| Ok((block, rec::read_bitmap_tail(r, max)?)));
    match read {
        Ok((block, tail)) => RpEvent::Bitmap(block, tail),
        Err(e) => RpEvent::Failed(e),
    }
}
