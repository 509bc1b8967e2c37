//! [`CancelToken`]: `migrate_cancel` for one migration. Cancelling sets a flag that the
//! migration thread polls between steps and shuts down every channel registered with the token,
//! so a thread blocked in a read or write on any of them returns at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use transport::ShutdownHandle;

use crate::error::MigrationError;

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    channels: Mutex<Vec<ShutdownHandle>>,
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
        for h in self.channels().iter() {
            h.shutdown();
        }
    }

    /// Interrupts the I/O of every registered channel without cancelling: a helper thread
    /// that failed (a multifd channel) makes the migration thread fail with it at once
    /// instead of waiting on a peer that waits on it.
    pub fn interrupt_io(&self) {
        for h in self.channels().iter() {
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
        let mut channels = self.channels();
        if self.is_cancelled() {
            handle.shutdown();
        }
        channels.push(handle);
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, Vec<ShutdownHandle>> {
        self.0.channels.lock().unwrap_or_else(|p| p.into_inner())
    }
}
