//! Writes the seeds of the `device_state` fuzz target (`fuzz/seeds/device_state/`): every
//! device section the VMM saves, as `idstr NUL body`, from a KVM guest that booted the payload
//! and ran until it printed, and from a software guest that ran. Ignored by default (it
//! rewrites committed files); run it after a section's format changes:
//!
//!     cargo test -p vmm --test fuzz_seeds -- --ignored
//!
//! The non-ignored test checks the committed seeds still decode with today's descriptions.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use guest_ram::{Backing, GuestRam, RamBlock};
use migration::{DeviceState, EventBus, GlobalState, RunState, VmControl};
use savevm::qemu_file::{memory_reader, memory_writer};
use savevm::vmstate::{self, Value, VmStateDescription};
use vmm::kvm::state::cpu;
use vmm::kvm::state::vm::VmSection;
use vmm::kvm::{KvmConfig, KvmVm};
use vmm::machine::{SoftCpuDevice, Timer, Vcpus};
use vmm::soft::WorkloadConfig;

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/device_state")
}

fn ram(size: u64) -> Arc<GuestRam> {
    Arc::new(GuestRam::new(vec![RamBlock::new(
        "pc.ram",
        size,
        Backing::Anonymous,
    )
    .unwrap()]))
}

/// `idstr NUL body` of what `dev` saves now.
fn seed(dev: &dyn DeviceState) -> (String, Vec<u8>) {
    let desc = dev.description();
    let (mut w, buf) = memory_writer();
    vmstate::save(&desc, &dev.save(), &mut w).unwrap();
    w.flush().unwrap();
    let mut out = desc.name.clone().into_bytes();
    out.push(0);
    out.extend(buf.contents());
    (desc.name, out)
}

/// Sections of a KVM guest that ran (vCPU 0 and 1, the VM-wide ones, the UART with data
/// received), of a software guest that ran, `timer` and `globalstate`.
fn all_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if testkit::require_kvm("device_state seeds from a KVM guest") {
        let vm = KvmVm::new(
            ram(16 << 20),
            KvmConfig {
                vcpus: 2,
                ..KvmConfig::default()
            },
        )
        .unwrap();
        vm.boot().unwrap();
        vm.start().unwrap();
        testkit::wait_for(Duration::from_secs(60), "the guest's serial output", || {
            vm.serial_output().len() > 64
        });
        vm.pause().unwrap();
        for (name, instance, dev) in vm.devices() {
            let (_, mut bytes) = seed(&*dev);
            if name == "kvm-serial" {
                // Data received and an interrupt pending: the FIFO path too.
                let mut v = dev.save();
                v.set("lsr", Value::Uint(0x61));
                v.set("iir", Value::Uint(0x04));
                v.set("rx_len", Value::Uint(3));
                v.set("rx", Value::Bytes(b"ok\n".to_vec()));
                let mut fresh =
                    vmm::kvm::detached_serial_device(vmm::kvm::SerialSink::Null).unwrap();
                fresh.load(&v, 1).unwrap();
                bytes = seed(&*fresh).1;
            }
            out.push((format!("{name}-{instance}"), bytes));
        }
    }
    let vcpus = Arc::new(Vcpus::new(
        ram(1 << 20),
        Some(WorkloadConfig {
            vcpus: 2,
            working_set: 256 << 10,
            ..WorkloadConfig::default()
        }),
        RunState::Paused,
        Arc::new(EventBus::new()),
    ));
    testkit::wait_for(Duration::from_secs(20), "writes of vCPU 1", || {
        vcpus.vm_start().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        vcpus.vm_stop(RunState::Paused).unwrap();
        vcpus.states()[1].position > 0
    });
    out.push(("soft-cpu-1".into(), seed(&SoftCpuDevice::new(vcpus, 1)).1));
    let mut timer = Timer::default();
    let v = timer
        .save()
        .with("cpu_ticks_offset", Value::Int(123_456_789))
        .with("cpu_clock_offset", Value::Int(-42));
    timer.load(&v, 2).unwrap();
    out.push(("timer".into(), seed(&timer).1));
    let g = GlobalState::new();
    g.store("running");
    out.push(("globalstate".into(), seed(&g).1));
    out
}

#[test]
#[ignore = "rewrites fuzz/seeds/device_state"]
fn write_device_state_seeds() {
    let dir = seed_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in all_seeds() {
        std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
    }
}

/// The descriptions of every section the VMM saves (none needs /dev/kvm).
fn descriptions() -> Vec<VmStateDescription> {
    let vcpus = Arc::new(Vcpus::new(
        ram(1 << 20),
        None,
        RunState::Paused,
        Arc::new(EventBus::new()),
    ));
    let mut out = vec![
        cpu::description(),
        vmm::kvm::detached_serial_device(vmm::kvm::SerialSink::Null)
            .unwrap()
            .description(),
        SoftCpuDevice::new(vcpus, 0).description(),
        Timer::default().description(),
        GlobalState::new().description(),
    ];
    out.extend(VmSection::ALL.iter().map(|s| s.description()));
    out
}

/// Each committed seed names a section of the VMM and its body decodes whole with that
/// section's description of today (else the fuzzer would start from inputs that no longer
/// reach the devices).
#[test]
fn committed_seeds_decode() {
    let descs = descriptions();
    let mut n = 0;
    for entry in std::fs::read_dir(seed_dir()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let nul = bytes.iter().position(|&b| b == 0).expect("idstr NUL body");
        let (name, body) = (String::from_utf8_lossy(&bytes[..nul]), &bytes[nul + 1..]);
        let desc = descs
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("{}: unknown section {name}", path.display()));
        let mut r = memory_reader(body.to_vec());
        vmstate::load(desc, desc.version_id, &mut r)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            r.bytes_read(),
            body.len() as u64,
            "{}: trailing bytes",
            path.display()
        );
        n += 1;
    }
    assert!(n >= 8, "only {n} seeds");
}
