//! `getfd` / `closefd`: name a descriptor received with `SCM_RIGHTS` on this connection, or
//! close a named one (spec §7.1; the table is [`crate::fds::FdTable`]).

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
