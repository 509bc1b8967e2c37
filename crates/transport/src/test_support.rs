//! Helpers for tests of this crate and the crates above it (not part of the migration API).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// A loopback TCP port that refuses connections for as long as the returned socket lives: the
/// socket is bound but never listens, so no other test can take the port meanwhile (a port
/// freed by dropping a listener can be reused at once by a parallel test).
pub fn refusing_tcp_port() -> io::Result<(OwnedFd, u16)> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value filled in below.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_in of `len` bytes, alive for the call.
    let r = unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `addr` and `len` are valid for writes by getsockname.
    let r =
        unsafe { libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((owned, u16::from_be(addr.sin_port)))
}
