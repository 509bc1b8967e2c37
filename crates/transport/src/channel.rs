//! [`Channel`]: an open migration connection, split into a reader and a writer half.
//!
//! The source writes the migration stream through [`Channel::writer`]; the destination
//! reads it from [`Channel::reader`]. On sockets the other half is usable too (a return
//! path); on `exec:` and `file:` channels the unused half fails every call with
//! [`io::ErrorKind::Unsupported`]. Both halves are unbuffered: callers batch their writes
//! (QEMU uses a 32 KiB buffer) — a `write` is one system call.
//!
//! | URI | reader | writer | `finish` |
//! | --- | --- | --- | --- |
//! | `tcp:`, `unix:`, `fd:` socket | socket | socket | `shutdown(SHUT_WR)` so the peer sees EOF |
//! | `fd:` pipe/other | the fd | the fd | – |
//! | `exec:` outgoing | unsupported | child stdin | close stdin, wait, non-zero exit is an error |
//! | `exec:` incoming | child stdout | unsupported | wait, non-zero exit is an error |
//! | `file:` outgoing / incoming | unsupported / file | file / unsupported | – (no fsync) |
//! | socket upgraded by [`crate::tls`] | the TLS session | the TLS session | `close_notify`, then `shutdown(SHUT_WR)` |

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

use crate::endpoint::Endpoint;
use crate::exec::ChildSlot;
use crate::shutdown::{Cancel, ShutdownHandle};
use crate::tls::TlsSession;
use crate::TransportError;

/// What one half of a channel reads or writes: a descriptor, or a TLS session over a socket
/// (shared by both halves).
#[derive(Clone)]
pub(crate) enum Half {
    Plain(Arc<Endpoint>),
    Tls(Arc<TlsSession>),
}

impl Half {
    /// The plain endpoint (not under TLS): descriptor passing and zero-copy need the socket.
    fn plain(&self) -> Option<&Arc<Endpoint>> {
        match self {
            Half::Plain(ep) => Some(ep),
            Half::Tls(_) => None,
        }
    }

    fn is_socket(&self) -> bool {
        match self {
            Half::Plain(ep) => ep.is_socket(),
            Half::Tls(_) => true,
        }
    }

    fn unsent_bytes(&self) -> Option<u64> {
        match self {
            Half::Plain(ep) => ep.unsent_bytes(),
            Half::Tls(s) => s.endpoint().unsent_bytes(),
        }
    }

    fn peer_closed(&self) -> bool {
        match self {
            Half::Plain(ep) => ep.peer_closed(),
            Half::Tls(s) => s.endpoint().peer_closed(),
        }
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Half::Plain(ep) => ep.read(buf),
            Half::Tls(s) => s.read(buf),
        }
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Half::Plain(ep) => ep.write(buf),
            Half::Tls(s) => s.write(buf),
        }
    }

    fn write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Half::Plain(ep) => ep.write_vectored(bufs),
            Half::Tls(s) => s.write_vectored(bufs),
        }
    }

    /// Ends the outgoing direction: `close_notify` first on TLS, then `shutdown(SHUT_WR)`.
    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Half::Plain(ep) => ep.shutdown_socket(std::net::Shutdown::Write),
            Half::Tls(s) => {
                s.close_notify()?;
                s.endpoint().shutdown_socket(std::net::Shutdown::Write)
            }
        }
    }
}

/// State shared by both halves of a channel.
struct Shared {
    description: String,
    cancel: Arc<Cancel>,
    child: Option<Arc<ChildSlot>>,
    /// Descriptors to pass with the next bytes written ([`FdSlot`]).
    pending_fds: Arc<Mutex<Vec<OwnedFd>>>,
}

/// Descriptors waiting to travel with the next bytes a [`ChannelWriter`] writes, as
/// `SCM_RIGHTS` on a unix-domain socket (a same-host handover of guest RAM). Whoever prepares
/// the stream attaches them; the writer sends them with its next write, so they arrive with
/// a known byte of the stream.
#[derive(Clone)]
pub struct FdSlot(Arc<Mutex<Vec<OwnedFd>>>);

impl FdSlot {
    /// Adds `fds` to those sent with the next write.
    pub fn attach(&self, fds: Vec<OwnedFd>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend(fds);
    }
}

impl std::fmt::Debug for FdSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FdSlot")
    }
}

/// Reads how many bytes a [`ChannelWriter`]'s socket has not delivered yet
/// ([`ChannelWriter::unsent_bytes`]) from anywhere; made by [`ChannelWriter::unsent_probe`].
/// It does not keep the socket open: once both halves of the channel are gone it reports
/// `None`.
#[derive(Clone)]
pub struct UnsentProbe(Option<Weak<Endpoint>>);

impl UnsentProbe {
    /// Bytes written to the socket that the peer has not received; `None` where the channel
    /// is not a socket or is closed.
    pub fn unsent_bytes(&self) -> Option<u64> {
        self.0.as_ref()?.upgrade()?.unsent_bytes()
    }
}

impl std::fmt::Debug for UnsentProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnsentProbe")
            .field("unsent", &self.unsent_bytes())
            .finish()
    }
}

/// An open migration connection. See the module documentation for what each half does.
pub struct Channel {
    /// The incoming direction: the migration stream on the destination, the return path
    /// on a source socket.
    pub reader: ChannelReader,
    /// The outgoing direction: the migration stream on the source, the return path on a
    /// destination socket.
    pub writer: ChannelWriter,
}

/// The reading half of a [`Channel`].
pub struct ChannelReader {
    half: Option<Half>,
    shared: Arc<Shared>,
}

/// The writing half of a [`Channel`].
pub struct ChannelWriter {
    half: Option<Half>,
    shared: Arc<Shared>,
}

impl Channel {
    /// Builds a channel. `child`, if any, is reaped by `finish` or killed on drop.
    pub(crate) fn new(
        description: String,
        cancel: Arc<Cancel>,
        reader: Option<Arc<Endpoint>>,
        writer: Option<Arc<Endpoint>>,
        child: Option<Arc<ChildSlot>>,
    ) -> Channel {
        if let Some(child) = &child {
            let weak = Arc::downgrade(child);
            cancel.add_hook(weak);
        }
        let shared = Arc::new(Shared {
            description,
            cancel,
            child,
            pending_fds: Arc::default(),
        });
        Channel {
            reader: ChannelReader {
                half: reader.map(Half::Plain),
                shared: shared.clone(),
            },
            writer: ChannelWriter {
                half: writer.map(Half::Plain),
                shared,
            },
        }
    }

    /// Replaces the socket under both halves with what `wrap` makes of it (a TLS session).
    /// Only for socket channels whose halves share one descriptor.
    pub(crate) fn upgrade(
        self,
        wrap: impl FnOnce(Arc<Endpoint>) -> Result<Half, TransportError>,
    ) -> Result<Channel, TransportError> {
        let Channel { reader, writer } = self;
        let ep = match (&reader.half, &writer.half) {
            (Some(Half::Plain(r)), Some(Half::Plain(w))) if Arc::ptr_eq(r, w) && r.is_socket() => {
                r.clone()
            }
            _ => {
                return Err(TransportError::Tls {
                    uri: writer.shared.description.clone(),
                    source: crate::tls::TlsError::NotASocket,
                })
            }
        };
        let shared = writer.shared.clone();
        drop((reader, writer));
        let half = wrap(ep)?;
        Ok(Channel {
            reader: ChannelReader {
                half: Some(half.clone()),
                shared: shared.clone(),
            },
            writer: ChannelWriter {
                half: Some(half),
                shared,
            },
        })
    }

    /// Whether the channel runs over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.writer.half, Some(Half::Tls(_)))
    }

    /// The URI this channel was opened for (for an accepted socket: the listener's
    /// address, e.g. `tcp:127.0.0.1:41811`).
    pub fn description(&self) -> &str {
        &self.writer.shared.description
    }

    /// A handle that interrupts this channel's I/O from another thread (`migrate_cancel`).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.writer.shutdown_handle()
    }

    /// Whether both directions work (sockets), so a return path can be opened.
    pub fn is_bidirectional(&self) -> bool {
        self.reader.half.as_ref().is_some_and(|e| e.is_socket())
            && self.writer.half.as_ref().is_some_and(|e| e.is_socket())
    }

    /// Separates the halves, e.g. to read a return path on another thread.
    pub fn into_split(self) -> (ChannelReader, ChannelWriter) {
        (self.reader, self.writer)
    }

    /// Ends the stream successfully: flushes the writer, signals end-of-stream on sockets,
    /// and for `exec:` waits for the command and reports a non-zero exit status. After it
    /// returns `Ok`, an `exec:cat > FILE` command has finished writing `FILE`.
    pub fn finish(self) -> Result<(), TransportError> {
        let Channel { reader, writer } = self;
        drop(reader);
        writer.finish()
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("description", &self.description())
            .field("bidirectional", &self.is_bidirectional())
            .finish()
    }
}

impl ChannelReader {
    /// The URI of the channel.
    pub fn description(&self) -> &str {
        &self.shared.description
    }

    /// Reads like `read`, keeping descriptors that came with the bytes (`SCM_RIGHTS`) in
    /// `fds`. On anything but a unix-domain socket it is a plain read. Blocking; a shutdown of
    /// the channel ends it.
    pub fn read_with_fds(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        match self.half.as_ref().and_then(Half::plain) {
            Some(ep) if ep.is_unix_socket() => ep.recv_with_fds(buf, fds),
            _ => self.read(buf),
        }
    }

    /// A handle that interrupts the whole channel (both halves).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(self.shared.cancel.clone())
    }

    /// For a destination that kept only the reader: waits for an `exec:` command and
    /// reports a non-zero exit status (the writer half, if still alive, stays usable).
    pub fn finish(self) -> Result<(), TransportError> {
        let ChannelReader { half, shared } = self;
        drop(half);
        finish_shared(&shared)
    }
}

impl ChannelWriter {
    /// The URI of the channel.
    pub fn description(&self) -> &str {
        &self.shared.description
    }

    /// Whether the peer of this socket channel has gone (closed or shut down its sending
    /// side, or reset the connection), checked without reading or blocking: a destination
    /// waiting for more connections checks that the source of its main channel still exists.
    /// False for channels that are not sockets.
    pub fn peer_closed(&self) -> bool {
        self.half.as_ref().is_some_and(Half::peer_closed)
    }

    /// Bytes written to this socket channel that the peer has not received yet (queued in
    /// the kernel or in flight; under TLS, the encrypted bytes): what a sender on a slow
    /// link still has to wait for. `None` where the channel is not a socket.
    pub fn unsent_bytes(&self) -> Option<u64> {
        self.half.as_ref().and_then(Half::unsent_bytes)
    }

    /// A handle that reads [`unsent_bytes`](Self::unsent_bytes) from another thread, after
    /// this writer went to a thread of its own (a multifd channel's).
    pub fn unsent_probe(&self) -> UnsentProbe {
        UnsentProbe(self.half.as_ref().map(|h| match h {
            Half::Plain(ep) => Arc::downgrade(ep),
            Half::Tls(s) => Arc::downgrade(s.endpoint()),
        }))
    }

    /// Where to attach descriptors for the peer; `None` unless this is a unix-domain socket.
    pub fn fd_slot(&self) -> Option<FdSlot> {
        self.half
            .as_ref()
            .and_then(Half::plain)
            .filter(|ep| ep.is_unix_socket())
            .map(|_| FdSlot(self.shared.pending_fds.clone()))
    }

    /// Takes the descriptors waiting in the [`FdSlot`].
    fn take_pending_fds(&self) -> Vec<OwnedFd> {
        std::mem::take(
            &mut *self
                .shared
                .pending_fds
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// A handle that interrupts the whole channel (both halves).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(self.shared.cancel.clone())
    }

    /// The descriptor's endpoint (none for the unused half of `exec:` and `file:`).
    pub(crate) fn endpoint(&self) -> Option<&Arc<Endpoint>> {
        self.half.as_ref().and_then(Half::plain)
    }

    /// Ends the outgoing stream; see [`Channel::finish`]. A reader half split off earlier
    /// keeps working (a return path can still be read after the stream ended).
    pub fn finish(mut self) -> Result<(), TransportError> {
        let shared = self.shared.clone();
        let uri = || shared.description.clone();
        self.shared
            .cancel
            .check()
            .map_err(|_| TransportError::Cancelled { uri: uri() })?;
        if self.half.is_some() {
            self.flush()
                .map_err(|source| TransportError::Finish { uri: uri(), source })?;
        }
        if let Some(half) = &self.half {
            half.shutdown_write()
                .map_err(|source| TransportError::Finish { uri: uri(), source })?;
        }
        let ChannelWriter { half, shared } = self;
        // Closing our end of an exec: pipe is what lets the command see EOF and exit.
        drop(half);
        finish_shared(&shared)
    }
}

fn finish_shared(shared: &Shared) -> Result<(), TransportError> {
    let uri = || shared.description.clone();
    if let Some(child) = &shared.child {
        let status = child
            .wait()
            .map_err(|source| TransportError::Wait { uri: uri(), source })?;
        if shared.cancel.is_set() {
            return Err(TransportError::Cancelled { uri: uri() });
        }
        if let Some(status) = status {
            if !status.success() {
                return Err(TransportError::CommandFailed { uri: uri(), status });
            }
        }
    }
    if shared.cancel.is_set() {
        return Err(TransportError::Cancelled { uri: uri() });
    }
    Ok(())
}

fn unsupported(shared: &Shared, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{} cannot be {what}", shared.description),
    )
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.half {
            Some(ep) => ep.read(buf),
            None => Err(unsupported(&self.shared, "read from")),
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.half {
            Some(ep) if !buf.is_empty() => {
                let fds = self.take_pending_fds();
                if fds.is_empty() {
                    return ep.write(buf);
                }
                let Some(ep) = ep.plain() else {
                    return Err(unsupported(&self.shared, "given descriptors under TLS"));
                };
                let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
                ep.send_with_fds(buf, &borrowed)?;
                // Our copies close here; the peer holds its own once sendmsg returned.
                Ok(buf.len())
            }
            Some(ep) => ep.write(buf),
            None => Err(unsupported(&self.shared, "written to")),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match &self.half {
            Some(ep) if self.shared.pending_fds.lock().is_ok_and(|p| p.is_empty()) => {
                ep.write_vectored(bufs)
            }
            // Descriptors wait: they go with the first non-empty buffer, alone.
            Some(_) => match bufs.iter().find(|b| !b.is_empty()) {
                Some(b) => self.write(b),
                None => Ok(0),
            },
            None => Err(unsupported(&self.shared, "written to")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &self.half {
            Some(_) => self.shared.cancel.check(),
            None => Err(unsupported(&self.shared, "written to")),
        }
    }
}
