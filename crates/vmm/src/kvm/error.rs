//! Errors of the KVM VMM.

use std::io;

/// What can go wrong creating, booting or running a [`super::KvmVm`].
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` could not be opened or a KVM ioctl failed.
    #[error("KVM ioctl {op} failed")]
    Kvm {
        /// The operation (ioctl name).
        op: &'static str,
        /// The error from the kernel.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The guest RAM layout is not supported.
    #[error("unsupported guest RAM layout: {0}")]
    RamLayout(String),
    /// The kernel image could not be read.
    #[error("cannot read the kernel image {path}")]
    KernelFile {
        /// Path given in the configuration.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// linux-loader rejected the kernel image.
    #[error("cannot load the kernel ELF")]
    Load(#[source] linux_loader::loader::Error),
    /// The kernel has no PVH entry note.
    #[error("the kernel ELF has no PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY note)")]
    NoPvhEntry,
    /// Writing boot data (start info, memory map, command line) into guest RAM failed.
    #[error("cannot write the PVH boot data into guest RAM: {0}")]
    BootData(String),
    /// The command line is too long.
    #[error("kernel command line is {len} bytes long, at most {max} are supported")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Opening the serial output failed.
    #[error("cannot open the serial output {path}")]
    SerialFile {
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A vCPU thread could not be spawned.
    #[error("cannot start vCPU thread {index}")]
    Thread {
        /// vCPU index.
        index: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The operation is not valid in the VM's current lifecycle state.
    #[error("cannot {op} a VM that is {state}")]
    BadState {
        /// The operation.
        op: &'static str,
        /// The current state.
        state: String,
    },
    /// Applying a migrated state to KVM failed.
    #[error("cannot apply the migrated state of {what}")]
    Restore {
        /// Which state (e.g. `vCPU 0 MSRs`).
        what: String,
        /// The error from the kernel.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A migrated state is not valid for this VM.
    #[error("migrated state of {what} is invalid: {reason}")]
    InvalidState {
        /// Which state.
        what: String,
        /// Why.
        reason: String,
    },
}

/// Shorthand to wrap a kvm-ioctls error.
pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Kvm { op, source }
}
