//! Binding a listening unix socket that only its owner can connect to.
//!
//! Linux checks write permission on the socket *file* at `connect` time, and refuses
//! connections until `listen` is called. So the socket is created, bound, `chmod`ed to 0600
//! and only then put into the listening state: there is no window in which another user
//! could connect. `std`'s `UnixListener::bind` binds and listens in one step, hence
//! [`sys::socket`](crate::sys::socket)'s separate bind and listen.
//!
//! A stale socket left at the path by an earlier process is removed first (as QEMU does);
//! anything that is not a socket is left alone and binding fails with `EADDRINUSE`.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

use crate::sys::socket;

/// Backlog for listening sockets: the main channel plus multifd/preempt channels.
pub(crate) const BACKLOG: i32 = 16;

/// Binds and listens on `path` with mode 0600, replacing a stale socket file.
pub(crate) fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let addr = socket::UnixAddr::new(path.as_os_str())?;
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            fs::remove_file(path)?;
        }
    }
    let sock = socket::bind_unix_unlistening(&addr)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    socket::listen(sock.as_fd(), BACKLOG)?;
    Ok(UnixListener::from(sock))
}
