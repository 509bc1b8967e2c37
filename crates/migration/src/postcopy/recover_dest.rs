//! The destination's side of a broken postcopy: pause with the guest running, take the
//! source's new connection, answer its RECV_BITMAPs, resume (QEMU 7.2's
//! `postcopy_pause_incoming`, `loadvm_postcopy_handle_recv_bitmap` and `..._resume`).
//!
//! ```text
//! link error ─▶ [postcopy-paused]  guest running; vCPUs on missing pages wait; the fault
//!                                  thread notes new faults without sending
//!   migrate-recover URI ─▶ listen (the monitor binds it) ─ accept (TLS with tls-creds)
//!   ─▶ [postcopy-recover]  the new connection's reader continues the stream; the return
//!                          path's writer is swapped under the fault thread's feet
//!      RECV_BITMAP name     ─▶ RP RECV_BITMAP name + received-pages bitmap
//!      POSTCOPY_RESUME      ─▶ [postcopy-active], RP RESUME_ACK 1, the fault thread asks
//!                              again for every page it still waits for
//! anything failing while recovering (the new connection, a bad command) ─▶ back to
//! [postcopy-paused] with the reason as error-desc; migrate_cancel ends it (guest stopped)
//! ```

use savevm::qemu_file::QemuFileReader;
use savevm::record::recovery::{
    decode_block_name, encode_bitmap_tail, encode_block_name, RESUME_ACK_VALUE, RP_RECV_BITMAP,
    RP_RESUME_ACK,
};
use savevm::record::RpMessage;
use transport::tls::ServerTls;
use transport::Listener;

use super::dest::each_handler;
use super::pause::{self, ResumeWith};
use super::{PostcopyError, PostcopyPhase};
use crate::error::MigrationError;
use crate::incoming::ReturnPath;
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::session::IncomingSession;
use crate::state::MigrationState;
use crate::status::MigrationStatus;

/// How often the destination, waiting for the source on a `migrate-recover` listener, looks
/// for a newer `migrate-recover` (and a cancel).
const ACCEPT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Loading the rest of a running postcopy failed with `cause`: a link failure (or any failure
/// while recovering) pauses until the source's new connection is accepted, and returns its
/// reader; anything else, or a cancel, is returned.
pub(crate) fn pause_until_recovered(
    state: &MigrationState,
    runtime: &Runtime,
    registry: &mut Registry,
    rp: &mut ReturnPath,
    s: &mut IncomingSession,
    tls: Option<&ServerTls>,
    cause: MigrationError,
) -> Result<QemuFileReader, MigrationError> {
    let cancel = runtime.cancel_token();
    let recovering = s.postcopy_phase() == PostcopyPhase::Recovering;
    if cancel.is_cancelled()
        || !(recovering || pause::is_link_failure(&cause))
        || !pause::can_pause(s.settings())
    {
        return Err(cause);
    }
    let paused = MigrationError::from(PostcopyError::LinkBroken {
        peer: "source",
        runs: "destination (here)",
        waits: "migrate-recover URI",
        cause: Box::new(cause),
    });
    if !pause::enter(state, cancel, &paused) {
        // Only a cancel leaves postcopy now.
        return Err(MigrationError::Cancelled);
    }
    s.set_postcopy_phase(PostcopyPhase::Recovering);
    each_handler(registry, |p| {
        p.pause_incoming();
        Ok(())
    })?;
    tracing::error!("{}", paused.report());
    let mut listening: Option<Listener> = None;
    loop {
        let listener = match listening.take() {
            Some(l) => l,
            None => match runtime.recovery.wait(cancel)? {
                ResumeWith::Listen(l) => {
                    cancel.register_listener(l.shutdown_handle());
                    l
                }
                ResumeWith::Connect(_) => continue,
            },
        };
        let c = match listener.accept_timeout(ACCEPT_POLL) {
            Ok(Some(c)) => c,
            Ok(None) => {
                // A new migrate-recover replaces this listener (QEMU releases the old one).
                listening = Some(match runtime.recovery.try_take() {
                    Some(ResumeWith::Listen(l)) => {
                        cancel.register_listener(l.shutdown_handle());
                        l
                    }
                    _ => listener,
                });
                cancel.check()?;
                continue;
            }
            Err(_) if cancel.is_cancelled() => return Err(MigrationError::Cancelled),
            Err(e) => {
                note(state, e.into());
                continue;
            }
        };
        cancel.register(c.shutdown_handle());
        let channel = match tls {
            Some(tls) => match transport::tls::server(c, tls) {
                Ok(c) => c,
                Err(e) => {
                    note(state, e.into());
                    listening = Some(listener);
                    continue;
                }
            },
            None => c,
        };
        if !channel.is_bidirectional() {
            note(state, PostcopyError::NoReturnPath.into());
            listening = Some(listener);
            continue;
        }
        tracing::info!("postcopy recovery: the source reconnected");
        let (reader, writer) = channel.into_split();
        rp.replace_writer(Box::new(writer));
        if !state.set_status(
            MigrationStatus::PostcopyPaused,
            MigrationStatus::PostcopyRecover,
        ) {
            return Err(MigrationError::Cancelled);
        }
        return Ok(QemuFileReader::with_capacity(Box::new(reader), 1 << 20));
    }
}

fn note(state: &MigrationState, e: MigrationError) {
    tracing::error!("postcopy recovery: {}", e.report());
    state.note_error(&e);
}

fn expect_recovering(s: &IncomingSession, command: &'static str) -> Result<(), MigrationError> {
    if s.postcopy_phase() != PostcopyPhase::Recovering {
        return Err(PostcopyError::UnexpectedRecoveryMessage(command).into());
    }
    Ok(())
}

/// RECV_BITMAP: the received-pages bitmap of the named block, on the return path.
pub(super) fn recv_bitmap(
    data: &[u8],
    registry: &mut Registry,
    rp: &mut ReturnPath,
    s: &IncomingSession,
) -> Result<(), MigrationError> {
    expect_recovering(s, "RECV_BITMAP")?;
    let block = decode_block_name("RECV_BITMAP", data)?;
    let mut words = None;
    each_handler(registry, |p| {
        words = words.take().or_else(|| p.received_bitmap(&block));
        Ok(())
    })?;
    let words = words.ok_or_else(|| MigrationError::UnknownRamBlock(block.clone()))?;
    let name = encode_block_name(&block).ok_or_else(|| MigrationError::UnknownRamBlock(block))?;
    let sender = rp.sender().ok_or(PostcopyError::NoReturnPath)?;
    sender.send_with_tail(
        &RpMessage::Other {
            kind: RP_RECV_BITMAP,
            data: name,
        },
        &encode_bitmap_tail(&words),
    )
}

/// POSTCOPY_RESUME: back to `postcopy-active`, RESUME_ACK, and the fault thread asks again.
pub(super) fn resume(
    registry: &mut Registry,
    rp: &mut ReturnPath,
    s: &mut IncomingSession,
) -> Result<(), MigrationError> {
    expect_recovering(s, "POSTCOPY_RESUME")?;
    if let Some(state) = s.migration_state() {
        state.set_status(
            MigrationStatus::PostcopyRecover,
            MigrationStatus::PostcopyActive,
        );
    }
    s.set_postcopy_phase(PostcopyPhase::Running);
    rp.send(RpMessage::Other {
        kind: RP_RESUME_ACK,
        data: RESUME_ACK_VALUE.to_be_bytes().to_vec(),
    })?;
    each_handler(registry, |p| {
        p.resume_incoming();
        Ok(())
    })?;
    tracing::info!("postcopy resumed");
    Ok(())
}
