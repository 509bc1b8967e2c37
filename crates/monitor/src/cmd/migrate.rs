//! `migrate`: start an outgoing migration.
//!
//! QMP: `{"execute": "migrate", "arguments": {"uri": STR, "blk"?: BOOL, "inc"?: BOOL,
//! "detach"?: BOOL, "resume"?: BOOL}}` → `{}` once the migration thread runs. HMP adds the
//! wait-for-completion behaviour on top (see [`crate::hmp`]).

use super::args::Args;
use crate::backend::{CommandError, MigrateOptions};
use crate::session::Session;

/// Arguments of `migrate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrate {
    /// Destination URI.
    pub uri: String,
    /// Options.
    pub opts: MigrateOptions,
}

impl Migrate {
    /// Parses QMP arguments in schema order.
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        let uri = a.req_str("uri")?;
        let blk = a.opt_bool("blk")?.unwrap_or(false);
        let inc = a.opt_bool("inc")?.unwrap_or(false);
        let detach = a.opt_bool("detach")?.unwrap_or(false);
        let resume = a.opt_bool("resume")?.unwrap_or(false);
        Ok(Self {
            uri,
            opts: MigrateOptions {
                blk,
                inc,
                detach,
                resume,
            },
        })
    }

    /// Asks the backend to start; `fd:NAME` URIs use this connection's descriptor table.
    pub fn run(&self, s: &Session) -> Result<(), CommandError> {
        s.backend.migrate(&self.uri, self.opts, &*s.fds)
    }
}
