//! Errors of the software guest.

/// Errors from starting, configuring or restoring a [`super::SoftGuest`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The workload has no vCPUs.
    #[error("the workload needs at least one vCPU")]
    NoVcpus,
    /// `cfg.block` does not name a RAM block.
    #[error("RAM block index {block} does not exist (the guest has {blocks} blocks)")]
    NoSuchBlock {
        /// Requested index.
        block: usize,
        /// Number of blocks.
        blocks: usize,
    },
    /// The working set is misaligned, too small or does not fit in the block.
    #[error("working set of {working_set} bytes at offset {offset} does not fit RAM block `{idstr}` of {size} bytes as whole pages, at least one per vCPU")]
    BadWorkingSet {
        /// The block.
        idstr: String,
        /// Requested offset.
        offset: u64,
        /// Requested size.
        working_set: u64,
        /// Block size.
        size: u64,
    },
    /// A write rate of zero.
    #[error("a write rate of 0 bytes/s would never write; use None for unlimited")]
    ZeroWriteRate,
    /// The saved vCPU states do not match the configuration.
    #[error("saved vCPU state does not match the workload: {reason}")]
    StateMismatch {
        /// What is wrong.
        reason: String,
    },
    /// `save_state` was called while vCPUs run.
    #[error("the software guest must be paused to save its vCPU state")]
    NotPaused,
    /// Spawning a vCPU thread failed.
    #[error("could not spawn vCPU thread {vcpu}")]
    Spawn {
        /// vCPU index.
        vcpu: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Guest RAM access failed.
    #[error("guest RAM access failed")]
    Ram(#[from] guest_ram::Error),
}
