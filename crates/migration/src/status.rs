//! Migration and VM lifecycles: [`MigrationStatus`] (QEMU's `MigrationStatus` QAPI enum) and
//! [`RunState`] (the VM run state reported by `query-status`).
//!
//! Both are plain enums whose wire strings match QEMU 7.2. Status changes go through
//! [`MigrationStatus::can_transition_to`], the single place that says which moves are legal
//! (STYLE practice 10).
//!
//! ```text
//!  none/completed/failed/cancelled ──migrate──▶ setup ──▶ active ───────────────────────▶ completed
//!                                                 │          │ pause-before-switchover   ▲
//!                                                 │          └─▶ pre-switchover ─▶ device ┘
//!                                                 ├──────────┴──────────┴─────────┴──▶ failed
//!                                                 └──cancel──▶ cancelling ──▶ cancelled
//!  active ──migrate-start-postcopy──▶ postcopy-active ──▶ completed | failed | cancelling
//!  (after the switch a failed or cancelled migration leaves the source's guest paused: it may
//!  already have run on the destination)
//! ```
//!
//! As in QEMU 7.2, `device` is only used after `pre-switchover` (`migrate-continue`); without
//! `pause-before-switchover` the switchover happens in `active`.

use std::fmt;
use std::str::FromStr;

/// Status of the (outgoing or incoming) migration, as reported by `query-migrate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MigrationStatus {
    /// No migration was ever started.
    #[default]
    None,
    /// `migrate` accepted; connecting and sending the setup sections.
    Setup,
    /// A cancel was requested; the migration thread is winding down.
    Cancelling,
    /// The cancel finished; the source VM runs as before.
    Cancelled,
    /// Pre-copy iterations while the guest runs.
    Active,
    /// Post-copy: the guest runs on the destination, which fetches missing pages.
    PostcopyActive,
    /// Post-copy paused (not implemented by livemig).
    PostcopyPaused,
    /// Post-copy recovery (not implemented by livemig).
    PostcopyRecover,
    /// The migration succeeded.
    Completed,
    /// The migration failed; see the error description.
    Failed,
    /// COLO (not implemented by livemig).
    Colo,
    /// Guest stopped, paused before switchover until `migrate-continue`.
    PreSwitchover,
    /// Guest stopped, device state being sent after a pause before switchover.
    Device,
    /// Waiting for failover devices to unplug (not implemented by livemig).
    WaitUnplug,
}

impl MigrationStatus {
    /// All statuses in QEMU's enum order.
    pub const ALL: [MigrationStatus; 14] = [
        Self::None,
        Self::Setup,
        Self::Cancelling,
        Self::Cancelled,
        Self::Active,
        Self::PostcopyActive,
        Self::PostcopyPaused,
        Self::PostcopyRecover,
        Self::Completed,
        Self::Failed,
        Self::Colo,
        Self::PreSwitchover,
        Self::Device,
        Self::WaitUnplug,
    ];

    /// The QAPI wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Setup => "setup",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
            Self::Active => "active",
            Self::PostcopyActive => "postcopy-active",
            Self::PostcopyPaused => "postcopy-paused",
            Self::PostcopyRecover => "postcopy-recover",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Colo => "colo",
            Self::PreSwitchover => "pre-switchover",
            Self::Device => "device",
            Self::WaitUnplug => "wait-unplug",
        }
    }

    /// True while a migration is in progress: a new `migrate` is refused and capabilities
    /// cannot change.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            Self::Setup
                | Self::Active
                | Self::Device
                | Self::Cancelling
                | Self::PostcopyActive
                | Self::PostcopyPaused
                | Self::PostcopyRecover
                | Self::PreSwitchover
                | Self::WaitUnplug
        )
    }

    /// True for the states in which `query-migrate` reports RAM statistics.
    pub fn has_ram_stats(self) -> bool {
        matches!(
            self,
            Self::Active
                | Self::Cancelling
                | Self::Device
                | Self::Completed
                | Self::PreSwitchover
                | Self::PostcopyActive
                | Self::PostcopyPaused
                | Self::PostcopyRecover
        )
    }

    /// Whether moving from `self` to `to` is a legal transition of livemig's state machine.
    pub fn can_transition_to(self, to: MigrationStatus) -> bool {
        use MigrationStatus::*;
        matches!(
            (self, to),
            (None | Completed | Failed | Cancelled, Setup)
                | (Setup, Active | Failed | Cancelling)
                | (
                    Active,
                    PreSwitchover | Completed | Failed | Cancelling | PostcopyActive
                )
                | (
                    PostcopyActive,
                    Completed | Failed | Cancelling | PostcopyPaused
                )
                | (PostcopyPaused, PostcopyRecover | Failed | Cancelling)
                | (
                    PostcopyRecover,
                    PostcopyActive | PostcopyPaused | Failed | Cancelling
                )
                | (PreSwitchover, Device | Failed | Cancelling)
                | (Device, Completed | Failed | Cancelling)
                | (Cancelling, Cancelled | Failed)
        )
    }
}

impl fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`MigrationStatus`] or [`RunState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a valid state name")]
pub struct UnknownState(pub String);

impl FromStr for MigrationStatus {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// VM run state (QEMU's `RunState`, the subset livemig uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunState {
    /// vCPUs run.
    Running,
    /// Stopped by the operator (`stop`).
    Paused,
    /// Created with `-S`, never started.
    Prelaunch,
    /// Waiting for or loading an incoming migration.
    Inmigrate,
    /// Stopped by the migration thread for switchover.
    FinishMigrate,
    /// Stopped after a successful outgoing migration; `cont` resumes it.
    Postmigrate,
    /// Guest powered off or the process is quitting.
    Shutdown,
}

impl RunState {
    /// The QAPI wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Prelaunch => "prelaunch",
            Self::Inmigrate => "inmigrate",
            Self::FinishMigrate => "finish-migrate",
            Self::Postmigrate => "postmigrate",
            Self::Shutdown => "shutdown",
        }
    }

    /// True when vCPUs run.
    pub fn is_running(self) -> bool {
        self == Self::Running
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Running,
            Self::Paused,
            Self::Prelaunch,
            Self::Inmigrate,
            Self::FinishMigrate,
            Self::Postmigrate,
            Self::Shutdown,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| UnknownState(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_strings_round_trip() {
        for s in MigrationStatus::ALL {
            assert_eq!(s.as_str().parse::<MigrationStatus>(), Ok(s));
        }
        assert!("bogus".parse::<MigrationStatus>().is_err());
    }

    #[test]
    fn transitions() {
        use MigrationStatus::*;
        assert!(None.can_transition_to(Setup));
        assert!(Completed.can_transition_to(Setup));
        assert!(!Active.can_transition_to(Setup));
        assert!(Active.can_transition_to(Cancelling));
        assert!(Cancelling.can_transition_to(Cancelled));
        assert!(!Cancelled.can_transition_to(Completed));
        assert!(Setup.is_running() && !Completed.is_running());
    }
}
