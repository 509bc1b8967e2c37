//! KVM vCPU state ([`VcpuState`]) → QEMU's `cpu` section (v12), the inverse of
//! [`super::cpu::from_qemu`], as QEMU's `kvm_arch_get_registers` fills its CPU state before
//! saving. `hflags` (QEMU's cached mode bits) are derived from the registers as QEMU's
//! `x86_update_hflags` does for the bits a KVM guest has: CPL, PE/MP/EM/TS from CR0, LMA and
//! CS64 from EFER and CS.L, CS32/SS32 from D/B, OSFXSR from CR4, INHIBIT_IRQ from the
//! interrupt shadow.

use savevm::vmstate::{Value, VmStateValue};

use super::cpu::{segment_to_qemu, CpuExtras, HF2_NMI, HF_INHIBIT_IRQ};
use super::fields::uints;
use super::fpu::FpuRegs;
use super::msrs::{MISC_ENABLE_DEFAULT, MSR_MC0_CTL, MSR_TSC, MTRR_FIXED};
use crate::kvm::state::cpu::VcpuState;

/// XSTATE_BV bits of state QEMU's `cpu` section carries only in subsections livemig does not
/// write: MPX (3, 4), AVX-512 (5–7), AMX (17, 18).
pub const UNSENT_XSTATE: u64 = 0x18 | 0xe0 | (3 << 17);

/// `hflags2` bit: global interrupt flag (always set outside nested SVM).
const HF2_GIF: u64 = 1;
/// `hflags2` bit: virtual GIF (QEMU sets it with GIF).
const HF2_VGIF: u64 = 1 << 8;

fn seg_value(selector: u16, base: u64, limit: u32, flags: u32) -> Value {
    Value::Struct(
        VmStateValue::new()
            .with("selector", Value::Uint(selector.into()))
            .with("base", Value::Uint(base))
            .with("limit", Value::Uint(limit.into()))
            .with("flags", Value::Uint(flags.into())),
    )
}

fn seg(s: &kvm_bindings::kvm_segment) -> Value {
    seg_value(s.selector, s.base, s.limit, segment_to_qemu(s))
}

fn dtable(t: &kvm_bindings::kvm_dtable) -> Value {
    seg_value(0, t.base, t.limit.into(), 0)
}

/// QEMU's `hflags` for this register state.
pub fn hflags(s: &VcpuState) -> u64 {
    let sr = &s.sregs;
    let mut h = u64::from(sr.ss.dpl) & 3; // CPL
    if sr.cr0 & 1 != 0 {
        h |= 1 << 7; // PE
    }
    h |= ((sr.cr0 >> 1) & 7) << 9; // MP, EM, TS
    if sr.efer & (1 << 10) != 0 {
        h |= 1 << 14; // LMA
        if sr.cs.l != 0 {
            h |= (1 << 15) | (1 << 4) | (1 << 5); // CS64, CS32, SS32
        }
    }
    if h & (1 << 15) == 0 {
        h |= u64::from(sr.cs.db) << 4 | u64::from(sr.ss.db) << 5;
    }
    let vm86 = s.regs.rflags & (1 << 17) != 0;
    if sr.cr0 & 1 == 0 || vm86 || h & (1 << 4) == 0 {
        h |= 1 << 6; // ADDSEG
    } else if sr.ds.base | sr.es.base | sr.ss.base != 0 {
        h |= 1 << 6;
    }
    if sr.cr4 & (1 << 9) != 0 {
        h |= 1 << 22; // OSFXSR
    }
    if s.events.interrupt.shadow != 0 {
        h |= HF_INHIBIT_IRQ;
    }
    h
}

fn msr(s: &VcpuState, extra: &[(u32, u64)], index: u32, absent: u64) -> u64 {
    s.msrs
        .iter()
        .chain(extra)
        .find(|(i, _)| *i == index)
        .map_or(absent, |(_, v)| *v)
}

/// The `cpu` section of `s`; `extra` holds MSRs read beside the saved list (the MCE banks),
/// `phys_bits` the host's physical address width (variable MTRR masks get QEMU's top bits).
pub fn to_qemu(s: &VcpuState, x: CpuExtras, extra: &[(u32, u64)], phys_bits: u32) -> VmStateValue {
    let r = &s.regs;
    let sr = &s.sregs;
    let f = FpuRegs::from_xsave(&s.xsave).unwrap_or_default();
    let m = |i, absent| Value::Uint(msr(s, extra, i, absent));
    let exc = if s.events.exception.injected != 0 || s.events.exception.pending != 0 {
        i64::from(s.events.exception.nr)
    } else {
        -1
    };
    let int = if s.events.interrupt.injected != 0 {
        i64::from(s.events.interrupt.nr)
    } else {
        -1
    };
    let fpregs = f.st.iter().map(|(mant, exp)| {
        Value::Struct(
            VmStateValue::new().with(
                "tmp",
                Value::Struct(
                    VmStateValue::new()
                        .with("tmp_mant", Value::Uint(*mant))
                        .with("tmp_exp", Value::Uint((*exp).into())),
                ),
            ),
        )
    });
    let zmm = |regs: &[[u64; 2]; 16], a: &str, b: &str| {
        Value::List(
            regs.iter()
                .map(|q| {
                    Value::Struct(
                        VmStateValue::new()
                            .with(a, Value::Uint(q[0]))
                            .with(b, Value::Uint(q[1])),
                    )
                })
                .collect(),
        )
    };
    let top_bits = if phys_bits < 52 {
        ((1u64 << 52) - 1) & !((1u64 << phys_bits) - 1)
    } else {
        0
    };
    let mtrr_var = (0..8u32).map(|i| {
        let mask = msr(s, extra, 0x201 + 2 * i, 0);
        // QEMU keeps the bits above the physical width set in a valid (bit 11) mask.
        let mask = if mask & (1 << 11) != 0 {
            mask | top_bits
        } else {
            mask
        };
        Value::Struct(
            VmStateValue::new()
                .with("base", m(0x200 + 2 * i, 0))
                .with("mask", Value::Uint(mask)),
        )
    });
    let banks = (x.mcg_cap & 0xff).min(super::msrs::MAX_BANKS) as u32 * 4;
    let mce = (0..40u32).map(|i| {
        if i < banks {
            msr(s, extra, MSR_MC0_CTL + i, 0)
        } else {
            0
        }
    });
    let mut hflags2 = HF2_GIF | HF2_VGIF;
    if s.events.nmi.masked != 0 {
        hflags2 |= HF2_NMI;
    }
    let gprs = [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ];
    let mut v = VmStateValue::new()
        .with("env.regs", uints(gprs))
        .with("env.eip", Value::Uint(r.rip))
        .with("env.eflags", Value::Uint(r.rflags))
        .with("env.hflags", Value::Uint(hflags(s)))
        .with("env.fpuc", Value::Uint(f.fcw.into()))
        .with("env.fpus_vmstate", Value::Uint(f.fsw.into()))
        .with("env.fptag_vmstate", Value::Uint(f.ftw.into()))
        .with("env.fpregs_format_vmstate", Value::Uint(0))
        .with("env.fpregs", Value::List(fpregs.collect()))
        .with(
            "env.segs",
            Value::List(
                [&sr.es, &sr.cs, &sr.ss, &sr.ds, &sr.fs, &sr.gs]
                    .map(seg)
                    .to_vec(),
            ),
        )
        .with("env.ldt", seg(&sr.ldt))
        .with("env.tr", seg(&sr.tr))
        .with("env.gdt", dtable(&sr.gdt))
        .with("env.idt", dtable(&sr.idt))
        .with("env.sysenter_cs", m(0x174, 0))
        .with("env.sysenter_esp", m(0x175, 0))
        .with("env.sysenter_eip", m(0x176, 0))
        .with("env.cr[0]", Value::Uint(sr.cr0))
        .with("env.cr[2]", Value::Uint(sr.cr2))
        .with("env.cr[3]", Value::Uint(sr.cr3))
        .with("env.cr[4]", Value::Uint(sr.cr4));
    let d = &s.debugregs;
    v = v
        .with(
            "env.dr",
            uints([
                d.db[0], d.db[1], d.db[2], d.db[3], d.dr6, d.dr7, d.dr6, d.dr7,
            ]),
        )
        .with("env.a20_mask", Value::Int(-1))
        .with("env.mxcsr", Value::Uint(f.mxcsr.into()))
        .with("env.xmm_regs", zmm(&f.xmm, "_q_ZMMReg[0]", "_q_ZMMReg[1]"))
        .with("env.efer", Value::Uint(sr.efer))
        .with("env.star", m(0xc000_0081, 0))
        .with("env.lstar", m(0xc000_0082, 0))
        .with("env.cstar", m(0xc000_0083, 0))
        .with("env.fmask", m(0xc000_0084, 0))
        .with("env.kernelgsbase", m(0xc000_0102, 0))
        .with("env.smbase", m(0x9e, 0x30000))
        .with("env.pat", m(0x277, 0x0007_0406_0007_0406))
        .with("env.hflags2", Value::Uint(hflags2));
    for z in [
        "env.vm_hsave",
        "env.vm_vmcb",
        "env.tsc_offset",
        "env.intercept",
    ] {
        v.push(z, Value::Uint(0));
    }
    for z in [
        "env.intercept_cr_read",
        "env.intercept_cr_write",
        "env.intercept_dr_read",
        "env.intercept_dr_write",
        "env.intercept_exceptions",
        "env.v_tpr",
    ] {
        v.push(z, Value::Uint(0));
    }
    v = v
        .with(
            "env.mtrr_fixed",
            uints(MTRR_FIXED.map(|i| msr(s, extra, i, 0))),
        )
        .with("env.mtrr_deftype", m(0x2ff, 0))
        .with("env.mtrr_var", Value::List(mtrr_var.collect()))
        .with("env.interrupt_injected", Value::Int(int))
        .with("env.mp_state", Value::Uint(s.mp_state.into()))
        .with("env.tsc", m(MSR_TSC, 0))
        .with("env.exception_nr", Value::Int(exc))
        .with(
            "env.soft_interrupt",
            Value::Uint(s.events.interrupt.soft.into()),
        )
        .with(
            "env.nmi_injected",
            Value::Uint(s.events.nmi.injected.into()),
        )
        .with("env.nmi_pending", Value::Uint(s.events.nmi.pending.into()))
        .with(
            "env.has_error_code",
            Value::Uint(s.events.exception.has_error_code.into()),
        )
        .with("env.sipi_vector", Value::Uint(s.events.sipi_vector.into()))
        .with("env.mcg_cap", Value::Uint(x.mcg_cap))
        .with("env.mcg_status", m(0x17a, 0))
        .with("env.mcg_ctl", m(0x17b, 0))
        .with("env.mce_banks", uints(mce))
        .with("env.tsc_aux", m(0xc000_0103, 0))
        .with("env.system_time_msr", m(0x4b56_4d01, 0))
        .with("env.wall_clock_msr", m(0x4b56_4d00, 0))
        .with("env.xcr0", Value::Uint(s.xcrs.xcrs[0].value))
        .with("env.xstate_bv", Value::Uint(f.xstate_bv));
    // The second field named env.xmm_regs (the YMM upper halves).
    v.push("env.xmm_regs", zmm(&f.ymmh, "_q_ZMMReg[2]", "_q_ZMMReg[3]"));
    if f.fop != 0 || f.fip != 0 || f.fdp != 0 {
        v.set_subsection(
            "cpu/fpop_ip_dp",
            VmStateValue::new()
                .with("env.fpop", Value::Uint(f.fop.into()))
                .with("env.fpip", Value::Uint(f.fip))
                .with("env.fpdp", Value::Uint(f.fdp)),
        );
    }
    for (name, field, index, default) in [
        ("cpu/msr_tsc_adjust", "env.tsc_adjust", 0x3b, 0),
        ("cpu/msr_tscdeadline", "env.tsc_deadline", 0x6e0, 0),
        (
            "cpu/msr_ia32_misc_enable",
            "env.msr_ia32_misc_enable",
            0x1a0,
            MISC_ENABLE_DEFAULT,
        ),
        (
            "cpu/msr_ia32_feature_control",
            "env.msr_ia32_feature_control",
            0x3a,
            0,
        ),
        ("cpu/xss", "env.xss", 0xda0, 0),
    ] {
        let val = msr(s, extra, index, default);
        if val != default {
            v.set_subsection(name, VmStateValue::new().with(field, Value::Uint(val)));
        }
    }
    if x.tsc_khz != 0 {
        v.set_subsection(
            "cpu/tsc_khz",
            VmStateValue::new().with("env.tsc_khz", Value::Int(x.tsc_khz as i64)),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm::microvm::cpu::from_qemu;
    use kvm_bindings::kvm_segment;

    pub(super) fn sample() -> VcpuState {
        let seg = |sel: u16, flags: u32| {
            let mut k: kvm_segment =
                super::super::cpu::segment_from_qemu(sel, 0, 0xffff_ffff, flags);
            k.padding = 0;
            k
        };
        let mut s = VcpuState {
            index: 0,
            regs: Default::default(),
            sregs: Default::default(),
            fpu: Default::default(),
            xsave: vec![0; crate::kvm::state::cpu::XSAVE_BYTES],
            xcrs: Default::default(),
            msrs: Vec::new(),
            lapic: Default::default(),
            events: Default::default(),
            mp_state: 0,
            debugregs: Default::default(),
        };
        s.regs.rax = 1;
        s.regs.rcx = 2;
        s.regs.r15 = 15;
        s.regs.rip = 0x1009e7;
        s.regs.rflags = 0x246;
        s.sregs.cs = seg(8, 0x00a0_9b00);
        for d in [
            &mut s.sregs.ds,
            &mut s.sregs.es,
            &mut s.sregs.ss,
            &mut s.sregs.fs,
            &mut s.sregs.gs,
        ] {
            *d = seg(0x10, 0x00c0_9300);
        }
        s.sregs.tr = seg(0, 0x8b00);
        s.sregs.ldt = seg(0, 0x8200);
        s.sregs.gdt.base = 0x101000;
        s.sregs.gdt.limit = 0x17;
        s.sregs.idt.limit = 0xffff;
        s.sregs.cr0 = 0x8000_0011;
        s.sregs.cr3 = 0x102000;
        s.sregs.cr4 = 0x220;
        s.sregs.efer = 0x500;
        s.events.interrupt.shadow = 1;
        s.events.nmi.masked = 1;
        s.events.sipi_vector = 0;
        s.debugregs.dr6 = 0xffff_0ff0;
        s.debugregs.dr7 = 0x400;
        s.xcrs.nr_xcrs = 1;
        s.xcrs.xcrs[0].value = 7;
        let mut f = FpuRegs {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            xstate_bv: 7,
            fip: 9,
            ..Default::default()
        };
        f.xmm[1] = [3, 4];
        f.ymmh[2] = [5, 6];
        s.xsave = f.to_xsave(&s.xsave);
        s.fpu = f.to_kvm_fpu();
        s.msrs = vec![
            (MSR_TSC, 0x1234),
            (0x277, 0x0007_0406_0007_0406),
            (0x1a0, 1),
            (0x6e0, 99),
            (0x201, 0x800 | 0xf_f000_0000),
        ];
        s
    }

    #[test]
    fn cpu_state_round_trips_kvm_qemu_kvm() {
        let s = sample();
        let x = CpuExtras {
            mcg_cap: 0x100_010a,
            tsc_khz: 2_000_000,
        };
        let banks: Vec<(u32, u64)> = (0..40)
            .map(|i| (MSR_MC0_CTL + i, if i % 4 == 0 { u64::MAX } else { 0 }))
            .collect();
        let v = to_qemu(&s, x, &banks, 40);
        assert_eq!(
            v.get_u64("env.hflags").unwrap() & 0xc0b8,
            0xc0b8,
            "CS64 LMA PE SS32 CS32 INHIBIT"
        );
        assert!(v.subsection("cpu/msr_tscdeadline").is_some());
        assert!(
            v.subsection("cpu/msr_ia32_misc_enable").is_none(),
            "default value, not sent"
        );
        assert!(v.subsection("cpu/fpop_ip_dp").is_some());
        // QEMU's mask keeps the bits above the physical width: set here, cut again on load.
        let mtrr = crate::kvm::microvm::fields::struct_list(&v, "env.mtrr_var", 0, 8).unwrap();
        assert_eq!(
            mtrr[0].get_u64("mask").unwrap(),
            0x800 | 0xf_ff00_0000_0000 | 0xf_f000_0000
        );
        let (back, bx) = from_qemu(&v, &s, 40).unwrap();
        assert_eq!(bx, x);
        assert_eq!(back.regs, s.regs);
        assert_eq!(back.sregs.cs, s.sregs.cs);
        assert_eq!(back.sregs.cr4, s.sregs.cr4);
        assert_eq!(back.events.interrupt.shadow, 1);
        assert_eq!(back.events.nmi.masked, 1);
        assert_eq!(back.xsave[..1024], s.xsave[..1024]);
        assert_eq!(back.xcrs.xcrs[0].value, 7);
        for m in [
            (MSR_TSC, 0x1234),
            (0x6e0, 99),
            (0x201, 0x800 | 0xf_f000_0000),
            (0x400, u64::MAX),
            (0x427, 0),
        ] {
            assert!(back.msrs.contains(&m), "{m:x?} in {:x?}", back.msrs);
        }
    }
}

#[cfg(test)]
mod hostile {
    //! A peer's `cpu` section with values KVM would refuse or misread: each is a load error
    //! naming the field, never a panic.
    use super::tests_support::{sample_state, EXTRAS};
    use super::*;
    use crate::kvm::microvm::cpu::from_qemu;

    fn load(v: &VmStateValue) -> Result<(), String> {
        let base = sample_state();
        let (s, _) = from_qemu(v, &base, 40)?;
        crate::kvm::microvm::check_vcpu(&s)
    }

    #[test]
    fn hostile_cpu_sections_are_refused() {
        let good = to_qemu(&sample_state(), EXTRAS, &[], 40);
        load(&good).unwrap();
        let cases: Vec<(&str, Value)> = vec![
            ("env.interrupt_injected", Value::Int(300)),
            ("env.exception_nr", Value::Int(2)),
            ("env.exception_nr", Value::Int(1 << 40)),
            ("env.mp_state", Value::Uint(77)),
            ("env.hflags", Value::Uint(1 << 19)),
            ("env.vm_vmcb", Value::Uint(0x1000)),
            ("env.fpregs_format_vmstate", Value::Uint(1)),
            ("env.mxcsr", Value::Uint(0xdead_0000)),
            ("env.regs", uints([1, 2, 3])),
            ("env.segs", Value::List(vec![])),
            ("env.nmi_pending", Value::Uint(300)),
            ("env.sipi_vector", Value::Uint(1 << 33)),
            ("env.mcg_cap", Value::Uint(0x1ff)),
            ("env.cr[0]", Value::Uint(1 << 40)),
            ("env.efer", Value::Bytes(vec![1])),
        ];
        for (field, bad) in cases {
            let mut v = good.clone();
            v.set(field, bad.clone());
            assert!(load(&v).is_err(), "{field} = {bad:?} accepted");
        }
        let mut v = good.clone();
        v.fields.retain(|(n, _)| n != "env.eip");
        assert!(load(&v).unwrap_err().contains("env.eip"));
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;

    pub(super) const EXTRAS: CpuExtras = CpuExtras {
        mcg_cap: 0x100_010a,
        tsc_khz: 2_000_000,
    };

    /// A 64-bit vCPU as the payload runs it.
    pub(super) fn sample_state() -> VcpuState {
        super::tests::sample()
    }
}
