//! `MSG_ZEROCOPY` on TCP sockets (Linux ≥ 4.14): the kernel sends straight from the caller's
//! pages and reports on the socket's error queue when it no longer needs them.
//!
//! ```text
//! setsockopt(SOL_SOCKET, SO_ZEROCOPY, 1)          once; fails on sockets without support
//! sendmsg(iov, MSG_ZEROCOPY)                       call k (k = 0, 1, 2, … per socket)
//! recvmsg(MSG_ERRQUEUE) → cmsg (SOL_IP, IP_RECVERR) or (SOL_IPV6, IPV6_RECVERR):
//!     struct sock_extended_err { ee_errno 0, ee_origin 5 (ZEROCOPY),
//!                                ee_code 1 if the kernel copied after all (e.g. loopback),
//!                                ee_info = first k, ee_data = last k (inclusive) }
//! ```

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `SO_ZEROCOPY` (asm-generic/socket.h).
const SO_ZEROCOPY: libc::c_int = 60;
/// `SO_EE_ORIGIN_ZEROCOPY` (linux/errqueue.h).
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
/// `SO_EE_CODE_ZEROCOPY_COPIED`: the kernel fell back to copying.
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;

/// Turns `SO_ZEROCOPY` on; an error means the socket (or kernel) cannot send zero-copy.
pub fn enable(sock: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the option value points at a live c_int of the length passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ZEROCOPY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `sendmsg(2)` of the first (at most 1024) `bufs` with `MSG_ZEROCOPY | MSG_DONTWAIT |
/// MSG_NOSIGNAL`. The caller must keep the memory behind `bufs` mapped until the completion
/// for this call has been read with [`read_completion`].
pub fn send_vectored(sock: BorrowedFd<'_>, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    super::socket::send_vectored_flags(sock, bufs, libc::MSG_ZEROCOPY)
}

/// A range of completed zero-copy sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// First send call number.
    pub first: u32,
    /// Last send call number (inclusive).
    pub last: u32,
    /// The kernel copied the data instead (zero-copy did not happen).
    pub copied: bool,
}

/// Reads one notification from the socket's error queue without blocking: `Ok(None)` when
/// the queue is empty. A queued error that is not a zero-copy notification is returned as
/// that error.
pub fn read_completion(sock: BorrowedFd<'_>) -> io::Result<Option<Completion>> {
    // Room for one cmsg with a sock_extended_err and its offender address.
    let mut control = [0u64; 16];
    // SAFETY: an all-zero msghdr is a valid, empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` has no data buffers and a control buffer of the length given, writable
    // and alive for the call.
    let r = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR only reads its control fields.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        return Err(io::Error::other("error queue message without control data"));
    }
    // SAFETY: `cmsg` is non-null and points into `control` (checked by CMSG_FIRSTHDR).
    let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
    let is_recverr = (level == libc::SOL_IP && kind == libc::IP_RECVERR)
        || (level == libc::SOL_IPV6 && kind == libc::IPV6_RECVERR);
    if !is_recverr {
        return Err(io::Error::other(
            "unexpected control message on the error queue",
        ));
    }
    // SAFETY: for IP(V6)_RECVERR the data is a sock_extended_err, inside `control`; it may
    // be unaligned for u32, hence read_unaligned.
    let ee: libc::sock_extended_err =
        unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
    if ee.ee_origin != SO_EE_ORIGIN_ZEROCOPY {
        return Err(io::Error::from_raw_os_error(ee.ee_errno as i32));
    }
    if ee.ee_errno != 0 {
        return Err(io::Error::from_raw_os_error(ee.ee_errno as i32));
    }
    Ok(Some(Completion {
        first: ee.ee_info,
        last: ee.ee_data,
        copied: ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED != 0,
    }))
}
