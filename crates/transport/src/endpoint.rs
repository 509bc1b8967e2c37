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

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use crate::shutdown::{shutdown_error, Cancel, CancelHook};

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
    fd: OwnedFd,
    kind: FdKind,
    cancel: Arc<Cancel>,
}

/// Largest write that cannot block on a pipe that poll reported writable.
const PIPE_CHUNK: usize = libc::PIPE_BUF;

impl Endpoint {
    /// Wraps a descriptor we created (sockets, our `exec:` pipe ends, our files).
    /// Non-socket, non-regular descriptors are switched to `O_NONBLOCK`.
    pub(crate) fn owned(fd: OwnedFd, cancel: Arc<Cancel>) -> io::Result<Arc<Endpoint>> {
        let kind = match classify(&fd)? {
            FdKind::PollFirst => {
                set_nonblocking(&fd)?;
                FdKind::NonBlocking
            }
            kind => kind,
        };
        Ok(Self::register(fd, kind, cancel))
    }

    /// Wraps a descriptor handed to us by someone else (`fd:`); its file status flags are
    /// not changed.
    pub(crate) fn foreign(fd: OwnedFd, cancel: Arc<Cancel>) -> io::Result<Arc<Endpoint>> {
        let kind = classify(&fd)?;
        Ok(Self::register(fd, kind, cancel))
    }

    fn register(fd: OwnedFd, kind: FdKind, cancel: Arc<Cancel>) -> Arc<Endpoint> {
        let ep = Arc::new(Endpoint {
            fd,
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
                self.cancel.wait(self.fd.as_raw_fd(), libc::POLLIN, None)?;
            }
            let ptr = buf.as_mut_ptr().cast();
            let r = match self.kind {
                // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
                FdKind::Socket => unsafe {
                    libc::recv(self.fd.as_raw_fd(), ptr, buf.len(), libc::MSG_DONTWAIT)
                },
                // SAFETY: as above.
                _ => unsafe { libc::read(self.fd.as_raw_fd(), ptr, buf.len()) },
            };
            match self.outcome(r)? {
                Some(0) if self.cancel.is_set() => return Err(shutdown_error()),
                Some(n) => return Ok(n),
                None => {
                    self.cancel.wait(self.fd.as_raw_fd(), libc::POLLIN, None)?;
                }
            }
        }
    }

    /// Writes like `write(2)`; may write fewer bytes than given.
    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            self.cancel.check()?;
            let mut len = buf.len();
            if self.kind == FdKind::PollFirst {
                self.cancel.wait(self.fd.as_raw_fd(), libc::POLLOUT, None)?;
                len = len.min(PIPE_CHUNK);
            }
            let ptr = buf.as_ptr().cast();
            let r = match self.kind {
                // SAFETY: `buf` is valid for reads of `len <= buf.len()` bytes for the call.
                FdKind::Socket => unsafe {
                    libc::send(
                        self.fd.as_raw_fd(),
                        ptr,
                        len,
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                },
                // SAFETY: as above.
                _ => unsafe { libc::write(self.fd.as_raw_fd(), ptr, len) },
            };
            match self.outcome(r)? {
                Some(n) => return Ok(n),
                None => {
                    self.cancel.wait(self.fd.as_raw_fd(), libc::POLLOUT, None)?;
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
        let iovcnt = bufs.len().min(1024);
        loop {
            self.cancel.check()?;
            let r = match self.kind {
                FdKind::Socket => {
                    // SAFETY: an all-zero msghdr is valid; the iovec array points at `bufs`,
                    // whose IoSlice layout is iovec-compatible, alive for the whole call.
                    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
                    msg.msg_iovlen = iovcnt as _;
                    // SAFETY: `msg` describes valid, readable buffers for the call.
                    unsafe {
                        libc::sendmsg(
                            self.fd.as_raw_fd(),
                            &msg,
                            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        )
                    }
                }
                // SAFETY: IoSlice is ABI-compatible with iovec; the buffers live for the call.
                _ => unsafe {
                    libc::writev(
                        self.fd.as_raw_fd(),
                        bufs.as_ptr() as *const libc::iovec,
                        iovcnt as libc::c_int,
                    )
                },
            };
            match self.outcome(r)? {
                Some(n) => return Ok(n),
                None => {
                    self.cancel.wait(self.fd.as_raw_fd(), libc::POLLOUT, None)?;
                }
            }
        }
    }

    /// `Some(n)` on success, `None` to wait and retry (`EAGAIN`/`EINTR`), or the error
    /// (replaced by the shut-down error once cancelled).
    fn outcome(&self, r: isize) -> io::Result<Option<usize>> {
        if let Ok(n) = usize::try_from(r) {
            return Ok(Some(n));
        }
        let e = io::Error::last_os_error();
        if self.cancel.is_set() {
            return Err(shutdown_error());
        }
        match e.kind() {
            // After EINTR the poll returns at once if the descriptor is ready.
            io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        }
    }

    /// `shutdown(2)` on a socket; a no-op for other descriptors.
    pub(crate) fn shutdown_socket(&self, how: libc::c_int) -> io::Result<()> {
        if self.kind != FdKind::Socket {
            return Ok(());
        }
        // SAFETY: plain syscall on a descriptor we own.
        let r = unsafe { libc::shutdown(self.fd.as_raw_fd(), how) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // The peer already went away: nothing left to shut down.
            if e.raw_os_error() == Some(libc::ENOTCONN) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }
}

impl CancelHook for Endpoint {
    fn on_cancel(&self) {
        // Errors are irrelevant here: blocked threads are woken by the eventfd anyway.
        let _ = self.shutdown_socket(libc::SHUT_RDWR);
    }
}

/// Decides how to drive `fd` from its type.
fn classify(fd: &OwnedFd) -> io::Result<FdKind> {
    // SAFETY: `stat` is plain old data; all-zero is a valid value that fstat overwrites.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a live, writable stat struct; `fd` is open for the call.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => FdKind::Socket,
        libc::S_IFREG | libc::S_IFBLK => FdKind::Regular,
        _ => FdKind::PollFirst,
    })
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_GETFL on a descriptor we own; no pointers involved.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL with an integer argument on a descriptor we own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
