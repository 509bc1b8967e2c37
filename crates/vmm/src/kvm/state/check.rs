//! Validation of loaded KVM state, before the destination reports success.
//!
//! The sections are applied with KVM ioctls only when the destination starts its vCPUs, after
//! the source was told the migration completed. A value KVM refuses then (or silently
//! misreads) loses the guest, so every field that is an enum, a length, an index or a flag set
//! is checked here at load time, against what KVM would do with it:
//!
//! | state | field | KVM's handling | accepted here |
//! | --- | --- | --- | --- |
//! | mp_state | `mp_state` | `KVM_SET_MP_STATE` on x86 refuses all but these | 0–4, 9 |
//! | events | `events_flags` | `KVM_SET_VCPU_EVENTS` refuses unknown flags; PAYLOAD and TRIPLE_FAULT need capabilities this VMM does not enable | NMI_PENDING, SIPI_VECTOR, SHADOW, SMM |
//! | events | `exc_nr` when injected/pending | refused above 31 and for NMI (2) | 0–31 except 2 |
//! | events | SMM with mp_state INIT_RECEIVED | refused (INITs are latched in SMM) | refused |
//! | events | booleans, `int_shadow`, `sipi_vector` | stored as booleans, a 2-bit mask, a vector | 0–1, 0–3, 0–255 |
//! | sregs | segment `type`, `dpl`, flag bits | masked to 4, 2, 1 bits (misread) | in range |
//! | sregs | CR0, CR4 bits 63:32; CR0 NW without CD, PG without PE; EFER LME/LMA/CS.L vs paging; CR8 | `KVM_SET_SREGS` refuses | consistent |
//! | sregs | `apic_base` reserved bits, x2APIC without enable | refused | — |
//! | debugregs | `flags`, DR6/DR7 bits 63:32 | `KVM_SET_DEBUGREGS` refuses | 0 |
//! | xcrs | index, XCR0 value | only XCR0 is set; invalid feature combinations refused | XCR0 once, FP set, AVX⇒SSE, MPX pair, AVX-512 triple⇒AVX, AMX pair |
//! | xsave | `xcomp_bv`, header reserved bytes, `xstate_bv`, MXCSR | `KVM_SET_XSAVE` refuses compacted format, reserved bits, unknown features | uncompacted, 0, features that fit the 4 KiB area |
//! | msrs | duplicate indices | each applied in turn | unique |
//! | PIC | `priority_add`, `irq_base`, `init_state`, flag bytes, `elcr_mask`, `elcr` | copied as is; the 8259 model then indexes and switches on them | 0–7, multiple of 8, 0–3, 0–1, KVM's mask, within the mask |
//! | IOAPIC | `base_address`, `id`, `ioregsel`, `irr` | copied; a moved base hides the IOAPIC from the guest | 0xfec00000, 0–15, 0–255, 24 pins |
//! | PIT | channel `mode`, `rw_mode`, `read_state`, `write_state`, `count_latched`, flag bytes, `count`; `flags` | copied; the PIT model switches on the modes | 0–5 or 0xff (reset), 0–3, 0–4, 0–4, 0–3, 0–1, ≤ 65536; HPET_LEGACY, SPEAKER_DATA_ON |
//!
//! Host-dependent limits (CR4 and XCR0 bits the host CPU lacks, MSR values) are left to the
//! destination's MSR list (see `devices`) and to KVM.

use kvm_bindings::{
    kvm_debugregs, kvm_pit_state2, kvm_segment, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    KVM_MP_STATE_AP_RESET_HOLD, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_SIPI_RECEIVED, KVM_MP_STATE_UNINITIALIZED,
    KVM_PIT_FLAGS_HPET_LEGACY, KVM_PIT_FLAGS_SPEAKER_DATA_ON, KVM_VCPUEVENT_VALID_NMI_PENDING,
    KVM_VCPUEVENT_VALID_SHADOW, KVM_VCPUEVENT_VALID_SIPI_VECTOR, KVM_VCPUEVENT_VALID_SMM,
};

/// The error text for `field` holding `value`, with what is accepted.
pub(crate) fn invalid(field: &str, value: impl std::fmt::LowerHex, accepted: &str) -> String {
    format!("invalid value {value:#x} for {field} (accepted: {accepted})")
}

fn at_most(field: &str, value: u64, max: u64) -> Result<(), String> {
    if value > max {
        return Err(invalid(field, value, &format!("0 to {max}")));
    }
    Ok(())
}

fn flag(field: &str, value: u8) -> Result<(), String> {
    at_most(field, value.into(), 1)
}

/// MP states `KVM_SET_MP_STATE` accepts on x86 with an in-kernel LAPIC.
const MP_STATES: [u32; 6] = [
    KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_UNINITIALIZED,
    KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_HALTED,
    KVM_MP_STATE_SIPI_RECEIVED,
    KVM_MP_STATE_AP_RESET_HOLD,
];

/// `mp_state`.
pub(crate) fn mp_state(v: u32) -> Result<(), String> {
    if !MP_STATES.contains(&v) {
        return Err(invalid("mp_state", v, "0 to 4 and 9, the x86 MP states"));
    }
    Ok(())
}

const EVENT_FLAGS: u32 = KVM_VCPUEVENT_VALID_NMI_PENDING
    | KVM_VCPUEVENT_VALID_SIPI_VECTOR
    | KVM_VCPUEVENT_VALID_SHADOW
    | KVM_VCPUEVENT_VALID_SMM;
const NMI_VECTOR: u8 = 2;

/// `kvm_vcpu_events`, for a vCPU in `mp_state`.
pub(crate) fn events(e: &kvm_vcpu_events, mp_state: u32) -> Result<(), String> {
    if e.flags & !EVENT_FLAGS != 0 {
        return Err(invalid(
            "events_flags",
            e.flags,
            "NMI_PENDING | SIPI_VECTOR | SHADOW | SMM (0xf)",
        ));
    }
    let x = &e.exception;
    for (n, b) in [
        ("exc_injected", x.injected),
        ("exc_has_error_code", x.has_error_code),
        ("exc_pending", x.pending),
        ("int_injected", e.interrupt.injected),
        ("int_soft", e.interrupt.soft),
        ("nmi_injected", e.nmi.injected),
        ("nmi_pending", e.nmi.pending),
        ("nmi_masked", e.nmi.masked),
        ("smi_smm", e.smi.smm),
        ("smi_pending", e.smi.pending),
        ("smi_inside_nmi", e.smi.smm_inside_nmi),
        ("smi_latched_init", e.smi.latched_init),
        ("triple_fault_pending", e.triple_fault.pending),
        ("exc_has_payload", e.exception_has_payload),
    ] {
        flag(n, b)?;
    }
    // KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI.
    at_most("int_shadow", e.interrupt.shadow.into(), 3)?;
    at_most("sipi_vector", e.sipi_vector.into(), 0xff)?;
    if (x.injected != 0 || x.pending != 0) && (x.nr > 31 || x.nr == NMI_VECTOR) {
        return Err(invalid(
            "exc_nr",
            x.nr,
            "an exception vector 0 to 31 other than NMI (2)",
        ));
    }
    if e.flags & KVM_VCPUEVENT_VALID_SMM != 0
        && (e.smi.smm != 0 || e.smi.pending != 0)
        && mp_state == KVM_MP_STATE_INIT_RECEIVED
    {
        return Err("invalid vCPU events: SMM together with mp_state INIT_RECEIVED".into());
    }
    Ok(())
}

fn segment(name: &str, s: &kvm_segment) -> Result<(), String> {
    at_most(&format!("{name}.type"), s.type_.into(), 15)?;
    at_most(&format!("{name}.dpl"), s.dpl.into(), 3)?;
    for (n, b) in [
        ("present", s.present),
        ("db", s.db),
        ("s", s.s),
        ("l", s.l),
        ("g", s.g),
        ("avl", s.avl),
        ("unusable", s.unusable),
    ] {
        flag(&format!("{name}.{n}"), b)?;
    }
    Ok(())
}

const CR0_PE: u64 = 1;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const HIGH32: u64 = 0xffff_ffff_0000_0000;
/// Bits above the largest physical address width x86 defines (52).
const ABOVE_MAXPHYADDR: u64 = 0xfff0_0000_0000_0000;
/// IA32_APIC_BASE: bits 0–7 and 9 are reserved; bit 10 x2APIC mode, bit 11 enable.
const APIC_BASE_RESERVED: u64 = 0x2ff;
const APIC_X2APIC: u64 = 1 << 10;
const APIC_ENABLE: u64 = 1 << 11;

/// `kvm_sregs`: what `KVM_SET_SREGS` refuses, and segment fields it would mask.
pub(crate) fn sregs(s: &kvm_sregs) -> Result<(), String> {
    for (n, seg) in [
        ("cs", &s.cs),
        ("ds", &s.ds),
        ("es", &s.es),
        ("fs", &s.fs),
        ("gs", &s.gs),
        ("ss", &s.ss),
        ("tr", &s.tr),
        ("ldt", &s.ldt),
    ] {
        segment(n, seg)?;
    }
    if s.cr0 & HIGH32 != 0 {
        return Err(invalid("cr0", s.cr0, "bits 63:32 clear"));
    }
    if s.cr0 & CR0_NW != 0 && s.cr0 & CR0_CD == 0 {
        return Err(invalid("cr0", s.cr0, "NW only with CD"));
    }
    if s.cr0 & CR0_PG != 0 && s.cr0 & CR0_PE == 0 {
        return Err(invalid("cr0", s.cr0, "PG only with PE"));
    }
    if s.cr4 & HIGH32 != 0 {
        return Err(invalid("cr4", s.cr4, "bits 63:32 clear"));
    }
    at_most("cr8", s.cr8, 15)?;
    if s.efer & EFER_LME != 0 && s.cr0 & CR0_PG != 0 {
        if s.cr4 & CR4_PAE == 0 || s.efer & EFER_LMA == 0 {
            return Err(invalid(
                "efer",
                s.efer,
                "long mode paging (LME and CR0.PG) with CR4.PAE and EFER.LMA",
            ));
        }
        if s.cr3 & ABOVE_MAXPHYADDR != 0 {
            return Err(invalid("cr3", s.cr3, "a physical address below 2^52"));
        }
    } else if s.efer & EFER_LMA != 0 {
        return Err(invalid("efer", s.efer, "LMA only with LME and CR0.PG"));
    } else if s.cs.l != 0 {
        return Err(invalid("cs.l", s.cs.l, "0 outside long mode"));
    }
    let b = s.apic_base;
    if b & (APIC_BASE_RESERVED | ABOVE_MAXPHYADDR) != 0
        || (b & APIC_X2APIC != 0 && b & APIC_ENABLE == 0)
    {
        return Err(invalid(
            "apic_base",
            b,
            "reserved bits clear, x2APIC mode only when enabled",
        ));
    }
    Ok(())
}

/// `kvm_debugregs`: `KVM_SET_DEBUGREGS` refuses flags and DR6/DR7 high bits.
pub(crate) fn debugregs(d: &kvm_debugregs) -> Result<(), String> {
    if d.flags != 0 {
        return Err(invalid("debugregs_flags", d.flags, "0"));
    }
    if d.dr6 & HIGH32 != 0 {
        return Err(invalid("dr6", d.dr6, "bits 63:32 clear"));
    }
    if d.dr7 & HIGH32 != 0 {
        return Err(invalid("dr7", d.dr7, "bits 63:32 clear"));
    }
    Ok(())
}

/// XCR0 feature bits the XSAVE instructions define for user state (x87, SSE, AVX, MPX,
/// AVX-512, PKRU, AMX).
const XCR0_USER: u64 = 0xff | 1 << 9 | 1 << 17 | 1 << 18;
/// Of those, the ones whose state fits the legacy 4 KiB XSAVE area (all but AMX).
const XSAVE_4K_FEATURES: u64 = 0xff | 1 << 9;
const XFEATURE_SSE_AVX: u64 = 0b111;

/// `kvm_xcrs`: only XCR0 exists, once, with a feature combination `XSETBV` accepts.
pub(crate) fn xcrs(x: &kvm_xcrs) -> Result<(), String> {
    let list = &x.xcrs[..(x.nr_xcrs as usize).min(x.xcrs.len())];
    if list.len() > 1 {
        return Err(invalid("xcr_count", list.len(), "0 or 1 (XCR0 only)"));
    }
    let Some(xcr) = list.first() else {
        return Ok(());
    };
    if xcr.xcr != 0 {
        return Err(invalid("xcr_index", xcr.xcr, "0 (XCR0 only)"));
    }
    let v = xcr.value;
    let pair = |m: u64| v & m == 0 || v & m == m;
    let avx = v & 0b100 != 0;
    let avx512 = v & 0xe0;
    if v & !XCR0_USER != 0
        || v & 1 == 0
        || (avx && v & 0b10 == 0)
        || !pair(0x18)
        || !pair(0xe0)
        || (avx512 != 0 && !avx)
        || !pair(3 << 17)
    {
        return Err(invalid(
            "xcr_value",
            v,
            "x87 set, AVX with SSE, MPX and AVX-512 and AMX feature groups whole",
        ));
    }
    Ok(())
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | u64::from(le32(b, at + 4)) << 32
}

/// MXCSR bits 31:16 are reserved on every CPU.
const MXCSR_RESERVED: u32 = 0xffff_0000;

/// `kvm_fpu.mxcsr`.
pub(crate) fn fpu_mxcsr(mxcsr: u32) -> Result<(), String> {
    if mxcsr & MXCSR_RESERVED != 0 {
        return Err(invalid("fpu mxcsr", mxcsr, "bits 31:16 clear"));
    }
    Ok(())
}

/// The legacy 4 KiB XSAVE area (its length is checked by the caller): MXCSR at byte 24, the
/// XSAVE header at 512 (`xstate_bv`, `xcomp_bv`, 48 reserved bytes), as `KVM_SET_XSAVE`
/// checks them.
pub(crate) fn xsave(b: &[u8]) -> Result<(), String> {
    let xstate_bv = le64(b, 512);
    let xcomp_bv = le64(b, 520);
    if xcomp_bv != 0 {
        return Err(invalid("xsave xcomp_bv", xcomp_bv, "0 (standard format)"));
    }
    if b[528..576].iter().any(|&x| x != 0) {
        return Err("invalid xsave header: reserved bytes 528..576 are not zero".into());
    }
    if xstate_bv & !XSAVE_4K_FEATURES != 0 {
        return Err(invalid(
            "xsave xstate_bv",
            xstate_bv,
            "user features held in 4 KiB (0x2ff)",
        ));
    }
    let mxcsr = le32(b, 24);
    if xstate_bv & XFEATURE_SSE_AVX != 0 && mxcsr & MXCSR_RESERVED != 0 {
        return Err(invalid("xsave mxcsr", mxcsr, "bits 31:16 clear"));
    }
    Ok(())
}

/// MSR indices are unique.
pub(crate) fn msrs_unique(msrs: &[(u32, u64)]) -> Result<(), String> {
    let mut idx: Vec<u32> = msrs.iter().map(|m| m.0).collect();
    idx.sort_unstable();
    if let Some(w) = idx.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("MSR {:#x} is listed twice", w[0]));
    }
    Ok(())
}

/// Offsets in `struct kvm_pic_state` (16 bytes at the start of the `chip` union).
mod pic {
    pub const PRIORITY_ADD: usize = 4;
    pub const IRQ_BASE: usize = 5;
    pub const FLAGS: [(usize, &str); 7] = [
        (6, "read_reg_select"),
        (7, "poll"),
        (8, "special_mask"),
        (10, "auto_eoi"),
        (11, "rotate_on_auto_eoi"),
        (12, "special_fully_nested_mode"),
        (13, "init4"),
    ];
    pub const INIT_STATE: usize = 9;
    pub const ELCR: usize = 14;
    pub const ELCR_MASK: usize = 15;
}

/// The edge/level control bits KVM lets the guest program on each PIC (IRQs 0–2 of the
/// master and 8 and 13 of the slave are always edge-triggered).
pub(crate) const PIC_ELCR_MASKS: [u8; 2] = [0xf8, 0xde];

/// One `kvm_pic_state` in the `chip` bytes of `name`, whose ELCR mask is `elcr_mask`.
pub(crate) fn pic(name: &str, b: &[u8], elcr_mask: u8) -> Result<(), String> {
    let f = |n: &str| format!("{name}.{n}");
    at_most(&f("priority_add"), b[pic::PRIORITY_ADD].into(), 7)?;
    if b[pic::IRQ_BASE] & 7 != 0 {
        return Err(invalid(&f("irq_base"), b[pic::IRQ_BASE], "a multiple of 8"));
    }
    for (at, n) in pic::FLAGS {
        flag(&f(n), b[at])?;
    }
    at_most(&f("init_state"), b[pic::INIT_STATE].into(), 3)?;
    if b[pic::ELCR_MASK] != elcr_mask {
        return Err(invalid(
            &f("elcr_mask"),
            b[pic::ELCR_MASK],
            &format!("{elcr_mask:#x}"),
        ));
    }
    if b[pic::ELCR] & !elcr_mask != 0 {
        return Err(invalid(
            &f("elcr"),
            b[pic::ELCR],
            &format!("bits of {elcr_mask:#x}"),
        ));
    }
    Ok(())
}

/// Where KVM's IOAPIC lives (`IOAPIC_DEFAULT_BASE_ADDRESS`).
pub(crate) const IOAPIC_BASE: u64 = 0xfec0_0000;
const IOAPIC_PINS: u32 = kvm_bindings::KVM_IOAPIC_NUM_PINS;

/// `struct kvm_ioapic_state` (little-endian, the KVM ABI): u64 base_address, u32 ioregsel, id,
/// irr, pad, then the 24 redirection entries.
pub(crate) fn ioapic(b: &[u8]) -> Result<(), String> {
    let base = le64(b, 0);
    if base != IOAPIC_BASE {
        return Err(invalid("ioapic.base_address", base, "0xfec00000"));
    }
    at_most("ioapic.ioregsel", le32(b, 8).into(), 0xff)?;
    at_most("ioapic.id", le32(b, 12).into(), 15)?;
    let irr = le32(b, 16);
    if irr >> IOAPIC_PINS != 0 {
        return Err(invalid("ioapic.irr", irr, "bits of the 24 pins"));
    }
    Ok(())
}

const PIT_FLAGS: u32 = KVM_PIT_FLAGS_HPET_LEGACY | KVM_PIT_FLAGS_SPEAKER_DATA_ON;
/// Mode of a PIT channel the guest never programmed (KVM's reset value).
const PIT_MODE_RESET: u8 = 0xff;

/// `kvm_pit_state2`.
pub(crate) fn pit(p: &kvm_pit_state2) -> Result<(), String> {
    if p.flags & !PIT_FLAGS != 0 {
        return Err(invalid(
            "pit.flags",
            p.flags,
            "HPET_LEGACY | SPEAKER_DATA_ON (0x3)",
        ));
    }
    for (i, c) in p.channels.iter().enumerate() {
        let f = |n: &str| format!("pit.channels[{i}].{n}");
        if c.mode > 5 && c.mode != PIT_MODE_RESET {
            return Err(invalid(
                &f("mode"),
                c.mode,
                "0 to 5, or 0xff before programming",
            ));
        }
        at_most(&f("count"), c.count.into(), 0x1_0000)?;
        at_most(&f("rw_mode"), c.rw_mode.into(), 3)?;
        at_most(&f("read_state"), c.read_state.into(), 4)?;
        at_most(&f("write_state"), c.write_state.into(), 4)?;
        at_most(&f("count_latched"), c.count_latched.into(), 3)?;
        flag(&f("status_latched"), c.status_latched)?;
        flag(&f("bcd"), c.bcd)?;
        flag(&f("gate"), c.gate)?;
    }
    Ok(())
}
