//! What the migration engine needs from the VM it migrates: stopping and restarting vCPUs and
//! the run state. The VMM implements [`VmControl`]; the engine never touches vCPUs directly.

use crate::status::RunState;

/// Control over a VM's vCPUs and run state.
pub trait VmControl: Send + Sync {
    /// Current run state.
    fn run_state(&self) -> RunState;

    /// Stops every vCPU and returns once they are quiescent (no more guest writes), then sets
    /// the run state to `state` and emits `STOP` if the guest was running. Returns whether it
    /// was running.
    fn vm_stop(&self, state: RunState) -> Result<bool, String>;

    /// Starts the vCPUs (run state `running`, `RESUME` event).
    fn vm_start(&self) -> Result<(), String>;

    /// Sets the run state without touching vCPUs (e.g. `postmigrate`).
    fn set_run_state(&self, state: RunState);

    /// Throttles the vCPUs to run `100 - percent` % of the time (auto-converge); 0 ends
    /// throttling. Optional: a VM that cannot be throttled ignores it, and its migration
    /// converges only if the guest allows.
    fn set_cpu_throttle(&self, percent: u8) {
        tracing::debug!(percent, "this VM cannot throttle its vCPUs");
    }
}
