//! The VMState descriptions of the sections QEMU 7.2's `microvm` machine sends with
//! `-M microvm,x-option-roms=off,rtc=off,acpi=off,isa-serial=on -accel kvm`, field for field
//! as its vmdescription lists them (names, wire types, array lengths, struct versions), so
//! livemig reads QEMU's bodies byte for byte. Only the section version QEMU 7.2 sends is
//! accepted (`minimum_version` = `version`): older layouts differ and are not modelled.
//!
//! ```text
//! cpu_common v1   be32 halted  be32 interrupt_request
//! cpu v12         see `cpu()` (≈1.8 KB: GPRs, FPU/SSE/AVX regs, segments, CRs, DRs, MSR
//!                 images, MTRRs, events, MCE banks, XCR0) + subsections cpu/...
//! kvm-tpr-opt v1  the kvmvapic ROM patching state (124-byte struct + 5 be32)
//! apic v3         APIC registers (be32/u8 fields, ISR/TMR/IRR as 8 be32 each)
//! ioapic v3       u8 id  u8 ioregsel  8 unused  be32 irr  be64 ioredtbl[24]
//! kvmclock v1     be64 clock  [kvmclock/clock_is_reliable: bool]
//! i8259 v1        16 u8 registers (instance 0 = master, 1 = slave)
//! i8254 v3        be32 irq_disabled  3 × 32-byte channel  be64 next_transition_time
//! serial v3       struct serial v3 (be16 divider + 9 u8) + subsections serial/...
//! fw_cfg v2       be16 cur_entry  be32 cur_offset  [fw_cfg/dma: be64 dma_addr]
//! ```

use std::sync::Arc;

use savevm::vmstate::{FieldKind, VmStateDescription};

fn arr(elem: FieldKind, len: usize) -> FieldKind {
    FieldKind::Array {
        elem: Box::new(elem),
        len,
    }
}

fn st(d: VmStateDescription) -> FieldKind {
    FieldKind::Struct(Arc::new(d))
}

/// Only the version QEMU 7.2 sends.
fn exact(name: &str, version: u32) -> VmStateDescription {
    VmStateDescription::new(name, version).minimum_version(version)
}

fn segment() -> FieldKind {
    st(exact("segment", 1)
        .field("selector", FieldKind::U32)
        .field("base", FieldKind::U64)
        .field("limit", FieldKind::U32)
        .field("flags", FieldKind::U32))
}

fn sub64(name: &str, field: &str) -> VmStateDescription {
    exact(name, 1).field(field, FieldKind::U64)
}

/// Section `cpu` v12 (target/i386/machine.c `vmstate_x86_cpu`, x86_64, KVM) and the
/// subsections livemig models; any other subsection is refused by the loader, naming it.
pub fn cpu() -> VmStateDescription {
    let fpreg = st(exact("fpreg", 0).field(
        "tmp",
        FieldKind::Tmp(Arc::new(
            exact("fpreg_tmp", 0)
                .field("tmp_mant", FieldKind::U64)
                .field("tmp_exp", FieldKind::U16),
        )),
    ));
    let xmm = st(exact("xmm_reg", 1)
        .field("_q_ZMMReg[0]", FieldKind::U64)
        .field("_q_ZMMReg[1]", FieldKind::U64));
    let ymmh = st(exact("ymmh_reg", 1)
        .field("_q_ZMMReg[2]", FieldKind::U64)
        .field("_q_ZMMReg[3]", FieldKind::U64));
    let mtrr = st(exact("mtrr_var", 1)
        .field("base", FieldKind::U64)
        .field("mask", FieldKind::U64));
    let mut d = exact("cpu", 12)
        .field("env.regs", arr(FieldKind::U64, 16))
        .field("env.eip", FieldKind::U64)
        .field("env.eflags", FieldKind::U64)
        .field("env.hflags", FieldKind::U32)
        .field("env.fpuc", FieldKind::U16)
        .field("env.fpus_vmstate", FieldKind::U16)
        .field("env.fptag_vmstate", FieldKind::U16)
        .field("env.fpregs_format_vmstate", FieldKind::U16)
        .field("env.fpregs", arr(fpreg, 8))
        .field("env.segs", arr(segment(), 6));
    for s in ["env.ldt", "env.tr", "env.gdt", "env.idt"] {
        d = d.field(s, segment());
    }
    d = d
        .field("env.sysenter_cs", FieldKind::U32)
        .field("env.sysenter_esp", FieldKind::U64)
        .field("env.sysenter_eip", FieldKind::U64);
    for cr in ["env.cr[0]", "env.cr[2]", "env.cr[3]", "env.cr[4]"] {
        d = d.field(cr, FieldKind::U64);
    }
    d = d
        .field("env.dr", arr(FieldKind::U64, 8))
        .field("env.a20_mask", FieldKind::I32)
        .field("env.mxcsr", FieldKind::U32)
        .field("env.xmm_regs", arr(xmm, 16));
    for m in [
        "env.efer",
        "env.star",
        "env.lstar",
        "env.cstar",
        "env.fmask",
        "env.kernelgsbase",
    ] {
        d = d.field(m, FieldKind::U64);
    }
    d = d
        .field("env.smbase", FieldKind::U32)
        .field("env.pat", FieldKind::U64)
        .field("env.hflags2", FieldKind::U32)
        .field("env.vm_hsave", FieldKind::U64)
        .field("env.vm_vmcb", FieldKind::U64)
        .field("env.tsc_offset", FieldKind::U64)
        .field("env.intercept", FieldKind::U64)
        .field("env.intercept_cr_read", FieldKind::U16)
        .field("env.intercept_cr_write", FieldKind::U16)
        .field("env.intercept_dr_read", FieldKind::U16)
        .field("env.intercept_dr_write", FieldKind::U16)
        .field("env.intercept_exceptions", FieldKind::U32)
        .field("env.v_tpr", FieldKind::U8)
        .field("env.mtrr_fixed", arr(FieldKind::U64, 11))
        .field("env.mtrr_deftype", FieldKind::U64)
        .field("env.mtrr_var", arr(mtrr, 8))
        .field("env.interrupt_injected", FieldKind::I32)
        .field("env.mp_state", FieldKind::U32)
        .field("env.tsc", FieldKind::U64)
        .field("env.exception_nr", FieldKind::I32)
        .field("env.soft_interrupt", FieldKind::U8)
        .field("env.nmi_injected", FieldKind::U8)
        .field("env.nmi_pending", FieldKind::U8)
        .field("env.has_error_code", FieldKind::U8)
        .field("env.sipi_vector", FieldKind::U32)
        .field("env.mcg_cap", FieldKind::U64)
        .field("env.mcg_status", FieldKind::U64)
        .field("env.mcg_ctl", FieldKind::U64)
        .field("env.mce_banks", arr(FieldKind::U64, 40))
        .field("env.tsc_aux", FieldKind::U64)
        .field("env.system_time_msr", FieldKind::U64)
        .field("env.wall_clock_msr", FieldKind::U64)
        .field("env.xcr0", FieldKind::U64)
        .field("env.xstate_bv", FieldKind::U64)
        .field("env.xmm_regs", arr(ymmh, 16));
    d.subsection(
        exact("cpu/fpop_ip_dp", 1)
            .field("env.fpop", FieldKind::U16)
            .field("env.fpip", FieldKind::U64)
            .field("env.fpdp", FieldKind::U64),
    )
    .subsection(sub64("cpu/msr_tsc_adjust", "env.tsc_adjust"))
    .subsection(sub64("cpu/msr_tscdeadline", "env.tsc_deadline"))
    .subsection(sub64(
        "cpu/msr_ia32_misc_enable",
        "env.msr_ia32_misc_enable",
    ))
    .subsection(sub64(
        "cpu/msr_ia32_feature_control",
        "env.msr_ia32_feature_control",
    ))
    .subsection(sub64("cpu/xss", "env.xss"))
    .subsection(exact("cpu/pkru", 1).field("env.pkru", FieldKind::U32))
    .subsection(exact("cpu/tsc_khz", 1).field("env.tsc_khz", FieldKind::I64))
}

/// Section `cpu_common` v1.
pub fn cpu_common() -> VmStateDescription {
    exact("cpu_common", 1)
        .field("halted", FieldKind::U32)
        .field("interrupt_request", FieldKind::U32)
}

/// The be32 fields of `kvm-tpr-opt`'s `rom_state` struct after its 8 unused bytes.
pub const TPR_ROM_FIELDS: [&str; 7] = [
    "vaddr",
    "fixup_start",
    "fixup_end",
    "vapic_vaddr",
    "vapic_size",
    "vcpu_shift",
    "real_tpr_addr",
];

/// The be32 fields of `kvm-tpr-opt` after `rom_state`.
pub const TPR_FIELDS: [&str; 5] = [
    "state",
    "real_tpr_addr",
    "rom_state_vaddr",
    "vapic_paddr",
    "rom_state_paddr",
];

/// Section `kvm-tpr-opt` v1 (hw/i386/kvmvapic.c).
pub fn tpr_opt() -> VmStateDescription {
    let handlers = st(exact("kvmvapic-handlers", 1)
        .field("set_tpr", FieldKind::U32)
        .field("set_tpr_eax", FieldKind::U32)
        .field("get_tpr", arr(FieldKind::U32, 8))
        .field("get_tpr_stack", FieldKind::U32));
    let mut rom = exact("kvmvapic-guest-rom", 1).field("unused", FieldKind::Unused(8));
    for f in TPR_ROM_FIELDS {
        rom = rom.field(f, FieldKind::U32);
    }
    let rom = rom.field("up", handlers.clone()).field("mp", handlers);
    let mut d = exact("kvm-tpr-opt", 1).field("rom_state", st(rom));
    for f in TPR_FIELDS {
        d = d.field(f, FieldKind::U32);
    }
    d
}

/// Section `apic` v3 (hw/intc/apic_common.c) and its `apic/sipi` subsection.
pub fn apic() -> VmStateDescription {
    exact("apic", 3)
        .field("apicbase", FieldKind::U32)
        .field("id", FieldKind::U8)
        .field("arb_id", FieldKind::U8)
        .field("tpr", FieldKind::U8)
        .field("spurious_vec", FieldKind::U32)
        .field("log_dest", FieldKind::U8)
        .field("dest_mode", FieldKind::U8)
        .field("isr", arr(FieldKind::U32, 8))
        .field("tmr", arr(FieldKind::U32, 8))
        .field("irr", arr(FieldKind::U32, 8))
        .field("lvt", arr(FieldKind::U32, 6))
        .field("esr", FieldKind::U32)
        .field("icr", arr(FieldKind::U32, 2))
        .field("divide_conf", FieldKind::U32)
        .field("count_shift", FieldKind::I32)
        .field("initial_count", FieldKind::U32)
        .field("initial_count_load_time", FieldKind::I64)
        .field("next_time", FieldKind::I64)
        .field("timer_expiry", FieldKind::I64)
        .subsection(
            exact("apic/sipi", 1)
                .field("sipi_vector", FieldKind::I32)
                .field("wait_for_sipi", FieldKind::U32),
        )
}

/// Section `ioapic` v3 (hw/intc/ioapic_common.c).
pub fn ioapic() -> VmStateDescription {
    exact("ioapic", 3)
        .field("id", FieldKind::U8)
        .field("ioregsel", FieldKind::U8)
        .field("unused", FieldKind::Unused(8))
        .field("irr", FieldKind::U32)
        .field("ioredtbl", arr(FieldKind::U64, 24))
}

/// Section `kvmclock` v1 (hw/i386/kvm/clock.c) with `kvmclock/clock_is_reliable`.
pub fn kvmclock() -> VmStateDescription {
    exact("kvmclock", 1)
        .field("clock", FieldKind::U64)
        .subsection(
            exact("kvmclock/clock_is_reliable", 1).field("clock_is_reliable", FieldKind::Bool),
        )
}

/// The 16 registers of section `i8259` v1 (hw/intc/i8259_common.c), in wire order.
pub const PIC_FIELDS: [&str; 16] = [
    "last_irr",
    "irr",
    "imr",
    "isr",
    "priority_add",
    "irq_base",
    "read_reg_select",
    "poll",
    "special_mask",
    "init_state",
    "auto_eoi",
    "rotate_on_auto_eoi",
    "special_fully_nested_mode",
    "init4",
    "single_mode",
    "elcr",
];

/// Section `i8259` v1.
pub fn i8259() -> VmStateDescription {
    PIC_FIELDS
        .iter()
        .fold(exact("i8259", 1), |d, f| d.field(*f, FieldKind::U8))
}

/// The byte fields of one PIT channel, between `latched_count` and `count_load_time`.
pub const PIT_CHANNEL_BYTES: [&str; 10] = [
    "count_latched",
    "status_latched",
    "status",
    "read_state",
    "write_state",
    "write_latch",
    "rw_mode",
    "mode",
    "bcd",
    "gate",
];

/// Section `i8254` v3 (hw/timer/i8254_common.c).
pub fn i8254() -> VmStateDescription {
    let mut ch = exact("pit channel", 2)
        .field("count", FieldKind::I32)
        .field("latched_count", FieldKind::U16);
    for f in PIT_CHANNEL_BYTES {
        ch = ch.field(f, FieldKind::U8);
    }
    let ch = ch
        .field("count_load_time", FieldKind::I64)
        .field("next_transition_time", FieldKind::I64);
    exact("i8254", 3)
        .field("channels[0].irq_disabled", FieldKind::U32)
        .field("channels", arr(st(ch), 3))
        .field("channels[0].next_transition_time", FieldKind::I64)
}

/// The byte registers of QEMU's 16550 state after `divider`, in wire order.
pub const SERIAL_BYTES: [&str; 9] = [
    "rbr",
    "ier",
    "iir",
    "lcr",
    "mcr",
    "lsr",
    "msr",
    "scr",
    "fcr_vmstate",
];

/// Section `serial` v3 (hw/char/serial-isa.c wrapping hw/char/serial.c `vmstate_serial`);
/// none of the 16550's subsections (FIFOs, timers, THR interrupt) is modelled: a stream
/// carrying one is refused.
pub fn serial() -> VmStateDescription {
    let mut inner = exact("serial", 3).field("divider", FieldKind::U16);
    for f in SERIAL_BYTES {
        inner = inner.field(f, FieldKind::U8);
    }
    exact("serial", 3).field("state", st(inner))
}

/// Section `fw_cfg` v2 (hw/nvram/fw_cfg.c, I/O-port variant) with `fw_cfg/dma`. QEMU's
/// description has a second, version-1-only `cur_offset` (not on the wire at v2), so its
/// JSON names the v2 field `cur_offset[1]`; livemig names it so to describe it identically.
pub fn fw_cfg() -> VmStateDescription {
    exact("fw_cfg", 2)
        .field("cur_entry", FieldKind::U16)
        .field("cur_offset[1]", FieldKind::U32)
        .subsection(exact("fw_cfg/dma", 0).field("dma_addr", FieldKind::U64))
}
