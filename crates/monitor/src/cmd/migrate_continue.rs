//! `migrate-continue`: release a migration paused before switchover.
//!
//! ```text
//! {"execute": "migrate-continue", "arguments": {"state": "pre-switchover"}}
//!   → {}   or  "Migration not in expected state: active"
//! ```
//! `state` is a `MigrationStatus` and must be the current one (QEMU's check), so a manager's
//! late continue for an earlier pause cannot release a later one.

use super::args::{bad_enum, Args};
use crate::backend::CommandError;
use crate::session::Session;
use migration::MigrationStatus;

/// Arguments of `migrate-continue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrateContinue {
    /// The status the migration is expected to be paused in.
    pub state: MigrationStatus,
}

impl MigrateContinue {
    /// Parses `state: MigrationStatus`.
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        let name = a.req_str("state")?;
        let state = name
            .parse()
            .map_err(|_| bad_enum(&a.full_name("state"), &name))?;
        Ok(Self { state })
    }

    /// Asks the backend to continue.
    pub fn run(&self, s: &Session) -> Result<(), CommandError> {
        s.backend.migrate_continue(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn state_is_a_migration_status() {
        let parse =
            |v: serde_json::Value| MigrateContinue::parse(&mut Args::new(v.as_object().cloned()));
        assert_eq!(
            parse(json!({"state": "pre-switchover"})).unwrap().state,
            MigrationStatus::PreSwitchover
        );
        assert_eq!(
            parse(json!({"state": "paused"})).unwrap_err().desc,
            "Parameter 'state' does not accept value 'paused'"
        );
        assert_eq!(
            parse(json!({})).unwrap_err().desc,
            "Parameter 'state' is missing"
        );
    }
}
