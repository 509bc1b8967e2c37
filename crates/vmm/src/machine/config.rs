//! How a machine is described ([`MachineConfig`]) and how its operations fail
//! ([`MachineError`], with QEMU's texts where QEMU has one).

use block::DriveSpec;
use guest_ram::Backing;
use migration::MigrationError;

use crate::kvm::{KernelImage, KvmError};
use crate::soft::{self, WorkloadConfig};

/// Which machine the VM presents on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MachineType {
    /// livemig's software machine: one RAM block `pc.ram`, a `soft-cpu` section per vCPU.
    #[default]
    Soft,
    /// What QEMU 7.2's `-M none` presents: RAM block `ram`, `timer` and `globalstate`
    /// (interop with QEMU); the software guest's vCPU state is not migrated.
    None,
    /// What QEMU 7.2's `microvm` machine presents on KVM (`crate::kvm::microvm`): RAM blocks
    /// `microvm.ram` and `pc.bios`, QEMU's device sections. KVM only.
    Microvm,
}

impl MachineType {
    /// Machine type name in the configuration record.
    pub fn wire_name(self) -> &'static str {
        match self {
            Self::Soft => "livemig-soft",
            Self::None => "none",
            Self::Microvm => "microvm",
        }
    }

    /// Name of the main RAM block.
    pub fn ram_block_name(self) -> &'static str {
        match self {
            Self::Soft => "pc.ram",
            Self::None => "ram",
            Self::Microvm => crate::kvm::microvm::RAM_BLOCK,
        }
    }
}

/// How to build a machine.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Machine type.
    pub machine: MachineType,
    /// Guest RAM size in bytes.
    pub memory: u64,
    /// RAM backing.
    pub backing: Backing,
    /// The software guest's workload; None: no vCPU runs (an idle guest).
    pub workload: Option<WorkloadConfig>,
    /// Bytes of RAM filled with pseudo-random data (and some zero pages) at boot.
    pub fill: u64,
    /// What the filled pages hold.
    pub fill_pattern: crate::soft::FillPattern,
    /// `-S`: do not start the vCPUs.
    pub start_paused: bool,
    /// Started with `--incoming`: wait for a migration instead of booting.
    pub incoming: bool,
    /// Software vCPUs or KVM.
    pub accel: Accel,
    /// KVM: kernel to boot (PVH ELF).
    pub kernel: KernelImage,
    /// KVM: kernel command line; None = the payload's, derived from `kvm_payload`.
    pub cmdline: Option<String>,
    /// KVM: where the serial port writes.
    pub serial: SerialTarget,
    /// Disks (`--drive`).
    pub drives: Vec<DriveSpec>,
    /// A writer thread per disk standing in for the guest's disk I/O; None = disks stay idle.
    pub disk_workload: Option<DiskWorkload>,
    /// The VM's UUID (`--uuid`, QEMU's `-uuid`): `query-uuid`, and `validate-uuid`.
    pub uuid: Option<migration::uuid::VmUuid>,
    /// `--mem-prealloc` (QEMU's `-mem-prealloc`): allocate all of RAM at start.
    pub prealloc: bool,
}

/// The accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// Software vCPU threads writing RAM (no KVM needed).
    #[default]
    Soft,
    /// A KVM VM booting a real kernel (the guest payload by default).
    Kvm,
}

/// Where a KVM guest's serial port goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialTarget {
    /// Discarded.
    #[default]
    Null,
    /// Standard output.
    Stdout,
    /// A file.
    File(std::path::PathBuf),
    /// A unix socket someone listens on (connected at start).
    Unix(std::path::PathBuf),
    /// Kept in memory (tests).
    Buffer,
}

/// What each disk writer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskWorkload {
    /// Bytes at the start of each disk that are written.
    pub region: u64,
    /// Writes (4 KiB) per second; 0 = unlimited.
    pub rate: u64,
    /// Random placement (else sequential).
    pub random: bool,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            machine: MachineType::Soft,
            memory: 256 << 20,
            backing: Backing::Anonymous,
            workload: None,
            fill: 0,
            fill_pattern: crate::soft::FillPattern::Random,
            start_paused: false,
            incoming: false,
            accel: Accel::Soft,
            kernel: KernelImage::Payload,
            cmdline: None,
            serial: SerialTarget::Null,
            drives: Vec::new(),
            disk_workload: None,
            uuid: None,
            prealloc: false,
        }
    }
}

/// Errors of machine operations; the texts are QEMU's where QEMU has one.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The RAM could not be created.
    #[error("cannot create guest RAM")]
    Ram(#[from] guest_ram::Error),
    /// The software guest could not start.
    #[error("cannot start the software guest")]
    Guest(#[from] soft::Error),
    /// The KVM VM could not be created or booted.
    #[error("cannot start the KVM guest")]
    Kvm(#[from] KvmError),
    /// The serial port's socket could not be connected.
    #[error("cannot connect the serial port to {0}")]
    Serial(String, #[source] std::io::Error),
    /// A disk could not be opened.
    #[error("cannot open the disks")]
    Block(#[from] block::BlockError),
    /// A migration is running.
    #[error("There's a migration process in progress")]
    InProgress,
    /// `object-add` / `object-del` / `--object` failed (QEMU's texts where it has them).
    #[error(transparent)]
    Object(transport::tls::TlsError),
    /// The source already migrated successfully.
    #[error("Can't migrate the vm that was paused due to previous migration")]
    Postmigrate,
    /// The VM waits for an incoming migration.
    #[error("Guest is waiting for an incoming migration")]
    Inmigrate,
    /// Bad URI.
    #[error("Parameter 'uri' expects a valid migration protocol")]
    BadUri(#[source] transport::UriError),
    /// Incoming URI not understood.
    #[error("unknown migration protocol: {0}")]
    BadIncomingUri(String),
    /// `migrate-incoming` without `--incoming`.
    #[error("'-incoming' was not specified on the command line")]
    NotIncoming,
    /// `migrate-incoming` twice.
    #[error("The incoming migration has already been started")]
    IncomingStarted,
    /// The migration failed to start.
    #[error(transparent)]
    Migration(#[from] MigrationError),
    /// vCPU control failed.
    #[error("VM control failed")]
    Vm(#[from] migration::VmError),
    /// A migration thread could not start.
    #[error("cannot start the migration thread")]
    Spawn(#[source] std::io::Error),
}
