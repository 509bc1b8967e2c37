//! [`CancelToken`]: `migrate_cancel` for one migration. Cancelling sets a flag that the
//! migration thread polls between steps and shuts down every channel registered with the token,
//! so a thread blocked in a read or write on any of them returns at once. `yank` shuts the
//! connections down without the flag: the migration fails instead of being cancelled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use transport::ShutdownHandle;

use crate::error::MigrationError;

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    /// Registered handles; `true` for a connection to the peer (what `yank` shuts down),
    /// `false` for a listener.
    channels: Mutex<Vec<(ShutdownHandle, bool)>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.cancelled)
            .finish_non_exhaustive()
    }
}

/// Cancellation of one migration; clones share it.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<Inner>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels: sets the flag and interrupts the I/O of every registered channel.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        for (h, _) in self.channels().iter() {
            h.shutdown();
        }
    }

    /// `yank`: shuts down every connection to the peer without cancelling, so a migration
    /// blocked on a dead peer fails (and the source resumes) instead of waiting for TCP to
    /// give up. A listener still waiting for its source is left alone (QEMU's yank has no
    /// function for it either).
    pub fn yank(&self) {
        for (h, _) in self.channels().iter().filter(|(_, peer)| *peer) {
            h.shutdown();
        }
    }

    /// Interrupts the I/O of every registered channel without cancelling: a helper thread
    /// that failed (a multifd channel) makes the migration thread fail with it at once
    /// instead of waiting on a peer that waits on it.
    pub fn interrupt_io(&self) {
        for (h, _) in self.channels().iter() {
            h.shutdown();
        }
    }

    /// True once [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once cancelled; the migration thread's check between steps.
    pub fn check(&self) -> Result<(), MigrationError> {
        if self.is_cancelled() {
            Err(MigrationError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Registers a channel to interrupt on cancel; a channel registered after the cancel is
    /// interrupted at once.
    pub fn register(&self, handle: ShutdownHandle) {
        self.add(handle, true);
    }

    /// Registers a listener to interrupt on cancel (not on [`yank`](Self::yank)).
    pub fn register_listener(&self, handle: ShutdownHandle) {
        self.add(handle, false);
    }

    fn add(&self, handle: ShutdownHandle, peer: bool) {
        let mut channels = self.channels();
        if self.is_cancelled() {
            handle.shutdown();
        }
        channels.push((handle, peer));
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, Vec<(ShutdownHandle, bool)>> {
        self.0.channels.lock().unwrap_or_else(|p| p.into_inner())
    }
}
