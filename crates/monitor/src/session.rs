//! [`Session`]: what one monitor connection carries between commands.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use transport::sys::{poll, Interest, PollFd};

use crate::backend::MonitorBackend;
use crate::fds::FdTable;

/// The state of one monitor connection (QMP or HMP): the backend, the connection's named
/// descriptors and what must happen after the current reply is sent.
pub struct Session {
    /// The VMM.
    pub backend: Arc<dyn MonitorBackend>,
    /// Descriptors passed with `SCM_RIGHTS` on this connection.
    pub fds: Arc<FdTable>,
    /// Set by `quit`: after the reply, the connection asks the backend to exit and closes.
    pub quit_requested: bool,
    /// Whether HMP `migrate` without `-d` may block this connection until the migration
    /// ends (false inside `human-monitor-command`, as in QEMU).
    pub can_suspend: bool,
    /// A duplicate of the connection's socket, used to notice a client that hung up while
    /// a synchronous command waits (`None` for plain streams such as stdio).
    pub peer: Option<OwnedFd>,
}

impl Session {
    /// A fresh session with an empty descriptor table.
    pub fn new(backend: Arc<dyn MonitorBackend>) -> Self {
        Self {
            backend,
            fds: Arc::new(FdTable::new()),
            quit_requested: false,
            can_suspend: true,
            peer: None,
        }
    }

    /// True when the client closed its connection (poll reports a hang-up or an error).
    pub fn peer_gone(&self) -> bool {
        let Some(fd) = &self.peer else { return false };
        let mut p = [PollFd::new(fd, Interest::HangUp)];
        matches!(poll(&mut p, Some(Duration::ZERO)), Ok(n) if n > 0) && p[0].is_hung_up()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("fds", &self.fds)
            .field("quit_requested", &self.quit_requested)
            .field("can_suspend", &self.can_suspend)
            .finish_non_exhaustive()
    }
}
