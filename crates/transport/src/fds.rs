//! Descriptors for `fd:` URIs: the monitor's `getfd` table ([`FdSource`]) and, on the
//! incoming side only, descriptor numbers the process already owns.
//!
//! QEMU semantics (spec §7.1): outgoing `fd:NAME` always looks `NAME` up in the table of
//! the monitor that ran `migrate` — even a numeric name, which therefore fails ("File
//! descriptor named '3' has not been found") because `getfd` refuses names starting with
//! a digit. Incoming `fd:N` with `N` starting with a digit is used directly as a descriptor
//! number (`-incoming fd:3` for a descriptor inherited from the parent); other names are
//! looked up in the table. In every case migration takes ownership and closes the
//! descriptor when the channel is dropped.

use std::io;
use std::os::fd::{OwnedFd, RawFd};

/// The `getfd` table of the monitor that issued the migration command.
pub trait FdSource {
    /// Removes and returns the descriptor stored under `name` (migration takes ownership),
    /// or `None` if there is none.
    fn take_fd(&self, name: &str) -> Option<OwnedFd>;
}

/// An empty table, for callers without a monitor (command line, tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFds;

impl FdSource for NoFds {
    fn take_fd(&self, _name: &str) -> Option<OwnedFd> {
        None
    }
}

/// Whether an incoming `fd:` argument is a descriptor number rather than a name
/// (QEMU's `monitor_fd_param`: it starts with a digit).
pub(crate) fn is_numeric(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| b.is_ascii_digit())
}

/// Takes ownership of descriptor number `text` (incoming `fd:N`).
///
/// The whole text must be a decimal number and name an open descriptor. Like QEMU, the
/// descriptor is then owned (and eventually closed) by the migration channel: the caller of
/// `migrate-incoming fd:N` asserts that `N` was handed to this process for that purpose
/// (inherited from the parent), exactly as for `-incoming fd:N`.
pub(crate) fn claim_numbered_fd(text: &str) -> io::Result<OwnedFd> {
    let fd: RawFd = text.parse().ok().filter(|fd| *fd >= 0).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{text}' is not a valid file descriptor number"),
        )
    })?;
    crate::sys::claim_inherited_fd(fd)
}
