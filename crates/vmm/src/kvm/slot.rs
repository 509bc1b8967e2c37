//! The KVM memory slot that maps the guest RAM block at guest-physical 0.
//!
//! On a same-host migration destination the memory under the slot changes after the slot was
//! registered: `x-local-handover` maps the source's memfd over the block, at the same host
//! address (`guest_ram::RamBlock::adopt_memfd`). KVM resolves a slot's host addresses at fault
//! time and drops what it resolved when the mapping changes (MMU notifiers), so the slot would
//! follow anyway; a migrated VM still registers its slot afresh before its first vCPU runs
//! ([`MemSlot::rebuild`]), so the slot the guest runs on is built on the mapping the migration
//! left, whatever KVM looked at before.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

/// One `KVM_SET_USER_MEMORY_REGION` slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemSlot {
    /// Slot number.
    pub(crate) slot: u32,
    /// Guest-physical start.
    pub(crate) gpa: u64,
    /// Length in bytes.
    pub(crate) size: u64,
    /// Host address of the mapping.
    pub(crate) host: u64,
}

impl MemSlot {
    fn region(&self, flags: u32, size: u64) -> kvm_userspace_memory_region {
        kvm_userspace_memory_region {
            slot: self.slot,
            flags,
            guest_phys_addr: self.gpa,
            memory_size: size,
            userspace_addr: self.host,
        }
    }

    /// (Re-)registers the slot with `flags` (0 or `KVM_MEM_LOG_DIRTY_PAGES`).
    pub(crate) fn set_flags(&self, vm: &VmFd, flags: u32) -> Result<(), kvm_ioctls::Error> {
        // SAFETY: `host..host+size` is the mapping of the VM's RamBlock. Every holder of the
        // VM fd (the VM's shared state, KvmDirtyLog) also holds an Arc<GuestRam> declared after
        // the fd, so the mapping outlives the slot and KVM never accesses unmapped memory;
        // changing only the flags of an existing slot keeps that invariant.
        unsafe { vm.set_user_memory_region(self.region(flags, self.size)) }
    }

    /// Deletes the slot and registers it again (flags 0) on what is mapped at `host` now; for
    /// a VM whose vCPUs never ran and that logs no dirty pages (a migration destination
    /// before it starts).
    pub(crate) fn rebuild(&self, vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
        // SAFETY: a zero size deletes the slot; KVM then holds no reference to the mapping.
        unsafe { vm.set_user_memory_region(self.region(0, 0)) }?;
        self.set_flags(vm, 0)
    }
}
