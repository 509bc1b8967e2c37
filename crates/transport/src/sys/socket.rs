//! Socket calls `std` cannot make: I/O with per-call flags on any socket descriptor (one
//! passed with `fd:` may be TCP, unix or anything else, and its file status flags are shared
//! with the management process, so they are never changed), `shutdown(2)` on such a socket,
//! and binding without listening.

use std::ffi::OsStr;
use std::io;
use std::net::{Shutdown, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

/// `recv(2)` with `MSG_DONTWAIT`: `WouldBlock` instead of blocking.
pub fn recv_nonblocking(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
    let r = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// Bytes written to the socket that its peer has not received yet (`SIOCOUTQ`): for TCP,
/// what is queued and what is in flight unacknowledged; for a unix socket, what the peer has
/// not read.
pub fn unsent_bytes(sock: BorrowedFd<'_>) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (== TIOCOUTQ) writes one int through the pointer, valid for the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    u64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// `send(2)` with `MSG_DONTWAIT | MSG_NOSIGNAL`: `WouldBlock` instead of blocking, `EPIPE`
/// instead of `SIGPIPE`.
pub fn send_nonblocking(sock: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole call.
    let r = unsafe {
        libc::send(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// `sendmsg(2)` of the first (at most 1024) `bufs` with `MSG_DONTWAIT | MSG_NOSIGNAL`.
pub fn send_vectored_nonblocking(
    sock: BorrowedFd<'_>,
    bufs: &[io::IoSlice<'_>],
) -> io::Result<usize> {
    send_vectored_flags(sock, bufs, 0)
}

/// `sendmsg(2)` of the first (at most 1024) `bufs` with `MSG_DONTWAIT | MSG_NOSIGNAL | flags`.
/// With `MSG_ZEROCOPY` the kernel reads the buffers after the call too: see
/// [`zerocopy`](super::zerocopy).
pub(crate) fn send_vectored_flags(
    sock: BorrowedFd<'_>,
    bufs: &[io::IoSlice<'_>],
    flags: libc::c_int,
) -> io::Result<usize> {
    let iovcnt = bufs.len().min(1024);
    // SAFETY: an all-zero msghdr is a valid, empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is documented to be ABI-compatible with iovec.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iovcnt as _;
    // SAFETY: `msg` describes `iovcnt` readable buffers of `bufs`, alive for the call; the
    // kernel only reads them.
    let r = unsafe {
        libc::sendmsg(
            sock.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | flags,
        )
    };
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// `shutdown(2)` on any socket.
pub fn shutdown(sock: BorrowedFd<'_>, how: Shutdown) -> io::Result<()> {
    let how = match how {
        Shutdown::Read => libc::SHUT_RD,
        Shutdown::Write => libc::SHUT_WR,
        Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: plain syscall on a descriptor kept open by the borrow; no memory involved.
    if unsafe { libc::shutdown(sock.as_raw_fd(), how) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `sock` is a unix-domain socket (which can carry `SCM_RIGHTS` descriptors).
pub fn is_unix_socket(sock: BorrowedFd<'_>) -> bool {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` is writable for `len` bytes, which the kernel does not exceed; the
    // descriptor is kept open by the borrow.
    let r = unsafe {
        libc::getsockname(
            sock.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    r == 0 && i32::from(addr.ss_family) == libc::AF_UNIX
}

/// `listen(2)` on a bound socket.
pub fn listen(sock: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor kept open by the borrow; no memory involved.
    if unsafe { libc::listen(sock.as_raw_fd(), backlog) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn socket(domain: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A filesystem address for a unix socket, checked to fit (with its NUL) in `sun_path`.
#[derive(Clone, Copy)]
pub struct UnixAddr(libc::sockaddr_un);

impl UnixAddr {
    /// Checks `path` (no NUL byte, short enough) and builds the address.
    pub fn new(path: &OsStr) -> io::Result<UnixAddr> {
        let mut addr = libc::sockaddr_un {
            sun_family: libc::AF_UNIX as libc::sa_family_t,
            sun_path: [0; 108],
        };
        let bytes = path.as_bytes();
        if bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the socket path contains a NUL byte",
            ));
        }
        if bytes.len() >= addr.sun_path.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the socket path is longer than {} bytes",
                    addr.sun_path.len() - 1
                ),
            ));
        }
        for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        Ok(UnixAddr(addr))
    }
}

impl std::fmt::Debug for UnixAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path: Vec<u8> = self
            .0
            .sun_path
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        f.debug_tuple("UnixAddr")
            .field(&String::from_utf8_lossy(&path))
            .finish()
    }
}

/// A unix stream socket bound to `addr`, *not* listening yet (so the socket file's mode
/// can be set before anyone can connect).
pub fn bind_unix_unlistening(addr: &UnixAddr) -> io::Result<OwnedFd> {
    let sock = socket(libc::AF_UNIX)?;
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr.0` is a fully initialised sockaddr_un and `len` is its size.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr.0 as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// A TCP socket bound to `addr` (port 0: any free port) that does not listen, and the
/// address it got.
pub fn bind_tcp4_unlistening(addr: SocketAddrV4) -> io::Result<(OwnedFd, SocketAddrV4)> {
    let sock = socket(libc::AF_INET)?;
    let mut sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `sin` is a valid sockaddr_in of `len` bytes, alive for the call.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sin` and `len` are valid for writes by getsockname, which writes at most
    // `len` bytes.
    let r = unsafe {
        libc::getsockname(
            sock.as_raw_fd(),
            (&mut sin as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let ip = u32::from_be(sin.sin_addr.s_addr).into();
    Ok((sock, SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
}
