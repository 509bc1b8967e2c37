//! What runs inside a machine: software vCPUs or a KVM VM, plus the disk writers that stand in
//! for the guest's disk I/O. [`GuestControl`] is the machine's [`VmControl`]: stopping the guest
//! stops its vCPUs *and* its disk writers, so neither RAM nor disks change during switchover.

use std::sync::{Arc, Mutex, MutexGuard};

use block::DiskWriter;
use migration::{RunState, VmControl, VmError};

use super::vcpus::Vcpus;
use crate::kvm::KvmVm;

/// The guest's CPUs.
pub enum Guest {
    /// Software vCPU threads writing RAM.
    Soft(Arc<Vcpus>),
    /// A KVM VM running a real kernel.
    Kvm(Arc<KvmVm>),
}

impl Guest {
    fn control(&self) -> &dyn VmControl {
        match self {
            Guest::Soft(v) => v.as_ref(),
            Guest::Kvm(vm) => vm.as_ref(),
        }
    }
}

/// vCPUs plus disk writers, controlled together.
pub struct GuestControl {
    guest: Guest,
    writers: Mutex<Vec<DiskWriter>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GuestControl {
    /// Controls `guest` and `writers` (which must start paused).
    pub fn new(guest: Guest, writers: Vec<DiskWriter>) -> Self {
        Self {
            guest,
            writers: Mutex::new(writers),
        }
    }

    /// The guest's CPUs.
    pub fn guest(&self) -> &Guest {
        &self.guest
    }

    /// Total writes done by the disk writers.
    pub fn disk_writes(&self) -> u64 {
        lock(&self.writers).iter().map(|w| w.stats().writes).sum()
    }

    /// Stops everything for good (process exit).
    pub fn shutdown(&self) {
        for w in lock(&self.writers).drain(..) {
            w.stop();
        }
        match &self.guest {
            Guest::Soft(v) => v.shutdown(),
            Guest::Kvm(vm) => {
                let _ = vm.vm_stop(RunState::Shutdown);
            }
        }
    }
}

impl VmControl for GuestControl {
    fn run_state(&self) -> RunState {
        self.guest.control().run_state()
    }

    fn vm_stop(&self, state: RunState) -> Result<bool, VmError> {
        for w in lock(&self.writers).iter() {
            w.pause();
        }
        self.guest.control().vm_stop(state)
    }

    fn vm_start(&self) -> Result<(), VmError> {
        self.guest.control().vm_start()?;
        for w in lock(&self.writers).iter() {
            w.resume();
        }
        Ok(())
    }

    fn set_run_state(&self, state: RunState) {
        self.guest.control().set_run_state(state);
    }

    fn set_cpu_throttle(&self, percent: u8) {
        self.guest.control().set_cpu_throttle(percent);
    }
}
