//! QEMU's `cpu` section (v12) → KVM vCPU state ([`VcpuState`]), as QEMU's own KVM code
//! writes its CPU state into KVM (`kvm_arch_put_registers`, full level).
//!
//! | QEMU field | KVM |
//! | --- | --- |
//! | `env.regs[16]` (RAX RCX RDX RBX RSP RBP RSI RDI R8–R15), `eip`, `eflags` | `KVM_SET_REGS` |
//! | `segs[6]` (ES CS SS DS FS GS), `ldt`, `tr`, `gdt`, `idt`, `cr[0,2,3,4]`, `efer` | `KVM_SET_SREGS` |
//! | segment `flags` = descriptor high dword: type 11:8, S 12, DPL 14:13, P 15, AVL 20, L 21, D/B 22, G 23 | `kvm_segment` bits |
//! | `fpuc`, `fpus_vmstate`, `fptag_vmstate` (abridged, 1 = valid), `fpregs` (80-bit), `mxcsr`, `xmm_regs`, ymmh, `xstate_bv`, `cpu/fpop_ip_dp` | `KVM_SET_XSAVE` (see [`super::fpu`]) |
//! | `xcr0` | `KVM_SET_XCRS` |
//! | `exception_nr`, `has_error_code`, `interrupt_injected`, `soft_interrupt`, `nmi_*`, `sipi_vector`, hflags INHIBIT_IRQ (bit 3), hflags2 NMI (bit 2) | `KVM_SET_VCPU_EVENTS` |
//! | `dr[0..3]`, `dr[6]`, `dr[7]` | `KVM_SET_DEBUGREGS` |
//! | `mp_state` | `KVM_SET_MP_STATE` |
//! | MSR images (see [`super::msrs`]), `mcg_cap` | `KVM_SET_MSRS`, `KVM_X86_SETUP_MCE` |
//!
//! The APIC's registers and `apicbase`, and CR8 (the TPR) come from the `apic` section, which
//! follows. QEMU does not migrate the exception error code; neither can livemig. System
//! management mode and nested virtualisation state are refused: livemig does not model them.

use kvm_bindings::{
    kvm_debugregs, kvm_dtable, kvm_segment, kvm_vcpu_events, kvm_xcrs,
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SHADOW, KVM_VCPUEVENT_VALID_SIPI_VECTOR,
};
use savevm::vmstate::VmStateValue;

use super::fields::{i64_of, struct_list, strukt, u64_list, u64_of, uint};
use super::fpu;
use crate::kvm::state::cpu::VcpuState;

/// `hflags` bit: interrupts inhibited for one instruction (STI / MOV SS shadow).
pub const HF_INHIBIT_IRQ: u64 = 1 << 3;
/// `hflags` bit: in system management mode.
pub const HF_SMM: u64 = 1 << 19;
/// `hflags2` bit: NMIs blocked.
pub const HF2_NMI: u64 = 1 << 2;
/// `hflags` bit: guest mode of nested SVM.
pub const HF_GUEST: u64 = 1 << 21;

/// What the `cpu` section holds beyond [`VcpuState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuExtras {
    /// IA32_MCG_CAP, set with `KVM_X86_SETUP_MCE` before the MCE MSRs.
    pub mcg_cap: u64,
    /// Guest TSC frequency (`cpu/tsc_khz`), 0 = not sent.
    pub tsc_khz: u64,
}

/// QEMU's descriptor-cache flags → `kvm_segment` (QEMU's `set_seg`).
pub fn segment_from_qemu(selector: u16, base: u64, limit: u32, flags: u32) -> kvm_segment {
    let present = u8::from(flags & (1 << 15) != 0);
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((flags >> 8) & 15) as u8,
        present,
        dpl: ((flags >> 13) & 3) as u8,
        db: ((flags >> 22) & 1) as u8,
        s: u8::from(flags & (1 << 12) != 0),
        l: ((flags >> 21) & 1) as u8,
        g: u8::from(flags & (1 << 23) != 0),
        avl: u8::from(flags & (1 << 20) != 0),
        unusable: 1 - present,
        padding: 0,
    }
}

/// `kvm_segment` → QEMU's descriptor-cache flags (QEMU's `get_seg`).
pub fn segment_to_qemu(s: &kvm_segment) -> u32 {
    let p = u32::from(s.present != 0 && s.unusable == 0);
    u32::from(s.type_) << 8
        | p << 15
        | u32::from(s.dpl) << 13
        | u32::from(s.db) << 22
        | u32::from(s.s) << 12
        | u32::from(s.l) << 21
        | u32::from(s.g) << 23
        | u32::from(s.avl) << 20
}

fn seg(v: &VmStateValue) -> Result<kvm_segment, String> {
    Ok(segment_from_qemu(
        uint(v, "selector")?,
        u64_of(v, "base")?,
        uint(v, "limit")?,
        uint(v, "flags")?,
    ))
}

fn dtable(v: &VmStateValue) -> Result<kvm_dtable, String> {
    Ok(kvm_dtable {
        base: u64_of(v, "base")?,
        limit: uint(v, "limit")?,
        padding: [0; 3],
    })
}

/// Converts QEMU's `cpu` section into `base` (the destination vCPU's own state, which keeps
/// what QEMU does not send: its LAPIC until the `apic` section, MSRs QEMU does not migrate).
pub fn from_qemu(
    v: &VmStateValue,
    base: &VcpuState,
    phys_bits: u32,
) -> Result<(VcpuState, CpuExtras), String> {
    let mut s = base.clone();
    let hflags = u64_of(v, "env.hflags")?;
    let hflags2 = u64_of(v, "env.hflags2")?;
    if hflags & HF_SMM != 0 {
        return Err("the vCPU is in system management mode, which livemig does not model".into());
    }
    if hflags & HF_GUEST != 0 || u64_of(v, "env.vm_vmcb")? != 0 {
        return Err("the vCPU runs a nested guest, which livemig does not model".into());
    }
    // GPRs: QEMU's order is RAX RCX RDX RBX RSP RBP RSI RDI R8..R15.
    let g = u64_list(v, "env.regs", 16)?;
    let r = &mut s.regs;
    [r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi] =
        [g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]];
    [r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15] =
        [g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]];
    r.rip = u64_of(v, "env.eip")?;
    r.rflags = u64_of(v, "env.eflags")?;

    let segs = struct_list(v, "env.segs", 0, 6)?;
    let sr = &mut s.sregs;
    sr.es = seg(segs[0])?;
    sr.cs = seg(segs[1])?;
    sr.ss = seg(segs[2])?;
    sr.ds = seg(segs[3])?;
    sr.fs = seg(segs[4])?;
    sr.gs = seg(segs[5])?;
    sr.ldt = seg(strukt(v, "env.ldt")?)?;
    sr.tr = seg(strukt(v, "env.tr")?)?;
    sr.gdt = dtable(strukt(v, "env.gdt")?)?;
    sr.idt = dtable(strukt(v, "env.idt")?)?;
    sr.cr0 = u64_of(v, "env.cr[0]")?;
    sr.cr2 = u64_of(v, "env.cr[2]")?;
    sr.cr3 = u64_of(v, "env.cr[3]")?;
    sr.cr4 = u64_of(v, "env.cr[4]")?;
    sr.efer = u64_of(v, "env.efer")?;
    let injected = i64_of(v, "env.interrupt_injected")?;
    sr.interrupt_bitmap = [0; 4];
    if injected >= 0 {
        let n = u8::try_from(injected)
            .map_err(|_| format!("interrupt_injected {injected} is not a vector"))?;
        sr.interrupt_bitmap[usize::from(n / 64)] |= 1 << (n % 64);
    }

    let exc = i64_of(v, "env.exception_nr")?;
    let exc_nr = if exc < 0 {
        None
    } else {
        Some(u8::try_from(exc).map_err(|_| format!("exception_nr {exc} is not a vector"))?)
    };
    let mut ev = kvm_vcpu_events {
        flags: KVM_VCPUEVENT_VALID_NMI_PENDING
            | KVM_VCPUEVENT_VALID_SIPI_VECTOR
            | KVM_VCPUEVENT_VALID_SHADOW,
        sipi_vector: uint(v, "env.sipi_vector")?,
        ..Default::default()
    };
    ev.exception.injected = u8::from(exc_nr.is_some());
    ev.exception.nr = exc_nr.unwrap_or(0);
    ev.exception.has_error_code = uint(v, "env.has_error_code")?;
    ev.interrupt.injected = u8::from(injected >= 0);
    ev.interrupt.nr = if injected >= 0 { injected as u8 } else { 0 };
    ev.interrupt.soft = uint(v, "env.soft_interrupt")?;
    ev.interrupt.shadow = u8::from(hflags & HF_INHIBIT_IRQ != 0);
    ev.nmi.injected = uint(v, "env.nmi_injected")?;
    ev.nmi.pending = uint(v, "env.nmi_pending")?;
    ev.nmi.masked = u8::from(hflags2 & HF2_NMI != 0);
    s.events = ev;

    let dr = u64_list(v, "env.dr", 8)?;
    s.debugregs = kvm_debugregs {
        db: [dr[0], dr[1], dr[2], dr[3]],
        dr6: dr[6],
        dr7: dr[7],
        ..Default::default()
    };
    s.mp_state = uint(v, "env.mp_state")?;
    let mut xcrs = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0].xcr = 0;
    xcrs.xcrs[0].value = u64_of(v, "env.xcr0")?;
    s.xcrs = xcrs;

    let (xsave, fpu) = fpu::from_qemu(v, &base.xsave)?;
    s.xsave = xsave;
    s.fpu = fpu;
    s.msrs = super::msrs::from_qemu(v, phys_bits)?;
    let extras = CpuExtras {
        mcg_cap: u64_of(v, "env.mcg_cap")?,
        tsc_khz: match v.subsection("cpu/tsc_khz") {
            Some(t) => u64::try_from(i64_of(t, "env.tsc_khz")?)
                .map_err(|_| "negative tsc_khz".to_string())?,
            None => 0,
        },
    };
    Ok((s, extras))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_flags_round_trip_both_ways() {
        // 64-bit code segment as the payload runs it, a data segment, the TSS, an unusable LDT.
        for flags in [
            0x00a0_9b00u32,
            0x00c0_9300,
            0x0000_8b00,
            0x0000_8200,
            0x0010_f300,
        ] {
            let k = segment_from_qemu(8, 0x1000, 0xffff_ffff, flags);
            assert_eq!(segment_to_qemu(&k), flags, "{flags:#x}");
        }
        let cs = segment_from_qemu(8, 0, 0xffff_ffff, 0x00a0_9b00);
        assert_eq!(
            (cs.type_, cs.s, cs.present, cs.l, cs.db, cs.g, cs.dpl),
            (0xb, 1, 1, 1, 0, 1, 0)
        );
        let unusable = segment_from_qemu(0, 0, 0, 0);
        assert_eq!((unusable.present, unusable.unusable), (0, 1));
        assert_eq!(segment_to_qemu(&unusable), 0);
    }
}
