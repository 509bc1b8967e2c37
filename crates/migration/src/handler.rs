//! The two kinds of migratable state, as in QEMU's savevm registry:
//!
//! * [`LiveHandler`] — iterative state sent while the guest runs (RAM, disks), QEMU's
//!   `SaveVMHandlers`: setup → {pending, iterate}* → complete on the source, load on the
//!   destination. Sent as START / PART / END sections.
//! * [`DeviceState`] — a device's state described by a versioned
//!   [`VmStateDescription`], QEMU's `VMStateDescription`:
//!   sent once, as a FULL section, while the guest is stopped.
//!
//! Save methods get the stream writer and the migration's [`OutgoingSession`] (settings,
//! statistics, multifd channels, throttle requests); load methods the reader and the
//! [`IncomingSession`]. Methods that every handler must implement have no default (STYLE
//! practice 8).

use savevm::qemu_file::{QemuFileReader, QemuFileWriter};
use savevm::vmstate::{VmStateDescription, VmStateValue};

use crate::capabilities::Capabilities;
use crate::error::MigrationError;
use crate::session::{IncomingSession, OutgoingSession};

/// Iterative (live) migration state.
pub trait LiveHandler: Send {
    /// Section idstr, e.g. `ram`.
    fn idstr(&self) -> &str;

    /// Section version written by the source and the newest accepted on load.
    fn version_id(&self) -> u32;

    /// Whether this handler takes part in a migration with these capabilities.
    fn is_active(&self, _caps: &Capabilities) -> bool {
        true
    }

    /// Writes the START section body (e.g. the RAM block list) and starts tracking changes.
    fn save_setup(
        &mut self,
        f: &mut QemuFileWriter,
        s: &mut OutgoingSession,
    ) -> Result<(), MigrationError>;

    /// Bytes still to send. A handler may re-synchronise its dirty log when the estimate is
    /// below `threshold` (QEMU's `save_live_pending`).
    fn pending(&mut self, threshold: u64, s: &mut OutgoingSession) -> Result<u64, MigrationError>;

    /// Writes one PART section body; returns true when nothing is left for now.
    fn iterate(
        &mut self,
        f: &mut QemuFileWriter,
        s: &mut OutgoingSession,
    ) -> Result<bool, MigrationError>;

    /// Writes the END section body with the guest stopped: everything that is left.
    fn complete(
        &mut self,
        f: &mut QemuFileWriter,
        s: &mut OutgoingSession,
    ) -> Result<(), MigrationError>;

    /// Bytes this handler wrote to channels of its own (not the main stream) that the
    /// destination has not received yet: queued to their threads or in their sockets (RAM's
    /// multifd channels). The switchover counts them as pending. Handlers that write only to
    /// the main stream have none.
    fn backlog(&self) -> u64 {
        0
    }

    /// Releases source-side migration state (after success or failure).
    fn save_cleanup(&mut self);

    /// Prepares for a new incoming stream.
    fn load_setup(&mut self, _s: &mut IncomingSession) -> Result<(), MigrationError> {
        Ok(())
    }

    /// Reads one START / PART / END section body of version `version`.
    fn load(
        &mut self,
        f: &mut QemuFileReader,
        version: u32,
        s: &mut IncomingSession,
    ) -> Result<(), MigrationError>;

    /// Called once the whole stream was loaded successfully; may still fail the migration.
    fn load_complete(&mut self, _s: &mut IncomingSession) -> Result<(), MigrationError> {
        Ok(())
    }

    /// The destination is about to start the guest (after `load_complete`, the report to the
    /// source and, from a livemig source, its switchover commit): make what the load wrote
    /// permanent (e.g. drop disk undo journals). An error leaves the guest stopped here.
    fn load_commit(&mut self) -> Result<(), MigrationError> {
        Ok(())
    }

    /// The handler's postcopy part, if it can keep sending after the switch (QEMU's
    /// `has_postcopy`; only RAM does).
    fn postcopy(&mut self) -> Option<&mut dyn crate::postcopy::PostcopyHandler> {
        None
    }

    /// Called once after every incoming stream, loaded or not: release what the load held and,
    /// when `failed`, discard what it wrote that must not survive (e.g. staged disk images).
    fn load_cleanup(&mut self, _failed: bool) {}
}

/// Device state described by a versioned VMState description.
pub trait DeviceState: Send {
    /// The description (name, versions, fields) that drives save, load and the JSON.
    fn description(&self) -> VmStateDescription;

    /// Whether the section is sent at all in a migration with these capabilities (QEMU's
    /// `needed`).
    fn needed(&self, _caps: &Capabilities) -> bool {
        true
    }

    /// Prepares [`save`](Self::save) with the guest stopped, for state whose capture can fail
    /// (QEMU's `pre_save`): an error fails the migration on the source, which resumes.
    fn pre_save(&mut self) -> Result<(), MigrationError> {
        Ok(())
    }

    /// Captures the current state (guest stopped). Cannot fail.
    fn save(&self) -> VmStateValue;

    /// Validates and applies a loaded state of version `version`.
    fn load(&mut self, value: &VmStateValue, version: u32) -> Result<(), MigrationError>;
}
