//! The monitors' view of a [`Machine`]: [`monitor::MonitorBackend`] implemented by delegation.

use std::sync::Arc;

use migration::block::BlockMigrationOptions;
use migration::dirty_rate::{DirtyRateMode, DirtyRateState};
use migration::{
    Capabilities, Capability, EventBus, MigrationInfo, MigrationParameters, MigrationStatus,
    ParameterUpdate, RunState,
};
use monitor::fdsets::FdSets;
use monitor::{CommandError, MigrateOptions, MonitorBackend};
use vmm::machine::{Machine, MachineError};

/// A machine behind the monitors, with the process's fd sets.
pub struct MachineBackend {
    machine: Arc<Machine>,
    fdsets: FdSets,
}

impl MachineBackend {
    /// The monitors' view of `machine`.
    pub fn new(machine: Arc<Machine>) -> Self {
        Self {
            machine,
            fdsets: FdSets::new(),
        }
    }
}

fn postcopy_err(e: migration::postcopy::PostcopyError) -> CommandError {
    CommandError::generic(e.to_string())
}

/// QEMU 7.2's text for a URI of no known transport.
fn bad_uri() -> CommandError {
    CommandError::generic("Parameter 'uri' expects a valid migration protocol")
}

impl MachineBackend {
    /// `migrate -r URI`: a paused postcopy reconnects (QEMU checks the state first).
    fn resume(&self, uri: &str) -> Result<(), CommandError> {
        let state = self.machine.migration();
        if state.status() != MigrationStatus::PostcopyPaused || state.is_incoming() {
            return Err(postcopy_err(
                migration::postcopy::PostcopyError::NothingToResume,
            ));
        }
        let parsed: transport::MigrationUri = uri.parse().map_err(|_| bad_uri())?;
        state.resume_postcopy(parsed).map_err(postcopy_err)
    }
}

fn err(e: MachineError) -> CommandError {
    // The top-level text is QEMU's; causes are appended so operators see why.
    CommandError::generic(migration::error_report(&e))
}

impl MonitorBackend for MachineBackend {
    fn migrate(
        &self,
        uri: &str,
        opts: MigrateOptions,
        fds: &dyn transport::FdSource,
    ) -> Result<(), CommandError> {
        if opts.resume {
            return self.resume(uri);
        }
        let block = (opts.blk || opts.inc).then_some(BlockMigrationOptions {
            incremental: opts.inc,
        });
        self.machine.migrate(uri, fds, block).map_err(err)
    }

    fn migrate_incoming(
        &self,
        uri: &str,
        fds: &dyn transport::FdSource,
    ) -> Result<(), CommandError> {
        self.machine.migrate_incoming(uri, fds).map_err(err)
    }

    fn migrate_pause(&self) -> Result<(), CommandError> {
        self.machine
            .migration()
            .migrate_pause()
            .map_err(postcopy_err)
    }

    fn migrate_recover(
        &self,
        uri: &str,
        fds: &dyn transport::FdSource,
    ) -> Result<(), CommandError> {
        let state = self.machine.migration();
        // QEMU checks the state before it listens.
        state.check_recoverable().map_err(postcopy_err)?;
        let parsed: transport::MigrationUri = uri.parse().map_err(|_| bad_uri())?;
        let listener = transport::listen(&parsed, fds)
            .map_err(|e| CommandError::generic(migration::error_report(&e)))?;
        state.recover_postcopy(listener).map_err(postcopy_err)
    }

    fn migrate_cancel(&self) {
        self.machine.migrate_cancel();
    }

    fn migrate_start_postcopy(&self) -> Result<(), CommandError> {
        self.machine
            .migration()
            .start_postcopy()
            .map_err(|e| CommandError::generic(e.to_string()))
    }

    fn migrate_continue(&self, state: MigrationStatus) -> Result<(), CommandError> {
        Ok(self.machine.migration().migrate_continue(state)?)
    }

    fn migration_yank_registered(&self) -> bool {
        self.machine.migration().yank_registered()
    }

    fn yank_migration(&self) {
        self.machine.migration().yank();
    }

    fn query_migrate(&self) -> MigrationInfo {
        self.machine.migration().info()
    }

    fn set_capabilities(&self, changes: &[(Capability, bool)]) -> Result<(), CommandError> {
        Ok(self.machine.set_capabilities(changes)?)
    }

    fn capabilities(&self) -> Capabilities {
        self.machine.migration().capabilities()
    }

    fn set_parameters(&self, update: &ParameterUpdate) -> Result<(), CommandError> {
        Ok(self.machine.set_parameters(update)?)
    }

    fn parameters(&self) -> MigrationParameters {
        self.machine.migration().parameters()
    }

    fn run_state(&self) -> RunState {
        self.machine.run_state()
    }

    fn object_add(&self, object: transport::tls::TlsObject) -> Result<(), CommandError> {
        self.machine.object_add(object).map_err(err)
    }

    fn object_del(&self, id: &str) -> Result<(), CommandError> {
        self.machine.object_del(id).map_err(err)
    }

    fn stop(&self) -> Result<(), CommandError> {
        self.machine.stop().map_err(err)
    }

    fn cont(&self) -> Result<(), CommandError> {
        self.machine.cont().map_err(err)
    }

    fn quit(&self) {
        self.machine.request_quit();
    }

    fn calc_dirty_rate(
        &self,
        calc_time: i64,
        sample_pages: Option<i64>,
        mode: Option<DirtyRateMode>,
    ) -> Result<(), CommandError> {
        Ok(self
            .machine
            .calc_dirty_rate(calc_time, sample_pages, mode)?)
    }

    fn query_dirty_rate(&self) -> DirtyRateState {
        self.machine.query_dirty_rate()
    }

    fn uuid(&self) -> Option<migration::uuid::VmUuid> {
        self.machine.migration().uuid()
    }

    fn fdsets(&self) -> &FdSets {
        &self.fdsets
    }

    fn events(&self) -> &EventBus {
        self.machine.events()
    }
}
