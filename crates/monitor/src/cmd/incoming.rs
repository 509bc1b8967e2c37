//! `migrate-incoming`: start listening for (or reading) an incoming migration.
//!
//! QMP: `{"execute": "migrate-incoming", "arguments": {"uri": STR}}` → `{}`.

use super::args::Args;
use crate::backend::CommandError;
use crate::session::Session;

/// Arguments of `migrate-incoming`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateIncoming {
    /// Source URI (`tcp:`, `unix:`, `fd:`, `exec:`...).
    pub uri: String,
}

impl MigrateIncoming {
    /// Parses QMP arguments.
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        Ok(Self {
            uri: a.req_str("uri")?,
        })
    }

    /// Asks the backend to start the incoming side.
    pub fn run(&self, s: &Session) -> Result<(), CommandError> {
        s.backend.migrate_incoming(&self.uri, &*s.fds)
    }
}
