//! [`Runtime`]: what one running migration shares with the rest of the VM — its settings, its
//! statistics and its cancel token. The migration thread creates it, the VM's
//! [`MigrationState`](crate::MigrationState) keeps the latest one so `query-migrate` can report
//! and `migrate_cancel` can reach it. It carries no channel, no registry and no decision: those
//! are handed to the migration thread and back (see [`crate::session`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::cancel::CancelToken;
use crate::counters::{DiskCounters, RamCounters, Timings};
use crate::settings::Settings;

/// Shared figures and controls of one migration.
#[derive(Debug)]
pub struct Runtime {
    settings: Settings,
    /// RAM statistics.
    pub ram: Arc<RamCounters>,
    /// Block-migration statistics.
    pub disk: Arc<DiskCounters>,
    timings: Mutex<Timings>,
    limits: Mutex<Limits>,
    cancel: CancelToken,
    awaiting_destination: AtomicBool,
    /// `migrate-start-postcopy` was called for this migration.
    postcopy_requested: AtomicBool,
    /// A paused postcopy's way on (`migrate resume=true`, `migrate-recover`).
    pub(crate) recovery: crate::postcopy::Recovery,
}

/// The parameters an operator may change while the migration runs (QEMU applies
/// `max-bandwidth` and `downtime-limit` at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `max-bandwidth` in bytes per second; 0 means unlimited.
    pub max_bandwidth: u64,
    /// `downtime-limit` in milliseconds.
    pub downtime_limit_ms: u64,
}

impl Limits {
    /// The limits `settings` set.
    pub fn of(settings: &Settings) -> Self {
        Self {
            max_bandwidth: settings.params.max_bandwidth(),
            downtime_limit_ms: settings.params.downtime_limit_ms(),
        }
    }
}

impl Runtime {
    /// The runtime of a migration starting now with `settings`.
    pub fn new(settings: Settings) -> Self {
        Self {
            limits: Mutex::new(Limits::of(&settings)),
            awaiting_destination: AtomicBool::new(false),
            postcopy_requested: AtomicBool::new(false),
            recovery: Default::default(),
            settings,
            ram: Arc::default(),
            disk: Arc::default(),
            timings: Mutex::new(Timings::starting_now()),
            cancel: CancelToken::new(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The cancel token.
    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }

    /// The limits in force now.
    pub fn limits(&self) -> Limits {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the limits of the running migration.
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// True while the source, everything sent, waits for the destination's verdict.
    pub fn awaiting_destination(&self) -> bool {
        self.awaiting_destination.load(Ordering::SeqCst)
    }

    /// True once `migrate-start-postcopy` asked this migration to switch to postcopy.
    pub fn postcopy_requested(&self) -> bool {
        self.postcopy_requested.load(Ordering::SeqCst)
    }

    pub(crate) fn request_postcopy(&self) {
        self.postcopy_requested.store(true, Ordering::SeqCst);
    }

    pub(crate) fn set_awaiting_destination(&self, on: bool) {
        self.awaiting_destination.store(on, Ordering::SeqCst);
    }

    /// Timing figures, for reading or updating.
    pub fn timings(&self) -> MutexGuard<'_, Timings> {
        self.timings.lock().unwrap_or_else(|p| p.into_inner())
    }
}
