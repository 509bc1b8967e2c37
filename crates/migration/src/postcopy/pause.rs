//! `postcopy-paused`: what both sides do when the link breaks after the guest moved, and how
//! an operator reaches a paused migration (QEMU 7.2 behaviour).
//!
//! ```text
//!                    link error / migrate-pause
//! postcopy-active ───────────────────────────────▶ postcopy-paused ◀──────────┐
//!        ▲                                            │ source: migrate uri   │ the new link
//!        │                                            │   resume=true         │ failed, or the
//!        │          RESUME / RESUME_ACK               ▼ dest: migrate-recover │ peer misbehaved
//!        └──────────────────────────────────── postcopy-recover ─────────────┘
//! ```
//!
//! Neither side gives anything up while paused: the source keeps the pages it has not sent
//! (and may never restart its guest: it ran on the destination), the destination keeps
//! running its guest (vCPUs touching a missing page simply wait in userfaultfd) with its
//! fault thread and what it received. Only a link failure pauses (an I/O error or the end of a
//! channel); a peer that sends garbage while postcopy is active still fails the migration, and
//! so does any failure with `multifd` on (a recovery reconnects the main channel only).
//!
//! The operator's commands hand a [`ResumeWith`] to the migration thread through the
//! runtime's [`Recovery`] slot; `migrate-pause` is a yank of the current connections, which
//! the thread then sees as a link failure.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use transport::{Listener, MigrationUri};

use super::PostcopyError;
use crate::cancel::CancelToken;
use crate::error::MigrationError;
use crate::state::MigrationState;
use crate::status::MigrationStatus;

/// How a paused migration goes on.
pub(crate) enum ResumeWith {
    /// Source: connect to this URI (`migrate URI resume=true`).
    Connect(MigrationUri),
    /// Destination: take the next connection on this listener (`migrate-recover URI`).
    Listen(Listener),
}

/// The hand-over of a [`ResumeWith`] from a monitor command to the paused migration thread.
#[derive(Default)]
pub(crate) struct Recovery {
    slot: Mutex<Option<ResumeWith>>,
    posted: Condvar,
}

impl std::fmt::Debug for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery").finish_non_exhaustive()
    }
}

impl Recovery {
    fn post(&self, with: ResumeWith) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(with);
        self.posted.notify_all();
    }

    /// The operator's command, if one came.
    pub(crate) fn try_take(&self) -> Option<ResumeWith> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Waits for the operator's command; `Cancelled` on `migrate_cancel`.
    pub(crate) fn wait(&self, cancel: &CancelToken) -> Result<ResumeWith, MigrationError> {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(w) = slot.take() {
                return Ok(w);
            }
            cancel.check()?;
            slot = self
                .posted
                .wait_timeout(slot, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Whether a migration with these settings can pause: not with multifd channels, which a
/// recovery does not reconnect (it then fails as before recovery existed).
pub(crate) fn can_pause(settings: &crate::settings::Settings) -> bool {
    !settings.has(crate::capabilities::Capability::Multifd)
}

/// True for the failures that pause a postcopy instead of failing it: the link broke (an I/O
/// error, a channel that ended), not a peer that sent something wrong.
pub(crate) fn is_link_failure(e: &MigrationError) -> bool {
    matches!(
        e,
        MigrationError::Stream(savevm::Error::Io(_) | savevm::Error::UnexpectedEof { .. })
            | MigrationError::Transport(_)
            | MigrationError::ReturnPathClosed
    )
}

/// Moves to `postcopy-paused` from `postcopy-active` or `postcopy-recover` (or stays there),
/// keeping `why` as the error `query-migrate` shows; false if the migration is being
/// cancelled. The connections are shut down (QEMU closes its file): a link broken in one
/// direction only, or a recovery connection that failed half way, is then broken for the
/// peer too, which pauses instead of waiting on it.
pub(crate) fn enter(state: &MigrationState, cancel: &CancelToken, why: &MigrationError) -> bool {
    cancel.yank();
    let paused = state.status() == MigrationStatus::PostcopyPaused
        || state.set_status(
            MigrationStatus::PostcopyActive,
            MigrationStatus::PostcopyPaused,
        )
        || state.set_status(
            MigrationStatus::PostcopyRecover,
            MigrationStatus::PostcopyPaused,
        );
    if paused {
        state.note_error(why);
    }
    paused
}

impl MigrationState {
    /// `migrate-pause` (both sides): breaks the links of a `postcopy-active` migration, which
    /// then pauses.
    pub fn migrate_pause(&self) -> Result<(), PostcopyError> {
        match self.runtime() {
            Some(r) if self.status() == MigrationStatus::PostcopyActive => {
                tracing::warn!("migrate-pause: shutting the postcopy connections down");
                r.cancel_token().yank();
                Ok(())
            }
            _ => Err(PostcopyError::PauseNotActive),
        }
    }

    /// `migrate URI resume=true` on the source: a paused postcopy reconnects to `uri`.
    pub fn resume_postcopy(&self, uri: MigrationUri) -> Result<(), PostcopyError> {
        match self.runtime() {
            Some(r) if self.status() == MigrationStatus::PostcopyPaused && !self.is_incoming() => {
                r.recovery.post(ResumeWith::Connect(uri));
                Ok(())
            }
            _ => Err(PostcopyError::NothingToResume),
        }
    }

    /// `migrate-recover` on the destination, before it listens: the refusal when there is
    /// nothing to recover.
    pub fn check_recoverable(&self) -> Result<(), PostcopyError> {
        if self.status() == MigrationStatus::PostcopyPaused && self.is_incoming() {
            Ok(())
        } else {
            Err(PostcopyError::RecoverNotPaused)
        }
    }

    /// `migrate-recover` on the destination: the paused postcopy takes the source's new
    /// connection on `listener`.
    pub fn recover_postcopy(&self, listener: Listener) -> Result<(), PostcopyError> {
        self.check_recoverable()?;
        let r = self.runtime().ok_or(PostcopyError::RecoverNotPaused)?;
        r.recovery.post(ResumeWith::Listen(listener));
        Ok(())
    }
}
