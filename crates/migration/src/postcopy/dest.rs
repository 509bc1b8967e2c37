//! The destination's postcopy commands, in the order QEMU 7.2 sends them:
//!
//! ```text
//! none ──ADVISE──▶ advised ──DISCARD*──▶ advised ──LISTEN──▶ listening ──RUN──▶ running
//!                  (a plain pre-copy may still end here with EOF)     (inside PACKAGED)
//! ```
//!
//! RECV_BITMAP and POSTCOPY_RESUME belong to recovery (`recover_dest.rs`) and are refused
//! outside it. Any other order is refused (typed error). PACKAGED reads its be32-announced bytes in 1 MiB
//! steps (a hostile length costs what the peer really sends, not 4 GiB up front) and loads them
//! as a nested stream that must end with RUN; a package inside a package is refused.

use std::io::Cursor;

use savevm::qemu_file::QemuFileReader;
use savevm::record::postcopy::{Advise, Discard};
use savevm::record::{
    MIG_CMD_PACKAGED, MIG_CMD_POSTCOPY_ADVISE, MIG_CMD_POSTCOPY_LISTEN,
    MIG_CMD_POSTCOPY_RAM_DISCARD, MIG_CMD_POSTCOPY_RESUME, MIG_CMD_POSTCOPY_RUN,
    MIG_CMD_RECV_BITMAP,
};

use super::{PostcopyError, PostcopyPhase};
use crate::error::MigrationError;
use crate::incoming::{load_records, LoadEnd, ReturnPath};
use crate::registry::{EntryKind, Registry};
use crate::session::IncomingSession;

/// Read step for a package's bytes.
const PACKAGE_STEP: usize = 1 << 20;

/// What the loader does after a postcopy command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Keep reading records.
    Continue,
    /// RUN: the guest is to start; the package is over.
    Run,
}

/// True for the commands this module handles.
pub(crate) fn is_postcopy_command(cmd: u16) -> bool {
    matches!(
        cmd,
        MIG_CMD_POSTCOPY_ADVISE
            | MIG_CMD_POSTCOPY_RAM_DISCARD
            | MIG_CMD_POSTCOPY_LISTEN
            | MIG_CMD_POSTCOPY_RUN
            | MIG_CMD_PACKAGED
            | MIG_CMD_RECV_BITMAP
            | MIG_CMD_POSTCOPY_RESUME
    )
}

fn phase_name(p: PostcopyPhase) -> &'static str {
    match p {
        PostcopyPhase::None => "not advised",
        PostcopyPhase::Advised => "advised",
        PostcopyPhase::Listening => "listening",
        PostcopyPhase::Running => "running",
        PostcopyPhase::Recovering => "recovering",
    }
}

fn expect(
    s: &IncomingSession,
    want: PostcopyPhase,
    command: &'static str,
) -> Result<(), MigrationError> {
    let phase = s.postcopy_phase();
    if phase != want {
        return Err(PostcopyError::OutOfOrder {
            command,
            phase: phase_name(phase),
        }
        .into());
    }
    Ok(())
}

/// Runs `f` on the postcopy part of every live handler that has one.
pub(super) fn each_handler(
    registry: &mut Registry,
    mut f: impl FnMut(&mut dyn super::PostcopyHandler) -> Result<(), MigrationError>,
) -> Result<(), MigrationError> {
    for e in registry.entries_mut() {
        if let EntryKind::Live(h) = &mut e.kind {
            if let Some(p) = h.postcopy() {
                f(p)?;
            }
        }
    }
    Ok(())
}

/// Handles one postcopy command (see [`is_postcopy_command`]). `nested`: inside a package.
pub(crate) fn handle_command(
    cmd: u16,
    data: &[u8],
    f: &mut QemuFileReader,
    registry: &mut Registry,
    rp: &mut ReturnPath,
    s: &mut IncomingSession,
    nested: bool,
) -> Result<Flow, MigrationError> {
    match cmd {
        MIG_CMD_POSTCOPY_ADVISE => {
            expect(s, PostcopyPhase::None, "POSTCOPY_ADVISE")?;
            // The 0-byte form advises dirty-bitmap postcopy only: nothing for RAM to do.
            if let Some(a) = Advise::decode(data)? {
                each_handler(registry, |h| h.advise(&a, s))?;
                s.set_postcopy_phase(PostcopyPhase::Advised);
            }
            Ok(Flow::Continue)
        }
        MIG_CMD_POSTCOPY_RAM_DISCARD => {
            expect(s, PostcopyPhase::Advised, "POSTCOPY_RAM_DISCARD")?;
            let d = Discard::decode(data)?;
            each_handler(registry, |h| h.discard(&d))?;
            Ok(Flow::Continue)
        }
        MIG_CMD_POSTCOPY_LISTEN => {
            expect(s, PostcopyPhase::Advised, "POSTCOPY_LISTEN")?;
            let sender = rp.sender().ok_or(PostcopyError::NoReturnPath)?;
            each_handler(registry, |h| h.listen(sender.clone()))?;
            s.set_postcopy_phase(PostcopyPhase::Listening);
            Ok(Flow::Continue)
        }
        MIG_CMD_POSTCOPY_RUN => {
            expect(s, PostcopyPhase::Listening, "POSTCOPY_RUN")?;
            each_handler(registry, |h| h.run(s))?;
            s.set_postcopy_phase(PostcopyPhase::Running);
            Ok(Flow::Run)
        }
        MIG_CMD_PACKAGED => {
            if nested {
                return Err(PostcopyError::NestedPackage.into());
            }
            let len = <[u8; 4]>::try_from(data)
                .map(u32::from_be_bytes)
                .map_err(|_| MigrationError::UnsupportedCommand(cmd))?;
            let bytes = read_package(f, len)?;
            let mut inner = QemuFileReader::new(Box::new(Cursor::new(bytes)));
            match load_records(&mut inner, registry, rp, s, true)? {
                LoadEnd::Run => Ok(Flow::Run),
                LoadEnd::Eof => Err(PostcopyError::PackageWithoutRun.into()),
            }
        }
        MIG_CMD_RECV_BITMAP => {
            super::recover_dest::recv_bitmap(data, registry, rp, s).map(|()| Flow::Continue)
        }
        MIG_CMD_POSTCOPY_RESUME => {
            super::recover_dest::resume(registry, rp, s).map(|()| Flow::Continue)
        }
        _ => Err(MigrationError::UnsupportedCommand(cmd)),
    }
}

/// The `len` bytes of a package, read in steps.
fn read_package(f: &mut QemuFileReader, len: u32) -> Result<Vec<u8>, MigrationError> {
    let total = len as usize;
    let mut buf: Vec<u8> = Vec::new();
    while buf.len() < total {
        let step = (total - buf.len()).min(PACKAGE_STEP);
        let old = buf.len();
        buf.try_reserve(step)
            .map_err(|_| MigrationError::OutOfMemory {
                what: "a postcopy package",
                bytes: u64::from(len),
            })?;
        buf.resize(old + step, 0);
        f.get_buffer(&mut buf[old..])?;
    }
    Ok(buf)
}
