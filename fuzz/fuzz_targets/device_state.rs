//! Feeds arbitrary bytes to the VMM's device sections, without /dev/kvm: each input is
//! `idstr NUL body`, the body is decoded with that device's real description
//! (`savevm::vmstate::load`, at the description's version) and handed to the device's real
//! validation and load path:
//!
//! | idstr | path |
//! | --- | --- |
//! | `kvm-cpu` | `VcpuState::from_value` (every check `CpuDevice::load` makes before storing) |
//! | `kvm-irqchip`, `kvm-pit`, `kvmclock` | `VmSection::from_value` |
//! | `kvm-serial` | `DeviceState::load` of a detached UART (vm-superio restore included) |
//! | `timer`, `soft-cpu`, `globalstate` | `DeviceState::load` |
//!
//! A panic or an unbounded allocation is a bug; errors are expected. What a device accepts it
//! must keep: what it saves next holds the same field values (except `globalstate`, which
//! keeps the run state's name and not the bytes after its NUL; subsections are not compared:
//! livemig keeps no `timer/icount`, it runs no icount clock).
//!
//! Seeds (`seeds/device_state/`) are sections saved by a KVM guest that ran, written by
//! `cargo test -p vmm --test fuzz_seeds -- --ignored`.

#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use guest_ram::{Backing, GuestRam, RamBlock};
use libfuzzer_sys::fuzz_target;
use migration::{DeviceState, EventBus, GlobalState, RunState};
use savevm::qemu_file::{memory_reader, memory_writer};
use savevm::vmstate::{self, VmStateDescription, VmStateValue};
use vmm::kvm::state::cpu::{self, VcpuState};
use vmm::kvm::state::vm::VmSection;
use vmm::kvm::{detached_serial_device, SerialSink};
use vmm::machine::{SoftCpuDevice, Timer, Vcpus};
use vmm::soft::WorkloadConfig;

/// `kept` (what a device saves after accepting `loaded`) holds the same fields as `loaded`,
/// compared after a trip through the bytes (so `unused` gaps and integer types do not count).
fn assert_kept(desc: &VmStateDescription, loaded: &VmStateValue, kept: &VmStateValue) {
    let (mut w, buf) = memory_writer();
    vmstate::save(desc, kept, &mut w).expect("an accepted value saves");
    w.flush().expect("flush a memory writer");
    let again = vmstate::load(desc, desc.version_id, &mut memory_reader(buf.contents()))
        .expect("saved bytes load");
    assert_eq!(again.fields, loaded.fields, "{}: accepted state changed", desc.name);
}

/// A software guest's vCPUs (two, 32 pages each) that never start, for `soft-cpu`.
fn soft_vcpus() -> Arc<Vcpus> {
    static VCPUS: OnceLock<Arc<Vcpus>> = OnceLock::new();
    VCPUS
        .get_or_init(|| {
            let ram = RamBlock::new("pc.ram", 1 << 20, Backing::Anonymous).expect("1 MiB RAM");
            let workload = WorkloadConfig {
                vcpus: 2,
                working_set: 256 << 10,
                ..WorkloadConfig::default()
            };
            Arc::new(Vcpus::new(
                Arc::new(GuestRam::new(vec![ram])),
                Some(workload),
                RunState::Paused,
                Arc::new(EventBus::new()),
            ))
        })
        .clone()
}

fn serial() -> &'static Mutex<Box<dyn DeviceState>> {
    static SERIAL: OnceLock<Mutex<Box<dyn DeviceState>>> = OnceLock::new();
    SERIAL.get_or_init(|| {
        Mutex::new(detached_serial_device(SerialSink::Buffer).expect("a detached UART"))
    })
}

/// Loads `body` into `dev`; if it is accepted and `keeps` is set, checks the device keeps it.
fn device(dev: &mut dyn DeviceState, body: &[u8], keeps: bool) {
    let desc = dev.description();
    let Ok(value) = vmstate::load(&desc, desc.version_id, &mut memory_reader(body.to_vec()))
    else {
        return;
    };
    if dev.load(&value, desc.version_id).is_ok() && keeps {
        assert_kept(&desc, &value, &dev.save());
    }
}

/// Decodes `body` with `desc`; if `check` accepts the value, the value it rebuilds from its
/// typed state must hold the same fields.
fn section(
    desc: &VmStateDescription,
    body: &[u8],
    check: impl FnOnce(&VmStateValue) -> Option<VmStateValue>,
) {
    let Ok(value) = vmstate::load(desc, desc.version_id, &mut memory_reader(body.to_vec())) else {
        return;
    };
    if let Some(back) = check(&value) {
        assert_kept(desc, &value, &back);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(nul) = data.iter().position(|&b| b == 0) else {
        return;
    };
    let (name, body) = (&data[..nul], &data[nul + 1..]);
    match name {
        b"kvm-cpu" => section(&cpu::description(), body, |v| {
            VcpuState::from_value(v, 0).ok().map(|s| s.to_value())
        }),
        b"kvm-irqchip" | b"kvm-pit" | b"kvmclock" => {
            let s = VmSection::ALL
                .into_iter()
                .find(|s| s.idstr().as_bytes() == name)
                .expect("one of the VM sections");
            section(&s.description(), body, |v| {
                s.from_value(v).ok().map(|st| s.to_value(&st))
            });
        }
        b"kvm-serial" => {
            let mut dev = serial().lock().unwrap_or_else(|p| p.into_inner());
            device(&mut **dev, body, true);
        }
        b"timer" => device(&mut Timer::default(), body, true),
        b"soft-cpu" => device(&mut SoftCpuDevice::new(soft_vcpus(), 1), body, true),
        b"globalstate" => device(&mut GlobalState::new(), body, false),
        _ => {}
    }
});
