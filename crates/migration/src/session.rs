//! What the migration thread hands to the live handlers during one migration.
//!
//! ```text
//! outgoing::start ─▶ thread owns: Registry, channels, OutgoingSession ─▶ handlers borrow &mut session
//!                    handler takes its multifd channels  ◀─ session.take_multifd_channels()
//!                    handler asks for a vCPU throttle    ─▶ session.request_throttle(p) ─▶ thread ─▶ VM
//! thread ends ─▶ Finished { registry, result } returned by value
//! ```
//!
//! A session lives exactly as long as one migration; nothing in it is parked in state shared
//! with the monitors. The [`Runtime`] it holds is the shared, read-mostly part (settings,
//! statistics, cancel).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use transport::{ChannelReader, ChannelWriter, FdSlot};

use crate::capabilities::Capability;
use crate::events::{Event, EventBus};
use crate::postcopy::PostcopyPhase;
use crate::runtime::Runtime;
use crate::settings::Settings;

/// The source side's per-migration context.
pub struct OutgoingSession {
    runtime: Arc<Runtime>,
    events: Option<Arc<EventBus>>,
    multifd: Vec<ChannelWriter>,
    throttle: Option<u8>,
    fd_slot: Option<FdSlot>,
}

impl OutgoingSession {
    /// A session over `runtime`; `MIGRATION_PASS` goes to `events` with the `events`
    /// capability; `multifd` are the extra channels already connected.
    pub fn new(runtime: Arc<Runtime>, events: Arc<EventBus>, multifd: Vec<ChannelWriter>) -> Self {
        let events = runtime.settings().has(Capability::Events).then_some(events);
        Self {
            runtime,
            events,
            multifd,
            throttle: None,
            fd_slot: None,
        }
    }

    /// The settings of this migration.
    pub fn settings(&self) -> &Settings {
        self.runtime.settings()
    }

    /// Sets where descriptors for the destination go (the main channel's, on a unix socket).
    pub fn set_fd_slot(&mut self, slot: Option<FdSlot>) {
        self.fd_slot = slot;
    }

    /// Where descriptors for the destination go; `None` unless the main channel is a unix
    /// socket. They travel with the stream's first bytes (`x-local-handover`).
    pub fn fd_slot(&self) -> Option<&FdSlot> {
        self.fd_slot.as_ref()
    }

    /// Statistics and cancel token.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The multifd channels (empty without `multifd`); the RAM handler takes them at setup.
    pub fn take_multifd_channels(&mut self) -> Vec<ChannelWriter> {
        std::mem::take(&mut self.multifd)
    }

    /// Asks the migration thread to throttle the vCPUs to `percent` (auto-converge).
    pub fn request_throttle(&mut self, percent: u8) {
        self.throttle = Some(percent);
    }

    /// The throttle asked for since the last call.
    pub(crate) fn take_throttle_request(&mut self) -> Option<u8> {
        self.throttle.take()
    }

    /// Emits `MIGRATION_PASS` with the `events` capability.
    pub fn emit_pass(&self, pass: u64) {
        if let Some(e) = &self.events {
            e.emit(Event::MigrationPass { pass });
        }
    }
}

/// The destination side's per-migration context.
pub struct IncomingSession {
    runtime: Arc<Runtime>,
    settings: Settings,
    multifd: Vec<ChannelReader>,
    handover_fds: Vec<OwnedFd>,
    postcopy: PostcopyPhase,
    /// The VM's migration state, for the status changes of postcopy recovery.
    state: Option<Arc<crate::state::MigrationState>>,
}

impl IncomingSession {
    /// A session over `runtime` with the multifd channels already accepted. `settings` are
    /// those in force when the source connected (a deferred destination may be configured
    /// after `migrate-incoming`, as in QEMU).
    pub fn new(runtime: Arc<Runtime>, settings: Settings, multifd: Vec<ChannelReader>) -> Self {
        Self {
            runtime,
            settings,
            multifd,
            handover_fds: Vec::new(),
            postcopy: PostcopyPhase::None,
            state: None,
        }
    }

    /// The VM's migration state, for status changes the loader makes (postcopy recovery).
    pub(crate) fn set_migration_state(&mut self, state: Arc<crate::state::MigrationState>) {
        self.state = Some(state);
    }

    pub(crate) fn migration_state(&self) -> Option<&crate::state::MigrationState> {
        self.state.as_deref()
    }

    /// A session for loading one stream outside a migration thread (a file, a fuzzer, a
    /// test): default settings, no multifd channels.
    pub fn standalone() -> Self {
        Self::new(
            Arc::new(Runtime::new(Settings::default())),
            Settings::default(),
            Vec::new(),
        )
    }

    /// The settings of this migration.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Statistics and cancel token.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The multifd channels (empty without `multifd`); the RAM handler takes them at setup.
    pub fn take_multifd_channels(&mut self) -> Vec<ChannelReader> {
        std::mem::take(&mut self.multifd)
    }

    /// Where this stream's postcopy is.
    pub fn postcopy_phase(&self) -> PostcopyPhase {
        self.postcopy
    }

    pub(crate) fn set_postcopy_phase(&mut self, phase: PostcopyPhase) {
        self.postcopy = phase;
    }

    /// Sets the descriptors that came with the stream's first bytes.
    pub fn set_handover_fds(&mut self, fds: Vec<OwnedFd>) {
        self.handover_fds = fds;
    }

    /// The descriptors that came with the stream's first bytes (`x-local-handover`); the RAM
    /// handler takes them at setup.
    pub fn take_handover_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.handover_fds)
    }
}
