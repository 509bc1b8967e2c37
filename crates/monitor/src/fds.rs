//! The per-connection descriptor table behind `getfd` / `closefd` and `fd:NAME` URIs.
//!
//! A management process sends a descriptor as `SCM_RIGHTS` ancillary data together with the
//! bytes of a `getfd` command (spec §7.1). The connection reader hands every received
//! descriptor to [`FdTable::push_received`]; `getfd` then names the most recently received
//! one, and `migrate fd:NAME` on the *same* connection takes it through
//! [`transport::FdSource`].
//!
//! ```text
//!  sendmsg(data = {"execute":"getfd",...}, SCM_RIGHTS = [fd])
//!        │ reader: recvmsg
//!        ▼
//!  received: [.., fd] ──getfd "mig"──▶ named: {"mig": fd} ──migrate fd:mig──▶ backend owns fd
//! ```
//!
//! Both lists are bounded so a client cannot make the monitor hoard descriptors.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard};

use crate::backend::CommandError;

/// Unclaimed received descriptors kept per connection (older ones are closed).
pub const MAX_RECEIVED_FDS: usize = 16;
/// Named descriptors kept per connection.
pub const MAX_NAMED_FDS: usize = 256;

/// Named descriptors of one monitor connection.
#[derive(Debug, Default)]
pub struct FdTable {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    received: Vec<OwnedFd>,
    named: BTreeMap<String, OwnedFd>,
}

impl FdTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records descriptors that arrived with `SCM_RIGHTS`; only the newest
    /// [`MAX_RECEIVED_FDS`] unclaimed ones are kept (the others are closed).
    pub fn push_received(&self, fds: impl IntoIterator<Item = OwnedFd>) {
        let mut inner = self.lock();
        inner.received.extend(fds);
        let excess = inner.received.len().saturating_sub(MAX_RECEIVED_FDS);
        if excess > 0 {
            tracing::warn!(closed = excess, "too many unclaimed SCM_RIGHTS descriptors");
            inner.received.drain(..excess);
        }
    }

    /// Takes the most recently received descriptor (`add-fd`).
    pub fn take_received(&self) -> Result<OwnedFd, CommandError> {
        self.lock()
            .received
            .pop()
            .ok_or_else(|| CommandError::generic("No file descriptor supplied via SCM_RIGHTS"))
    }

    /// `getfd NAME`: names the most recently received descriptor, replacing (and closing) a
    /// descriptor already stored under that name.
    pub fn getfd(&self, name: &str) -> Result<(), CommandError> {
        let fd = self.take_received()?;
        let mut inner = self.lock();
        if name.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
            drop(fd);
            return Err(CommandError::generic(
                "Parameter 'fdname' expects a name not starting with a digit",
            ));
        }
        if !inner.named.contains_key(name) && inner.named.len() >= MAX_NAMED_FDS {
            return Err(CommandError::generic(format!(
                "Too many named file descriptors (at most {MAX_NAMED_FDS})"
            )));
        }
        inner.named.insert(name.to_string(), fd);
        Ok(())
    }

    /// `closefd NAME`: closes and forgets a named descriptor.
    pub fn closefd(&self, name: &str) -> Result<(), CommandError> {
        match self.lock().named.remove(name) {
            Some(_) => Ok(()),
            None => Err(CommandError::generic(format!(
                "File descriptor named '{name}' not found"
            ))),
        }
    }

    /// Names currently in the table.
    pub fn names(&self) -> Vec<String> {
        self.lock().named.keys().cloned().collect()
    }

    /// Number of received descriptors not yet claimed by `getfd`.
    pub fn unclaimed(&self) -> usize {
        self.lock().received.len()
    }
}

impl transport::FdSource for FdTable {
    fn take_fd(&self, name: &str) -> Option<OwnedFd> {
        self.lock().named.remove(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use transport::FdSource;

    fn pipe_fd() -> OwnedFd {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.into()
    }

    #[test]
    fn getfd_names_newest_and_take_removes() {
        let t = FdTable::new();
        assert_eq!(
            t.getfd("x").unwrap_err().desc,
            "No file descriptor supplied via SCM_RIGHTS"
        );
        let a = pipe_fd();
        let b = pipe_fd();
        let b_raw = b.as_raw_fd();
        t.push_received([a, b]);
        t.getfd("mig").unwrap();
        assert_eq!(t.unclaimed(), 1);
        assert_eq!(t.take_fd("mig").map(|f| f.as_raw_fd()), Some(b_raw));
        assert!(t.take_fd("mig").is_none());
    }

    #[test]
    fn digit_names_refused_and_closefd() {
        let t = FdTable::new();
        t.push_received([pipe_fd()]);
        let e = t.getfd("3x").unwrap_err();
        assert_eq!(
            e.desc,
            "Parameter 'fdname' expects a name not starting with a digit"
        );
        assert_eq!(t.unclaimed(), 0);
        t.push_received([pipe_fd()]);
        t.getfd("a").unwrap();
        t.closefd("a").unwrap();
        assert_eq!(
            t.closefd("a").unwrap_err().desc,
            "File descriptor named 'a' not found"
        );
    }

    #[test]
    fn received_list_is_bounded() {
        let t = FdTable::new();
        t.push_received((0..MAX_RECEIVED_FDS + 5).map(|_| pipe_fd()));
        assert_eq!(t.unclaimed(), MAX_RECEIVED_FDS);
    }
}
