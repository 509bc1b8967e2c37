//! An in-memory [`MonitorBackend`] for tests and the `mock_qmp` example.
//!
//! A migration started with `migrate` goes `setup` → `active` at once and completes (or
//! fails, see [`MockBackend::script`]) after a configurable number of `query-migrate`
//! calls, so tests are deterministic without timers.

#![allow(dead_code)]

use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard};

use migration::{
    Capabilities, Capability, Event, EventBus, MigrationInfo, MigrationParameters, MigrationStatus,
    ParameterUpdate, RamStats, RunState,
};
use monitor::{CommandError, MigrateOptions, MonitorBackend};

/// One `migrate` call as the backend saw it.
#[derive(Debug)]
pub struct MigrateCall {
    pub uri: String,
    pub opts: MigrateOptions,
    /// The descriptor taken for an `fd:NAME` URI.
    pub fd: Option<OwnedFd>,
}

/// Mutable state of the mock.
#[derive(Debug)]
pub struct MockState {
    pub status: MigrationStatus,
    pub error_desc: Option<String>,
    pub caps: Capabilities,
    pub params: MigrationParameters,
    pub run_state: RunState,
    pub migrations: Vec<MigrateCall>,
    pub incoming: Vec<String>,
    pub incoming_fds: Vec<OwnedFd>,
    pub cancels: u32,
    pub quits: u32,
    /// `query-migrate` calls an active migration lasts.
    pub polls_per_migration: u32,
    polls_left: u32,
    /// `Some(desc)`: the next migration fails with `desc` instead of completing.
    pub fail_with: Option<String>,
    /// Returned by `query-migrate` instead of the simulated state.
    pub info_override: Option<MigrationInfo>,
}

/// The mock backend.
#[derive(Debug)]
pub struct MockBackend {
    state: Mutex<MockState>,
    events: EventBus,
    fdsets: monitor::fdsets::FdSets,
}

impl Default for MockBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MockBackend {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(MockState {
                status: MigrationStatus::None,
                error_desc: None,
                caps: Capabilities::default(),
                params: MigrationParameters::default(),
                run_state: RunState::Running,
                migrations: Vec::new(),
                incoming: Vec::new(),
                incoming_fds: Vec::new(),
                cancels: 0,
                quits: 0,
                polls_per_migration: 3,
                polls_left: 0,
                fail_with: None,
                info_override: None,
            }),
            events: EventBus::new(),
            fdsets: monitor::fdsets::FdSets::new(),
        }
    }

    /// Locks the state for inspection or changes.
    pub fn state(&self) -> MutexGuard<'_, MockState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets how the next migration ends: after `polls` `query-migrate` calls, completed
    /// (`fail_with: None`) or failed with that text.
    pub fn script(&self, polls: u32, fail_with: Option<&str>) {
        let mut s = self.state();
        s.polls_per_migration = polls;
        s.fail_with = fail_with.map(str::to_string);
    }

    fn set_status(&self, s: &mut MockState, status: MigrationStatus) {
        s.status = status;
        if s.caps.get(Capability::Events) {
            self.events.emit(Event::Migration { status });
        }
    }
}

fn valid_uri(uri: &str) -> bool {
    ["tcp:", "unix:", "exec:", "fd:", "file:"]
        .iter()
        .any(|p| uri.starts_with(p))
}

impl MonitorBackend for MockBackend {
    fn migrate(
        &self,
        uri: &str,
        opts: MigrateOptions,
        fds: &dyn transport::FdSource,
    ) -> Result<(), CommandError> {
        let mut s = self.state();
        if s.status.is_running() {
            return Err(CommandError::generic(
                "There's a migration process in progress",
            ));
        }
        let fd = match uri.strip_prefix("fd:") {
            Some(name) => Some(fds.take_fd(name).ok_or_else(|| {
                CommandError::generic(format!("File descriptor named '{name}' has not been found"))
            })?),
            None => None,
        };
        s.migrations.push(MigrateCall {
            uri: uri.to_string(),
            opts,
            fd,
        });
        s.error_desc = None;
        self.set_status(&mut s, MigrationStatus::Setup);
        if !valid_uri(uri) {
            let desc = "Parameter 'uri' expects a valid migration protocol".to_string();
            s.error_desc = Some(desc.clone());
            self.set_status(&mut s, MigrationStatus::Failed);
            return Err(CommandError::generic(desc));
        }
        s.polls_left = s.polls_per_migration;
        self.set_status(&mut s, MigrationStatus::Active);
        Ok(())
    }

    fn migrate_incoming(
        &self,
        uri: &str,
        fds: &dyn transport::FdSource,
    ) -> Result<(), CommandError> {
        let mut s = self.state();
        if !s.incoming.is_empty() {
            return Err(CommandError::generic(
                "The incoming migration has already been started",
            ));
        }
        if let Some(name) = uri.strip_prefix("fd:") {
            let fd = fds.take_fd(name).ok_or_else(|| {
                CommandError::generic(format!("File descriptor named '{name}' has not been found"))
            })?;
            s.incoming_fds.push(fd);
        }
        s.incoming.push(uri.to_string());
        s.run_state = RunState::Inmigrate;
        self.events.emit(Event::Migration {
            status: MigrationStatus::Setup,
        });
        Ok(())
    }

    fn migrate_cancel(&self) {
        let mut s = self.state();
        s.cancels += 1;
        if s.status.is_running() {
            self.set_status(&mut s, MigrationStatus::Cancelling);
            self.set_status(&mut s, MigrationStatus::Cancelled);
        }
    }

    fn migrate_start_postcopy(&self) -> Result<(), CommandError> {
        let s = self.state();
        if !s.caps.get(Capability::PostcopyRam) {
            return Err(CommandError::generic(
                "Enable postcopy with migrate_set_capability before the start of migration",
            ));
        }
        if s.status == MigrationStatus::None {
            return Err(CommandError::generic(
                "Postcopy must be started after migration has been started",
            ));
        }
        Ok(())
    }

    fn migrate_continue(&self, state: MigrationStatus) -> Result<(), CommandError> {
        let s = self.state();
        if s.status != state {
            return Err(CommandError::generic(format!(
                "Migration not in expected state: {}",
                s.status
            )));
        }
        Ok(())
    }

    fn migration_yank_registered(&self) -> bool {
        self.state().status.is_running()
    }

    fn yank_migration(&self) {
        let mut s = self.state();
        if s.status.is_running() {
            s.error_desc = Some("yanked".into());
            self.set_status(&mut s, MigrationStatus::Failed);
        }
    }

    fn query_migrate(&self) -> MigrationInfo {
        let mut s = self.state();
        if let Some(info) = &s.info_override {
            return info.clone();
        }
        if s.status == MigrationStatus::Active {
            if s.polls_left > 0 {
                s.polls_left -= 1;
            } else if let Some(desc) = s.fail_with.take() {
                s.error_desc = Some(desc);
                self.set_status(&mut s, MigrationStatus::Failed);
            } else {
                self.set_status(&mut s, MigrationStatus::Completed);
                s.run_state = RunState::Postmigrate;
            }
        }
        let ram = RamStats {
            total: 64 << 20,
            remaining: if s.status == MigrationStatus::Active {
                16 << 20
            } else {
                0
            },
            transferred: 48 << 20,
            page_size: 4096,
            mbps: 1000.0,
            dirty_sync_count: 2,
            ..Default::default()
        };
        match s.status {
            MigrationStatus::None => MigrationInfo::default(),
            st if st.has_ram_stats() => MigrationInfo {
                status: Some(st),
                ram: Some(ram),
                total_time: Some(100),
                setup_time: Some(1),
                expected_downtime: (st == MigrationStatus::Active).then_some(300),
                downtime: (st == MigrationStatus::Completed).then_some(5),
                ..Default::default()
            },
            st => MigrationInfo {
                status: Some(st),
                error_desc: s.error_desc.clone(),
                ..Default::default()
            },
        }
    }

    fn set_capabilities(&self, changes: &[(Capability, bool)]) -> Result<(), CommandError> {
        let mut s = self.state();
        if s.status.is_running() {
            return Err(CommandError::generic(
                "There's a migration process in progress",
            ));
        }
        let s = &mut *s;
        Ok(s.caps.apply(changes, &s.params)?)
    }

    fn capabilities(&self) -> Capabilities {
        self.state().caps.clone()
    }

    fn set_parameters(&self, update: &ParameterUpdate) -> Result<(), CommandError> {
        let mut s = self.state();
        // The mock VM has 1 GiB of RAM.
        let limits = s.caps.param_limits(Some(1 << 30));
        Ok(s.params.apply(update, &limits)?)
    }

    fn parameters(&self) -> MigrationParameters {
        self.state().params.clone()
    }

    fn run_state(&self) -> RunState {
        self.state().run_state
    }

    fn stop(&self) -> Result<(), CommandError> {
        let mut s = self.state();
        if s.run_state == RunState::Running {
            s.run_state = RunState::Paused;
            self.events.emit(Event::Stop);
        }
        Ok(())
    }

    fn cont(&self) -> Result<(), CommandError> {
        let mut s = self.state();
        if s.run_state == RunState::Inmigrate {
            return Err(CommandError::generic(
                "Migration is not finalized yet; the VM cannot be resumed",
            ));
        }
        if s.run_state != RunState::Running {
            s.run_state = RunState::Running;
            self.events.emit(Event::Resume);
        }
        Ok(())
    }

    fn quit(&self) {
        self.state().quits += 1;
    }

    fn calc_dirty_rate(
        &self,
        calc_time: i64,
        sample_pages: Option<i64>,
        mode: Option<migration::dirty_rate::DirtyRateMode>,
    ) -> Result<(), CommandError> {
        migration::dirty_rate::DirtyRateRequest::check(calc_time, sample_pages, mode, false)?;
        Ok(())
    }

    fn query_dirty_rate(&self) -> migration::dirty_rate::DirtyRateState {
        Default::default()
    }

    fn uuid(&self) -> Option<migration::uuid::VmUuid> {
        None
    }

    fn fdsets(&self) -> &monitor::fdsets::FdSets {
        &self.fdsets
    }

    fn events(&self) -> &EventBus {
        &self.events
    }
}
