//! KVM's dirty log (`KVM_MEM_LOG_DIRTY_PAGES` + `KVM_GET_DIRTY_LOG`) as a [`DirtyLog`].
//!
//! `start` re-registers the RAM's memory slot with `KVM_MEM_LOG_DIRTY_PAGES` (KVM then
//! write-protects the slot and records guest writes, one bit per 4 KiB page, bit *n* of word
//! *w* = page `64*w + n`, the same layout as [`Bitmap`]); every `sync` fetches and clears that
//! bitmap with `KVM_GET_DIRTY_LOG` and ORs in the VMM's own writes
//! ([`guest_ram::merge_vmm_writes`]: loader, incoming stream, device emulation); `stop` clears
//! the flag again.
//!
//! A `sync` after [`super::KvmVm::pause`] sees every guest write: pause returns only after all
//! vCPUs have left `KVM_RUN`.

use std::sync::Arc;

use guest_ram::{check_bitmaps, merge_vmm_writes, Bitmap, DirtyLog, Error, GuestRam};
use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;
use kvm_ioctls::VmFd;

use super::slot::MemSlot;

/// The dirty log of a [`super::KvmVm`]'s RAM; get one with [`super::KvmVm::dirty_log`].
pub struct KvmDirtyLog {
    vm: Arc<VmFd>,
    ram: Arc<GuestRam>,
    slot: MemSlot,
    started: bool,
}

impl std::fmt::Debug for KvmDirtyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmDirtyLog")
            .field("slot", &self.slot)
            .field("started", &self.started)
            .finish()
    }
}

impl KvmDirtyLog {
    pub(crate) fn new(vm: Arc<VmFd>, ram: Arc<GuestRam>, slot: MemSlot) -> Self {
        KvmDirtyLog {
            vm,
            ram,
            slot,
            started: false,
        }
    }

    fn idstr(&self) -> String {
        self.ram
            .blocks()
            .first()
            .map(|b| b.idstr().to_owned())
            .unwrap_or_default()
    }
}

impl DirtyLog for KvmDirtyLog {
    fn start(&mut self) -> Result<(), Error> {
        if self.started {
            return Ok(());
        }
        let block = self.ram.blocks().first().ok_or(Error::NotStarted)?;
        if !block.vmm_dirty().activate() {
            return Err(Error::AlreadyTracked {
                idstr: block.idstr().to_owned(),
            });
        }
        if let Err(e) = self.slot.set_flags(&self.vm, KVM_MEM_LOG_DIRTY_PAGES) {
            block.vmm_dirty().deactivate();
            return Err(Error::Hypervisor {
                idstr: self.idstr(),
                what: "start",
                source: Box::new(e),
            });
        }
        self.started = true;
        Ok(())
    }

    fn sync(&mut self, dirty: &mut [Bitmap]) -> Result<u64, Error> {
        if !self.started {
            return Err(Error::NotStarted);
        }
        check_bitmaps(self.ram.blocks(), dirty)?;
        let words = self
            .vm
            .get_dirty_log(self.slot.slot, self.slot.size as usize)
            .map_err(|e| Error::Hypervisor {
                idstr: self.idstr(),
                what: "sync",
                source: Box::new(e),
            })?;
        let mut new = 0;
        if let Some(bm) = dirty.first_mut() {
            for (dst, src) in bm.words_mut().iter_mut().zip(&words) {
                new += u64::from((src & !*dst).count_ones());
                *dst |= src;
            }
            bm.trim();
        }
        Ok(new + merge_vmm_writes(self.ram.blocks(), dirty))
    }

    fn stop(&mut self) {
        if !self.started {
            return;
        }
        self.started = false;
        if let Err(e) = self.slot.set_flags(&self.vm, 0) {
            tracing::warn!(error = %e, "cannot turn KVM dirty logging off");
        }
        if let Some(b) = self.ram.blocks().first() {
            b.vmm_dirty().deactivate();
        }
    }
}

impl Drop for KvmDirtyLog {
    fn drop(&mut self) {
        self.stop();
    }
}
