//! What the monitor needs from the VMM: [`MonitorBackend`].
//!
//! The monitor owns neither the VM nor the migration. Every command ends in one call of this
//! trait; the VMM implements it (tests use a mock). Errors carry the QMP error class and the
//! human-readable text that both QMP (`{"error": {"class", "desc"}}`) and HMP (`Error: desc`)
//! show unchanged.

use migration::{
    Capabilities, Capability, EventBus, MigrationInfo, MigrationParameters, MigrationStatus,
    ParameterUpdate, RunState,
};

/// The VMM side of the monitor.
pub trait MonitorBackend: Send + Sync + 'static {
    /// Starts an outgoing migration to `uri` (asynchronous: returns once the migration thread
    /// runs). `fd:NAME` URIs take their descriptor from `fds`.
    fn migrate(
        &self,
        uri: &str,
        opts: MigrateOptions,
        fds: &dyn transport::FdSource,
    ) -> Result<(), CommandError>;
    /// Starts listening for (or reading) an incoming migration from `uri`.
    fn migrate_incoming(
        &self,
        uri: &str,
        fds: &dyn transport::FdSource,
    ) -> Result<(), CommandError>;
    /// Cancels the outgoing migration, if any (never fails, like QEMU's `migrate_cancel`).
    fn migrate_cancel(&self);
    /// `migrate-start-postcopy`: the outgoing migration switches to postcopy at its next round.
    fn migrate_start_postcopy(&self) -> Result<(), CommandError>;
    /// `migrate-pause`: breaks the links of a `postcopy-active` migration (either side), which
    /// then pauses. Backends without postcopy refuse it with QEMU's text.
    fn migrate_pause(&self) -> Result<(), CommandError> {
        Err(CommandError::generic(
            migration::postcopy::PostcopyError::PauseNotActive.to_string(),
        ))
    }
    /// `migrate-recover`: a destination in `postcopy-paused` listens on `uri` for the source
    /// to come back. Backends without postcopy refuse it with QEMU's text.
    fn migrate_recover(
        &self,
        uri: &str,
        fds: &dyn transport::FdSource,
    ) -> Result<(), CommandError> {
        let _ = (uri, fds);
        Err(CommandError::generic(
            migration::postcopy::PostcopyError::RecoverNotPaused.to_string(),
        ))
    }
    /// `migrate-continue`: releases a migration paused in `state` (`pre-switchover`).
    fn migrate_continue(&self, state: MigrationStatus) -> Result<(), CommandError>;
    /// True while QEMU's `migration` yank instance exists (a migration runs).
    fn migration_yank_registered(&self) -> bool;
    /// `yank` of the `migration` instance: shuts the migration's connections down.
    fn yank_migration(&self);
    /// The `query-migrate` data.
    fn query_migrate(&self) -> MigrationInfo;
    /// Applies a batch of capability changes as a whole.
    fn set_capabilities(&self, changes: &[(Capability, bool)]) -> Result<(), CommandError>;
    /// The current capabilities.
    fn capabilities(&self) -> Capabilities;
    /// Applies a parsed `migrate-set-parameters` request; the backend checks the merged set
    /// (with what it knows of the VM, such as its RAM size) and applies all or nothing.
    fn set_parameters(&self, update: &ParameterUpdate) -> Result<(), CommandError>;
    /// The current parameters.
    fn parameters(&self) -> MigrationParameters;
    /// The VM run state.
    fn run_state(&self) -> RunState;
    /// Stops the vCPUs.
    fn stop(&self) -> Result<(), CommandError>;
    /// Resumes the vCPUs.
    fn cont(&self) -> Result<(), CommandError>;
    /// Asks the process to exit. Called after the reply to `quit` was sent.
    fn quit(&self);
    /// `calc-dirty-rate`: starts measuring the guest's dirty rate.
    fn calc_dirty_rate(
        &self,
        calc_time: i64,
        sample_pages: Option<i64>,
        mode: Option<migration::dirty_rate::DirtyRateMode>,
    ) -> Result<(), CommandError>;
    /// The last dirty-rate measurement (`query-dirty-rate`).
    fn query_dirty_rate(&self) -> migration::dirty_rate::DirtyRateState;
    /// The VM's UUID (`query-uuid`), if set.
    fn uuid(&self) -> Option<migration::uuid::VmUuid>;
    /// The process's fd sets (`add-fd`, `remove-fd`, `query-fdsets`).
    fn fdsets(&self) -> &crate::fdsets::FdSets;
    /// The bus whose events QMP clients receive.
    fn events(&self) -> &EventBus;
    /// `object-add`: creates a TLS object. Backends without objects refuse it by name.
    fn object_add(&self, object: transport::tls::TlsObject) -> Result<(), CommandError> {
        Err(CommandError::generic(format!(
            "object-add is not supported by this VMM (object '{}')",
            object.id()
        )))
    }
    /// `object-del`: deletes a TLS object.
    fn object_del(&self, id: &str) -> Result<(), CommandError> {
        Err(CommandError::generic(format!("object '{id}' not found")))
    }
}

/// Options of `migrate`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrateOptions {
    /// Block migration with a full copy of the disks (`-b`, `blk`).
    pub blk: bool,
    /// Incremental block migration (`-i`, `inc`).
    pub inc: bool,
    /// Do not wait for completion (`-d`); QMP always behaves as detached.
    pub detach: bool,
    /// Resume a paused post-copy migration (`-r`, `resume`).
    pub resume: bool,
}

/// A failed command: the QMP error class and the message shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{desc}")]
pub struct CommandError {
    /// QMP error class.
    pub class: ErrorClass,
    /// Human-readable description (QEMU's text where QEMU has one).
    pub desc: String,
}

impl CommandError {
    /// A [`ErrorClass::GenericError`] with `desc`.
    pub fn generic(desc: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    /// A [`ErrorClass::CommandNotFound`] with `desc`.
    pub fn not_found(desc: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }

    /// The QMP `{"class": ..., "desc": ...}` object.
    pub fn to_qmp(&self) -> serde_json::Value {
        serde_json::json!({ "class": self.class.as_str(), "desc": self.desc })
    }
}

/// QMP error classes (QEMU's `QapiErrorClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Almost every error.
    GenericError,
    /// Unknown command, or a command not allowed in the current negotiation state.
    CommandNotFound,
    /// A device exists but is not active.
    DeviceNotActive,
    /// A device does not exist.
    DeviceNotFound,
    /// KVM lacks a required capability.
    KVMMissingCap,
}

impl ErrorClass {
    /// The class string on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GenericError => "GenericError",
            Self::CommandNotFound => "CommandNotFound",
            Self::DeviceNotActive => "DeviceNotActive",
            Self::DeviceNotFound => "DeviceNotFound",
            Self::KVMMissingCap => "KVMMissingCap",
        }
    }

    /// Parses a class string (used by the client).
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::GenericError,
            Self::CommandNotFound,
            Self::DeviceNotActive,
            Self::DeviceNotFound,
            Self::KVMMissingCap,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<migration::CapabilityError> for CommandError {
    fn from(e: migration::CapabilityError) -> Self {
        Self::generic(e.to_string())
    }
}

impl From<migration::ContinueError> for CommandError {
    fn from(e: migration::ContinueError) -> Self {
        Self::generic(e.to_string())
    }
}

impl From<migration::dirty_rate::DirtyRateError> for CommandError {
    fn from(e: migration::dirty_rate::DirtyRateError) -> Self {
        Self::generic(e.to_string())
    }
}

impl From<migration::ParamError> for CommandError {
    fn from(e: migration::ParamError) -> Self {
        Self::generic(e.to_string())
    }
}
