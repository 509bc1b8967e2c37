//! `getfd` / `closefd`: name a descriptor received with `SCM_RIGHTS` on this connection, or
//! close a named one (spec §7.1; the table is [`crate::fds::FdTable`]); `add-fd` /
//! `remove-fd` / `query-fdsets`: the process's fd sets ([`crate::fdsets::FdSets`]).

use serde_json::{json, Value};

use super::args::Args;
use crate::backend::CommandError;
use crate::session::Session;

/// Arguments of `getfd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetFd {
    /// Name to store the descriptor under.
    pub fdname: String,
}

impl GetFd {
    /// Parses `fdname`.
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        Ok(Self {
            fdname: a.req_str("fdname")?,
        })
    }

    /// Names the most recently received descriptor.
    pub fn run(&self, s: &Session) -> Result<(), CommandError> {
        s.fds.getfd(&self.fdname)
    }
}

/// Arguments of `closefd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFd {
    /// Name of the descriptor to close.
    pub fdname: String,
}

impl CloseFd {
    /// Parses `fdname`.
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        Ok(Self {
            fdname: a.req_str("fdname")?,
        })
    }

    /// Closes the named descriptor.
    pub fn run(&self, s: &Session) -> Result<(), CommandError> {
        s.fds.closefd(&self.fdname)
    }
}

/// Arguments of `add-fd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddFd {
    /// The set to add to (a new set with the lowest free id if absent).
    pub fdset_id: Option<i64>,
    /// Free text kept with the descriptor.
    pub opaque: Option<String>,
}

impl AddFd {
    /// Parses `fdset-id`, `opaque`.
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        Ok(Self {
            fdset_id: a.opt_int("fdset-id")?,
            opaque: a.opt_str("opaque")?,
        })
    }

    /// Adds the most recently received descriptor; returns `{"fdset-id", "fd"}`.
    pub fn run(&self, s: &Session) -> Result<Value, CommandError> {
        // QEMU takes the descriptor first (and closes it if the set id is refused).
        let fd = s.fds.take_received()?;
        let (id, fd) = s
            .backend
            .fdsets()
            .add(fd, self.fdset_id, self.opaque.clone())?;
        Ok(json!({"fdset-id": id, "fd": fd}))
    }
}

/// Arguments of `remove-fd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveFd {
    /// The set.
    pub fdset_id: i64,
    /// One descriptor of it (the whole set if absent).
    pub fd: Option<i64>,
}

impl RemoveFd {
    /// Parses `fdset-id`, `fd`.
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        let fdset_id = a
            .opt_int("fdset-id")?
            .ok_or_else(|| super::args::missing("fdset-id"))?;
        Ok(Self {
            fdset_id,
            fd: a.opt_int("fd")?,
        })
    }

    /// Closes the descriptor(s).
    pub fn run(&self, s: &Session) -> Result<(), CommandError> {
        s.backend.fdsets().remove(self.fdset_id, self.fd)
    }
}
