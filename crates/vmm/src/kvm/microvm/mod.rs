//! The `microvm` machine on KVM: what QEMU 7.2 presents with
//! `-M microvm,x-option-roms=off,rtc=off,acpi=off,isa-serial=on -accel kvm`, so a running
//! guest moves live from QEMU into livemig.
//!
//! RAM: `microvm.ram` at guest-physical 0 and `pc.bios` (64 KiB, read-only) just below
//! 4 GiB, as QEMU names, sizes and maps them (see `KvmVm::new`). Sections, in QEMU's order:
//!
//! ```text
//! timer(0) fw_cfg(0) cpu_common(0) cpu(0) kvm-tpr-opt(0) apic(0) [cpu_common(i) cpu(i)
//! apic(i) for each further vCPU i] ioapic(0) kvmclock(0) i8259(0) i8259(1) i8254(0) serial(0)
//! globalstate(0)
//! ```
//!
//! Each handler reads QEMU's vmstate layout ([`desc`]) and converts it into KVM's state
//! ([`cpu`], [`fpu`], [`msrs`], [`apic`], [`chips`], [`misc`]); the converted state is
//! written into the (never-run) vCPU / VM once at load time, so KVM refuses what it would
//! refuse while the migration can still fail, and again by `KvmVm::start`.
//!
//! CPUID is not in QEMU's stream. livemig's vCPUs get what KVM supports on this host, which is
//! what QEMU's `-cpu host` gives (on nested KVM, `-cpu host,-arch-capabilities`: QEMU 7.2
//! cannot set IA32_ARCH_CAPABILITIES there). What the stream implies is checked on load:
//! XCR0 within the XSAVE features KVM supports here, IA32_MCG_CAP accepted by
//! `KVM_X86_SETUP_MCE`, every MSR accepted by `KVM_SET_MSRS`, the TSC frequency (set with
//! `KVM_SET_TSC_KHZ` when it differs; a host without TSC scaling keeps its own, as QEMU does,
//! with a warning).
//!
//! Not modelled (a stream that needs them is refused, or the state is named here): ACPI
//! (`acpi-ged`), the RTC, option ROMs, virtio-mmio devices, x2APIC, SMM, nested
//! virtualisation, MPX / AVX-512 / AMX register state (QEMU's `cpu/mpx`, `cpu/avx512`...
//! subsections are refused on load; a vCPU holding such state is not sent), the 16550's FIFO
//! subsections, and QEMU's read-only alias of the firmware at 0xf0000–0xfffff (livemig's
//! guest sees RAM there).
//!
//! Both directions: `load` converts QEMU's sections into KVM state; `pre_save` (guest stopped)
//! converts KVM's state back ([`cpu_save`], `to_qemu` / `to_kvm` pairs) and `save` sends it; a
//! capture failure fails the migration with [`MigrationError::DeviceSave`] and the guest keeps
//! running here. `fw_cfg` and `kvm-tpr-opt`, which livemig does not model, go back as
//! received (idle / inactive for a guest livemig booted).

pub mod apic;
pub mod chips;
pub mod cpu;
pub mod cpu_save;
pub mod desc;
mod fields;
pub mod fpu;
pub mod misc;
pub mod msrs;

use std::sync::Arc;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use migration::{DeviceState, MigrationError};
use savevm::vmstate::{VmStateDescription, VmStateValue};

use super::serial::SerialPort;
use super::shared::{lock, Shared};
use super::state::cpu::get_msrs;
use super::state::vm::{VmSection, VmSectionState};
use super::KvmVm;
use crate::machine::Timer;

pub use apic::ApicRegs;
pub use cpu::{segment_from_qemu, segment_to_qemu, CpuExtras};
pub use fpu::FpuRegs;

/// RAM block of the guest's memory.
pub const RAM_BLOCK: &str = "microvm.ram";
/// RAM block of the firmware, mapped read-only just below 4 GiB.
pub const BIOS_BLOCK: &str = "pc.bios";
/// Size of QEMU 7.2's microvm firmware (qboot).
pub const BIOS_SIZE: u64 = 64 << 10;

/// QEMU devices / options whose RAM blocks (announced before the source stops its guest)
/// livemig's microvm does not model, by block-name prefix.
const UNMODELLED_BLOCKS: [(&str, &str); 2] = [
    (
        "/rom@etc/acpi/",
        "device acpi-ged (QEMU microvm's ACPI, on by default)",
    ),
    (
        "/rom@etc/table-loader",
        "device acpi-ged (QEMU microvm's ACPI, on by default)",
    ),
];

/// The QEMU options livemig's microvm matches.
pub const QEMU_OPTIONS: &str = "-M microvm,x-option-roms=off,rtc=off,acpi=off,isa-serial=on";

/// The refusal of a stream announcing RAM block `block` that this machine lacks: the
/// loader's `report`, the QEMU device that owns the block when it is known, and the QEMU
/// options livemig matches. The source learns of it while its guest still runs.
pub fn explain_unknown_block(report: &str, block: &str) -> String {
    let owner = UNMODELLED_BLOCKS
        .iter()
        .find(|(prefix, _)| block.starts_with(prefix))
        .map_or("a QEMU device", |(_, d)| d);
    format!(
        "{report}: it belongs to {owner}, which livemig's microvm does not model; \
         start QEMU with {QEMU_OPTIONS} -accel kvm"
    )
}

/// Host facts the loaders check against.
#[derive(Debug, Clone, Copy)]
struct Host {
    /// XCR0 bits KVM supports (CPUID 0xD.0 EDX:EAX).
    xcr0: u64,
    /// Physical address bits (CPUID 0x80000008 EAX[7:0]).
    phys_bits: u32,
    /// Offset of the PKRU component in the standard XSAVE area (CPUID 0xD.9 EBX), if any.
    pkru_offset: Option<usize>,
}

struct Ctx {
    shared: Arc<Shared>,
    serial: Arc<SerialPort>,
    timer: Timer,
    host: Host,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    FwCfg,
    CpuCommon(usize),
    Cpu(usize),
    TprOpt,
    Apic(usize),
    Ioapic,
    Kvmclock,
    Pic(usize),
    Pit,
    Serial,
}

impl Kind {
    fn idstr(self) -> &'static str {
        match self {
            Kind::FwCfg => "fw_cfg",
            Kind::CpuCommon(_) => "cpu_common",
            Kind::Cpu(_) => "cpu",
            Kind::TprOpt => "kvm-tpr-opt",
            Kind::Apic(_) => "apic",
            Kind::Ioapic => "ioapic",
            Kind::Kvmclock => "kvmclock",
            Kind::Pic(_) => "i8259",
            Kind::Pit => "i8254",
            Kind::Serial => "serial",
        }
    }
}

/// A section to register: `(idstr, instance, device)`.
pub type Section = (String, u32, Box<dyn DeviceState>);

/// One QEMU-compatible section of the microvm machine.
struct MicrovmDevice {
    ctx: Arc<Ctx>,
    kind: Kind,
    /// What a loaded section carried that KVM does not hold (fw_cfg, kvm-tpr-opt: the whole
    /// value; cpu: IA32_MCG_CAP and the TSC frequency), sent back as received.
    kept: Option<VmStateValue>,
    extras: Option<CpuExtras>,
    /// The value `pre_save` captured.
    saved: VmStateValue,
}

/// The microvm machine's sections, as `(idstr, instance, device)` in QEMU's registration
/// order (`timer` and `globalstate` are the machine's own, registered around these).
pub fn devices(vm: &KvmVm, timer: Timer) -> Result<Vec<Section>, super::KvmError> {
    let cpuid = vm
        ._kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(super::error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    let mut host = Host {
        xcr0: 0,
        phys_bits: 36,
        pkru_offset: None,
    };
    for e in cpuid.as_slice() {
        match (e.function, e.index) {
            (0xd, 0) => host.xcr0 = u64::from(e.eax) | u64::from(e.edx) << 32,
            (0x8000_0008, _) => host.phys_bits = e.eax & 0xff,
            (0xd, 9) if e.eax >= 4 => host.pkru_offset = Some(e.ebx as usize),
            _ => {}
        }
    }
    // QEMU's vCPUs get machine-check banks at creation (IA32_MCG_CAP = MCG_CTL_P | MCG_SER_P |
    // 10 banks on KVM); so do these, else KVM's default (32 banks) cannot go to QEMU.
    for fd in &vm.shared.vcpus {
        let fd = lock(fd);
        let ok = msrs::QEMU_MCG_CAP
            .iter()
            .any(|&cap| misc::setup_mce(&fd, cap).is_ok());
        if !ok {
            tracing::warn!("KVM refuses QEMU's machine-check configuration; the vCPU keeps KVM's");
        }
    }
    let ctx = Arc::new(Ctx {
        shared: vm.shared.clone(),
        serial: vm.serial.clone(),
        timer,
        host,
    });
    let n = vm.vcpu_count();
    let mut kinds = vec![(Kind::FwCfg, 0)];
    // Per vCPU as QEMU registers them: cpu_common, cpu, (the TPR optimisation with the first
    // APIC), apic.
    for i in 0..n {
        kinds.push((Kind::CpuCommon(i), i));
        kinds.push((Kind::Cpu(i), i));
        if i == 0 {
            kinds.push((Kind::TprOpt, 0));
        }
        kinds.push((Kind::Apic(i), i));
    }
    kinds.extend([
        (Kind::Ioapic, 0),
        (Kind::Kvmclock, 0),
        (Kind::Pic(0), 0),
        (Kind::Pic(1), 1),
        (Kind::Pit, 0),
        (Kind::Serial, 0),
    ]);
    Ok(kinds
        .into_iter()
        .map(|(kind, inst)| {
            let d: Box<dyn DeviceState> = Box::new(MicrovmDevice {
                ctx: ctx.clone(),
                kind,
                kept: None,
                extras: None,
                saved: VmStateValue::new(),
            });
            (kind.idstr().to_owned(), inst as u32, d)
        })
        .collect())
}

impl MicrovmDevice {
    fn load_cpu(&mut self, index: usize, v: &VmStateValue) -> Result<(), String> {
        let sh = &self.ctx.shared;
        let base = sh.vcpu_state(index).map_err(|e| e.to_string())?;
        let (mut state, extras) = cpu::from_qemu(v, &base, self.ctx.host.phys_bits)?;
        if let Some(pkru) = v.subsection("cpu/pkru") {
            let value: u32 = fields::uint(pkru, "env.pkru")?;
            let at = self
                .ctx
                .host
                .pkru_offset
                .filter(|at| at + 4 <= state.xsave.len())
                .ok_or("PKRU state, but this host's KVM has no PKRU")?;
            state.xsave[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        state.msrs = msrs::host_subset(std::mem::take(&mut state.msrs), &sh.msr_indices)?;
        let xcr0 = state.xcrs.xcrs[0].value;
        if xcr0 & !self.ctx.host.xcr0 != 0 {
            return Err(format!(
                "XCR0 {xcr0:#x} enables XSAVE features this host's KVM lacks (supported {:#x}): \
                 start QEMU with a -cpu model this host covers (-cpu host on the same host)",
                self.ctx.host.xcr0
            ));
        }
        check_vcpu(&state)?;
        {
            let fd = sh
                .vcpus
                .get(index)
                .ok_or_else(|| format!("no vCPU {index}"))?;
            let fd = lock(fd);
            if extras.mcg_cap != 0 {
                misc::setup_mce(&fd, extras.mcg_cap)
                    .map_err(|e| format!("KVM refuses IA32_MCG_CAP {:#x}: {e}", extras.mcg_cap))?;
            }
            if extras.tsc_khz != 0 {
                let khz = u32::try_from(extras.tsc_khz)
                    .map_err(|_| "tsc_khz out of range".to_string())?;
                if fd.get_tsc_khz().ok() != Some(khz) {
                    if let Err(e) = fd.set_tsc_khz(khz) {
                        tracing::warn!(khz, error = %e, "TSC frequency differs from the source and cannot be scaled");
                    }
                }
            }
        }
        sh.set_pending_vcpu(index, state)?;
        self.extras = Some(extras);
        Ok(())
    }

    fn load_apic(&self, index: usize, v: &VmStateValue) -> Result<(), String> {
        let regs = ApicRegs::from_qemu(v)?;
        let sh = &self.ctx.shared;
        let mut state = sh.vcpu_state(index).map_err(|e| e.to_string())?;
        regs.to_kvm(&mut state.lapic);
        state.sregs.apic_base = regs.apicbase;
        state.sregs.cr8 = u64::from(regs.tpr >> 4);
        crate::kvm::state::check::sregs(&state.sregs)?;
        sh.set_pending_vcpu(index, state)
    }

    fn update_irqchip(
        &self,
        chip: usize,
        f: impl FnOnce(&mut [u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        let sh = &self.ctx.shared;
        let VmSectionState::Irqchip(mut chips) =
            sh.vm_state(VmSection::Irqchip).map_err(|e| e.to_string())?
        else {
            return Err("irqchip state of another kind".into());
        };
        f(&mut chips[chip])?;
        let masks = crate::kvm::state::check::PIC_ELCR_MASKS;
        match chip {
            0 | 1 => crate::kvm::state::check::pic(self.kind.idstr(), &chips[chip], masks[chip])?,
            _ => crate::kvm::state::check::ioapic(&chips[2])?,
        }
        sh.set_pending_vm(VmSection::Irqchip, VmSectionState::Irqchip(chips))
    }

    fn load_inner(&mut self, v: &VmStateValue) -> Result<(), String> {
        match self.kind {
            Kind::FwCfg => {
                misc::fw_cfg_check(v)?;
                self.kept = Some(v.clone());
                Ok(())
            }
            Kind::CpuCommon(_) => misc::cpu_common_check(v),
            Kind::TprOpt => {
                misc::tpr_opt_check(v)?;
                self.kept = Some(v.clone());
                Ok(())
            }
            Kind::Cpu(i) => self.load_cpu(i, v),
            Kind::Apic(i) => self.load_apic(i, v),
            Kind::Ioapic => self.update_irqchip(2, |c| chips::ioapic_from_qemu(v, c)),
            Kind::Pic(n) => self.update_irqchip(n, |c| chips::pic_from_qemu(v, c)),
            Kind::Pit => {
                let virt = self.ctx.timer.state().cpu_clock_offset;
                let p = chips::pit_from_qemu(v, virt, misc::monotonic_ns())?;
                self.ctx
                    .shared
                    .set_pending_vm(VmSection::Pit, VmSectionState::Pit(p))
            }
            Kind::Kvmclock => {
                let clock = fields::u64_of(v, "clock")?;
                self.ctx
                    .shared
                    .set_pending_vm(VmSection::Clock, VmSectionState::Clock(clock))
            }
            Kind::Serial => {
                let s = misc::serial_from_qemu(v)?;
                self.ctx.serial.restore(&s)
            }
        }
    }
}

impl MicrovmDevice {
    /// The section's value now (the guest is stopped).
    fn capture(&self) -> Result<VmStateValue, String> {
        let sh = &self.ctx.shared;
        let vm_state = |section| sh.vm_state(section).map_err(|e| e.to_string());
        let e = |e: super::KvmError| e.to_string();
        Ok(match self.kind {
            Kind::FwCfg => self.kept.clone().unwrap_or_else(misc::fw_cfg_idle),
            Kind::TprOpt => self.kept.clone().unwrap_or_else(misc::tpr_opt_inactive),
            Kind::CpuCommon(i) => {
                let halted =
                    sh.vcpu_state(i).map_err(e)?.mp_state == kvm_bindings::KVM_MP_STATE_HALTED;
                misc::cpu_common_value(halted)
            }
            Kind::Cpu(i) => {
                let state = sh.vcpu_state(i).map_err(e)?;
                let fd = sh.vcpus.get(i).ok_or_else(|| format!("no vCPU {i}"))?;
                let fd = lock(fd);
                let extras = match self.extras {
                    Some(x) => x,
                    None => CpuExtras {
                        mcg_cap: get_msrs(&fd, &[msrs::MSR_MCG_CAP]).map_err(e)?[0].1,
                        tsc_khz: fd.get_tsc_khz().map_or(0, u64::from),
                    },
                };
                let banks = extras.mcg_cap & 0xff;
                if banks > msrs::MAX_BANKS {
                    return Err(format!(
                        "IA32_MCG_CAP {:#x} has {banks} machine-check banks; QEMU holds at most {}",
                        extras.mcg_cap,
                        msrs::MAX_BANKS
                    ));
                }
                let banks = banks as u32;
                let mut mce: Vec<u32> = (0..banks * 4).map(|b| msrs::MSR_MC0_CTL + b).collect();
                if extras.mcg_cap != 0 {
                    mce.push(0x17a);
                }
                if extras.mcg_cap & (1 << 8) != 0 {
                    mce.push(0x17b);
                }
                let extra = get_msrs(&fd, &mce).map_err(e)?;
                let xstate_bv = FpuRegs::from_xsave(&state.xsave).map_or(0, |f| f.xstate_bv);
                if xstate_bv & cpu_save::UNSENT_XSTATE != 0 {
                    return Err(format!(
                        "the vCPU holds MPX / AVX-512 / AMX state (XSTATE_BV {xstate_bv:#x}), \
                         which livemig cannot send to QEMU"
                    ));
                }
                let mut v = cpu_save::to_qemu(&state, extras, &extra, self.ctx.host.phys_bits);
                let pkru = self
                    .ctx
                    .host
                    .pkru_offset
                    .and_then(|at| state.xsave.get(at..at + 4));
                if let Some(&[a, b, c, d]) = pkru {
                    let pkru = u32::from_le_bytes([a, b, c, d]);
                    if xstate_bv & (1 << 9) != 0 && pkru != 0 {
                        v.set_subsection(
                            "cpu/pkru",
                            VmStateValue::new()
                                .with("env.pkru", savevm::vmstate::Value::Uint(pkru.into())),
                        );
                    }
                }
                v
            }
            Kind::Apic(i) => {
                let s = sh.vcpu_state(i).map_err(e)?;
                ApicRegs::from_kvm(&s.lapic, s.sregs.apic_base).to_qemu()
            }
            Kind::Ioapic | Kind::Pic(_) => {
                let VmSectionState::Irqchip(chips) = vm_state(VmSection::Irqchip)? else {
                    return Err("irqchip state of another kind".into());
                };
                match self.kind {
                    Kind::Pic(n) => chips::pic_to_qemu(&chips[n.min(1)]),
                    _ => chips::ioapic_to_qemu(&chips[2]),
                }
            }
            Kind::Pit => {
                let VmSectionState::Pit(p) = vm_state(VmSection::Pit)? else {
                    return Err("PIT state of another kind".into());
                };
                let virt = self.ctx.timer.state().cpu_clock_offset;
                chips::pit_to_qemu(&p, virt, misc::monotonic_ns())
            }
            Kind::Kvmclock => {
                let VmSectionState::Clock(ns) = vm_state(VmSection::Clock)? else {
                    return Err("clock state of another kind".into());
                };
                VmStateValue::new().with("clock", savevm::vmstate::Value::Uint(ns))
            }
            Kind::Serial => misc::serial_to_qemu(&self.ctx.serial.state()),
        })
    }
}

/// The checks the `kvm-cpu` section applies, on converted state.
pub(crate) fn check_vcpu(s: &super::state::cpu::VcpuState) -> Result<(), String> {
    use crate::kvm::state::check;
    check::mp_state(s.mp_state)?;
    check::xsave(&s.xsave)?;
    check::fpu_mxcsr(s.fpu.mxcsr)?;
    check::sregs(&s.sregs)?;
    check::events(&s.events, s.mp_state)?;
    check::debugregs(&s.debugregs)?;
    check::xcrs(&s.xcrs)?;
    check::msrs_unique(&s.msrs)
}

impl DeviceState for MicrovmDevice {
    fn description(&self) -> VmStateDescription {
        match self.kind {
            Kind::FwCfg => desc::fw_cfg(),
            Kind::CpuCommon(_) => desc::cpu_common(),
            Kind::Cpu(_) => desc::cpu(),
            Kind::TprOpt => desc::tpr_opt(),
            Kind::Apic(_) => desc::apic(),
            Kind::Ioapic => desc::ioapic(),
            Kind::Kvmclock => desc::kvmclock(),
            Kind::Pic(_) => desc::i8259(),
            Kind::Pit => desc::i8254(),
            Kind::Serial => desc::serial(),
        }
    }

    fn pre_save(&mut self) -> Result<(), MigrationError> {
        self.saved = self
            .capture()
            .map_err(|reason| MigrationError::DeviceSave {
                idstr: self.kind.idstr().into(),
                reason,
            })?;
        Ok(())
    }

    fn save(&self) -> VmStateValue {
        // Without pre_save the value is empty and the destination refuses the section.
        self.saved.clone()
    }

    fn load(&mut self, v: &VmStateValue, _version: u32) -> Result<(), MigrationError> {
        self.load_inner(v)
            .map_err(|reason| MigrationError::DeviceLoad {
                idstr: self.kind.idstr().into(),
                reason,
            })
    }
}
