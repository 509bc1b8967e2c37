//! The monitors' view of a [`Machine`]: [`monitor::MonitorBackend`] implemented by delegation.

use std::sync::Arc;

use migration::block::BlockMigrationOptions;
use migration::{
    Capabilities, Capability, EventBus, MigrationInfo, MigrationParameters, ParameterUpdate,
    RunState,
};
use monitor::{CommandError, MigrateOptions, MonitorBackend};
use vmm::machine::{Machine, MachineError};

/// A machine behind the monitors.
pub struct MachineBackend(pub Arc<Machine>);

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
            return Err(CommandError::generic(
                "Cannot resume if there is no paused migration",
            ));
        }
        let block = (opts.blk || opts.inc).then_some(BlockMigrationOptions {
            incremental: opts.inc,
        });
        self.0.migrate(uri, fds, block).map_err(err)
    }

    fn migrate_incoming(
        &self,
        uri: &str,
        fds: &dyn transport::FdSource,
    ) -> Result<(), CommandError> {
        self.0.migrate_incoming(uri, fds).map_err(err)
    }

    fn migrate_cancel(&self) {
        self.0.migrate_cancel();
    }

    fn query_migrate(&self) -> MigrationInfo {
        self.0.migration().info()
    }

    fn set_capabilities(&self, changes: &[(Capability, bool)]) -> Result<(), CommandError> {
        Ok(self.0.set_capabilities(changes)?)
    }

    fn capabilities(&self) -> Capabilities {
        self.0.migration().capabilities()
    }

    fn set_parameters(&self, update: &ParameterUpdate) -> Result<(), CommandError> {
        Ok(self.0.set_parameters(update)?)
    }

    fn parameters(&self) -> MigrationParameters {
        self.0.migration().parameters()
    }

    fn run_state(&self) -> RunState {
        self.0.run_state()
    }

    fn object_add(&self, object: transport::tls::TlsObject) -> Result<(), CommandError> {
        self.0.object_add(object).map_err(err)
    }

    fn object_del(&self, id: &str) -> Result<(), CommandError> {
        self.0.object_del(id).map_err(err)
    }

    fn stop(&self) -> Result<(), CommandError> {
        self.0.stop().map_err(err)
    }

    fn cont(&self) -> Result<(), CommandError> {
        self.0.cont().map_err(err)
    }

    fn quit(&self) {
        self.0.request_quit();
    }

    fn events(&self) -> &EventBus {
        self.0.events()
    }
}
