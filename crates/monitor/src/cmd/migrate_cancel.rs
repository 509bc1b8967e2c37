//! `migrate_cancel`: cancel the outgoing migration. Always succeeds (QEMU returns `{}` even
//! when nothing runs); the status goes through `cancelling` to `cancelled`.

use crate::session::Session;

/// Asks the backend to cancel.
pub fn run(s: &Session) {
    s.backend.migrate_cancel();
}
