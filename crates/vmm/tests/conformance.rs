//! The device-state conformance checks (`testkit::conformance`) on every device section of
//! the VMM: `timer` and `soft-cpu` always; the KVM sections (`kvmclock`, `kvm-pit`,
//! `kvm-irqchip`, `kvm-serial`, `kvm-cpu`) when /dev/kvm is usable (else a visible SKIP).
//!
//! A populated KVM device comes from a VM that booted the payload, ran until it printed, and
//! was paused (`kvm-serial` and `kvm-irqchip`, which the payload leaves at reset, hold a state
//! loaded into a VM that never ran); a fresh one from a VM that was
//! created and never ran, as on a destination.

use std::sync::Arc;
use std::time::Duration;

use guest_ram::{Backing, GuestRam, RamBlock};
use migration::{DeviceState, EventBus, RunState, VmControl};
use savevm::vmstate::{Value, VmStateValue};
use testkit::conformance::boxed;
use vmm::kvm::{KvmConfig, KvmVm};
use vmm::machine::{SoftCpuDevice, Timer, Vcpus};
use vmm::soft::WorkloadConfig;

fn ram(size: u64) -> Arc<GuestRam> {
    Arc::new(GuestRam::new(vec![RamBlock::new(
        "pc.ram",
        size,
        Backing::Anonymous,
    )
    .unwrap()]))
}

// ---------------------------------------------------------------------------------------------
// timer

fn timer_with(ticks: i64, clock: i64) -> Timer {
    let mut t = Timer::default();
    let v = VmStateValue::new()
        .with("cpu_ticks_offset", Value::Int(ticks))
        .with("cpu_clock_offset", Value::Int(clock));
    t.load(&v, 2).unwrap();
    t
}

testkit::device_state_conformance!(timer {
    populated: boxed(timer_with(123_456_789, -42)),
    fresh: boxed(Timer::default()),
});

// ---------------------------------------------------------------------------------------------
// soft-cpu

fn workload(seed: u64) -> WorkloadConfig {
    WorkloadConfig {
        vcpus: 2,
        working_set: 256 << 10,
        seed,
        ..WorkloadConfig::default()
    }
}

/// vCPU 1 of a software guest that ran until that vCPU wrote some pages, then was stopped.
fn soft_cpu_populated() -> SoftCpuDevice {
    let vcpus = Arc::new(Vcpus::new(
        ram(1 << 20),
        Some(workload(42)),
        RunState::Paused,
        Arc::new(EventBus::new()),
    ));
    // The states can only be read with the vCPUs stopped: run, stop, look, run again.
    testkit::wait_for(Duration::from_secs(20), "writes of vCPU 1", || {
        vcpus.vm_start().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        vcpus.vm_stop(RunState::Paused).unwrap();
        vcpus.states()[1].position > 0
    });
    SoftCpuDevice::new(vcpus, 1)
}

/// vCPU 1 of a destination's software guest that never ran.
fn soft_cpu_fresh() -> SoftCpuDevice {
    let vcpus = Vcpus::new(
        ram(1 << 20),
        Some(workload(42)),
        RunState::Paused,
        Arc::new(EventBus::new()),
    );
    SoftCpuDevice::new(Arc::new(vcpus), 1)
}

testkit::device_state_conformance!(soft_cpu {
    populated: boxed(soft_cpu_populated()),
    fresh: boxed(soft_cpu_fresh()),
});

// ---------------------------------------------------------------------------------------------
// KVM sections

const KVM_RAM: u64 = 16 << 20;

fn kvm_device(vm: &KvmVm, idstr: &str, instance: u32) -> Box<dyn DeviceState> {
    vm.devices()
        .into_iter()
        .find(|(name, i, _)| name == idstr && *i == instance)
        .map(|(_, _, d)| d)
        .unwrap_or_else(|| panic!("the KVM VM has no section {idstr} instance {instance}"))
}

fn kvm_config() -> KvmConfig {
    KvmConfig {
        vcpus: 2,
        ..KvmConfig::default()
    }
}

/// Section `idstr` of a VM that booted the payload and ran until it printed, then paused.
fn kvm_populated(idstr: &str, instance: u32) -> Box<dyn DeviceState> {
    let vm = KvmVm::new(ram(KVM_RAM), kvm_config()).unwrap();
    vm.boot().unwrap();
    vm.start().unwrap();
    testkit::wait_for(Duration::from_secs(60), "the guest's serial output", || {
        vm.serial_output().len() > 64
    });
    vm.pause().unwrap();
    kvm_device(&vm, idstr, instance)
}

/// Section `idstr` of a VM that was created and never ran (a migration destination).
fn kvm_fresh(idstr: &str, instance: u32) -> Box<dyn DeviceState> {
    let vm = KvmVm::new(ram(KVM_RAM), kvm_config()).unwrap();
    kvm_device(&vm, idstr, instance)
}

/// `kvm-serial` of a VM that never ran, holding a lived-in UART state: the payload only
/// transmits, which leaves the registers as they were at reset.
fn kvm_serial_populated() -> Box<dyn DeviceState> {
    let mut dev = kvm_fresh("kvm-serial", 0);
    let regs = [
        ("dll", 0x0c),
        ("dlm", 0x00),
        ("ier", 0x01),
        ("iir", 0x04),
        ("lcr", 0x03),
        ("lsr", 0x61),
        ("mcr", 0x0b),
        ("msr", 0xb0),
        ("scr", 0x5a),
    ];
    let v = regs
        .iter()
        .fold(VmStateValue::new(), |v, &(r, x)| v.with(r, Value::Uint(x)))
        .with("rx_len", Value::Uint(3))
        .with("rx", Value::Bytes(b"ok\n".to_vec()));
    dev.load(&v, 1).unwrap();
    dev
}

testkit::device_state_conformance!(kvm_serial {
    requires: testkit::require_kvm("kvm-serial conformance"),
    populated: kvm_serial_populated(),
    fresh: kvm_fresh("kvm-serial", 0),
});

/// `kvm-irqchip` of a VM that never ran, holding PICs programmed as a PC BIOS leaves them
/// (vector bases 0x20 / 0x28, all lines but the cascade masked): the payload does not touch
/// the interrupt controllers.
fn kvm_irqchip_populated() -> Box<dyn DeviceState> {
    let mut dev = kvm_fresh("kvm-irqchip", 0);
    let mut v = dev.save();
    // struct kvm_pic_state: u8 last_irr, irr, imr, isr, priority_add, irq_base, ...
    for (chip, imr, base) in [("pic_master", 0xfb, 0x20), ("pic_slave", 0xff, 0x28)] {
        let mut b = v.get_bytes(chip).unwrap().to_vec();
        b[2] = imr;
        b[5] = base;
        v.set(chip, Value::Bytes(b));
    }
    dev.load(&v, 1).unwrap();
    dev
}

testkit::device_state_conformance!(kvm_irqchip {
    requires: testkit::require_kvm("kvm-irqchip conformance"),
    populated: kvm_irqchip_populated(),
    fresh: kvm_fresh("kvm-irqchip", 0),
});

macro_rules! kvm_conformance {
    ($($name:ident: $idstr:literal instance $instance:literal;)*) => {$(
        testkit::device_state_conformance!($name {
            requires: testkit::require_kvm(concat!($idstr, " conformance")),
            populated: kvm_populated($idstr, $instance),
            fresh: kvm_fresh($idstr, $instance),
        });
    )*};
}

kvm_conformance! {
    kvmclock: "kvmclock" instance 0;
    kvm_pit: "kvm-pit" instance 0;
    kvm_cpu0: "kvm-cpu" instance 0;
    kvm_cpu1: "kvm-cpu" instance 1;
}
