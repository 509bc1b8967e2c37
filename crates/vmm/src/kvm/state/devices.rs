//! [`DeviceState`] adapters for the KVM state sections.
//!
//! Source side: `save()` returns the state captured when the VM was paused (pause captures
//! everything, so a capture failure surfaces as a `vm_stop` error instead of a bad section);
//! if there is no capture it reads KVM directly. Destination side: `load()` validates the value
//! ([`super::check`]), writes a vCPU's state into its vCPU once so that KVM refuses what it
//! would refuse at start while the migration can still fail, and stores it;
//! [`super::super::KvmVm::start`] applies all stored state before any vCPU runs.

use std::sync::Arc;

use migration::{DeviceState, MigrationError};
use savevm::vmstate::{VmStateDescription, VmStateValue};

use super::cpu::{self, VcpuState};
use super::vm::VmSection;
use crate::kvm::shared::Shared;

fn load_err(idstr: &str, reason: String) -> MigrationError {
    MigrationError::DeviceLoad {
        idstr: idstr.into(),
        reason,
    }
}

/// The `kvm-cpu` section of one vCPU.
pub(crate) struct CpuDevice {
    pub(crate) shared: Arc<Shared>,
    pub(crate) index: usize,
}

impl DeviceState for CpuDevice {
    fn description(&self) -> VmStateDescription {
        cpu::description()
    }

    fn save(&self) -> VmStateValue {
        match self.shared.vcpu_state(self.index) {
            Ok(s) => s.to_value(),
            Err(e) => {
                // DeviceState::save cannot fail: an empty value makes the destination reject
                // the section loudly instead of running a vCPU from made-up registers.
                tracing::error!(vcpu = self.index, error = %e, "cannot read vCPU state");
                VmStateValue::new()
            }
        }
    }

    fn load(&mut self, v: &VmStateValue, _version: u32) -> Result<(), MigrationError> {
        let state =
            VcpuState::from_value(v, self.index as u32).map_err(|r| load_err("kvm-cpu", r))?;
        cpu::msrs_known(&state.msrs, &self.shared.msr_indices)
            .map_err(|r| load_err("kvm-cpu", r))?;
        self.shared
            .set_pending_vcpu(self.index, state)
            .map_err(|r| load_err("kvm-cpu", r))
    }
}

/// A VM-wide section (`kvm-irqchip`, `kvm-pit`, `kvmclock`).
pub(crate) struct VmDevice {
    pub(crate) shared: Arc<Shared>,
    pub(crate) section: VmSection,
}

impl DeviceState for VmDevice {
    fn description(&self) -> VmStateDescription {
        self.section.description()
    }

    fn save(&self) -> VmStateValue {
        match self.shared.vm_state(self.section) {
            Ok(s) => self.section.to_value(&s),
            Err(e) => {
                tracing::error!(section = self.section.idstr(), error = %e, "cannot read VM state");
                VmStateValue::new()
            }
        }
    }

    fn load(&mut self, v: &VmStateValue, _version: u32) -> Result<(), MigrationError> {
        let idstr = self.section.idstr();
        let state = self.section.from_value(v).map_err(|r| load_err(idstr, r))?;
        self.shared
            .set_pending_vm(self.section, state)
            .map_err(|r| load_err(idstr, r))
    }
}
