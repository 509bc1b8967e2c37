//! The destination's side of the return path.

use std::io::Write;

use savevm::record::{self, RpMessage};

use crate::error::MigrationError;

/// The destination's side of the return path: opened when the source asks for it
/// (`OPEN_RETURN_PATH`), answers `PING`s and ends with `SHUT` (0 = loaded, 1 = failed).
pub struct ReturnPath {
    writer: Option<Box<dyn Write + Send>>,
    open: bool,
}

impl ReturnPath {
    /// A return path over `writer` (None: the transport has no reverse direction).
    pub fn new(writer: Option<Box<dyn Write + Send>>) -> Self {
        Self {
            writer,
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

    pub(super) fn send(&mut self, msg: RpMessage) -> Result<(), MigrationError> {
        match (&mut self.writer, self.open) {
            (Some(w), true) => Ok(record::write_rp(w.as_mut(), &msg)?),
            _ => Err(MigrationError::PingWithoutReturnPath),
        }
    }

    /// Tells the source how loading ended (if it opened a return path).
    pub fn shut(&mut self, ok: bool) {
        if self.open {
            if let Err(e) = self.send(RpMessage::Shut(u32::from(!ok))) {
                tracing::warn!("could not report to the source: {}", e.report());
            }
        }
    }
}
