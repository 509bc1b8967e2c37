//! `migrate-set-parameters` and `query-migrate-parameters`.
//!
//! The members of `migrate-set-parameters` are passed to the backend unchanged; it validates
//! the merged set as a whole with QEMU's texts (`Parameter 'downtime_limit' expects ...`).
//! `query-migrate-parameters` returns an object with every parameter.

use serde_json::{Map, Value};

use super::args::Args;
use crate::backend::CommandError;
use crate::session::Session;

/// Arguments of `migrate-set-parameters`.
#[derive(Debug, Clone, PartialEq)]
pub struct SetParameters {
    /// The parameters to change.
    pub args: Map<String, Value>,
}

impl SetParameters {
    /// Takes every member; the backend checks names and types.
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        Ok(Self { args: a.take_all() })
    }

    /// Applies the change.
    pub fn run(&self, s: &Session) -> Result<(), CommandError> {
        s.backend.set_parameters(&self.args)
    }
}

/// The `query-migrate-parameters` reply.
pub fn query(s: &Session) -> Value {
    s.backend.parameters().to_json()
}
