//! PVH boot: load the ELF with linux-loader, write `hvm_start_info`, the memory map and the
//! command line into guest RAM, and put the boot vCPU into 32-bit protected mode at the PVH
//! entry point.
//!
//! Low guest memory used by the boot data:
//!
//! ```text
//! 0x0000_6000  struct hvm_start_info (56 bytes)   -> %ebx at entry
//! 0x0000_7000  hvm_memmap_table_entry[]            (RAM below 640 KiB, RAM from 1 MiB)
//! 0x0002_0000  command line, NUL-terminated        (at most 4095 bytes)
//! 0x0010_0000  the ELF's PT_LOAD segments          (at their p_paddr, at least 1 MiB)
//! ```
//!
//! vCPU 0 starts with flat 4 GiB code (selector 0x08) and data (0x10) segments, CR0 = PE|ET,
//! paging off, RIP = the PVH entry, RBX = the start info. The other vCPUs stay in KVM's
//! wait-for-SIPI state (the guest may start them with INIT/SIPI through the in-kernel LAPIC).

use std::io::Cursor;

use guest_ram::RamBlock;
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs, CpuId};
use kvm_ioctls::VcpuFd;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use super::error::{kvm, KvmError};

/// Guest-physical address of `hvm_start_info`.
pub const START_INFO_ADDR: u64 = 0x6000;
/// Guest-physical address of the memory map.
pub const MEMMAP_ADDR: u64 = 0x7000;
/// Guest-physical address of the command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line accepted (without the NUL).
pub const CMDLINE_MAX: usize = 4095;
/// Lowest address an ELF segment may load at.
pub const HIMEM_START: u64 = 0x10_0000;
const EBDA_START: u64 = 0x9_fc00;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;

/// A vm-memory view of the RAM block (linux-loader writes through vm-memory's traits).
fn guest_memory(block: &RamBlock) -> Result<GuestMemoryMmap, KvmError> {
    let bad = |what: String| KvmError::BootData(what);
    let len = usize::try_from(block.len()).map_err(|_| bad("RAM too large".into()))?;
    // SAFETY: host_ptr..host_ptr+len is the live mapping of `block`, which outlives the
    // returned view (it is dropped at the end of `load`, while the caller holds the block).
    // build_raw does not unmap the memory on drop.
    let region = unsafe {
        MmapRegion::build_raw(
            block.host_ptr(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        )
    }
    .map_err(|e| bad(format!("cannot view guest RAM: {e}")))?;
    let region = GuestRegionMmap::new(region, GuestAddress(0))
        .ok_or_else(|| bad("guest RAM region overflows the address space".into()))?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|e| bad(format!("{e}")))
}

/// Loads `elf` and the PVH boot data into `block` (guest-physical 0); returns the entry point.
pub(crate) fn load(block: &RamBlock, elf: &[u8], cmdline: &str) -> Result<u64, KvmError> {
    if cmdline.len() > CMDLINE_MAX || cmdline.contains('\0') {
        return Err(KvmError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX,
        });
    }
    let mem = guest_memory(block)?;
    let res = Elf::load(
        &mem,
        None,
        &mut Cursor::new(elf),
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(KvmError::Load)?;
    let entry = match res.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(a) => a.0,
        _ => return Err(KvmError::NoPvhEntry),
    };
    let mut c = cmdline.as_bytes().to_vec();
    c.push(0);
    block
        .write_range(CMDLINE_ADDR, &c)
        .map_err(|e| KvmError::BootData(e.to_string()))?;
    let memmap = [
        hvm_memmap_table_entry {
            addr: 0,
            size: EBDA_START,
            type_: E820_RAM,
            reserved: 0,
        },
        hvm_memmap_table_entry {
            addr: HIMEM_START,
            size: block.len() - HIMEM_START,
            type_: E820_RAM,
            reserved: 0,
        },
    ];
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new::<hvm_start_info>(&start_info, GuestAddress(START_INFO_ADDR));
    params.set_sections::<hvm_memmap_table_entry>(&memmap, GuestAddress(MEMMAP_ADDR));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, &mem)
        .map_err(|e| KvmError::BootData(e.to_string()))?;
    // The loader wrote behind the VMM dirty tracker's back: record it (a no-op unless a dirty
    // log is running, which it never is at boot).
    block.mark_dirty(0, block.len());
    Ok(entry)
}

fn flat_segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts vCPU 0 at the PVH entry: 32-bit protected mode, paging off, RBX = start info.
pub(crate) fn setup_boot_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<(), KvmError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let code = flat_segment(0x08, 0xb);
    let data = flat_segment(0x10, 0x3);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        selector: 0x18,
        limit: 0x67,
        type_: 0xb,
        s: 0,
        g: 0,
        db: 0,
        ..flat_segment(0x18, 0xb)
    };
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rip: entry,
        rbx: START_INFO_ADDR,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
    Ok(())
}

/// The CPUID table for vCPU `index`: what KVM supports, with the vCPU's APIC ID filled in.
pub(crate) fn cpuid_for(supported: &CpuId, index: usize) -> CpuId {
    let mut c = supported.clone();
    let id = index as u32;
    for e in c.as_mut_slice() {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (id << 24),
            0xb | 0x1f => e.edx = id,
            _ => {}
        }
    }
    c
}
