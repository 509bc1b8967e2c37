//! The KVM memory slot that maps the guest RAM block at guest-physical 0.

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
    /// (Re-)registers the slot with `flags` (0 or `KVM_MEM_LOG_DIRTY_PAGES`).
    pub(crate) fn set_flags(&self, vm: &VmFd, flags: u32) -> Result<(), kvm_ioctls::Error> {
        let region = kvm_userspace_memory_region {
            slot: self.slot,
            flags,
            guest_phys_addr: self.gpa,
            memory_size: self.size,
            userspace_addr: self.host,
        };
        // SAFETY: `host..host+size` is the mapping of the VM's RamBlock. Every holder of the
        // VM fd (the VM's shared state, KvmDirtyLog) also holds an Arc<GuestRam> declared after
        // the fd, so the mapping outlives the slot and KVM never accesses unmapped memory;
        // changing only the flags of an existing slot keeps that invariant.
        unsafe { vm.set_user_memory_region(region) }
    }
}
