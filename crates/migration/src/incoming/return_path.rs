//! The destination's side of the return path.

use std::io::Write;
use std::sync::{Arc, Mutex};

use savevm::record::{self, RpMessage};

use crate::error::MigrationError;

type SharedWriter = Arc<Mutex<Box<dyn Write + Send>>>;

/// The destination's side of the return path: opened when the source asks for it
/// (`OPEN_RETURN_PATH`), answers `PING`s and ends with `SHUT` (0 = loaded, 1 = failed). In
/// postcopy the fault thread writes page requests on it too, through an [`RpSender`].
pub struct ReturnPath {
    writer: Option<SharedWriter>,
    open: bool,
}

/// A handle that writes whole return-path messages from another thread (postcopy's page
/// requests); messages of different threads never interleave.
#[derive(Clone)]
pub struct RpSender(SharedWriter);

impl RpSender {
    /// Writes one message.
    pub fn send(&self, msg: &RpMessage) -> Result<(), MigrationError> {
        self.send_with_tail(msg, &[])
    }

    /// Writes one message followed by `tail` outside its framing (RECV_BITMAP's bitmap),
    /// with no other message in between.
    pub fn send_with_tail(&self, msg: &RpMessage, tail: &[u8]) -> Result<(), MigrationError> {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        record::write_rp(w.as_mut(), msg)?;
        if !tail.is_empty() {
            w.write_all(tail)
                .and_then(|()| w.flush())
                .map_err(savevm::Error::from)?;
        }
        Ok(())
    }
}

impl ReturnPath {
    /// A return path over `writer` (None: the transport has no reverse direction).
    pub fn new(writer: Option<Box<dyn Write + Send>>) -> Self {
        Self {
            writer: writer.map(|w| Arc::new(Mutex::new(w))),
            open: false,
        }
    }

    pub(super) fn open(&mut self) -> Result<(), MigrationError> {
        if self.writer.is_none() {
            return Err(MigrationError::NoReturnPathTransport);
        }
        self.open = true;
        Ok(())
    }

    /// Postcopy recovery: from now on every sender writes on `writer` (the new connection).
    pub(crate) fn replace_writer(&mut self, writer: Box<dyn Write + Send>) {
        match &self.writer {
            Some(w) => *w.lock().unwrap_or_else(|p| p.into_inner()) = writer,
            None => self.writer = Some(Arc::new(Mutex::new(writer))),
        }
    }

    /// A sender for another thread, once the source opened the return path.
    pub(crate) fn sender(&self) -> Option<RpSender> {
        self.writer
            .as_ref()
            .filter(|_| self.open)
            .map(|w| RpSender(w.clone()))
    }

    pub(crate) fn send(&mut self, msg: RpMessage) -> Result<(), MigrationError> {
        match self.sender() {
            Some(s) => s.send(&msg),
            None => Err(MigrationError::PingWithoutReturnPath),
        }
    }

    /// Tells the source how loading ended (if it opened a return path). The destination
    /// reports *before* it starts the guest: a source that hears nothing knows the guest did
    /// not start here and may resume it. A report of success that cannot be delivered is an
    /// error, so the guest does not start on both sides.
    pub fn shut(&mut self, ok: bool) -> Result<(), MigrationError> {
        if !self.open {
            return Ok(());
        }
        let sent = self.send(RpMessage::Shut(u32::from(!ok)));
        if let Err(e) = &sent {
            tracing::warn!("could not report to the source: {}", e.report());
        }
        sent
    }
}
