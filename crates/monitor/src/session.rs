//! [`Session`]: what one monitor connection carries between commands, and its
//! [`Activity`], which the server reads to pick the client to evict (see [`crate::server`]).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// When the client last sent a complete command and whether it negotiated, shared with
    /// the accept loop.
    pub activity: Arc<Activity>,
    /// QMP: the client enabled out-of-band execution (`exec-oob`) when negotiating.
    pub oob: bool,
}

/// What the accept loop knows about a connection: negotiation, the time of the last
/// complete command, and whether one is running now. Updated by the protocol loops.
#[derive(Debug)]
pub struct Activity {
    since: Instant,
    /// Milliseconds after `since` of the last command's start or end.
    last_ms: AtomicU64,
    negotiated: AtomicBool,
    busy: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// A connection that just arrived: not negotiated, idle since now.
    pub fn new() -> Self {
        Self {
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
            negotiated: AtomicBool::new(false),
            busy: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::SeqCst);
    }

    /// A complete command arrived and is being executed.
    pub fn command_started(&self) {
        self.touch();
        self.busy.store(true, Ordering::SeqCst);
    }

    /// The command's reply was sent.
    pub fn command_finished(&self) {
        self.touch();
        self.busy.store(false, Ordering::SeqCst);
    }

    /// QMP `qmp_capabilities` succeeded (HMP connections count as negotiated at once).
    pub fn set_negotiated(&self) {
        self.negotiated.store(true, Ordering::SeqCst);
    }

    /// Whether the connection negotiated.
    pub fn negotiated(&self) -> bool {
        self.negotiated.load(Ordering::SeqCst)
    }

    /// Whether a command is running.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }

    /// Time since the connection was accepted.
    pub fn age(&self) -> Duration {
        self.since.elapsed()
    }

    /// Time since the last command started or ended (or since the connection arrived).
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::SeqCst));
        self.since.elapsed().saturating_sub(last)
    }
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
            activity: Arc::new(Activity::new()),
            oob: false,
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
