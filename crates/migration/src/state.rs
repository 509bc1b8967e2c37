//! [`MigrationState`]: the management vocabulary of one VM's migrations — status, the
//! capabilities and parameters the operator set, the last error, the addresses a destination
//! listens on, events — shared between the monitors, the VMM and the migration thread.
//!
//! Everything else a migration uses is its own: the thread owns the registry and the channels
//! ([`crate::session`]); statistics and the cancel token live in the migration's
//! [`Runtime`], of which this state keeps the latest for `query-migrate` and `migrate_cancel`.
//!
//! The state is behind one short-held mutex (never held across I/O). Every status change goes
//! through [`MigrationState::set_status`], which checks the transition and emits the
//! `MIGRATION` event.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::block::BlockMigrationOptions;
use crate::capabilities::{Capabilities, Capability, CapabilityError};
use crate::error::MigrationError;
use crate::events::{Event, EventBus};
use crate::info::MigrationInfo;
use crate::params::{MigrationParameters, ParamError, ParameterUpdate};
use crate::pause::{ContinueError, PauseGate};
use crate::runtime::{Limits, Runtime};
use crate::settings::Settings;
use crate::status::MigrationStatus;

#[derive(Debug, Default)]
struct Inner {
    status: MigrationStatus,
    settings: Settings,
    error: Option<String>,
    socket_address: Option<Vec<serde_json::Value>>,
    incoming: bool,
    runtime: Option<Arc<Runtime>>,
}

/// Migration state of one VM.
#[derive(Debug)]
pub struct MigrationState {
    inner: Mutex<Inner>,
    events: Arc<EventBus>,
    pause: PauseGate,
    autostart: Mutex<bool>,
}

impl MigrationState {
    /// A fresh state emitting events on `events`.
    pub fn new(events: Arc<EventBus>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            events,
            pause: PauseGate::default(),
            autostart: Mutex::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The event bus.
    pub fn events(&self) -> &Arc<EventBus> {
        &self.events
    }

    /// Current status.
    pub fn status(&self) -> MigrationStatus {
        self.lock().status
    }

    /// The capabilities the operator set.
    pub fn capabilities(&self) -> Capabilities {
        self.lock().settings.caps.clone()
    }

    /// The parameters the operator set.
    pub fn parameters(&self) -> MigrationParameters {
        self.lock().settings.params.clone()
    }

    /// The settings a migration starting now would use.
    pub fn settings(&self) -> Settings {
        self.lock().settings.clone()
    }

    /// `migrate-set-capabilities`: refused while a migration runs; all or nothing.
    pub fn set_capabilities(&self, changes: &[(Capability, bool)]) -> Result<(), CapabilityError> {
        let mut s = self.lock();
        if s.status.is_running() {
            return Err(CapabilityError::MigrationRunning);
        }
        let settings = &mut s.settings;
        settings.caps.apply(changes, &settings.params)
    }

    /// `migrate-set-parameters`: the merged set is checked against the capabilities and, when
    /// the VM's RAM size is given, against it (`xbzrle-cache-size`); all or nothing.
    pub fn set_parameters(
        &self,
        update: &ParameterUpdate,
        ram_size: Option<u64>,
    ) -> Result<(), ParamError> {
        let mut s = self.lock();
        let limits = s.settings.caps.param_limits(ram_size);
        s.settings.params.apply(update, &limits)?;
        // A running migration follows new bandwidth and downtime limits at once (QEMU).
        if let (true, Some(rt)) = (s.status.is_running(), &s.runtime) {
            rt.set_limits(Limits::of(&s.settings));
        }
        Ok(())
    }

    /// Sets the VM's UUID (`--uuid`; QEMU's `-uuid`).
    pub fn set_uuid(&self, uuid: Option<crate::uuid::VmUuid>) {
        self.lock().settings.uuid = uuid;
    }

    /// The VM's UUID, if set.
    pub fn uuid(&self) -> Option<crate::uuid::VmUuid> {
        self.lock().settings.uuid
    }

    /// Replaces the settings wholesale (embedders that configure a VM in code).
    pub fn set_settings(&self, settings: Settings) {
        self.lock().settings = settings;
    }

    /// `migrate -b`/`-i`: turns capability `block` (and `block-incremental`) on for one
    /// migration, visibly, and returns the settings that migration runs with.
    pub(crate) fn apply_block_options(
        &self,
        opts: BlockMigrationOptions,
    ) -> Result<Settings, MigrationError> {
        let mut s = self.lock();
        if s.status.is_running() {
            return Err(MigrationError::InProgress);
        }
        opts.apply_to(&mut s.settings)
            .map_err(MigrationError::BlockOptions)?;
        Ok(s.settings.clone())
    }

    /// Turns the one-migration block options off again.
    pub(crate) fn clear_block_options(&self) {
        BlockMigrationOptions::clear(&mut self.lock().settings);
    }

    /// True for a destination (`-incoming`).
    pub fn is_incoming(&self) -> bool {
        self.lock().incoming
    }

    /// The error of the last failed migration.
    pub fn error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    /// The runtime of the current or last migration.
    pub fn runtime(&self) -> Option<Arc<Runtime>> {
        self.lock().runtime.clone()
    }

    /// Moves from `from` to `to` if the current status is `from` and the move is legal;
    /// emits `MIGRATION` with the `events` capability (a destination's `setup` is announced
    /// by [`Self::announce_incoming`] instead).
    pub fn set_status(&self, from: MigrationStatus, to: MigrationStatus) -> bool {
        let emit = {
            let mut s = self.lock();
            if s.status != from || !from.can_transition_to(to) {
                return false;
            }
            s.status = to;
            s.settings.caps.get(Capability::Events) && !(s.incoming && to == MigrationStatus::Setup)
        };
        if emit {
            self.events.emit(Event::Migration { status: to });
        }
        true
    }

    /// Moves to `to` from whatever status the migration is in.
    pub fn set_status_from_any(&self, to: MigrationStatus) -> bool {
        let from = self.status();
        self.set_status(from, to)
    }

    /// Admits one outgoing migration: moves to `setup` (the one place that admits a single
    /// migration at a time), forgets the last error and makes `runtime` the current one.
    pub(crate) fn begin(&self, runtime: Arc<Runtime>) -> Result<(), MigrationError> {
        if !self.set_status_from_any(MigrationStatus::Setup) {
            return Err(MigrationError::InProgress);
        }
        let mut s = self.lock();
        s.error = None;
        s.runtime = Some(runtime);
        // A VM that came in by migration and now migrates out reports as a source, as QEMU
        // does once its incoming state is gone (same-host chains: each destination is the
        // next source).
        s.incoming = false;
        s.socket_address = None;
        Ok(())
    }

    /// A destination starts listening: status `setup` (always announced), the addresses it
    /// listens on, and the runtime of the migration it waits for.
    pub(crate) fn begin_incoming(
        &self,
        socket_address: Option<Vec<serde_json::Value>>,
        runtime: Arc<Runtime>,
    ) -> Result<(), MigrationError> {
        {
            let mut s = self.lock();
            if s.status.is_running() || s.incoming {
                return Err(MigrationError::InProgress);
            }
            s.incoming = true;
            s.error = None;
            s.socket_address = socket_address;
            s.runtime = Some(runtime);
        }
        self.set_status_from_any(MigrationStatus::Setup);
        Ok(())
    }

    /// QEMU announces every `migrate-incoming` attempt with one `MIGRATION` `setup` event,
    /// whatever the `events` capability and whether the attempt then fails (a bad URI, a port
    /// in use): managers wait for it.
    pub fn announce_incoming(&self) {
        self.events.emit(Event::Migration {
            status: MigrationStatus::Setup,
        });
    }

    /// The destination stopped listening.
    pub(crate) fn end_incoming(&self) {
        self.lock().socket_address = None;
    }

    /// `pause-before-switchover`, on the migration thread with the guest stopped: `active` →
    /// `pre-switchover`, wait for `migrate-continue`, then `device`. `Cancelled` when the
    /// migration was cancelled before or during the pause.
    pub(crate) fn pause_before_switchover(
        &self,
        cancel: &crate::cancel::CancelToken,
    ) -> Result<(), MigrationError> {
        self.pause.drain();
        if !self.set_status(MigrationStatus::Active, MigrationStatus::PreSwitchover) {
            return Err(MigrationError::Cancelled);
        }
        tracing::info!("paused before switchover; waiting for migrate-continue");
        if !self.pause.wait(cancel)
            || !self.set_status(MigrationStatus::PreSwitchover, MigrationStatus::Device)
        {
            return Err(MigrationError::Cancelled);
        }
        Ok(())
    }

    /// `migrate-continue STATE`: releases a migration paused in `expected` (QEMU: only
    /// `pre-switchover` pauses).
    pub fn migrate_continue(&self, expected: MigrationStatus) -> Result<(), ContinueError> {
        let s = self.lock();
        if s.status != expected {
            return Err(ContinueError::NotInState(s.status));
        }
        self.pause.post();
        Ok(())
    }

    /// Runs `f` with the destination's "start the guest once the migration completed" request
    /// (QEMU's `autostart` after a `cont` in `inmigrate`), serialised: the VMM's `cont` sets it
    /// while the run state is `inmigrate`, and the incoming thread reads it when it decides
    /// whether to start the guest, so a `cont` is never lost between the two.
    pub fn with_autostart<R>(&self, f: impl FnOnce(&mut bool) -> R) -> R {
        f(&mut self.autostart.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A `migrate` refused before it started (a bad URI): QEMU moves to `setup`, forgets the
    /// last error, then moves to `failed` with no error of its own.
    pub fn fail_before_start(&self) {
        if self.set_status_from_any(MigrationStatus::Setup) {
            self.lock().error = None;
            self.set_status(MigrationStatus::Setup, MigrationStatus::Failed);
        }
    }

    /// Records `e` as the error `query-migrate` shows, without changing the status (a paused
    /// postcopy says why it paused).
    pub(crate) fn note_error(&self, e: &MigrationError) {
        self.lock().error = Some(e.report());
    }

    /// Records `e` and moves to `failed` (the caller logs it in its side's words).
    pub(crate) fn fail(&self, e: &MigrationError) {
        let msg = e.report();
        self.lock().error = Some(msg);
        self.set_status_from_any(MigrationStatus::Failed);
    }

    /// `migrate-start-postcopy`: asks the running (or next) migration to switch to postcopy
    /// at its next round (QEMU 7.2's checks and texts).
    pub fn start_postcopy(&self) -> Result<(), crate::postcopy::PostcopyError> {
        let s = self.lock();
        if !s.settings.caps.get(Capability::PostcopyRam) {
            return Err(crate::postcopy::PostcopyError::NotEnabled);
        }
        if s.status == MigrationStatus::None {
            return Err(crate::postcopy::PostcopyError::NotStarted);
        }
        if let Some(r) = &s.runtime {
            r.request_postcopy();
        }
        Ok(())
    }

    /// `migrate_cancel`: cancels the running migration, if any (always succeeds). The status
    /// moves to `cancelling` before the migration thread is interrupted, so the thread always
    /// finds it there and ends in `cancelled`.
    pub fn cancel(&self) {
        let runtime = {
            let s = self.lock();
            if !s.status.is_running() {
                return;
            }
            s.runtime.clone()
        };
        self.set_status_from_any(MigrationStatus::Cancelling);
        if let Some(r) = runtime {
            r.cancel_token().cancel();
        }
        // Then kick a migration paused before switchover out of its pause (QEMU does the
        // same); the token first, so the woken thread ends as cancelled, not failed.
        self.pause.post();
    }

    /// Ends a cancelled migration: `cancelling` (if not there yet, e.g. a handle cancelled
    /// directly), then `cancelled`.
    pub(crate) fn cancelled(&self) {
        self.set_status_from_any(MigrationStatus::Cancelling);
        self.set_status(MigrationStatus::Cancelling, MigrationStatus::Cancelled);
    }

    /// True while a migration (outgoing, or incoming from `migrate-incoming` on) runs: QEMU's
    /// `migration` yank instance exists then.
    pub fn yank_registered(&self) -> bool {
        self.lock().status.is_running()
    }

    /// `yank` of the `migration` instance: shuts the migration's connections down so it
    /// fails now (the source resumes its guest). False when no migration runs.
    pub fn yank(&self) -> bool {
        let runtime = {
            let s = self.lock();
            if !s.status.is_running() {
                return false;
            }
            s.runtime.clone()
        };
        if let Some(r) = runtime {
            tracing::warn!("yank: shutting the migration's connections down");
            r.cancel_token().yank();
        }
        true
    }

    /// The `query-migrate` reply.
    pub fn info(&self) -> MigrationInfo {
        let s = self.lock();
        crate::info::build(crate::info::Snapshot {
            status: s.status,
            incoming: s.incoming,
            error: s.error.as_deref(),
            socket_address: s.socket_address.as_ref(),
            runtime: s.runtime.as_deref(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_destination_shows_only_its_address() {
        let events = Arc::new(EventBus::new());
        let rx = events.subscribe();
        let state = MigrationState::new(events);
        assert_eq!(state.info().to_json(), serde_json::json!({}));
        let addr = vec![serde_json::json!({"type": "inet", "port": "4444"})];
        let runtime = Arc::new(Runtime::new(Settings::default()));
        state.announce_incoming();
        state.begin_incoming(Some(addr), runtime).unwrap();
        // The destination's `setup` event is sent even without the events capability, once.
        assert!(matches!(
            rx.try_recv().map(|e| e.event),
            Ok(Event::Migration { .. })
        ));
        let v = state.info().to_json();
        assert!(v.get("status").is_none(), "{v}");
        assert_eq!(v["socket-address"][0]["port"], "4444");
        assert!(state.set_status(MigrationStatus::Setup, MigrationStatus::Active));
        assert_eq!(state.info().to_json()["status"], "active");
        // Without the capability later changes emit nothing.
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_former_destination_migrating_out_reports_as_a_source() {
        let state = MigrationState::new(Arc::new(EventBus::new()));
        let addr = vec![serde_json::json!({"type": "unix", "path": "/tmp/in.sock"})];
        let runtime = Arc::new(Runtime::new(Settings::default()));
        state.begin_incoming(Some(addr), runtime).unwrap();
        assert!(state.set_status(MigrationStatus::Setup, MigrationStatus::Active));
        assert!(state.set_status(MigrationStatus::Active, MigrationStatus::Completed));
        state
            .begin(Arc::new(Runtime::new(state.settings())))
            .unwrap();
        assert!(state.set_status(MigrationStatus::Setup, MigrationStatus::Active));
        let v = state.info().to_json();
        assert_eq!(v["status"], "active", "{v}");
        assert!(v.get("total-time").is_some(), "{v}");
        assert!(v.get("ram").is_some(), "{v}");
        assert!(v.get("socket-address").is_none(), "{v}");
    }

    #[test]
    fn illegal_transitions_are_refused() {
        let state = MigrationState::new(Arc::new(EventBus::new()));
        assert!(!state.set_status(MigrationStatus::None, MigrationStatus::Completed));
        assert!(state.set_status(MigrationStatus::None, MigrationStatus::Setup));
        assert!(!state.set_status(MigrationStatus::Active, MigrationStatus::Completed));
        assert_eq!(state.status(), MigrationStatus::Setup);
    }

    #[test]
    fn settings_are_refused_while_a_migration_runs() {
        let state = MigrationState::new(Arc::new(EventBus::new()));
        let runtime = Arc::new(Runtime::new(state.settings()));
        state.begin(runtime.clone()).unwrap();
        assert!(matches!(
            state.begin(runtime),
            Err(MigrationError::InProgress)
        ));
        assert_eq!(
            state.set_capabilities(&[(Capability::Events, true)]),
            Err(CapabilityError::MigrationRunning)
        );
    }
}
