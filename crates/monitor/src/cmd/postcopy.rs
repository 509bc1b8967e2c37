//! The post-copy commands: `migrate-start-postcopy` (switch the outgoing migration to
//! postcopy), and `migrate-pause` / `migrate-recover` (recovery).
//!
//! livemig has no postcopy recovery, so no migration is ever in `postcopy-paused`; those two
//! commands exist (managers probe for them and may call them out of band) and answer as
//! QEMU 7.2 does outside `postcopy-paused`, with its `GenericError` texts.

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

    /// Refused: only a post-copy destination in `postcopy-paused` can recover.
    pub fn run(&self) -> Result<(), CommandError> {
        Err(CommandError::generic(
            "Migrate recover can only be run when postcopy is paused.",
        ))
    }
}

/// `migrate-pause`: refused, only a `postcopy-active` migration can be paused.
pub fn pause() -> Result<(), CommandError> {
    Err(CommandError::generic(
        "migrate-pause is currently only supported during postcopy-active state",
    ))
}
