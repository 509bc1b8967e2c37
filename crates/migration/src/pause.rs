//! [`PauseGate`]: the `pause-before-switchover` handshake between the migration thread and
//! `migrate-continue` (QEMU's `pause_sem`).
//!
//! ```text
//!  migration thread                         monitor
//!  vm_stop(finish-migrate)
//!  drain()            (forget early posts)
//!  status active ─▶ pre-switchover ──event──▶ manager (e.g. moves disks, networking)
//!  wait(cancel) ◀──────────────────────────── migrate-continue state=pre-switchover: post()
//!  status pre-switchover ─▶ device ─▶ END sections, devices ─▶ completed
//! ```
//!
//! A counting semaphore, like QEMU's: a `migrate-continue` that arrives before the thread
//! waits is consumed by [`PauseGate::drain`], so only a continue issued in `pre-switchover`
//! releases the thread (the status check lives in `MigrationState::migrate_continue`).
//! `migrate_cancel` posts too, and the waiter also gives up on its own once the migration's
//! cancel token fires, so a paused migration can always be cancelled.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::cancel::CancelToken;
use crate::status::MigrationStatus;

/// Why `migrate-continue` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContinueError {
    /// The migration is not in the state the request names (QEMU's text).
    #[error("Migration not in expected state: {0}")]
    NotInState(MigrationStatus),
}

/// A counting semaphore with a cancellable wait.
#[derive(Debug, Default)]
pub struct PauseGate {
    posts: Mutex<u32>,
    cv: Condvar,
}

impl PauseGate {
    fn lock(&self) -> MutexGuard<'_, u32> {
        self.posts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets every post made so far.
    pub fn drain(&self) {
        *self.lock() = 0;
    }

    /// Releases one waiter (or the next one to wait).
    pub fn post(&self) {
        let mut posts = self.lock();
        *posts = posts.saturating_add(1);
        self.cv.notify_all();
    }

    /// Waits for a post and consumes it; returns false if `cancel` fired first.
    pub fn wait(&self, cancel: &CancelToken) -> bool {
        let mut posts = self.lock();
        loop {
            if *posts > 0 {
                *posts -= 1;
                return true;
            }
            if cancel.is_cancelled() {
                return false;
            }
            // The cancel token has no waker of its own: look at it now and then.
            posts = self
                .cv
                .wait_timeout(posts, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn early_posts_are_drained_and_a_post_releases_one_wait() {
        let gate = Arc::new(PauseGate::default());
        let cancel = CancelToken::new();
        gate.post();
        gate.post();
        gate.drain();
        let g = gate.clone();
        let c = cancel.clone();
        let waiter = std::thread::spawn(move || g.wait(&c));
        gate.post();
        assert!(waiter.join().unwrap());
        assert_eq!(*gate.lock(), 0);
    }

    #[test]
    fn cancel_ends_the_wait() {
        let gate = Arc::new(PauseGate::default());
        let cancel = CancelToken::new();
        let g = gate.clone();
        let c = cancel.clone();
        let waiter = std::thread::spawn(move || g.wait(&c));
        cancel.cancel();
        assert!(!waiter.join().unwrap());
    }
}
