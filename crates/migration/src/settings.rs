//! [`Settings`]: the capabilities and parameters of one migration, copied from the VM's
//! management state when the migration starts and fixed from then on. Handlers read their
//! options here, never from shared state.

use crate::capabilities::{Capabilities, Capability};
use crate::params::MigrationParameters;
use crate::uuid::VmUuid;

/// Capabilities and parameters of one migration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Capabilities in force.
    pub caps: Capabilities,
    /// Parameters in force.
    pub params: MigrationParameters,
    /// The VM's UUID (`--uuid`), if set: sent with `validate-uuid`, checked against on load.
    pub uuid: Option<VmUuid>,
}

impl Settings {
    /// True when `cap` is on.
    pub fn has(&self, cap: Capability) -> bool {
        self.caps.get(cap)
    }
}
