//! The source's side of a broken postcopy: pause, then resume over a new connection (QEMU
//! 7.2's `postcopy_pause` and `postcopy_do_resume`).
//!
//! ```text
//! link error ─▶ [postcopy-paused]  guest stays stopped here, pages left to send kept
//!   migrate URI resume=true ─▶ connect (TLS with tls-creds), new return-path reader
//!   ─▶ [postcopy-recover]
//!      RECV_BITMAP name × blocks  ▶                 (no header: the stream goes on)
//!                                 ◀ RP RECV_BITMAP name + bitmap × blocks
//!      to send := ¬received, request queue dropped, next page names its block
//!      POSTCOPY_RESUME            ▶
//!                                 ◀ RP RESUME_ACK 1
//!   ─▶ [postcopy-active] the background phase goes on
//! anything failing in between (connect, the destination gone, a bad bitmap) ─▶ back to
//! [postcopy-paused] with the reason as error-desc; migrate_cancel ends it (guest not restarted)
//! ```

use savevm::qemu_file::QemuFileWriter;
use savevm::record::recovery::encode_block_name;
use savevm::record::{self, MIG_CMD_POSTCOPY_RESUME, MIG_CMD_RECV_BITMAP};

use super::pause::{self, ResumeWith};
use super::rp_reader::RpReader;
use super::source::{active_postcopy, Switch};
use super::PostcopyError;
use crate::error::MigrationError;
use crate::registry::Registry;
use crate::session::OutgoingSession;
use crate::status::MigrationStatus;

/// The background phase failed with `cause`: a link failure pauses until a resume succeeds
/// (then `Ok`, with `f` and `rp` on the new connection); anything else, or a cancel, is
/// returned.
pub(super) fn pause_until_resumed(
    sw: &Switch<'_>,
    registry: &mut Registry,
    s: &mut OutgoingSession,
    f: &mut QemuFileWriter,
    rp: &mut RpReader,
    cause: MigrationError,
) -> Result<(), MigrationError> {
    let cancel = sw.runtime.cancel_token();
    if cancel.is_cancelled()
        || !pause::is_link_failure(&cause)
        || !pause::can_pause(sw.runtime.settings())
    {
        return Err(cause);
    }
    let paused = MigrationError::from(PostcopyError::LinkBroken {
        peer: "destination",
        runs: "destination",
        waits: "migrate -r URI",
        cause: Box::new(cause),
    });
    if !pause::enter(sw.state, cancel, &paused) {
        // Only a cancel leaves postcopy now.
        return Err(MigrationError::Cancelled);
    }
    tracing::error!("{}", paused.report());
    loop {
        let ResumeWith::Connect(uri) = sw.runtime.recovery.wait(cancel)? else {
            continue;
        };
        match resume(sw, registry, s, f, rp, &uri) {
            Ok(()) => {
                tracing::info!("postcopy resumed over {uri}");
                return Ok(());
            }
            Err(_) if cancel.is_cancelled() => return Err(MigrationError::Cancelled),
            Err(e) => {
                let e = MigrationError::from(PostcopyError::RecoveryFailed {
                    uri: uri.to_string(),
                    cause: Box::new(e),
                });
                tracing::error!("{}", e.report());
                if !pause::enter(sw.state, cancel, &e) {
                    return Err(MigrationError::Cancelled);
                }
            }
        }
    }
}

/// One recovery attempt over `uri`.
fn resume(
    sw: &Switch<'_>,
    registry: &mut Registry,
    s: &mut OutgoingSession,
    f: &mut QemuFileWriter,
    rp: &mut RpReader,
    uri: &transport::MigrationUri,
) -> Result<(), MigrationError> {
    let cancel = sw.runtime.cancel_token();
    let settings = sw.runtime.settings();
    let tls = sw.tls.client(&settings.params, uri)?;
    let channel = transport::connect(uri, &transport::NoFds)?;
    cancel.register(channel.shutdown_handle());
    let channel = match &tls {
        Some(tls) => transport::tls::client(channel, tls)?,
        None => channel,
    };
    if !channel.is_bidirectional() {
        return Err(PostcopyError::NoReturnPath.into());
    }
    if !sw.state.set_status(
        MigrationStatus::PostcopyPaused,
        MigrationStatus::PostcopyRecover,
    ) {
        return Err(MigrationError::Cancelled);
    }
    let mut blocks = Vec::new();
    for (_, p) in active_postcopy(registry, s) {
        blocks.extend(p.recovery_blocks());
    }
    let max = blocks.iter().map(|(_, size)| *size).max().unwrap_or(0);
    let (reader, writer) = channel.into_split();
    *rp = RpReader::spawn(reader, max.max(8))?;
    *f = QemuFileWriter::with_capacity(Box::new(writer), 1 << 20);
    for (name, _) in &blocks {
        // Block names are 1..=255 bytes (guest_ram checks them).
        if let Some(payload) = encode_block_name(name) {
            record::write_command(f, MIG_CMD_RECV_BITMAP, &payload);
        }
    }
    f.flush()?;
    for _ in &blocks {
        let (name, tail) = rp.await_bitmap(cancel)?;
        let mut taken = false;
        for (_, p) in active_postcopy(registry, s) {
            p.reload_received(&name, &tail)?;
            taken = true;
        }
        if !taken {
            return Err(PostcopyError::RecvBitmapBlock(name).into());
        }
    }
    for (_, p) in active_postcopy(registry, s) {
        p.resume_prepare();
    }
    record::write_command(f, MIG_CMD_POSTCOPY_RESUME, &[]);
    f.flush()?;
    let ack = rp.await_resume_ack(cancel)?;
    if ack != savevm::record::recovery::RESUME_ACK_VALUE {
        return Err(PostcopyError::BadResumeAck(ack).into());
    }
    if !sw.state.set_status(
        MigrationStatus::PostcopyRecover,
        MigrationStatus::PostcopyActive,
    ) {
        return Err(MigrationError::Cancelled);
    }
    Ok(())
}
