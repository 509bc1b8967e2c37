//! One descriptor carrying (part of) a migration stream, with cancellable blocking I/O.
//!
//! How each kind of descriptor is driven so that a blocked call can be interrupted (see
//! [`crate::shutdown`]):
//!
//! | kind | I/O call | when it would block |
//! | --- | --- | --- |
//! | socket | `recv`/`send` with `MSG_DONTWAIT` (`MSG_NOSIGNAL` on send); the descriptor's own flags are never changed, which matters for `fd:` sockets shared with a management process | poll fd + eventfd |
//! | pipe we created (`exec:`) | `read`/`write` on our private, `O_NONBLOCK` end | poll fd + eventfd |
//! | other descriptor passed in (`fd:` pipe, tty) | poll first, then a blocking `read`/`write` of at most `PIPE_BUF` bytes, which cannot block once poll reported readiness; its `O_NONBLOCK` flag is shared with other processes, so it is left alone | poll fd + eventfd |
//! | regular file | plain `read`/`write` (never blocks) | – |
//!
//! After a shutdown every call fails with the shut-down error, including calls whose
//! failure (EOF, `EPIPE`) was itself caused by the shutdown.
//!
//! `SIGPIPE`: socket sends use `MSG_NOSIGNAL`; pipe writes rely on the Rust runtime, which
//! ignores `SIGPIPE` in Rust binaries, so a vanished `exec:` command shows up as `EPIPE`.
//!
//! Cost: the fast path is one system call per read/write plus an atomic load; `poll` only
//! runs when the kernel buffer is full/empty. Measured on loopback (2 busy cores, 32 KiB
//! writes): the same 1.3–3.3 GB/s range as a plain blocking `TcpStream`, with or without
//! `TCP_NODELAY`; `exec:cat > /dev/null` about 3.3 GB/s.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::shutdown::{shutdown_error, Cancel, CancelHook};
use crate::sys::{self, socket, Interest};

/// How a descriptor is driven; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdKind {
    Socket,
    /// A pipe or other pollable descriptor that is `O_NONBLOCK` and private to us.
    NonBlocking,
    /// A pollable descriptor whose flags we must not change.
    PollFirst,
    /// A regular file or block device: I/O never blocks.
    Regular,
}

/// A descriptor with its channel's cancellation state.
pub(crate) struct Endpoint {
    /// The descriptor; `File` only for its `read(2)`/`write(2)`/`writev(2)`, whatever it is.
    file: File,
    kind: FdKind,
    cancel: Arc<Cancel>,
}

/// Largest write that cannot block on a pipe that poll reported writable.
const PIPE_CHUNK: usize = libc::PIPE_BUF;

/// Most buffers given to one `writev`/`sendmsg` (Linux's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;

impl Endpoint {
    /// Wraps a descriptor we created (sockets, our `exec:` pipe ends, our files).
    /// Non-socket, non-regular descriptors are switched to `O_NONBLOCK`.
    pub(crate) fn owned(fd: OwnedFd, cancel: Arc<Cancel>) -> io::Result<Arc<Endpoint>> {
        let file = File::from(fd);
        let kind = match classify(&file)? {
            FdKind::PollFirst => {
                sys::set_nonblocking(file.as_fd())?;
                FdKind::NonBlocking
            }
            kind => kind,
        };
        Ok(Self::register(file, kind, cancel))
    }

    /// Wraps a descriptor handed to us by someone else (`fd:`); its file status flags are
    /// not changed.
    pub(crate) fn foreign(fd: OwnedFd, cancel: Arc<Cancel>) -> io::Result<Arc<Endpoint>> {
        let file = File::from(fd);
        let kind = classify(&file)?;
        Ok(Self::register(file, kind, cancel))
    }

    fn register(file: File, kind: FdKind, cancel: Arc<Cancel>) -> Arc<Endpoint> {
        let ep = Arc::new(Endpoint {
            file,
            kind,
            cancel: cancel.clone(),
        });
        if kind == FdKind::Socket {
            let weak = Arc::downgrade(&ep);
            cancel.add_hook(weak);
        }
        ep
    }

    pub(crate) fn is_socket(&self) -> bool {
        self.kind == FdKind::Socket
    }

    /// Reads like `read(2)`: `Ok(0)` is the end of the stream.
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.cancel.check()?;
            if self.kind == FdKind::PollFirst {
                self.cancel.wait(&self.file, Interest::Read, None)?;
            }
            let r = match self.kind {
                FdKind::Socket => socket::recv_nonblocking(self.file.as_fd(), buf),
                _ => (&self.file).read(buf),
            };
            match self.outcome(r)? {
                Some(0) if self.cancel.is_set() => return Err(shutdown_error()),
                Some(n) => return Ok(n),
                None => {
                    self.cancel.wait(&self.file, Interest::Read, None)?;
                }
            }
        }
    }

    /// One read that never blocks: `Ok(None)` when nothing is available (sockets only; other
    /// descriptors report `None`).
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        if self.kind != FdKind::Socket {
            return Ok(None);
        }
        match socket::recv_nonblocking(self.file.as_fd(), buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes like `write(2)`; may write fewer bytes than given.
    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            self.cancel.check()?;
            let mut len = buf.len();
            if self.kind == FdKind::PollFirst {
                self.cancel.wait(&self.file, Interest::Write, None)?;
                len = len.min(PIPE_CHUNK);
            }
            let buf = buf.get(..len).unwrap_or(buf);
            let r = match self.kind {
                FdKind::Socket => socket::send_nonblocking(self.file.as_fd(), buf),
                _ => (&self.file).write(buf),
            };
            match self.outcome(r)? {
                Some(n) => return Ok(n),
                None => {
                    self.cancel.wait(&self.file, Interest::Write, None)?;
                }
            }
        }
    }

    /// Writes like `writev(2)` (sockets: `sendmsg`); may write fewer bytes than given.
    pub(crate) fn write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if self.kind == FdKind::PollFirst {
            // Foreign descriptors get bounded plain writes (see `write`).
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return self.write(first);
        }
        let bufs = bufs.get(..MAX_IOVECS).unwrap_or(bufs);
        loop {
            self.cancel.check()?;
            let r = match self.kind {
                FdKind::Socket => socket::send_vectored_nonblocking(self.file.as_fd(), bufs),
                _ => (&self.file).write_vectored(bufs),
            };
            match self.outcome(r)? {
                Some(n) => return Ok(n),
                None => {
                    self.cancel.wait(&self.file, Interest::Write, None)?;
                }
            }
        }
    }

    /// One `sendmsg` that never blocks (sockets only): `Ok(None)` when the socket buffer is
    /// full or the call was interrupted; then [`wait_writable`](Self::wait_writable).
    pub(crate) fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<Option<usize>> {
        self.cancel.check()?;
        if self.kind != FdKind::Socket {
            return self.write_vectored(bufs).map(Some);
        }
        let bufs = bufs.get(..MAX_IOVECS).unwrap_or(bufs);
        self.outcome(socket::send_vectored_nonblocking(self.file.as_fd(), bufs))
    }

    /// Waits until a write would not block, or the channel is shut down (an error).
    pub(crate) fn wait_writable(&self) -> io::Result<()> {
        self.cancel
            .wait(&self.file, Interest::Write, None)
            .map(|_| ())
    }

    /// `Some(n)` on success, `None` to wait and retry (`EAGAIN`/`EINTR`), or the error
    /// (replaced by the shut-down error once cancelled).
    fn outcome(&self, r: io::Result<usize>) -> io::Result<Option<usize>> {
        let e = match r {
            Ok(n) => return Ok(Some(n)),
            Err(e) => e,
        };
        if self.cancel.is_set() {
            return Err(shutdown_error());
        }
        match e.kind() {
            // After EINTR the poll returns at once if the descriptor is ready.
            io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        }
    }

    /// Whether this is a unix-domain socket (descriptors can travel on it).
    pub(crate) fn is_unix_socket(&self) -> bool {
        self.kind == FdKind::Socket && socket::is_unix_socket(self.file.as_fd())
    }

    /// Writes all of `buf` with `fds` attached to its first bytes (`SCM_RIGHTS`); blocking
    /// (the socket's own flags; a shutdown ends it). Unix sockets only.
    pub(crate) fn send_with_fds(&self, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.cancel.check()?;
        let r = sys::send_with_fds_on(self.file.as_fd(), buf, fds);
        if r.is_err() && self.cancel.is_set() {
            return Err(shutdown_error());
        }
        r
    }

    /// Reads like [`read`](Self::read); descriptors that came with the bytes are appended
    /// to `fds`. Blocking (a shutdown ends it). Unix sockets only.
    pub(crate) fn recv_with_fds(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
    ) -> io::Result<usize> {
        self.cancel.check()?;
        let r = sys::recv_with_fds(self.file.as_fd(), buf, fds);
        if matches!(r, Err(_) | Ok(0)) && self.cancel.is_set() {
            return Err(shutdown_error());
        }
        r
    }

    /// Whether the peer of a socket has closed or shut down its sending side, or the socket
    /// failed (a non-blocking check; unread data does not hide it). Always false for other
    /// descriptors.
    pub(crate) fn peer_closed(&self) -> bool {
        if self.kind != FdKind::Socket {
            return false;
        }
        let mut set = [sys::PollFd::new(&self.file, Interest::PeerClosed)];
        sys::poll(&mut set, Some(std::time::Duration::ZERO)).is_ok() && set[0].is_hung_up()
    }

    /// Bytes written but not yet received by the peer (see [`sys::socket::unsent_bytes`]);
    /// `None` for descriptors that are not sockets or cannot tell.
    pub(crate) fn unsent_bytes(&self) -> Option<u64> {
        if self.kind != FdKind::Socket {
            return None;
        }
        sys::socket::unsent_bytes(self.file.as_fd()).ok()
    }

    /// Runs `call` on the descriptor.
    pub(crate) fn with_fd<R>(&self, call: impl FnOnce(BorrowedFd<'_>) -> R) -> R {
        call(self.file.as_fd())
    }

    /// Runs a socket call until it stops reporting `WouldBlock`, waiting for `interest` in
    /// between, cancellable: the loop of [`write_vectored`](Self::write_vectored) for the
    /// calls of other modules of this crate (zero-copy sends, error-queue reads).
    pub(crate) fn socket_call(
        &self,
        interest: Interest,
        mut call: impl FnMut(BorrowedFd<'_>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        loop {
            self.cancel.check()?;
            match self.outcome(call(self.file.as_fd()))? {
                Some(n) => return Ok(n),
                None => {
                    self.cancel.wait(&self.file, interest, None)?;
                }
            }
        }
    }

    pub(crate) fn shutdown_socket(&self, how: Shutdown) -> io::Result<()> {
        if self.kind != FdKind::Socket {
            return Ok(());
        }
        match socket::shutdown(self.file.as_fd(), how) {
            // The peer already went away: nothing left to shut down.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        }
    }
}

impl CancelHook for Endpoint {
    fn on_cancel(&self) {
        // Errors are irrelevant here: blocked threads are woken by the eventfd anyway.
        let _ = self.shutdown_socket(Shutdown::Both);
    }
}

/// Decides how to drive `file` from its type.
fn classify(file: &File) -> io::Result<FdKind> {
    use std::os::unix::fs::FileTypeExt;
    let ty = file.metadata()?.file_type();
    Ok(if ty.is_socket() {
        FdKind::Socket
    } else if ty.is_file() || ty.is_block_device() {
        FdKind::Regular
    } else {
        FdKind::PollFirst
    })
}
