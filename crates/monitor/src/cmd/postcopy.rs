//! `migrate-pause` and `migrate-recover`: the post-copy recovery commands.
//!
//! livemig has no post-copy, so no migration is ever in `postcopy-active` or
//! `postcopy-paused`; the commands exist (managers probe for them and may call them out of
//! band) and answer as QEMU 7.2 does in every other state, with its `GenericError` texts.

use super::args::Args;
use crate::backend::CommandError;

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
