//! What runs inside a machine: software vCPUs or a KVM VM, plus the disk writers that stand in
//! for the guest's disk I/O. [`GuestControl`] is the machine's [`VmControl`]: stopping the guest
//! stops its vCPUs *and* its disk writers, so neither RAM nor disks change during switchover.
//!
//! Images on shared storage change hands at the switchover, as in QEMU: stopping the guest for
//! `finish-migrate` flushes the disks and drops their locks (`Disk::inactivate`); starting the
//! guest takes them (back) first (`Disk::activate`) — on the source after a failed migration —
//! and fails while the other side still holds them. A destination activates them when the
//! migration completes, or at `cont` with `late-block-activate` (`VmControl::activate_block`).

use std::sync::{Arc, Mutex, MutexGuard};

use block::{Disk, DiskWriter};
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
    disks: Vec<Arc<Disk>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GuestControl {
    /// Controls `guest`, `writers` (which must start paused) and the locks of `disks`.
    pub fn new(guest: Guest, writers: Vec<DiskWriter>, disks: Vec<Arc<Disk>>) -> Self {
        Self {
            guest,
            writers: Mutex::new(writers),
            disks,
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
        let was_running = self.guest.control().vm_stop(state)?;
        if state == RunState::FinishMigrate {
            let given_up = self.disks.iter().try_for_each(|d| d.inactivate());
            if let Err(e) = given_up {
                // The migration fails here: the guest keeps its disks and runs on.
                if was_running {
                    if let Err(restart) = self.vm_start() {
                        tracing::error!("{}", migration::error_report(&restart));
                    }
                }
                return Err(VmError::Stop(Box::new(e)));
            }
        }
        Ok(was_running)
    }

    fn vm_start(&self) -> Result<(), VmError> {
        self.activate_block()?;
        self.guest.control().vm_start()?;
        for w in lock(&self.writers).iter() {
            w.resume();
        }
        Ok(())
    }

    fn activate_block(&self) -> Result<(), VmError> {
        for d in &self.disks {
            d.activate().map_err(|e| VmError::Start(Box::new(e)))?;
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
