//! `ram-verify` (livemig's own capability): at switchover the source sends a BLAKE3 digest of
//! every RAM block in a device section of its own; the destination recomputes them after
//! loading RAM and fails the migration on any difference.
//!
//! ```text
//! FULL "ram-verify" v1 : for each RAM block, in RAM-list order: 32 bytes BLAKE3 digest
//! ```
//!
//! The section comes after the `ram` END section, so the destination's RAM is complete when it
//! is checked. It is only sent with the capability on; a destination checks it whenever it is
//! in the stream.
//!
//! Postcopy: the section is not in the package (the destination's RAM is incomplete then) but
//! after the last page, and the destination compares it with the digest of its RAM *as
//! delivered* ([`guest_ram::DeliveredPages`]: its guest has been running and writing). Version 2:
//! the digest is built from page hashes (see `guest_ram`'s `RamBlock::digest`), which version 1
//! peers computed differently.

use std::sync::Arc;

use guest_ram::GuestRam;
use savevm::vmstate::{FieldKind, Value, VmStateDescription, VmStateValue};

use crate::capabilities::{Capabilities, Capability};
use crate::error::MigrationError;
use crate::handler::DeviceState;

/// Section idstr.
pub const IDSTR: &str = "ram-verify";

/// The `ram-verify` device over a VM's RAM.
pub struct RamVerify {
    ram: Arc<GuestRam>,
}

impl RamVerify {
    /// A verifier for `ram`.
    pub fn new(ram: Arc<GuestRam>) -> Self {
        Self { ram }
    }
}

impl DeviceState for RamVerify {
    fn description(&self) -> VmStateDescription {
        self.ram.blocks().iter().fold(
            VmStateDescription::new(IDSTR, 2).minimum_version(2),
            |d, b| d.field(b.idstr(), FieldKind::Buffer(32)),
        )
    }

    fn needed(&self, caps: &Capabilities) -> bool {
        caps.get(Capability::RamVerify)
    }

    fn save(&self) -> VmStateValue {
        self.ram.blocks().iter().fold(VmStateValue::new(), |v, b| {
            v.with(b.idstr(), Value::Bytes(b.digest().to_vec()))
        })
    }

    fn load(&mut self, value: &VmStateValue, _version: u32) -> Result<(), MigrationError> {
        let delivered = self.ram.delivered();
        for (i, b) in self.ram.blocks().iter().enumerate() {
            let remote = value
                .get_bytes(b.idstr())
                .map_err(|e| MigrationError::DeviceLoad {
                    idstr: IDSTR.into(),
                    reason: e.to_string(),
                })?;
            let local = match &delivered {
                Some(d) => d.digest(i),
                None => Some(b.digest()),
            };
            if local.as_ref().map(|l| l.as_slice()) != Some(remote) {
                return Err(MigrationError::VerifyMismatch(b.idstr().to_string()));
            }
        }
        tracing::info!(
            blocks = self.ram.blocks().len(),
            "ram-verify: RAM identical to the source"
        );
        Ok(())
    }
}
