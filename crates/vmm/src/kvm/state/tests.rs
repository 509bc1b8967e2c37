//! Conformance of the KVM state sections without KVM: save → load → save gives identical
//! bytes, truncated input and out-of-range versions are errors, and loaded values are validated.

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events,
    kvm_xcrs,
};
use savevm::qemu_file::{memory_reader, memory_writer};
use savevm::vmstate::{self, Value, VmStateDescription, VmStateValue};

use super::cpu::{self, VcpuState, XSAVE_BYTES};
use super::vm::{VmSection, VmSectionState};

fn sample_vcpu(index: u32) -> VcpuState {
    let mut sregs = kvm_sregs {
        cr0: 0x8000_0011,
        cr4: 0x20,
        efer: 0x500,
        ..Default::default()
    };
    sregs.cs.selector = 8;
    sregs.cs.l = 1;
    let mut lapic = kvm_lapic_state::default();
    lapic.regs[0x20] = index as std::os::raw::c_char;
    VcpuState {
        index,
        regs: kvm_regs {
            rip: 0x10_0123,
            rsp: 0x10_8000,
            rflags: 2,
            rax: u64::MAX,
            ..Default::default()
        },
        sregs,
        fpu: kvm_fpu {
            fcw: 0x37f,
            ..Default::default()
        },
        // Recognisable bytes, with MXCSR at its reset value and an XSAVE header (bytes
        // 512..576) holding x87 + SSE in use.
        xsave: (0..XSAVE_BYTES)
            .map(|i| match i {
                24 => 0x80,
                25 => 0x1f,
                26 | 27 => 0,
                512 => 3,
                513..576 => 0,
                _ => i as u8,
            })
            .collect(),
        xcrs: {
            let mut x = kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            };
            x.xcrs[0].value = 7;
            x
        },
        msrs: vec![(0x10, 123_456), (0xc000_0080, 0x500), (0x1b, 0xfee0_0900)],
        lapic,
        events: {
            let mut e = kvm_vcpu_events::default();
            e.exception.nr = 14;
            e.exception.error_code = 2;
            e.interrupt.shadow = 1;
            e.sipi_vector = 0x9a;
            e.flags = 0x5;
            e.exception_payload = 0xdead_beef;
            e
        },
        mp_state: 0,
        debugregs: kvm_debugregs {
            dr7: 0x400,
            ..Default::default()
        },
    }
}

/// PICs programmed as a PC BIOS leaves them, and an IOAPIC with one line pending.
fn sample_irqchip() -> VmSectionState {
    let pic = |base: u8, imr: u8, elcr_mask: u8| {
        let mut b = vec![0u8; 512];
        (b[2], b[5], b[15]) = (imr, base, elcr_mask);
        b
    };
    let mut ioapic = vec![0u8; 512];
    ioapic[..8].copy_from_slice(&0xfec0_0000u64.to_le_bytes());
    ioapic[16] = 0x10; // irr: pin 4
    ioapic[24..32].copy_from_slice(&0x0001_0030u64.to_le_bytes()); // pin 0: masked, vector 0x30
    VmSectionState::Irqchip([pic(0x20, 0xfb, 0xf8), pic(0x28, 0xff, 0xde), ioapic])
}

fn save_bytes(desc: &VmStateDescription, v: &VmStateValue) -> Vec<u8> {
    let (mut w, buf) = memory_writer();
    vmstate::save(desc, v, &mut w).unwrap();
    w.flush().unwrap();
    buf.contents()
}

/// save → load → save is byte-identical; every truncation fails; versions 0 and 2 fail.
fn conformance(desc: &VmStateDescription, v: &VmStateValue) -> VmStateValue {
    let bytes = save_bytes(desc, v);
    let loaded = vmstate::load(desc, 1, &mut memory_reader(bytes.clone())).unwrap();
    assert_eq!(
        save_bytes(desc, &loaded),
        bytes,
        "{}: save/load/save differs",
        desc.name
    );
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        let r = vmstate::load(desc, 1, &mut memory_reader(bytes[..cut].to_vec()));
        assert!(r.is_err(), "{}: truncated to {cut} bytes loaded", desc.name);
    }
    assert!(
        vmstate::load(desc, 2, &mut memory_reader(bytes.clone())).is_err(),
        "too new"
    );
    assert!(
        vmstate::load(desc, 0, &mut memory_reader(bytes)).is_err(),
        "too old"
    );
    loaded
}

#[test]
fn kvm_cpu_section_round_trips() {
    let s = sample_vcpu(1);
    let loaded = conformance(&cpu::description(), &s.to_value());
    let back = VcpuState::from_value(&loaded, 1).unwrap();
    assert_eq!(back.regs.rip, 0x10_0123);
    assert_eq!(back.regs.rax, u64::MAX);
    assert_eq!(back.sregs.cr0, 0x8000_0011);
    assert_eq!(back.sregs.cs.l, 1);
    assert_eq!(back.msrs, s.msrs);
    assert_eq!(back.xsave, s.xsave);
    assert_eq!(back.lapic.regs[0x20], 1);
    assert_eq!(back.debugregs.dr7, 0x400);
    assert_eq!(back.xcrs.nr_xcrs, 1);
    assert_eq!(back.xcrs.xcrs[0].value, 7);
    let (e, f) = (back.events, s.events);
    assert_eq!(
        (e.exception.nr, e.exception.error_code),
        (f.exception.nr, f.exception.error_code)
    );
    assert_eq!((e.interrupt.shadow, e.sipi_vector, e.flags), (1, 0x9a, 0x5));
    assert_eq!(e.exception_payload, 0xdead_beef);
    // Field by field: the section is big-endian whatever KVM's struct layout.
    let d = cpu::description();
    let bytes = save_bytes(&d, &s.to_value());
    assert!(
        bytes.windows(8).any(|w| w == 0x8000_0011u64.to_be_bytes()),
        "cr0 as be64"
    );
}

#[test]
fn kvm_cpu_section_is_validated() {
    let v = sample_vcpu(0).to_value();
    let err = VcpuState::from_value(&v, 1).err().unwrap();
    assert!(err.contains("vCPU 0"), "{err}");
    let mut short = v.clone();
    short.set("lapic", Value::Bytes(vec![0; 10]));
    assert!(VcpuState::from_value(&short, 0).is_err());
    let mut many = v.clone();
    let xcrs = Value::List(vec![Value::Uint(0); 17]);
    many.set("xcr_index", xcrs.clone());
    many.set("xcr_value", xcrs);
    assert!(VcpuState::from_value(&many, 0).is_err());
    let mut bad_mp = v.clone();
    bad_mp.set("mp_state", Value::Uint(77));
    assert!(VcpuState::from_value(&bad_mp, 0).is_err());
    let mut mismatched = v;
    mismatched.set("msr_value", Value::List(vec![Value::Uint(1)]));
    assert!(VcpuState::from_value(&mismatched, 0).is_err());
}

#[test]
fn vm_sections_round_trip() {
    let pit = kvm_pit_state2 {
        flags: 1,
        ..Default::default()
    };
    let states = [
        (VmSection::Clock, VmSectionState::Clock(987_654_321)),
        (VmSection::Pit, VmSectionState::Pit(pit)),
        (VmSection::Irqchip, sample_irqchip()),
    ];
    for (section, state) in states {
        let loaded = conformance(&section.description(), &section.to_value(&state));
        let back = section.from_value(&loaded).unwrap();
        assert_eq!(
            section.to_value(&back),
            section.to_value(&state),
            "{section:?}"
        );
    }
    let short = VmStateValue::new()
        .with("pic_master", Value::Bytes(vec![0; 511]))
        .with("pic_slave", Value::Bytes(vec![0; 512]))
        .with("ioapic", Value::Bytes(vec![0; 512]));
    assert!(VmSection::Irqchip.from_value(&short).is_err());
}

/// The error `VcpuState::from_value` gives after `edit` on a valid vCPU 0 state.
fn cpu_error(edit: impl FnOnce(&mut VcpuState)) -> String {
    let mut s = sample_vcpu(0);
    edit(&mut s);
    match VcpuState::from_value(&s.to_value(), 0) {
        Ok(_) => panic!("a hostile vCPU state loaded"),
        Err(e) => e,
    }
}

/// Every class of value KVM refuses (or would misread) when the vCPU starts is refused at
/// load time, naming the field.
#[test]
fn hostile_vcpu_fields_are_refused_at_load() {
    type Edit = Box<dyn FnOnce(&mut VcpuState)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("mp_state", Box::new(|s| s.mp_state = 5)), // KVM_MP_STATE_STOPPED: s390 only
        ("events_flags", Box::new(|s| s.events.flags = 0x10)), // PAYLOAD, not enabled
        (
            "exc_nr",
            Box::new(|s| (s.events.exception.injected, s.events.exception.nr) = (1, 2)),
        ),
        (
            "exc_nr",
            Box::new(|s| (s.events.exception.pending, s.events.exception.nr) = (1, 32)),
        ),
        ("nmi_pending", Box::new(|s| s.events.nmi.pending = 2)),
        ("int_shadow", Box::new(|s| s.events.interrupt.shadow = 4)),
        ("sipi_vector", Box::new(|s| s.events.sipi_vector = 0x100)),
        (
            "SMM",
            Box::new(|s| {
                s.mp_state = 2;
                s.events.flags |= 8;
                s.events.smi.pending = 1;
            }),
        ),
        ("cs.type", Box::new(|s| s.sregs.cs.type_ = 16)),
        ("ss.dpl", Box::new(|s| s.sregs.ss.dpl = 4)),
        ("tr.present", Box::new(|s| s.sregs.tr.present = 0xff)),
        ("cr0", Box::new(|s| s.sregs.cr0 |= 1 << 32)),
        ("cr0", Box::new(|s| s.sregs.cr0 |= 1 << 29)), // NW without CD
        ("cr0", Box::new(|s| s.sregs.cr0 &= !1)),      // PG without PE
        ("cr4", Box::new(|s| s.sregs.cr4 |= 1 << 40)),
        ("cr8", Box::new(|s| s.sregs.cr8 = 16)),
        ("efer", Box::new(|s| s.sregs.cr4 = 0)), // long mode without PAE
        (
            "efer",
            Box::new(|s| (s.sregs.cr0, s.sregs.efer) = (0x11, 0x400)),
        ), // LMA, no paging
        (
            "cs.l",
            Box::new(|s| (s.sregs.cr0, s.sregs.efer) = (0x11, 0)),
        ),
        ("cr3", Box::new(|s| s.sregs.cr3 = 1 << 60)),
        ("apic_base", Box::new(|s| s.sregs.apic_base = 0xfee0_0001)),
        ("apic_base", Box::new(|s| s.sregs.apic_base = 0xfee0_0400)), // x2APIC, disabled
        ("debugregs_flags", Box::new(|s| s.debugregs.flags = 1)),
        ("dr6", Box::new(|s| s.debugregs.dr6 = 1 << 32)),
        ("dr7", Box::new(|s| s.debugregs.dr7 = u64::MAX)),
        ("xcr_index", Box::new(|s| s.xcrs.xcrs[0].xcr = 1)),
        ("xcr_count", Box::new(|s| s.xcrs.nr_xcrs = 2)),
        ("xcr_value", Box::new(|s| s.xcrs.xcrs[0].value = 6)), // no x87
        ("xcr_value", Box::new(|s| s.xcrs.xcrs[0].value = 5)), // AVX without SSE
        ("xcr_value", Box::new(|s| s.xcrs.xcrs[0].value = 0x27)), // part of AVX-512
        ("xcr_value", Box::new(|s| s.xcrs.xcrs[0].value = 1 << 8 | 3)), // PT: supervisor
        ("xcomp_bv", Box::new(|s| s.xsave[527] = 0x80)),
        ("reserved", Box::new(|s| s.xsave[560] = 1)),
        ("xstate_bv", Box::new(|s| s.xsave[514] = 2)), // AMX tile data: beyond 4 KiB
        ("xsave mxcsr", Box::new(|s| s.xsave[27] = 1)),
        ("fpu mxcsr", Box::new(|s| s.fpu.mxcsr = 0x1_0000)),
        ("listed twice", Box::new(|s| s.msrs.push((0x10, 0)))),
    ];
    for (field, edit) in cases {
        let e = cpu_error(edit);
        assert!(e.contains(field), "{field}: {e}");
    }
    // What KVM itself produces stays accepted: reset PIT-free defaults, the SIPI state.
    let mut s = sample_vcpu(0);
    s.mp_state = 4;
    s.events.flags = 0xf;
    VcpuState::from_value(&s.to_value(), 0).unwrap();
}

#[test]
fn msrs_this_host_does_not_save_are_refused() {
    let known = [0xc000_0080, 0x10, 0x1b];
    cpu::msrs_known(&sample_vcpu(0).msrs, &known).unwrap();
    let e = cpu::msrs_known(&[(0x10, 1), (0x4b56_4d00, 1)], &known).unwrap_err();
    assert!(e.contains("MSR 0x4b564d00"), "{e}");
}

fn vm_error(section: VmSection, state: VmSectionState) -> String {
    match section.from_value(&section.to_value(&state)) {
        Ok(_) => panic!("a hostile {section:?} state loaded"),
        Err(e) => e,
    }
}

#[test]
fn hostile_irqchip_and_pit_fields_are_refused_at_load() {
    let VmSectionState::Irqchip(good) = sample_irqchip() else {
        unreachable!()
    };
    let chip = |c: usize, at: usize, bytes: &[u8]| {
        let mut chips = good.clone();
        chips[c][at..at + bytes.len()].copy_from_slice(bytes);
        VmSectionState::Irqchip(chips)
    };
    let cases = [
        ("pic_master.priority_add", chip(0, 4, &[8])),
        ("pic_slave.irq_base", chip(1, 5, &[0x29])),
        ("pic_master.read_reg_select", chip(0, 6, &[2])),
        ("pic_master.init_state", chip(0, 9, &[4])),
        ("pic_slave.init4", chip(1, 13, &[0xff])),
        ("pic_master.elcr", chip(0, 14, &[0x01])),
        ("pic_slave.elcr_mask", chip(1, 15, &[0xff])),
        ("ioapic.base_address", chip(2, 0, &[0x10])),
        ("ioapic.ioregsel", chip(2, 8, &[0, 1])),
        ("ioapic.id", chip(2, 12, &[16])),
        ("ioapic.irr", chip(2, 19, &[1])),
    ];
    for (field, state) in cases {
        let e = vm_error(VmSection::Irqchip, state);
        assert!(e.contains(field), "{field}: {e}");
    }
    type Edit = fn(&mut kvm_pit_state2);
    let pit_cases: [(&str, Edit); 10] = [
        ("pit.flags", |p| p.flags = 4),
        ("channels[0].mode", |p| p.channels[0].mode = 6),
        ("channels[1].count", |p| p.channels[1].count = 0x1_0001),
        ("channels[2].rw_mode", |p| p.channels[2].rw_mode = 4),
        ("channels[0].read_state", |p| p.channels[0].read_state = 5),
        ("channels[0].write_state", |p| {
            p.channels[0].write_state = 0xff
        }),
        ("channels[1].count_latched", |p| {
            p.channels[1].count_latched = 4
        }),
        ("channels[1].status_latched", |p| {
            p.channels[1].status_latched = 2
        }),
        ("channels[2].bcd", |p| p.channels[2].bcd = 2),
        ("channels[2].gate", |p| p.channels[2].gate = 7),
    ];
    for (field, edit) in pit_cases {
        let mut p = kvm_pit_state2::default();
        edit(&mut p);
        let e = vm_error(VmSection::Pit, VmSectionState::Pit(p));
        assert!(e.contains(field), "{field}: {e}");
    }
    // KVM's reset state (mode 0xff, count 65536) loads.
    let mut p = kvm_pit_state2::default();
    for c in &mut p.channels {
        (c.mode, c.count) = (0xff, 0x1_0000);
    }
    VmSection::Pit
        .from_value(&VmSection::Pit.to_value(&VmSectionState::Pit(p)))
        .unwrap();
}
