//! [`PostcopyError`]: the ways postcopy fails, with QEMU 7.2's texts where an operator sees
//! them.

/// Errors of postcopy, on either side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostcopyError {
    /// `migrate-start-postcopy` without the capability.
    #[error("Enable postcopy with migrate_set_capability before the start of migration")]
    NotEnabled,
    /// `migrate-start-postcopy` with no migration running.
    #[error("Postcopy must be started after migration has been started")]
    NotStarted,
    /// Postcopy needs the destination to answer, on the same connection.
    #[error("postcopy needs a return path, and this transport has no reverse direction")]
    NoReturnPath,
    /// The source advised postcopy RAM, but the capability is off here.
    #[error("the source advised postcopy-ram, but the capability is off on the destination")]
    NotEnabledHere,
    /// Page sizes differ.
    #[error("Postcopy needs matching RAM page sizes (s={remote:#x} d={local:#x})")]
    PageSizes {
        /// The source's summary.
        remote: u64,
        /// Ours.
        local: u64,
    },
    /// Target page sizes differ.
    #[error("Postcopy needs matching target page sizes (s={remote} d={local})")]
    TargetPageSize {
        /// The source's.
        remote: u64,
        /// Ours.
        local: u64,
    },
    /// This host cannot catch missing pages of the guest's RAM.
    #[error("postcopy is not possible on this destination: its RAM cannot be registered with userfaultfd")]
    Unavailable(#[source] guest_ram::Error),
    /// A command came in an order QEMU never sends.
    #[error("postcopy command {command} in the wrong state ({phase})")]
    OutOfOrder {
        /// The command.
        command: &'static str,
        /// The phase the destination was in.
        phase: &'static str,
    },
    /// A PACKAGED command inside a package.
    #[error("a PACKAGED command inside a package")]
    NestedPackage,
    /// The package ended before RUN.
    #[error("the postcopy package ended without POSTCOPY_RUN")]
    PackageWithoutRun,
    /// A discard range outside its block or not page aligned.
    #[error("bad discard range {start:#x}+{len:#x} in RAM block '{block}'")]
    BadDiscard {
        /// The block.
        block: String,
        /// Start byte.
        start: u64,
        /// Length.
        len: u64,
    },
    /// A page request the source cannot serve.
    #[error("bad page request {start:#x}+{len:#x} for RAM block '{block}': {why}")]
    BadRequest {
        /// The block.
        block: String,
        /// Start byte.
        start: u64,
        /// Length.
        len: u32,
        /// What is wrong.
        why: &'static str,
    },
    /// REQ_PAGES before any REQ_PAGES_ID named a block.
    #[error("a page request without a block name before any named one")]
    RequestWithoutBlock,
    /// The destination went away after the guest started there.
    #[error("the destination closed the return path during postcopy: the guest ran there and its RAM is incomplete; the source stays paused")]
    LostAfterSwitch,
    /// The source's stream failed after the guest started here.
    #[error("postcopy failed after the guest started on this destination: its RAM is incomplete, the guest is stopped")]
    FailedAfterRun(#[source] Box<crate::MigrationError>),
    /// `migrate` with `resume` while no postcopy is paused (QEMU 7.2's text).
    #[error("Cannot resume if there is no paused migration")]
    NothingToResume,
    /// `migrate-recover` outside `postcopy-paused` (QEMU 7.2's text).
    #[error("Migrate recover can only be run when postcopy is paused.")]
    RecoverNotPaused,
    /// `migrate-pause` outside `postcopy-active` (QEMU 7.2's text).
    #[error("migrate-pause is currently only supported during postcopy-active state")]
    PauseNotActive,
    /// The destination named a block the source does not migrate in its RECV_BITMAP.
    #[error("received-pages bitmap for unknown RAM block '{0}'")]
    RecvBitmapBlock(String),
    /// A received-pages bitmap whose size does not fit the block.
    #[error("ramblock '{block}' bitmap size mismatch ({got:#x} != {want:#x})")]
    RecvBitmapSize {
        /// The block.
        block: String,
        /// Bytes received.
        got: u64,
        /// Bytes the block needs.
        want: u64,
    },
    /// A received-pages bitmap not followed by the end marker.
    #[error("ramblock '{block}' end mark incorrect: {found:#x}")]
    RecvBitmapEnd {
        /// The block.
        block: String,
        /// The be64 found instead.
        found: u64,
    },
    /// A RESUME_ACK with another value than 1.
    #[error("illegal resume_ack value {0}")]
    BadResumeAck(u32),
    /// The link broke in the background phase: the migration is paused.
    #[error("postcopy paused: the link to the {peer} broke; the guest runs on the {runs}, waiting for {waits}")]
    LinkBroken {
        /// "source" or "destination".
        peer: &'static str,
        /// Where the guest runs: "destination" or "destination (here)".
        runs: &'static str,
        /// The command that resumes it.
        waits: &'static str,
        /// What broke.
        #[source]
        cause: Box<crate::MigrationError>,
    },
    /// A recovery attempt failed: the migration is paused again.
    #[error("postcopy recovery over {uri} failed; still paused")]
    RecoveryFailed {
        /// Where the attempt went.
        uri: String,
        /// Why.
        #[source]
        cause: Box<crate::MigrationError>,
    },
    /// A recovery message from the peer at a time it makes no sense.
    #[error("unexpected {0} during postcopy recovery")]
    UnexpectedRecoveryMessage(&'static str),
}
