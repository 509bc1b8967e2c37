//! Binding a listening unix socket that only its owner can connect to.
//!
//! Linux checks write permission on the socket *file* at `connect` time, and refuses
//! connections until `listen` is called. So the socket is created, bound, `chmod`ed to 0600
//! and only then put into the listening state: there is no window in which another user
//! could connect. `std`'s `UnixListener::bind` binds and listens in one step, hence the
//! system calls here.
//!
//! A stale socket left at the path by an earlier process is removed first (as QEMU does);
//! anything that is not a socket is left alone and binding fails with `EADDRINUSE`.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Backlog for listening sockets: the main channel plus multifd/preempt channels.
pub(crate) const BACKLOG: libc::c_int = 16;

/// Binds and listens on `path` with mode 0600, replacing a stale socket file.
pub(crate) fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let addr = sockaddr_un(path.as_os_str())?;
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            fs::remove_file(path)?;
        }
    }
    // SAFETY: plain syscall; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a fully initialised sockaddr_un and `len` is its size.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    // SAFETY: plain syscall on the socket we own.
    if unsafe { libc::listen(sock.as_raw_fd(), BACKLOG) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixListener::from(sock))
}

/// A `sockaddr_un` for a filesystem path (must fit, with its NUL, in `sun_path`).
fn sockaddr_un(path: &OsStr) -> io::Result<libc::sockaddr_un> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
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
    Ok(addr)
}
