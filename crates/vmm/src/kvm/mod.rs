//! An x86_64 micro-VM on KVM (rust-vmm crates): in-kernel irqchip and PIT, N vCPU threads,
//! guest RAM in one KVM memory slot with dirty logging, PVH boot of an ELF kernel, a 16550 UART
//! at 0x3f8, and a power-off port. Its state migrates as versioned device sections.
//!
//! ```text
//!  GuestRam (one block, e.g. "pc.ram", <= 3 GiB)  --slot 0 @ GPA 0-->  KVM VM
//!      |                                                   |-- in-kernel PIC/IOAPIC/LAPIC, PIT
//!  KvmDirtyLog (KVM_GET_DIRTY_LOG | VMM writes)            |-- vCPU threads (KVM_RUN loop)
//!                                                          |     port 0x3f8-0x3ff -> 16550
//!  devices(): kvmclock, kvm-pit, kvm-irqchip,              |     port 0x604 <- 0x2000: power off
//!             kvm-serial, kvm-cpu x N                      '-- triple fault: stop
//! ```
//!
//! Lifecycle ([`KvmState`]): `Created` → (`boot()` on a fresh VM, or migrated state loaded
//! through [`KvmVm::devices`] on a destination) → `start()` → `Running` ⇄ `Paused`
//! (`pause()`/`resume()`); a guest power-off, triple fault or KVM error moves it to `Stopped`.
//! `start()` applies loaded state (VM-wide sections first, then each vCPU) before any vCPU
//! runs, so a migrated guest continues where it stopped; it also registers the memory slot
//! afresh there, on the memory the migration left under the block (a same-host migration
//! hands the source's memfd over, see `slot`).
//!
//! RAM above 3 GiB would overlap the PCI hole of a PC memory map; the VM refuses it (one slot,
//! one block, GPA 0; the `microvm` machine adds its read-only firmware block below 4 GiB, see
//! [`microvm`]). The guest code runs only on vCPU 0 at boot; other vCPUs wait for SIPI.
//!
//! ```no_run
//! use std::sync::Arc;
//! use guest_ram::{Backing, GuestRam, RamBlock};
//! use vmm::kvm::{KvmConfig, KvmVm};
//!
//! let ram = Arc::new(GuestRam::new(vec![RamBlock::new("pc.ram", 32 << 20, Backing::Anonymous)?]));
//! let vm = KvmVm::new(ram, KvmConfig::default())?;
//! vm.boot()?;
//! vm.start()?;
//! vm.pause()?;
//! println!("{}", String::from_utf8_lossy(&vm.serial_output()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod boot;
mod dirty;
mod error;
pub mod microvm;
mod pod;
mod serial;
mod shared;
mod slot;
pub mod state;
mod vcpu;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use guest_ram::{DirtyLog, GuestRam};
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::Kvm;
use migration::{DeviceState, Event, EventBus, RunState, VmControl, VmError};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use dirty::KvmDirtyLog;
pub use error::KvmError;
pub use serial::{detached_serial_device, SerialSink, BUFFER_CAP, SERIAL_BASE, SERIAL_GSI};
pub use vcpu::{StopReason, POWEROFF_PORT, POWEROFF_VALUE};

use error::kvm;
use serial::{SerialDevice, SerialPort};
use shared::{lock, refresh, Life, Pending, Shared};
use slot::MemSlot;
use state::cpu::readable_msrs;
use state::devices::{CpuDevice, VmDevice};
use state::vm::VmSection;
use vcpu::Runner;

/// Largest guest RAM supported (below the PC's 32-bit PCI hole).
pub const MAX_RAM: u64 = 3 << 30;
/// Smallest guest RAM supported.
pub const MIN_RAM: u64 = 2 << 20;
const TSS_ADDR: usize = 0xfffb_d000;

/// The kernel to boot.
#[derive(Debug, Clone)]
pub enum KernelImage {
    /// livemig's guest payload ([`payload::PAYLOAD_ELF`]).
    Payload,
    /// An ELF image in memory.
    Bytes(Vec<u8>),
    /// An ELF file.
    Path(PathBuf),
}

/// How to build a [`KvmVm`].
#[derive(Debug)]
pub struct KvmConfig {
    /// Number of vCPUs (at least 1).
    pub vcpus: usize,
    /// Kernel for [`KvmVm::boot`] (unused on a migration destination).
    pub kernel: KernelImage,
    /// Kernel command line (PVH start info), at most 4095 bytes.
    pub cmdline: String,
    /// Where the serial port's output goes.
    pub serial: SerialSink,
    /// Receives `STOP` / `RESUME` events from [`VmControl`], if set.
    pub events: Option<Arc<EventBus>>,
}

impl Default for KvmConfig {
    /// One vCPU booting the payload with its default parameters, serial kept in memory.
    fn default() -> Self {
        KvmConfig {
            vcpus: 1,
            kernel: KernelImage::Payload,
            cmdline: payload::Params::default().cmdline(),
            serial: SerialSink::Buffer,
            events: None,
        }
    }
}

/// Lifecycle of a [`KvmVm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmState {
    /// vCPUs exist but never ran; `booted` says whether [`KvmVm::boot`] loaded a kernel.
    Created {
        /// A kernel was loaded.
        booted: bool,
    },
    /// vCPUs are in their run loop.
    Running,
    /// Every vCPU is parked outside `KVM_RUN`.
    Paused,
    /// The guest stopped on its own; it cannot be resumed.
    Stopped(StopReason),
}

/// A KVM virtual machine. See the [module docs](self).
pub struct KvmVm {
    shared: Arc<Shared>,
    ram: Arc<GuestRam>,
    slot: MemSlot,
    serial: Arc<SerialPort>,
    kernel: KernelImage,
    cmdline: String,
    events: Option<Arc<EventBus>>,
    _irq: EventFd,
    _kvm: Kvm,
}

impl std::fmt::Debug for KvmVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVm")
            .field("vcpus", &self.vcpu_count())
            .field("state", &self.state())
            .finish()
    }
}

/// True if `/dev/kvm` can be opened and creates a VM (for tests that skip without KVM).
pub fn kvm_available() -> bool {
    Kvm::new().and_then(|k| k.create_vm()).is_ok()
}

impl KvmVm {
    /// Creates the VM: KVM VM with irqchip and PIT, RAM as memory slot 0 at GPA 0, the UART,
    /// and `cfg.vcpus` vCPUs (with KVM's supported CPUID). Nothing runs yet.
    ///
    /// `ram` must have one block of [`MIN_RAM`]..=[`MAX_RAM`] bytes (at GPA 0), optionally
    /// followed by QEMU microvm's firmware block ([`microvm::BIOS_BLOCK`], mapped read-only
    /// just below 4 GiB as memory slot 1; never written by the guest, so not dirty-logged).
    pub fn new(ram: Arc<GuestRam>, cfg: KvmConfig) -> Result<KvmVm, KvmError> {
        let (block, bios) = match ram.blocks() {
            [b] => (b.clone(), None),
            [b, f] if f.idstr() == microvm::BIOS_BLOCK && f.len() == microvm::BIOS_SIZE => {
                (b.clone(), Some(f.clone()))
            }
            bs => {
                return Err(KvmError::RamLayout(format!(
                    "{} RAM blocks; one, or one and a {}-byte `{}`, are supported",
                    bs.len(),
                    microvm::BIOS_SIZE,
                    microvm::BIOS_BLOCK
                )))
            }
        };
        if !(MIN_RAM..=MAX_RAM).contains(&block.len()) {
            return Err(KvmError::RamLayout(format!(
                "RAM block `{}` is {} bytes; {MIN_RAM}..={MAX_RAM} are supported",
                block.idstr(),
                block.len()
            )));
        }
        if cfg.vcpus == 0 {
            return Err(KvmError::RamLayout("at least one vCPU is needed".into()));
        }
        let kvm_fd = Kvm::new().map_err(kvm("open /dev/kvm"))?;
        if cfg.vcpus > kvm_fd.get_max_vcpus() {
            return Err(KvmError::RamLayout(format!(
                "{} vCPUs requested, KVM supports {}",
                cfg.vcpus,
                kvm_fd.get_max_vcpus()
            )));
        }
        let vm = Arc::new(kvm_fd.create_vm().map_err(kvm("KVM_CREATE_VM"))?);
        vm.set_tss_address(TSS_ADDR)
            .map_err(kvm("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm("KVM_CREATE_PIT2"))?;
        let slot = MemSlot {
            slot: 0,
            gpa: 0,
            size: block.len(),
            host: block.host_ptr() as u64,
        };
        slot.set_flags(&vm, 0)
            .map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
        if let Some(f) = &bios {
            // QEMU maps the firmware read-only right below 4 GiB; guest writes there exit.
            MemSlot {
                slot: 1,
                gpa: (4u64 << 30) - f.len(),
                size: f.len(),
                host: f.host_ptr() as u64,
            }
            .set_flags(&vm, kvm_bindings::KVM_MEM_READONLY)
            .map_err(kvm("KVM_SET_USER_MEMORY_REGION (pc.bios)"))?;
        }
        let irq = EventFd::new(EFD_NONBLOCK).map_err(|e| KvmError::Kvm {
            op: "eventfd",
            source: io_to_kvm(e),
        })?;
        vm.register_irqfd(&irq, SERIAL_GSI)
            .map_err(kvm("KVM_IRQFD"))?;
        let irq_clone = irq.try_clone().map_err(|e| KvmError::Kvm {
            op: "eventfd dup",
            source: io_to_kvm(e),
        })?;
        let serial = Arc::new(SerialPort::new(cfg.serial, irq_clone)?);
        let cpuid = kvm_fd
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_SUPPORTED_CPUID"))?;
        let mut vcpus = Vec::with_capacity(cfg.vcpus);
        for i in 0..cfg.vcpus {
            let fd = vm.create_vcpu(i as u64).map_err(kvm("KVM_CREATE_VCPU"))?;
            fd.set_cpuid2(&boot::cpuid_for(&cpuid, i))
                .map_err(kvm("KVM_SET_CPUID2"))?;
            vcpus.push(Arc::new(Mutex::new(fd)));
        }
        let listed = kvm_fd
            .get_msr_index_list()
            .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?;
        let msr_indices = readable_msrs(&lock(&vcpus[0]), listed.as_slice());
        let shared = Arc::new(Shared {
            vm,
            vcpus,
            msr_indices,
            _ram: ram.clone(),
            life: Mutex::new(Life {
                state: KvmState::Created { booted: false },
                run_state: RunState::Prelaunch,
                pending: Pending {
                    vcpus: vec![None; cfg.vcpus],
                    vm: Vec::new(),
                },
                snapshot: None,
                runner: None,
            }),
        });
        Ok(KvmVm {
            shared,
            ram,
            slot,
            serial,
            kernel: cfg.kernel,
            cmdline: cfg.cmdline,
            events: cfg.events,
            _irq: irq,
            _kvm: kvm_fd,
        })
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.shared.vcpus.len()
    }

    /// The guest RAM.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// The lifecycle state.
    pub fn state(&self) -> KvmState {
        let mut life = lock(&self.shared.life);
        refresh(&mut life);
        life.state.clone()
    }

    /// Why the guest stopped on its own, if it did (power off, triple fault, KVM error).
    pub fn stop_reason(&self) -> Option<StopReason> {
        match self.state() {
            KvmState::Stopped(r) => Some(r),
            _ => None,
        }
    }

    /// Loads the kernel (PVH) and the boot data and sets up vCPU 0. Only on a fresh VM that
    /// has not loaded migrated state; a migration destination never boots.
    pub fn boot(&self) -> Result<(), KvmError> {
        let mut life = lock(&self.shared.life);
        let has_pending =
            life.pending.vcpus.iter().any(Option::is_some) || !life.pending.vm.is_empty();
        if life.state != (KvmState::Created { booted: false }) || has_pending {
            return Err(KvmError::BadState {
                op: "boot",
                state: format!("{:?}", life.state),
            });
        }
        let image = match &self.kernel {
            KernelImage::Payload => std::borrow::Cow::Borrowed(payload::PAYLOAD_ELF),
            KernelImage::Bytes(b) => std::borrow::Cow::Borrowed(b.as_slice()),
            KernelImage::Path(p) => {
                std::borrow::Cow::Owned(std::fs::read(p).map_err(|source| {
                    KvmError::KernelFile {
                        path: p.display().to_string(),
                        source,
                    }
                })?)
            }
        };
        let block = &self.ram.blocks()[0];
        let entry = boot::load(block, &image, &self.cmdline)?;
        boot::setup_boot_vcpu(&lock(&self.shared.vcpus[0]), entry)?;
        life.state = KvmState::Created { booted: true };
        Ok(())
    }

    /// Starts the vCPU threads: after [`boot`](Self::boot), or on a destination after its
    /// state was loaded (applied here, before any vCPU runs). Also resumes a paused VM.
    pub fn start(&self) -> Result<(), KvmError> {
        let mut life = lock(&self.shared.life);
        match life.state.clone() {
            KvmState::Running => Ok(()),
            KvmState::Paused => self.resume_locked(&mut life),
            KvmState::Stopped(r) => Err(KvmError::BadState {
                op: "start",
                state: format!("stopped ({r:?})"),
            }),
            KvmState::Created { booted } => {
                let pending = std::mem::take(&mut life.pending);
                let migrated = pending.vcpus.iter().all(Option::is_some);
                if !booted && !migrated {
                    life.pending = pending;
                    return Err(KvmError::BadState {
                        op: "start",
                        state: "neither booted nor loaded with the state of every vCPU".into(),
                    });
                }
                if !booted {
                    if let Err(e) = self.rebuild_slot() {
                        life.pending = pending;
                        return Err(e);
                    }
                }
                if let Err(e) = self.shared.apply_pending(&pending) {
                    life.pending = pending;
                    return Err(e);
                }
                let runner = Runner::spawn(&self.shared.vcpus, self.serial.clone())?;
                life.runner = Some(runner);
                life.state = KvmState::Paused;
                self.resume_locked(&mut life)
            }
        }
    }

    /// A migrated VM registers its memory slot again before its first vCPU runs, on the
    /// mapping the migration left (a handed-over memfd, see `slot`). Skipped while a dirty
    /// log runs (a destination migrating on before it ever ran): deleting the slot would lose
    /// the pages logged so far, and KVM follows the mapping anyway.
    fn rebuild_slot(&self) -> Result<(), KvmError> {
        let logging = self.ram.blocks().iter().any(|b| b.vmm_dirty().is_active());
        if logging {
            return Ok(());
        }
        self.slot
            .rebuild(&self.shared.vm)
            .map_err(kvm("KVM_SET_USER_MEMORY_REGION (rebuild)"))
    }

    fn resume_locked(&self, life: &mut Life) -> Result<(), KvmError> {
        let Some(runner) = &life.runner else {
            return Err(KvmError::BadState {
                op: "resume",
                state: format!("{:?}", life.state),
            });
        };
        if let Err(r) = runner.resume() {
            life.state = KvmState::Stopped(r.clone());
            return Err(KvmError::BadState {
                op: "resume",
                state: format!("stopped ({r:?})"),
            });
        }
        life.snapshot = None;
        life.state = KvmState::Running;
        Ok(())
    }

    /// Stops every vCPU; returns once all have left `KVM_RUN` (so a dirty-log sync afterwards
    /// sees every guest write) and their state was captured for the device sections.
    pub fn pause(&self) -> Result<(), KvmError> {
        let mut life = lock(&self.shared.life);
        let Some(runner) = &life.runner else {
            return Ok(());
        };
        runner.pause();
        let stop = runner.control().stop_reason();
        let snap = self.shared.capture()?;
        life.snapshot = Some(snap);
        life.state = match stop {
            Some(r) => KvmState::Stopped(r),
            None => KvmState::Paused,
        };
        Ok(())
    }

    /// Resumes a paused VM.
    pub fn resume(&self) -> Result<(), KvmError> {
        let mut life = lock(&self.shared.life);
        refresh(&mut life);
        match life.state {
            KvmState::Paused => self.resume_locked(&mut life),
            KvmState::Running => Ok(()),
            ref s => Err(KvmError::BadState {
                op: "resume",
                state: format!("{s:?}"),
            }),
        }
    }

    /// Waits up to `timeout` for the guest to stop on its own (power off, triple fault, error).
    pub fn wait_stopped(&self, timeout: Duration) -> Option<StopReason> {
        let control = lock(&self.shared.life)
            .runner
            .as_ref()
            .map(|r| r.control().clone())?;
        let r = control.wait_stopped(timeout)?;
        let mut life = lock(&self.shared.life);
        if let Some(runner) = &life.runner {
            runner.pause();
        }
        life.state = KvmState::Stopped(r.clone());
        Some(r)
    }

    /// The KVM dirty log of the RAM slot (merged with the VMM's own writes). Only one may be
    /// started at a time.
    pub fn dirty_log(&self) -> Box<dyn DirtyLog> {
        Box::new(KvmDirtyLog::new(
            self.shared.vm.clone(),
            self.ram.clone(),
            self.slot,
        ))
    }

    /// The device sections to register, as `(idstr, instance, device)`, in registration order:
    /// `kvmclock`, `kvm-pit`, `kvm-irqchip`, `kvm-serial` (instance 0), then `kvm-cpu`
    /// (instance = vCPU index).
    pub fn devices(&self) -> Vec<(String, u32, Box<dyn DeviceState>)> {
        let mut out: Vec<(String, u32, Box<dyn DeviceState>)> = VmSection::ALL
            .iter()
            .map(|&section| {
                let d: Box<dyn DeviceState> = Box::new(VmDevice {
                    shared: self.shared.clone(),
                    section,
                });
                (section.idstr().to_owned(), 0, d)
            })
            .collect();
        out.push((
            "kvm-serial".into(),
            0,
            Box::new(SerialDevice(self.serial.clone())),
        ));
        for index in 0..self.vcpu_count() {
            out.push((
                "kvm-cpu".into(),
                index as u32,
                Box::new(CpuDevice {
                    shared: self.shared.clone(),
                    index,
                }),
            ));
        }
        out
    }

    /// Everything the guest printed (with [`SerialSink::Buffer`]; empty otherwise).
    pub fn serial_output(&self) -> Vec<u8> {
        self.serial.output()
    }

    fn emit(&self, e: Event) {
        if let Some(bus) = &self.events {
            bus.emit(e);
        }
    }
}

impl VmControl for KvmVm {
    fn run_state(&self) -> RunState {
        let mut life = lock(&self.shared.life);
        refresh(&mut life);
        match life.state {
            KvmState::Stopped(_) => RunState::Shutdown,
            _ => life.run_state,
        }
    }

    fn vm_stop(&self, state: RunState) -> Result<bool, VmError> {
        let was_running = lock(&self.shared.life).state == KvmState::Running;
        self.pause().map_err(|e| VmError::Stop(Box::new(e)))?;
        lock(&self.shared.life).run_state = state;
        if was_running {
            self.emit(Event::Stop);
        }
        Ok(was_running)
    }

    fn vm_start(&self) -> Result<(), VmError> {
        self.start().map_err(|e| VmError::Start(Box::new(e)))?;
        lock(&self.shared.life).run_state = RunState::Running;
        self.emit(Event::Resume);
        Ok(())
    }

    fn set_run_state(&self, state: RunState) {
        lock(&self.shared.life).run_state = state;
    }
}

impl Drop for KvmVm {
    fn drop(&mut self) {
        // Join the vCPU threads before the VM fd and the RAM go away.
        let runner = lock(&self.shared.life).runner.take();
        drop(runner);
    }
}

pub(crate) fn io_to_kvm(e: std::io::Error) -> kvm_ioctls::Error {
    kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poweroff_protocol_matches_the_payload() {
        assert_eq!(POWEROFF_PORT, payload::POWEROFF_PORT);
        assert_eq!(POWEROFF_VALUE, payload::POWEROFF_VALUE);
        assert_eq!(SERIAL_BASE, payload::SERIAL_PORT);
    }
}
