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
    /// Postcopy failed (see [`PostcopyError`](crate::postcopy::PostcopyError)).
    #[error(transparent)]
    Postcopy(#[from] crate::postcopy::PostcopyError),
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
    /// A validated capability (`x-ignore-shared`) is on on one side only (QEMU's wording,
    /// from the local side's point of view).
    #[error("Capability {name} is {}, but received capability is {}", on_off(*.local), on_off(*.remote))]
    CapabilityMismatch {
        /// Capability name.
        name: String,
        /// On here.
        local: bool,
        /// On in the stream's configuration record.
        remote: bool,
    },
    /// The configuration record lists a capability name this side does not know.
    #[error("Received unknown capability {0}")]
    UnknownCapability(String),
    /// `x-ignore-shared`: a block both sides skip is at another guest physical address.
    #[error("Mismatched GPAs for block {block}: {remote:#x} in:{local:#x}")]
    SharedBlockAddress {
        /// Block name.
        block: String,
        /// Address in the stream.
        remote: u64,
        /// Our address.
        local: u64,
    },
    /// `x-ignore-shared`: the stream sent a page of a block this side maps shared and skips.
    #[error("block {0} should not be migrated (x-ignore-shared: it is shared memory here)")]
    IgnoredBlockPage(String),
    /// `x-local-handover` on a channel that cannot carry descriptors.
    #[error(
        "x-local-handover needs a unix: migration channel (descriptors cannot travel on this one)"
    )]
    HandoverTransport,
    /// `x-local-handover`: the source could not duplicate a RAM descriptor.
    #[error("cannot hand the RAM descriptors over")]
    Handover(#[source] std::io::Error),
    /// `x-local-handover` without `x-ignore-shared`.
    #[error(
        "x-local-handover needs x-ignore-shared on (the handed-over RAM must not be sent too)"
    )]
    HandoverNeedsIgnoreShared,
    /// The source handed over another number of memory descriptors than this VM has memfd
    /// RAM blocks (0 expected with `x-local-handover` off).
    #[error("the source handed over {received} memory descriptor(s), this VM expects {expected} (x-local-handover is {})", on_off(*.handover))]
    HandoverCount {
        /// Memfd blocks here (0 with the capability off).
        expected: usize,
        /// Descriptors that came with the stream.
        received: usize,
        /// The capability is on here.
        handover: bool,
    },
    /// `x-ignore-shared`: this side's block is a memfd of its own, which no other process
    /// maps; skipping it would start the guest on zeroed memory.
    #[error("block {0} is a memfd of this process: x-ignore-shared needs a file both processes map (--backing file:PATH) or the memfd handed over")]
    SharedBlockNotReachable(String),
    /// `validate-uuid`: the stream comes from a VM with another UUID (QEMU's text).
    #[error("UUID received is {remote} and local is {local}")]
    UuidMismatch {
        /// The source's UUID.
        remote: crate::uuid::VmUuid,
        /// Ours.
        local: crate::uuid::VmUuid,
    },
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
    /// The destination reported success but the source closed without its switchover commit:
    /// the source kept the guest (it cancelled or lost the connection), so it is not started
    /// here.
    #[error("the source did not confirm the switchover (it cancelled or lost the connection): the guest stays with the source")]
    NoSwitchoverCommit,
    /// `ram-verify` is on here, but the stream carried no digest to check RAM against.
    #[error("the stream has no ram-verify section, but ram-verify is on: RAM cannot be checked")]
    VerifyMissing,
    /// `ram-verify`: a RAM block's digest differs after loading.
    #[error("RAM block '{0}' differs from the source after migration (ram-verify)")]
    VerifyMismatch(String),
    /// `ram-verify` with block migration: a drive's digest differs after loading.
    #[error("drive '{0}' differs from the source after migration (ram-verify)")]
    DiskVerifyMismatch(String),
    /// `ram-verify` is on and disks were migrated, but the stream carried no disk digest.
    #[error("the stream copied disks without a disk-verify section, but ram-verify is on: disks cannot be checked")]
    DiskVerifyMissing,
    /// A device rejected its incoming state.
    #[error("device '{idstr}' rejected its state: {reason}")]
    DeviceLoad {
        /// Device idstr.
        idstr: String,
        /// Why.
        reason: String,
    },
    /// A device cannot save its state (its `pre_save` failed); the source keeps the guest.
    #[error("device '{idstr}' cannot save its state: {reason}")]
    DeviceSave {
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
    /// `zero-copy-send` on a socket that cannot send zero-copy (QEMU's text).
    #[error("Zero copy send feature not detected in host kernel")]
    ZeroCopyUnsupported(#[source] Box<transport::ZeroCopyUnsupported>),
    /// A multifd channel's hello carries another VM's UUID.
    #[error("multifd channel UUID does not match this VM")]
    MultifdUuid,
    /// Two multifd channels have the same id (QEMU's text).
    #[error("received id '{0}' already setup")]
    MultifdDuplicateChannel(usize),
    /// A multifd channel id beyond `multifd-channels`.
    #[error("multifd channel id {0} out of range")]
    MultifdChannelRange(usize),
    /// The source closed its main channel before it connected every multifd channel.
    #[error("the source closed the migration stream after {connected} of {expected} multifd channels connected")]
    MultifdSourceGone {
        /// Channels accepted so far.
        connected: usize,
        /// `multifd-channels`.
        expected: usize,
    },
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

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}
