//! [`BlockError`]: every way the block layer can fail.

use std::path::PathBuf;

/// Errors of the block layer.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// A `--drive` option could not be parsed.
    #[error("invalid drive option '{spec}': {reason}")]
    DriveSpec {
        /// The option text.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two drives have the same id.
    #[error("duplicate drive id '{0}'")]
    DuplicateId(String),
    /// The image could not be opened as the given format.
    #[error("cannot open '{path}' as {format}")]
    Open {
        /// Image path.
        path: PathBuf,
        /// Requested format.
        format: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process uses the image in a way that conflicts with ours (QEMU's image locking,
    /// see `lock`): a QEMU VM, `qemu-io`, `qemu-img` or another livemig has it open.
    #[error("failed to get {lock} lock on '{path}': is another process using the image?")]
    Locked {
        /// The image (or backing) file.
        path: PathBuf,
        /// The lock QEMU would name: `"write"`, `shared "write"`, ...
        lock: String,
    },
    /// The image's locks could not be taken or changed (not a conflict: the system call failed).
    #[error("cannot lock '{path}'")]
    Lock {
        /// The image (or backing) file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The undo journal of an incoming migration could not be written, replayed or removed.
    #[error("undo journal '{path}' failed")]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `format=raw` was given for a file that carries a qcow2 header.
    #[error("'{0}' is a qcow2 image but format=raw was given")]
    FormatMismatch(PathBuf),
    /// A request lies (partly) outside the disk.
    #[error("request {offset:#x}+{len:#x} is outside drive '{id}' of {size:#x} bytes")]
    OutOfRange {
        /// Drive id.
        id: String,
        /// Request offset.
        offset: u64,
        /// Request length.
        len: u64,
        /// Disk size.
        size: u64,
    },
    /// I/O on the image failed.
    #[error("I/O error on drive '{id}' ({what})")]
    Io {
        /// Drive id.
        id: String,
        /// The operation.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An incoming-migration operation was used in the wrong order.
    #[error("drive '{id}': {what}")]
    Staging {
        /// Drive id.
        id: String,
        /// What went wrong.
        what: &'static str,
    },
    /// The disk writer thread could not be started.
    #[error("cannot start the disk writer thread")]
    Thread(#[source] std::io::Error),
}
