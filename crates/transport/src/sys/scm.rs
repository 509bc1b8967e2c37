//! Passing descriptors over unix stream sockets as `SCM_RIGHTS` ancillary data (QMP
//! `getfd`, then `fd:NAME` URIs).
//!
//! ```text
//!  client: sendmsg(data = {"execute": "getfd", ...}, SCM_RIGHTS = [fd])   send_with_fds
//!  server: recvmsg(MSG_CMSG_CLOEXEC) -> bytes + [OwnedFd]                 recv_with_fds
//! ```
//!
//! Sending uses `vmm-sys-util`'s [`ScmSocket`]. Receiving is written here because the
//! descriptors must arrive close-on-exec atomically (`MSG_CMSG_CLOEXEC`, as QEMU's
//! `qio_channel_socket_readv` does): the process spawns `exec:` commands from other threads,
//! and a descriptor that is not yet close-on-exec would leak into them. A message carrying
//! more descriptors than [`MAX_FDS_PER_MSG`] keeps its bytes; the kernel closes the extra
//! descriptors.

use std::io::{self, Write};
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Descriptors accepted in one `recvmsg` (more are truncated by the kernel and closed).
pub const MAX_FDS_PER_MSG: usize = 8;

/// Sends all of `data`, the first part in one `sendmsg` that carries `fds` as `SCM_RIGHTS`
/// (the rest, if the socket took only part of it, with plain writes).
pub fn send_with_fds(sock: &UnixStream, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let n = sock.send_with_fds(&[data], &raw).map_err(io::Error::from)?;
    if n < data.len() {
        (&*sock).write_all(data.get(n..).unwrap_or(&[]))?;
    }
    Ok(())
}

/// [`send_with_fds`] on a socket descriptor that is not held as a `UnixStream` (a migration
/// channel's).
pub fn send_with_fds_on(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    // SAFETY: the `UnixStream` only borrows the descriptor for this call: it is never dropped
    // (`ManuallyDrop`), so it does not close what `sock` keeps open.
    let stream = mem::ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(sock.as_raw_fd()) });
    send_with_fds(&stream, data, fds)
}

/// Control buffer for `MAX_FDS_PER_MSG` descriptors, aligned for `cmsghdr`.
#[repr(C)]
struct CmsgBuf {
    _align: [libc::cmsghdr; 0],
    bytes: [u8; 128],
}

/// Reads from a unix stream socket like `read(2)`; descriptors that came with the bytes
/// (`SCM_RIGHTS`, received close-on-exec) are appended to `fds`. Retries on `EINTR`.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut cbuf = CmsgBuf {
        _align: [],
        bytes: [0; 128],
    };
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS_PER_MSG * mem::size_of::<RawFd>()) as u32) };
    debug_assert!(space as usize <= cbuf.bytes.len());
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.bytes.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (covering `buf`) and `cbuf`, both alive and writable
        // for the call; the kernel writes at most iov_len / msg_controllen bytes.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if let Ok(n) = usize::try_from(n) {
            break n;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        tracing::warn!("SCM_RIGHTS control data truncated; extra descriptors were dropped");
    }
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR/CMSG_NXTHDR only walk the control
    // buffer within msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and points inside the control buffer (CMSG_* contract).
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN only computes a size.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (hdr.cmsg_len as usize).saturating_sub(header) / mem::size_of::<RawFd>();
            // SAFETY: the payload of an SCM_RIGHTS message is `count` descriptors.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: `i < count` stays inside the payload; it may be unaligned.
                let fd = unsafe { data.add(i).read_unaligned() };
                // SAFETY: the kernel installed `fd` in our table for us; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn is_cloexec(fd: &OwnedFd) -> bool {
        // SAFETY: F_GETFD only reads the descriptor flags of an open descriptor.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn descriptors_travel_with_their_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (p, q) = UnixStream::pair().unwrap();
        send_with_fds(&a, b"getfd", &[p.as_fd(), q.as_fd()]).unwrap();
        send_with_fds(&a, b" plain", &[]).unwrap();
        let mut buf = [0u8; 64];
        let mut fds = Vec::new();
        let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"getfd");
        assert_eq!(fds.len(), 2);
        assert!(fds.iter().all(is_cloexec));
        let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b" plain");
        assert_eq!(fds.len(), 2);
    }

    #[test]
    fn too_many_descriptors_keep_the_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (p, _q) = UnixStream::pair().unwrap();
        let many = vec![p.as_fd(); MAX_FDS_PER_MSG + 3];
        send_with_fds(&a, b"x", &many).unwrap();
        let mut buf = [0u8; 8];
        let mut fds = Vec::new();
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap(), 1);
        assert_eq!(fds.len(), MAX_FDS_PER_MSG);
    }
}
