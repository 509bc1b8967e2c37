//! The post-copy commands: `migrate-start-postcopy` (switch the outgoing migration to
//! postcopy), and `migrate-pause` / `migrate-recover` (recovery of a postcopy whose link
//! broke: QEMU 7.2's checks and texts are the backend's).

use super::args::Args;
use crate::backend::CommandError;
use crate::session::Session;

/// `migrate-start-postcopy` (QMP) / `migrate_start_postcopy` (HMP): QEMU's checks and texts
/// are the backend's.
pub fn start(s: &Session) -> Result<(), CommandError> {
    s.backend.migrate_start_postcopy()
}

/// Arguments of `migrate-recover`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateRecover {
    /// Where the destination would listen for the resumed source.
    pub uri: String,
}

impl MigrateRecover {
    /// Parses `uri: str`.
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        Ok(Self {
            uri: a.req_str("uri")?,
        })
    }

    /// Asks the backend to listen again; only a destination in `postcopy-paused` may.
    pub fn run(&self, s: &Session) -> Result<(), CommandError> {
        s.backend.migrate_recover(&self.uri, &*s.fds)
    }
}

/// `migrate-pause`: only a `postcopy-active` migration can be paused.
pub fn pause(s: &Session) -> Result<(), CommandError> {
    s.backend.migrate_pause()
}
