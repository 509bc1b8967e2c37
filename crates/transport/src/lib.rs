//! Migration transports: parsing migration URIs and opening the byte channels that carry
//! the migration stream.
//!
//! The source calls [`connect()`] with the URI given to `migrate` and writes the stream to
//! [`Channel::writer`]; the destination calls [`listen()`] with the URI given to
//! `migrate-incoming`, then [`Listener::accept`], and reads [`Channel::reader`]. Supported
//! schemes: `tcp:`, `unix:`, `fd:`, `exec:`, `file:` (see [`uri`] for the syntax and
//! [`connect`](mod@connect) / [`listen`](mod@listen) for what each does).
//!
//! `migrate_cancel` interrupts a migration thread blocked in a read or write with
//! [`ShutdownHandle::shutdown`] (see [`shutdown`](mod@shutdown) for how).
//!
//! System calls that neither `std` nor `vmm-sys-util` wraps safely (`poll`, receiving
//! `SCM_RIGHTS` descriptors, socket I/O with per-call flags, process groups) live in
//! [`sys`], the only module with `unsafe` code; `monitor` uses it too.
//!
//! ```
//! use std::io::{Read, Write};
//! use transport::{connect, Listener, NoFds};
//!
//! let listener = Listener::from_tcp(std::net::TcpListener::bind("127.0.0.1:0")?)?;
//! let uri = listener.local_description().parse()?; // e.g. tcp:127.0.0.1:41811
//! let mut source = connect(&uri, &NoFds)?;
//! let mut dest = listener.accept()?;
//! source.writer.write_all(b"QEVM")?;
//! source.finish()?; // the destination now sees the end of the stream
//! let mut stream = Vec::new();
//! dest.reader.read_to_end(&mut stream)?;
//! assert_eq!(stream, b"QEVM");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]
// All system calls without a safe wrapper in `std` or `vmm-sys-util` live in `sys`.
#![deny(unsafe_code)]

mod channel;
pub mod connect;
mod endpoint;
mod error;
mod exec;
mod fds;
pub mod listen;
pub mod shutdown;
#[allow(unsafe_code)]
pub mod sys;
#[doc(hidden)]
pub mod test_support;
pub mod tls;
mod unix_bind;
pub mod uri;
pub mod zero_copy;

pub use channel::{Channel, ChannelReader, ChannelWriter, FdSlot, UnsentProbe};
pub use connect::{connect, CONNECT_TIMEOUT};
pub use error::TransportError;
pub use fds::{FdSource, NoFds};
pub use listen::{listen, Listener, SocketAddress};
pub use shutdown::{is_shutdown_error, ChannelShutDown, ShutdownHandle};
pub use uri::{MigrationUri, UriError, UriErrorReason};
pub use zero_copy::{ZeroCopyUnsupported, ZeroCopyWriter};

#[cfg(test)]
mod tests {
    /// The migration thread, the monitor and a return-path thread share these across
    /// threads.
    #[test]
    fn handles_are_thread_safe() {
        fn send<T: Send>() {}
        fn send_sync_clone<T: Send + Sync + Clone>() {}
        send::<crate::Channel>();
        send::<crate::ChannelReader>();
        send::<crate::ChannelWriter>();
        send::<crate::Listener>();
        send_sync_clone::<crate::ShutdownHandle>();
    }
}
