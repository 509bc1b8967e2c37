//! The crate's error type: every variant names the migration URI it concerns; the
//! underlying I/O error, when there is one, is the `#[source]` and is not repeated in the
//! message.

use std::io;
use std::process::ExitStatus;

/// Failure to open, accept, finish or use a migration channel.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Host name resolution failed or gave no address.
    #[error("could not resolve the address of {uri}")]
    Resolve {
        /// The URI.
        uri: String,
        /// The resolver error.
        #[source]
        source: io::Error,
    },
    /// Connecting failed (refused, timed out, no such socket, …).
    #[error("could not connect to {uri}")]
    Connect {
        /// The URI.
        uri: String,
        /// The connect error (e.g. `ECONNREFUSED`).
        #[source]
        source: io::Error,
    },
    /// Binding or listening failed.
    #[error("could not listen on {uri}")]
    Listen {
        /// The URI.
        uri: String,
        /// The bind/listen error.
        #[source]
        source: io::Error,
    },
    /// Waiting for or accepting an incoming connection failed.
    #[error("could not accept a connection on {uri}")]
    Accept {
        /// The URI.
        uri: String,
        /// The accept/poll error.
        #[source]
        source: io::Error,
    },
    /// An `fd:NAME` that is not in the monitor's `getfd` table.
    #[error("file descriptor named '{name}' has not been found")]
    FdNotFound {
        /// The URI (`fd:NAME`).
        uri: String,
        /// The name that was looked up.
        name: String,
    },
    /// An incoming `fd:N` whose number does not name an open descriptor, or whose text is
    /// not a valid number.
    #[error("{uri} does not name an open file descriptor")]
    BadFdNumber {
        /// The URI (`fd:N`).
        uri: String,
        /// Why (`EBADF`, or `InvalidInput` for an out-of-range number).
        #[source]
        source: io::Error,
    },
    /// Preparing a descriptor for use (fstat, fcntl, eventfd, dup) failed.
    #[error("could not set up the channel for {uri}")]
    Setup {
        /// The URI.
        uri: String,
        /// The system call error.
        #[source]
        source: io::Error,
    },
    /// `/bin/sh -c CMD` could not be started.
    #[error("could not start the command of {uri}")]
    Spawn {
        /// The URI (`exec:CMD`).
        uri: String,
        /// The spawn error.
        #[source]
        source: io::Error,
    },
    /// Waiting for the `exec:` command failed.
    #[error("could not wait for the command of {uri}")]
    Wait {
        /// The URI (`exec:CMD`).
        uri: String,
        /// The wait error.
        #[source]
        source: io::Error,
    },
    /// The `exec:` command exited unsuccessfully (or was killed by a signal).
    #[error("the command of {uri} failed ({status})")]
    CommandFailed {
        /// The URI (`exec:CMD`).
        uri: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// Opening, truncating or seeking the file of a `file:` URI failed.
    #[error("could not open {uri}")]
    Open {
        /// The URI (`file:PATH`).
        uri: String,
        /// The open/seek error.
        #[source]
        source: io::Error,
    },
    /// Flushing or closing the stream at the end of the migration failed.
    #[error("could not finish the stream on {uri}")]
    Finish {
        /// The URI.
        uri: String,
        /// The flush/shutdown error.
        #[source]
        source: io::Error,
    },
    /// The channel or listener was shut down (`migrate_cancel`) before the operation
    /// completed.
    #[error("the migration channel {uri} was shut down")]
    Cancelled {
        /// The URI.
        uri: String,
    },
    /// The TLS session could not be set up (handshake, certificate check, authorization),
    /// or the channel is not a socket TLS can run over.
    #[error("TLS session on {uri} failed")]
    Tls {
        /// The URI.
        uri: String,
        /// What went wrong.
        #[source]
        source: crate::tls::TlsError,
    },
    /// A second channel was requested from a listener that carries a single stream
    /// (`exec:`, `fd:`, `file:`; QEMU: "multifd is not supported by current protocol").
    #[error("{uri} carries a single stream and cannot accept another channel")]
    SingleChannel {
        /// The URI.
        uri: String,
    },
}

impl TransportError {
    /// The URI the error concerns.
    pub fn uri(&self) -> &str {
        match self {
            TransportError::Resolve { uri, .. }
            | TransportError::Connect { uri, .. }
            | TransportError::Listen { uri, .. }
            | TransportError::Accept { uri, .. }
            | TransportError::FdNotFound { uri, .. }
            | TransportError::BadFdNumber { uri, .. }
            | TransportError::Setup { uri, .. }
            | TransportError::Spawn { uri, .. }
            | TransportError::Wait { uri, .. }
            | TransportError::CommandFailed { uri, .. }
            | TransportError::Open { uri, .. }
            | TransportError::Finish { uri, .. }
            | TransportError::Tls { uri, .. }
            | TransportError::Cancelled { uri }
            | TransportError::SingleChannel { uri } => uri,
        }
    }

    /// Whether the error is the result of [`ShutdownHandle::shutdown`](crate::ShutdownHandle).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, TransportError::Cancelled { .. })
    }
}
