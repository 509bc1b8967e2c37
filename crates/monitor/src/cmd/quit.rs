//! `quit`: emit `SHUTDOWN {"guest": false, "reason": "host-qmp-quit"}`, reply, then ask the
//! backend to exit.
//!
//! The order matters to clients such as `qemu.qmp`, which expect the reply before the
//! connection closes. Running the command only emits the event and marks the session; the
//! connection loop calls [`MonitorBackend::quit`](crate::MonitorBackend::quit) after it has
//! written the reply.

use migration::Event;

use crate::session::Session;

/// The `reason` member of the `SHUTDOWN` event.
pub const QUIT_REASON: &str = "host-qmp-quit";

/// Emits the event and schedules the exit.
pub fn run(s: &mut Session) {
    s.backend.events().emit(Event::Shutdown {
        guest: false,
        reason: QUIT_REASON.to_string(),
    });
    s.quit_requested = true;
}
