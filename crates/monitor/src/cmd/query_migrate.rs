//! `query-migrate`: the `MigrationInfo` object (spec §6.3), serialized with QEMU's member
//! names by the `migration` crate.

use serde_json::Value;

use crate::session::Session;

/// The `return` value.
pub fn run(s: &Session) -> Value {
    s.backend.query_migrate().to_json()
}
