//! `migrate-set-parameters` and `query-migrate-parameters`.
//!
//! The members of `migrate-set-parameters` are parsed here, once, into a typed
//! [`ParameterUpdate`] with QEMU's texts (`Parameter 'bogus' is unexpected`,
//! `Parameter 'downtime-limit' expects uint64`); the backend checks the merged set as a whole
//! (`Parameter 'downtime_limit' expects ...`). `query-migrate-parameters` returns an object
//! with every parameter.

use serde_json::Value;

use super::args::Args;
use crate::backend::CommandError;
use crate::session::Session;
use migration::ParameterUpdate;

/// Arguments of `migrate-set-parameters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetParameters {
    /// The parameters to change.
    pub update: ParameterUpdate,
}

impl SetParameters {
    /// Takes every member and parses it against the parameter table.
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        let update = ParameterUpdate::from_json(&a.take_all())?;
        Ok(Self { update })
    }

    /// Applies the change.
    pub fn run(&self, s: &Session) -> Result<(), CommandError> {
        s.backend.set_parameters(&self.update)
    }
}

/// The `query-migrate-parameters` reply.
pub fn query(s: &Session) -> Value {
    s.backend.parameters().to_json()
}
