//! `disk-verify`: the disk half of livemig's `ram-verify` capability. When a migration copies
//! disks (`migrate -b`/`-i`) with `ram-verify` on, the source sends a digest of every drive's
//! guest-visible content ([`block::Disk::digest`]) after the `block` END section; the
//! destination recomputes them from its images before it reports success and fails the
//! migration on any difference (its images are then put back by the block handler's cleanup).
//!
//! ```text
//! FULL "disk-verify" v1 : for each drive, in --drive order: 32 bytes BLAKE3 digest (field = drive id)
//! ```
//!
//! The digest is computed in [`DeviceState::pre_save`] with the guest stopped, so a read error
//! fails the migration on the source instead of sending a made-up digest.

use std::sync::Arc;

use block::Disk;
use savevm::vmstate::{FieldKind, Value, VmStateDescription, VmStateValue};

use crate::block::error::BlockMigrationError;
use crate::capabilities::{Capabilities, Capability};
use crate::error::MigrationError;
use crate::handler::DeviceState;

/// Section idstr.
pub const IDSTR: &str = "disk-verify";

/// The `disk-verify` device over a VM's drives.
pub struct DiskVerify {
    disks: Vec<Arc<Disk>>,
    /// Digests taken by `pre_save`, in drive order.
    saved: Vec<[u8; 32]>,
}

impl DiskVerify {
    /// A verifier for `disks` (the same drives, in the same order, as the `block` handler's).
    pub fn new(disks: Vec<Arc<Disk>>) -> Self {
        Self {
            disks,
            saved: Vec::new(),
        }
    }
}

fn digest(d: &Disk) -> Result<[u8; 32], MigrationError> {
    d.digest()
        .map_err(|e| MigrationError::BlockLoad(BlockMigrationError::Disk(e)))
}

impl DeviceState for DiskVerify {
    fn description(&self) -> VmStateDescription {
        self.disks.iter().fold(
            VmStateDescription::new(IDSTR, 1).minimum_version(1),
            |d, disk| d.field(disk.id(), FieldKind::Buffer(32)),
        )
    }

    fn needed(&self, caps: &Capabilities) -> bool {
        caps.get(Capability::RamVerify) && caps.get(Capability::Block) && !self.disks.is_empty()
    }

    fn pre_save(&mut self) -> Result<(), MigrationError> {
        self.saved = self
            .disks
            .iter()
            .map(|d| {
                d.digest()
                    .map_err(|e| MigrationError::BlockSave(BlockMigrationError::Disk(e)))
            })
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    fn save(&self) -> VmStateValue {
        // Without a pre_save (a caller that skipped it) the fields stay empty and the
        // destination rejects the section: never a digest that was not computed.
        self.disks
            .iter()
            .zip(&self.saved)
            .fold(VmStateValue::new(), |v, (d, h)| {
                v.with(d.id(), Value::Bytes(h.to_vec()))
            })
    }

    fn load(&mut self, value: &VmStateValue, _version: u32) -> Result<(), MigrationError> {
        for d in &self.disks {
            let remote = value
                .get_bytes(d.id())
                .map_err(|e| MigrationError::DeviceLoad {
                    idstr: IDSTR.into(),
                    reason: e.to_string(),
                })?;
            if remote != digest(d)? {
                return Err(MigrationError::DiskVerifyMismatch(d.id().to_string()));
            }
        }
        tracing::info!(
            drives = self.disks.len(),
            "disk-verify: disks identical to the source"
        );
        Ok(())
    }
}
