//! [`BlockMigrationError`]: failures of block migration, carried by
//! `MigrationError::BlockSave` / `BlockLoad` across the [`LiveHandler`](crate::LiveHandler)
//! boundary.

/// Errors of block migration.
#[derive(Debug, thiserror::Error)]
pub enum BlockMigrationError {
    /// A record names a drive this VM does not have.
    #[error("Unknown block device '{0}'")]
    UnknownDevice(String),
    /// A record addresses sectors outside the drive.
    #[error("block record at sector {sector} is outside drive '{device}' of {size} bytes")]
    OutOfRange {
        /// Drive id.
        device: String,
        /// First sector of the record.
        sector: u64,
        /// Local drive size.
        size: u64,
    },
    /// The drive failed.
    #[error("block device error")]
    Disk(#[from] block::BlockError),
    /// `migrate -b`/`-i` while capability `block` or `block-incremental` is already on.
    #[error("Command options are incompatible with current migration capabilities")]
    IncompatibleOptions,
    /// Setting the capability or parameter failed.
    #[error("cannot enable block migration: {0}")]
    Enable(String),
}

impl BlockMigrationError {
    /// The message with its causes.
    pub fn report(&self) -> String {
        crate::report::error_report(self)
    }
}
