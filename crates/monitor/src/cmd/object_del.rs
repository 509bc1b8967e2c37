//! `object-del`: delete an object created by `object-add` or `--object`.
//!
//! QMP: `{"execute": "object-del", "arguments": {"id": "tls0"}}` → `{}`; an unknown id fails
//! with QEMU's "object 'tls0' not found". A migration that already started keeps its copy.

use super::args::Args;
use crate::backend::CommandError;
use crate::session::Session;

/// Arguments of `object-del`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDel {
    /// The object id.
    pub id: String,
}

impl ObjectDel {
    /// Parses QMP arguments.
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        Ok(Self {
            id: a.req_str("id")?,
        })
    }

    /// Asks the backend to delete the object.
    pub fn run(&self, s: &Session) -> Result<(), CommandError> {
        s.backend.object_del(&self.id)
    }
}
