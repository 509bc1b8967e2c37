//! What the migration engine needs from the VM it migrates: stopping and restarting vCPUs and
//! the run state. The VMM implements [`VmControl`]; the engine never touches vCPUs directly.

use crate::status::RunState;

/// A VMM's own error behind a [`VmError`] (e.g. a KVM ioctl failure), kept as the source.
pub type VmErrorSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the VM could not be stopped or started.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The vCPUs (or disk writers) could not be stopped.
    #[error("cannot stop the guest")]
    Stop(#[source] VmErrorSource),
    /// The vCPUs (or disk writers) could not be started.
    #[error("cannot start the guest")]
    Start(#[source] VmErrorSource),
    /// The guest has ended (powered off or crashed) and cannot run again.
    #[error("the guest has stopped for good ({0})")]
    Ended(String),
}

/// Control over a VM's vCPUs and run state.
pub trait VmControl: Send + Sync {
    /// Current run state.
    fn run_state(&self) -> RunState;

    /// Stops every vCPU and returns once they are quiescent (no more guest writes), then sets
    /// the run state to `state` and emits `STOP` if the guest was running. Returns whether it
    /// was running.
    fn vm_stop(&self, state: RunState) -> Result<bool, VmError>;

    /// Starts the vCPUs (run state `running`, `RESUME` event).
    fn vm_start(&self) -> Result<(), VmError>;

    /// Takes control of the VM's disk images (QEMU's `bdrv_activate_all`): a destination's
    /// images are inactive while it loads; the engine activates them when the migration ends,
    /// or leaves it to the guest's start (`cont`) with `late-block-activate`. Starting the
    /// guest activates them in any case. Optional: a VM without disks has nothing to take.
    fn activate_block(&self) -> Result<(), VmError> {
        Ok(())
    }

    /// Sets the run state without touching vCPUs (e.g. `postmigrate`).
    fn set_run_state(&self, state: RunState);

    /// Throttles the vCPUs to run `100 - percent` % of the time (auto-converge); 0 ends
    /// throttling. Optional: a VM that cannot be throttled ignores it, and its migration
    /// converges only if the guest allows.
    fn set_cpu_throttle(&self, percent: u8) {
        tracing::debug!(percent, "this VM cannot throttle its vCPUs");
    }
}
