//! The system calls that neither `std` nor `vmm-sys-util` offers safely: the only `unsafe`
//! of this crate and of `monitor`, each block with a `// SAFETY:` comment.
//!
//! | module | what | why not `std` / `vmm-sys-util` |
//! | --- | --- | --- |
//! | [`poll`](mod@poll) | `poll(2)` over a few descriptors with a timeout | `std` has no `poll`; `vmm-sys-util`'s `PollContext` is an epoll set, one more descriptor and three calls per wait |
//! | [`scm`] | `SCM_RIGHTS` descriptor passing | sending is `vmm-sys-util`'s [`ScmSocket`](vmm_sys_util::sock_ctrl_msg::ScmSocket); receiving needs `MSG_CMSG_CLOEXEC` (as QEMU), which `ScmSocket::recv_with_fds` does not set |
//! | [`socket`] | `recv`/`send`/`sendmsg` with `MSG_DONTWAIT`, `shutdown(2)` on any socket, bind without listen | `std` sockets cannot take per-call flags, and bind and listen in one step |
//! | [`zerocopy`] | `SO_ZEROCOPY`, `sendmsg` with `MSG_ZEROCOPY`, completions from `MSG_ERRQUEUE` | no `std` API for socket options, per-call flags or the error queue |
//! | [`process`] | kill a process group, wait for a child without reaping it | `std::process::Child` kills one process and always reaps |
//! | this module | `O_NONBLOCK` on a pipe, taking over an inherited descriptor number | no `std` API |
//!
//! Everything else goes through `std` (`File` reads and writes, `metadata`, listeners) or
//! `vmm-sys-util` (`EventFd`, `ScmSocket`).

pub mod poll;
pub mod process;
pub mod scm;
pub mod socket;
pub mod zerocopy;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

pub use poll::{poll, Interest, PollFd};
pub use scm::{recv_with_fds, send_with_fds, send_with_fds_on};

/// Turns `O_NONBLOCK` on for a descriptor private to us (our end of an `exec:` pipe).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL takes no pointer; `fd` is open for the call (borrowed).
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL with an integer argument; `fd` is open for the call.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of the open descriptor number `fd` (incoming `fd:N`).
///
/// Fails if `fd` is not open. The caller asserts what `-incoming fd:N` asserts in QEMU: the
/// number names a descriptor handed to this process for the migration (inherited from the
/// parent) that nothing else in the process uses or will close, since the returned
/// `OwnedFd` closes it.
pub fn claim_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_GETFD only queries the descriptor table entry; no memory is involved.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked above); ownership is the documented contract of this
    // function (see above): nothing else in the process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
