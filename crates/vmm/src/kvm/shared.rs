//! The state a [`KvmVm`](super::KvmVm) shares with its device sections: the VM and vCPU fds,
//! the lifecycle, the state captured at pause (returned by the sections' `save`) and the state
//! loaded from a migration stream (applied by `start` before any vCPU runs).

use std::sync::{Arc, Mutex, MutexGuard};

use guest_ram::GuestRam;
use kvm_ioctls::{VcpuFd, VmFd};
use migration::RunState;

use super::error::KvmError;
use super::state::cpu::VcpuState;
use super::state::vm::{VmSection, VmSectionState};
use super::vcpu::Runner;
use super::KvmState;

/// State loaded from a migration stream, applied at start.
#[derive(Default)]
pub(crate) struct Pending {
    pub(crate) vcpus: Vec<Option<VcpuState>>,
    pub(crate) vm: Vec<(VmSection, VmSectionState)>,
}

/// State captured at pause, returned by the device sections' `save`.
#[derive(Default)]
pub(crate) struct Snapshot {
    pub(crate) vcpus: Vec<VcpuState>,
    pub(crate) vm: Vec<(VmSection, VmSectionState)>,
}

pub(crate) struct Life {
    pub(crate) state: KvmState,
    pub(crate) run_state: RunState,
    pub(crate) pending: Pending,
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) runner: Option<Runner>,
}

/// Moves a running VM whose guest stopped on its own (the vCPU threads park by themselves)
/// to [`KvmState::Stopped`].
pub(crate) fn refresh(life: &mut Life) {
    if life.state != KvmState::Running {
        return;
    }
    if let Some(r) = life.runner.as_ref().and_then(|r| r.control().stop_reason()) {
        life.state = KvmState::Stopped(r);
    }
}

/// What the VM, its device sections and its dirty log share.
pub(crate) struct Shared {
    /// Fields drop in order: the VM fd (and with it the memory slot) goes before the RAM it
    /// maps, whoever holds the last reference.
    pub(crate) vm: Arc<VmFd>,
    pub(crate) vcpus: Vec<Arc<Mutex<VcpuFd>>>,
    pub(crate) msr_indices: Vec<u32>,
    pub(crate) life: Mutex<Life>,
    pub(crate) _ram: Arc<GuestRam>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn capture_vcpu(&self, index: usize) -> Result<VcpuState, KvmError> {
        let fd = self
            .vcpus
            .get(index)
            .ok_or_else(|| KvmError::InvalidState {
                what: format!("vCPU {index}"),
                reason: "no such vCPU".into(),
            })?;
        VcpuState::capture(&lock(fd), index as u32, &self.msr_indices)
    }

    pub(crate) fn capture(&self) -> Result<Snapshot, KvmError> {
        let vcpus = (0..self.vcpus.len())
            .map(|i| self.capture_vcpu(i))
            .collect::<Result<_, _>>()?;
        let vm = VmSection::ALL
            .iter()
            .map(|&s| Ok((s, s.capture(&self.vm)?)))
            .collect::<Result<_, KvmError>>()?;
        Ok(Snapshot { vcpus, vm })
    }

    /// vCPU `index`'s state: state loaded from a stream and not applied yet (it replaces
    /// KVM's at start), else the pause-time capture, else read now. Loaded state comes first
    /// so that a destination that never ran (`-S`) migrates on what it received, not the
    /// reset state of its vCPUs.
    pub(crate) fn vcpu_state(&self, index: usize) -> Result<VcpuState, KvmError> {
        let life = lock(&self.life);
        if let Some(s) = life.pending.vcpus.get(index).and_then(Option::as_ref) {
            return Ok(s.clone());
        }
        if let Some(s) = life.snapshot.as_ref().and_then(|s| s.vcpus.get(index)) {
            return Ok(s.clone());
        }
        drop(life);
        self.capture_vcpu(index)
    }

    /// A VM-wide section's state: loaded and not applied yet, else the pause-time capture,
    /// else read now (see [`Shared::vcpu_state`]).
    pub(crate) fn vm_state(&self, section: VmSection) -> Result<VmSectionState, KvmError> {
        let life = lock(&self.life);
        if let Some((_, s)) = life.pending.vm.iter().find(|(k, _)| *k == section) {
            return Ok(s.clone());
        }
        if let Some(snap) = &life.snapshot {
            if let Some((_, s)) = snap.vm.iter().find(|(k, _)| *k == section) {
                return Ok(s.clone());
            }
        }
        drop(life);
        section.capture(&self.vm)
    }

    fn check_loadable(life: &Life) -> Result<(), String> {
        match &life.state {
            KvmState::Created { booted: false } => Ok(()),
            s => Err(format!(
                "the VM is {s:?}; migrated state can only be loaded before it runs or boots"
            )),
        }
    }

    /// Stores vCPU `index`'s loaded state, after writing it into the vCPU once: KVM itself
    /// then checks what only this host knows (MSR values, CR4 and XCR0 bits of this CPU)
    /// while the migration can still fail. The vCPU has never run (the VM is loadable only
    /// before it boots), and `start` writes the same state again before it runs.
    pub(crate) fn set_pending_vcpu(&self, index: usize, state: VcpuState) -> Result<(), String> {
        let mut life = lock(&self.life);
        Self::check_loadable(&life)?;
        let fd = self
            .vcpus
            .get(index)
            .ok_or_else(|| format!("no vCPU {index}"))?;
        state.apply(&lock(fd)).map_err(|e| match &e {
            KvmError::Restore { source, .. } => format!("KVM refuses it: {e}: {source}"),
            _ => format!("KVM refuses it: {e}"),
        })?;
        let slot = life
            .pending
            .vcpus
            .get_mut(index)
            .ok_or_else(|| format!("no vCPU {index}"))?;
        *slot = Some(state);
        Ok(())
    }

    pub(crate) fn set_pending_vm(
        &self,
        section: VmSection,
        state: VmSectionState,
    ) -> Result<(), String> {
        let mut life = lock(&self.life);
        Self::check_loadable(&life)?;
        life.pending.vm.retain(|(s, _)| *s != section);
        life.pending.vm.push((section, state));
        Ok(())
    }

    /// Applies loaded state: VM-wide sections in [`VmSection::ALL`] order, then each vCPU.
    pub(crate) fn apply_pending(&self, pending: &Pending) -> Result<(), KvmError> {
        for section in VmSection::ALL {
            if let Some((_, s)) = pending.vm.iter().find(|(k, _)| *k == section) {
                s.apply(&self.vm)?;
            }
        }
        for (fd, s) in self.vcpus.iter().zip(&pending.vcpus) {
            if let Some(s) = s {
                s.apply(&lock(fd))?;
            }
        }
        Ok(())
    }
}
