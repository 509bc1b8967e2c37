//! Helpers for tests of this crate and the crates above it (not part of the migration API).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;

/// A loopback TCP port that refuses connections for as long as the returned socket lives: the
/// socket is bound but never listens, so no other test can take the port meanwhile (a port
/// freed by dropping a listener can be reused at once by a parallel test).
pub fn refusing_tcp_port() -> io::Result<(OwnedFd, u16)> {
    let (sock, addr) =
        crate::sys::socket::bind_tcp4_unlistening(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    Ok((sock, addr.port()))
}
