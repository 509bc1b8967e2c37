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
        xsave: (0..XSAVE_BYTES).map(|i| i as u8).collect(),
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
        (
            VmSection::Irqchip,
            VmSectionState::Irqchip([vec![1; 512], vec![2; 512], vec![3; 512]]),
        ),
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
