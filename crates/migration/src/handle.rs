//! [`MigrationHandle`]: a running migration, outgoing or incoming. Its thread owns the registry
//! while it runs and returns it in [`Finished`] — success or failure — as Cloud Hypervisor's
//! migration worker returns the VM.

use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::MigrationError;
use crate::registry::Registry;
use crate::runtime::Runtime;

/// How a migration ended, with everything it was given back.
pub struct Finished {
    /// The registry, for the next migration.
    pub registry: Registry,
    /// The outcome (also published as the final status).
    pub result: Result<(), MigrationError>,
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finished")
            .field("result", &self.result)
            .finish_non_exhaustive()
    }
}

/// A migration that could not start; the registry comes back.
pub struct Rejected {
    /// The registry, unchanged.
    pub registry: Registry,
    /// Why.
    pub error: MigrationError,
}

impl std::fmt::Debug for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejected")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Code to run on the migration thread once the final status is published (e.g. to wake a
/// waiter); it must not block.
pub type OnFinished = Box<dyn FnOnce() + Send>;

/// A running migration.
#[derive(Debug)]
pub struct MigrationHandle {
    thread: JoinHandle<Finished>,
    runtime: Arc<Runtime>,
}

impl MigrationHandle {
    pub(crate) fn new(thread: JoinHandle<Finished>, runtime: Arc<Runtime>) -> Self {
        Self { thread, runtime }
    }

    /// Statistics, settings and cancel token of this migration.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Cancels the migration (`migrate_cancel`); [`join`](Self::join) then returns soon.
    pub fn cancel(&self) {
        self.runtime.cancel_token().cancel();
    }

    /// True once the thread has returned; [`join`](Self::join) will not block.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the end and takes back what the migration was given. Fails only if the
    /// migration thread panicked, and then the registry is lost.
    pub fn join(self) -> Result<Finished, MigrationError> {
        self.thread
            .join()
            .map_err(|_| MigrationError::ThreadPanicked)
    }
}

/// Spawns the named migration thread; on failure the registry comes back in [`Rejected`].
pub(crate) fn spawn(
    name: &str,
    runtime: Arc<Runtime>,
    registry: Registry,
    body: impl FnOnce(Registry) -> Finished + Send + 'static,
) -> Result<MigrationHandle, Box<Rejected>> {
    // The registry travels through a one-shot channel so a failed spawn can return it.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Registry>(1);
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let registry = rx
                .recv()
                .expect("the registry is sent right after the spawn");
            body(registry)
        });
    match spawned {
        Ok(thread) => {
            if let Err(e) = tx.send(registry) {
                // Unreachable: the thread holds the receiver until it got the registry.
                return Err(Box::new(Rejected {
                    registry: e.0,
                    error: MigrationError::ThreadPanicked,
                }));
            }
            Ok(MigrationHandle::new(thread, runtime))
        }
        Err(e) => Err(Box::new(Rejected {
            registry,
            error: MigrationError::Spawn(e),
        })),
    }
}
