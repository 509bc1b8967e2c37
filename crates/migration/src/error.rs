//! [`MigrationError`]: every way a migration can fail, matchable by callers (cancelled, peer
//! closed, version mismatch, ...).

/// Errors of the migration engine.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The stream could not be written or parsed.
    #[error("migration stream error")]
    Stream(#[from] savevm::Error),
    /// The transport failed (connect, listen, accept, exec child).
    #[error("migration transport error")]
    Transport(#[from] transport::TransportError),
    /// Guest RAM or dirty tracking failed.
    #[error("guest RAM error")]
    Ram(#[from] guest_ram::Error),
    /// Another migration (outgoing or incoming) is using the VM.
    #[error("There's a migration process in progress")]
    InProgress,
    /// `migrate_cancel` was requested.
    #[error("migration was cancelled")]
    Cancelled,
    /// A section names a handler this VM does not have.
    #[error(
        "Unknown savevm section or instance '{idstr}' {instance_id}. Make sure that your \
         current VM setup matches your saved VM setup, including any hotplugged devices"
    )]
    UnknownSection {
        /// Section idstr.
        idstr: String,
        /// Instance id.
        instance_id: u32,
    },
    /// A PART/END section refers to a section id never opened.
    #[error("Unknown savevm section {0}")]
    UnknownSectionId(u32),
    /// A section's version is newer than ours.
    #[error("savevm: unsupported version {version} for '{idstr}' v{local}")]
    UnsupportedVersion {
        /// Section idstr.
        idstr: String,
        /// Version in the stream.
        version: u32,
        /// Our version.
        local: u32,
    },
    /// The stream was made for another machine type.
    #[error("Machine type received is '{remote}' and local is '{local}'")]
    MachineMismatch {
        /// Name in the stream.
        remote: String,
        /// Our machine type.
        local: String,
    },
    /// The configuration record lists a capability this side does not have on.
    #[error("Capability {0} is off, but received capability is on")]
    CapabilityMismatch(String),
    /// The stream names a RAM block this VM does not have.
    #[error("Unknown ramblock \"{0}\", cannot accept migration")]
    UnknownRamBlock(String),
    /// A RAM block differs in size.
    #[error("Length mismatch: {name}: {remote:#x} in:{local:#x}")]
    RamBlockSize {
        /// Block name.
        name: String,
        /// Size in the stream.
        remote: u64,
        /// Local size.
        local: u64,
    },
    /// The MEM_SIZE block list disagrees with the local RAM layout.
    #[error("RAM layout mismatch: {0}")]
    RamLayout(String),
    /// A RAM record addresses memory outside its block.
    #[error("Illegal RAM offset {offset:#x} in block '{block}'")]
    IllegalRamOffset {
        /// Block name.
        block: String,
        /// Offending offset.
        offset: u64,
    },
    /// A RAM record came before any block was named.
    #[error("RAM record without a block at stream offset {0}")]
    NoRamBlock(u64),
    /// An XBZRLE record arrived (this receiver does not decode them yet in this position).
    #[error("received an unexpected RAM record type: {0}")]
    UnexpectedRamRecord(&'static str),
    /// `ram-verify` is on here, but the stream carried no digest to check RAM against.
    #[error("the stream has no ram-verify section, but ram-verify is on: RAM cannot be checked")]
    VerifyMissing,
    /// `ram-verify`: a RAM block's digest differs after loading.
    #[error("RAM block '{0}' differs from the source after migration (ram-verify)")]
    VerifyMismatch(String),
    /// A device rejected its incoming state.
    #[error("device '{idstr}' rejected its state: {reason}")]
    DeviceLoad {
        /// Device idstr.
        idstr: String,
        /// Why.
        reason: String,
    },
    /// The source asked for a return path over a transport that has no reverse direction.
    #[error("the source asked for a return path, but this transport has none")]
    NoReturnPathTransport,
    /// A PING command arrived before the source opened the return path.
    #[error("received PING but no return path is open")]
    PingWithoutReturnPath,
    /// A PING command whose value is not 4 bytes.
    #[error("PING command without a 4-byte value")]
    BadPing,
    /// A migration command (QEMU_VM_COMMAND) livemig does not implement.
    #[error("migration command {0} is not supported by livemig")]
    UnsupportedCommand(u16),
    /// The destination closed the return path before it reported how loading ended.
    #[error("the destination closed the return path without reporting")]
    ReturnPathClosed,
    /// Multifd over a transport with a single connection (exec:, fd:, file:).
    #[error("multifd is not supported by current protocol")]
    MultifdTransport,
    /// A multifd compression method livemig does not implement.
    #[error("multifd compression '{0}' is not supported by livemig")]
    MultifdCompression(String),
    /// A multifd packet says it is compressed.
    #[error("multifd compression is not supported")]
    MultifdCompressedPacket,
    /// A multifd channel's hello carries another VM's UUID.
    #[error("multifd channel UUID does not match this VM")]
    MultifdUuid,
    /// Two multifd channels have the same id (QEMU's text).
    #[error("received id '{0}' already setup")]
    MultifdDuplicateChannel(usize),
    /// A multifd channel id beyond `multifd-channels`.
    #[error("multifd channel id {0} out of range")]
    MultifdChannelRange(usize),
    /// A multifd channel thread ended before its work was done.
    #[error("a multifd channel thread ended early")]
    MultifdThreadEnded,
    /// `migrate -b`/`-i` options refused (QEMU's text).
    #[error(transparent)]
    BlockOptions(crate::block::error::BlockMigrationError),
    /// Block migration failed on the source.
    #[error("block migration failed")]
    BlockSave(#[source] crate::block::error::BlockMigrationError),
    /// Block migration failed on the destination.
    #[error("block migration failed on the destination")]
    BlockLoad(#[source] crate::block::error::BlockMigrationError),
    /// The destination reported on the return path that it could not load the stream.
    #[error("the destination failed to load the migration (return-path status {0})")]
    DestinationFailed(u32),
    /// Stopping or resuming the VM failed.
    #[error("VM control failed")]
    Vm(#[from] crate::vm::VmError),
    /// `tls-creds` names credentials this VM does not have (QEMU's text): the migration
    /// fails, never plain text instead.
    #[error("No TLS credentials with id '{0}'")]
    TlsCredsNotFound(String),
    /// `tls-authz` names no `authz-simple` object of this VM.
    #[error("No authorization object with id '{0}'")]
    TlsAuthzNotFound(String),
    /// The TLS credentials cannot be used for this migration (wrong endpoint, no hostname).
    #[error("TLS setup failed")]
    Tls(#[source] transport::tls::TlsError),
    /// Memory sized by a parameter or a peer could not be allocated; nothing was aborted.
    #[error("cannot allocate {bytes} bytes for {what}")]
    OutOfMemory {
        /// What the memory was for.
        what: &'static str,
        /// How much was asked for.
        bytes: u64,
    },
    /// A migration or channel thread could not be started.
    #[error("cannot start a migration thread")]
    Spawn(#[source] std::io::Error),
    /// The migration thread panicked (a bug); what it owned is lost.
    #[error("the migration thread panicked")]
    ThreadPanicked,
}

impl MigrationError {
    /// The full message with its chain of causes, as shown to operators.
    pub fn report(&self) -> String {
        crate::report::error_report(self)
    }
}
