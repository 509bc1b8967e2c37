//! Cancellation of blocked channel I/O (`migrate_cancel`) and of pending accepts.
//!
//! Every channel and listener owns a cancellation state: a flag plus a Linux `eventfd`. Channel
//! descriptors are driven non-blocking (sockets with `MSG_DONTWAIT`, pipes with
//! `O_NONBLOCK`); when an operation would block, the thread `poll`s the descriptor *and*
//! the eventfd. [`ShutdownHandle::shutdown`] sets the flag and makes the eventfd readable,
//! so every blocked reader, writer or accept returns promptly with a "shut down" error, and
//! every later operation fails the same way.
//!
//! ```text
//!   migration thread                      monitor thread (migrate_cancel)
//!   write(fd) -> EAGAIN
//!   poll([fd: POLLOUT, eventfd: POLLIN]) ...
//!                                         handle.shutdown():
//!                                           flag = true; eventfd += 1
//!                                           hooks: shutdown(sock, SHUT_RDWR) / kill exec child
//!   poll returns (eventfd readable)
//!   -> Err(ConnectionAborted, ChannelShutDown)
//! ```
//!
//! Hooks let the handle also act on the peer-visible side: sockets are `shutdown(2)` so the
//! peer sees the end of the stream, and an `exec:` child's process group is killed. Hooks
//! are held weakly, so a handle kept by the monitor never keeps a socket open or a child
//! alive after the channel is gone.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

use crate::sys::{self, Interest, PollFd};

/// Something to do when a channel is shut down (besides waking blocked threads).
pub(crate) trait CancelHook: Send + Sync {
    /// Called once, from the thread calling [`ShutdownHandle::shutdown`].
    fn on_cancel(&self);
}

/// Shared cancellation state of one channel or listener.
pub(crate) struct Cancel {
    flag: AtomicBool,
    event: EventFd,
    hooks: Mutex<Vec<Weak<dyn CancelHook>>>,
}

impl Cancel {
    /// A fresh, not cancelled state with its own eventfd.
    pub(crate) fn new() -> io::Result<Arc<Cancel>> {
        let event = EventFd::new(EFD_CLOEXEC | EFD_NONBLOCK)?;
        Ok(Arc::new(Cancel {
            flag: AtomicBool::new(false),
            event,
            hooks: Mutex::new(Vec::new()),
        }))
    }

    /// Registers a hook run on shutdown (immediately if already shut down).
    pub(crate) fn add_hook(&self, hook: Weak<dyn CancelHook>) {
        let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_set() {
            drop(hooks);
            if let Some(h) = hook.upgrade() {
                h.on_cancel();
            }
            return;
        }
        hooks.push(hook);
    }

    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// `Err(shut down)` once cancelled.
    pub(crate) fn check(&self) -> io::Result<()> {
        if self.is_set() {
            Err(shutdown_error())
        } else {
            Ok(())
        }
    }

    fn trigger(&self) {
        let hooks = {
            let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
            if self.flag.swap(true, Ordering::AcqRel) {
                return;
            }
            std::mem::take(&mut *hooks)
        };
        // A failure (counter overflow) cannot happen for a single increment and would only
        // leave the flag set.
        let _ = self.event.write(1);
        for hook in hooks.iter().filter_map(Weak::upgrade) {
            hook.on_cancel();
        }
    }

    /// Blocks until `fd` reports one of `events` (or an error/hang-up), the deadline passes
    /// (`Ok(false)`), or the channel is shut down (`Err`).
    pub(crate) fn wait(
        &self,
        fd: &dyn AsRawFd,
        interest: Interest,
        deadline: Option<Instant>,
    ) -> io::Result<bool> {
        loop {
            self.check()?;
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    Some(left)
                }
            };
            let mut fds = [
                PollFd::new(fd, interest),
                PollFd::new(&self.event, Interest::Read),
            ];
            match sys::poll(&mut fds, timeout) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            if fds[1].is_ready() {
                return Err(shutdown_error());
            }
            if fds[0].is_ready() {
                return Ok(true);
            }
        }
    }
}

/// Marker carried inside the [`io::Error`] returned by channel I/O after a shutdown
/// (kind [`io::ErrorKind::ConnectionAborted`]). Test for it with [`is_shutdown_error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the migration channel was shut down")]
pub struct ChannelShutDown;

pub(crate) fn shutdown_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, ChannelShutDown)
}

/// Whether an I/O error returned by a channel reader/writer was caused by
/// [`ShutdownHandle::shutdown`] (as opposed to a peer or system failure).
pub fn is_shutdown_error(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<ChannelShutDown>().is_some())
}

/// Interrupts a channel or a listener from any thread (`migrate_cancel`).
///
/// After [`shutdown`](Self::shutdown), blocked and future reads, writes and accepts fail
/// promptly: channel I/O with an error for which [`is_shutdown_error`] is true, accepts and
/// `finish` with [`TransportError::Cancelled`](crate::TransportError::Cancelled). Sockets
/// are also `shutdown(SHUT_RDWR)` so the peer sees the stream end, and an `exec:` command
/// is killed. Shutting down twice is harmless; a handle outliving its channel keeps no
/// descriptor of it open.
#[derive(Clone)]
pub struct ShutdownHandle {
    cancel: Arc<Cancel>,
}

impl ShutdownHandle {
    pub(crate) fn new(cancel: Arc<Cancel>) -> Self {
        ShutdownHandle { cancel }
    }

    pub(crate) fn cancel_state(&self) -> Arc<Cancel> {
        self.cancel.clone()
    }

    /// Shuts the channel (or listener) down; see the type documentation.
    pub fn shutdown(&self) {
        self.cancel.trigger();
    }

    /// Whether [`shutdown`](Self::shutdown) has been called.
    pub fn is_shutdown(&self) -> bool {
        self.cancel.is_set()
    }
}

impl std::fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("shutdown", &self.is_shutdown())
            .finish()
    }
}

/// Deadline `timeout` from now, or `None` (wait forever) when it does not fit an `Instant`.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}
