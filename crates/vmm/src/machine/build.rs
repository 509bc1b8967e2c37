//! Assembling a machine from its configuration: RAM, the guest (software vCPUs or KVM),
//! disks with their writers, and the registry of migratable state in QEMU's order
//! (`timer`, `block`, `ram`, then devices, `globalstate`).

use std::sync::Arc;

use block::{Disk, DiskWriter, DiskWriterConfig, WritePattern};
use guest_ram::{DirtyLog, GuestRam, RamBlock, UffdDirtyLog};
use migration::block::BlockHandler;
use migration::ram::RamHandler;
use migration::verify::{self, RamVerify};
use migration::{EventBus, GlobalState, MigrationState, Registry, RunState, VmControl};

use super::config::{Accel, MachineConfig, MachineError, MachineType, SerialTarget};
use super::guest::{Guest, GuestControl};
use super::timer::Timer;
use super::vcpus::{SoftCpuDevice, Vcpus};
use crate::kvm::{KvmConfig, KvmVm, SerialSink};
use crate::soft;

/// The pieces of a machine.
pub(super) struct Parts {
    pub ram: Arc<GuestRam>,
    pub control: Arc<GuestControl>,
    pub disks: Vec<Arc<Disk>>,
    pub registry: Registry,
    pub global: GlobalState,
    pub events: Arc<EventBus>,
    pub state: Arc<MigrationState>,
}

fn serial_sink(t: &SerialTarget) -> Result<SerialSink, MachineError> {
    Ok(match t {
        SerialTarget::Null => SerialSink::Null,
        SerialTarget::Stdout => SerialSink::Stdout,
        SerialTarget::File(p) => SerialSink::File(p.clone()),
        SerialTarget::Unix(p) => {
            let s = std::os::unix::net::UnixStream::connect(p)
                .map_err(|e| MachineError::Serial(p.display().to_string(), e))?;
            SerialSink::Writer(Box::new(s))
        }
        SerialTarget::Buffer => SerialSink::Buffer,
    })
}

/// Builds RAM, guest, disks and registry; starts nothing.
pub(super) fn build(cfg: &MachineConfig) -> Result<Parts, MachineError> {
    let block = RamBlock::new(
        cfg.machine.ram_block_name(),
        cfg.memory,
        cfg.backing.clone(),
    )?;
    if cfg.prealloc {
        block.prealloc()?;
    }
    let mut blocks = vec![block];
    if cfg.machine == MachineType::Microvm {
        // Its own memory: a file given for RAM holds `microvm.ram` alone.
        let backing = match &cfg.backing {
            guest_ram::Backing::File { .. } => guest_ram::Backing::Anonymous,
            other => other.clone(),
        };
        blocks.push(RamBlock::new(
            crate::kvm::microvm::BIOS_BLOCK,
            crate::kvm::microvm::BIOS_SIZE,
            backing,
        )?);
    }
    let ram = Arc::new(GuestRam::new(blocks));
    let timer = Timer::default();
    let events = Arc::new(EventBus::new());
    let state = Arc::new(MigrationState::new(events.clone()));
    let initial = if cfg.incoming {
        RunState::Inmigrate
    } else if cfg.start_paused {
        RunState::Prelaunch
    } else {
        RunState::Paused
    };

    let mut devices: Vec<(String, u32, Box<dyn migration::DeviceState>)> = Vec::new();
    let (guest, dirty_log): (Guest, Box<dyn DirtyLog>) = match cfg.accel {
        Accel::Soft => {
            if cfg.fill > 0 && !cfg.incoming {
                soft::fill_initial(&ram, 0, cfg.fill.min(cfg.memory), 0x5eed, cfg.fill_pattern)?;
            }
            let vcpus = Arc::new(Vcpus::new(
                ram.clone(),
                cfg.workload.clone(),
                initial,
                events.clone(),
            ));
            if cfg.machine == MachineType::Soft {
                for i in 0..vcpus.count() {
                    devices.push((
                        "soft-cpu".into(),
                        i as u32,
                        Box::new(SoftCpuDevice::new(vcpus.clone(), i)),
                    ));
                }
            }
            (Guest::Soft(vcpus), Box::new(UffdDirtyLog::new(ram.clone())))
        }
        Accel::Kvm => {
            let payload_cmdline = payload::Params::default().cmdline();
            let kcfg = KvmConfig {
                vcpus: cfg.workload.as_ref().map_or(1, |w| w.vcpus.max(1)),
                kernel: cfg.kernel.clone(),
                cmdline: cfg.cmdline.clone().unwrap_or(payload_cmdline),
                serial: serial_sink(&cfg.serial)?,
                events: Some(events.clone()),
            };
            let vm = Arc::new(KvmVm::new(ram.clone(), kcfg)?);
            if !cfg.incoming {
                vm.boot()?;
            }
            vm.set_run_state(initial);
            if cfg.machine == MachineType::Microvm {
                devices.extend(crate::kvm::microvm::devices(&vm, timer.clone())?);
            } else {
                devices.extend(vm.devices());
            }
            let log = vm.dirty_log();
            (Guest::Kvm(vm), log)
        }
    };

    let disks = cfg
        .drives
        .iter()
        .map(|d| {
            // A destination opens its images inactive, as QEMU does: on shared storage the
            // source still holds them until the switchover (see `GuestControl`).
            let disk = if cfg.incoming {
                Disk::open_inactive(d)
            } else {
                Disk::open(d)
            };
            disk.map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut writers = Vec::new();
    if let (Some(w), false) = (cfg.disk_workload, cfg.incoming) {
        for (i, d) in disks.iter().enumerate() {
            let wcfg = DiskWriterConfig {
                region: 0..w.region.min(d.size()),
                rate: w.rate,
                pattern: if w.random {
                    WritePattern::Random
                } else {
                    WritePattern::Sequential
                },
                seed: 0xd15c + i as u64,
            };
            writers.push(DiskWriter::start_paused(d.clone(), wcfg)?);
        }
    }

    let global = GlobalState::new();
    let mut registry = Registry::new();
    if matches!(cfg.machine, MachineType::None | MachineType::Microvm) {
        // QEMU's none and microvm machines register `timer` first (section id 0).
        registry.register_device("timer", Some(0), Box::new(timer));
    }
    // Always present, so a destination accepts a `block` section; active only with `-b`/`-i`.
    registry.register_live(Box::new(BlockHandler::new(disks.clone())));
    registry.register_live(Box::new(RamHandler::new(ram.clone(), dirty_log)));
    for (idstr, instance, dev) in devices {
        registry.register_device(&idstr, Some(instance), dev);
    }
    registry.register_device("globalstate", Some(0), Box::new(global.clone()));
    registry.register_device(
        verify::IDSTR,
        Some(0),
        Box::new(RamVerify::new(ram.clone())),
    );
    registry.register_device(
        migration::block::verify::IDSTR,
        Some(0),
        Box::new(migration::block::DiskVerify::new(disks.clone())),
    );
    let control = Arc::new(GuestControl::new(guest, writers, disks.clone()));
    Ok(Parts {
        ram,
        control,
        disks,
        registry,
        global,
        events,
        state,
    })
}
