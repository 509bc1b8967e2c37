//! `x-local-handover` (livemig's own capability): a same-host migration over a `unix:` channel
//! hands the memfd(s) behind guest RAM to the destination process as descriptors, instead of
//! copying RAM; with `x-ignore-shared` (required) no page of those blocks is sent, so the
//! stream carries device state only.
//!
//! ```text
//! source                                        destination
//! connect unix:PATH
//! first write of the stream  ── "QEVM"... + SCM_RIGHTS [memfd of each Memfd block, RAM-list order]
//!                                               first 4 bytes read with recvmsg: fds kept
//!                                               ram load_setup: count = its Memfd blocks? each
//!                                               fd mmap'ed MAP_FIXED over its own block (same
//!                                               address, so vCPUs / KVM slots follow; a KVM
//!                                               VM registers its slot again before its first
//!                                               vCPU runs); nothing is written
//! device state, ram-verify digests, commit ─▶   load, verify, start only on the source's commit
//! ```
//!
//! Safety: the source never unmaps or changes its RAM for the handover. The destination writes
//! no guest memory before its vCPUs start, and they start only after the whole stream loaded
//! and the source's switchover commit arrived. So a destination that fails or is killed at any
//! step before that leaves the source's RAM as it was, and the source resumes on it (`cont`
//! after a failed migration, like any other failure).
//!
//! Disks are not handed over: both processes name the same image (`--drive`, no `blk`), the
//! destination opens it inactive and takes its lock once the source flushed it and dropped its
//! lock at the switchover (see `vmm::machine::guest`); a failed migration gives it back to the
//! source.
//!
//! Why not QEMU 10's `cpr-transfer`: it is a migration *mode* with a second, dedicated
//! `cpr` channel that carries the descriptors of every backend before the main stream, and
//! a new QEMU that must be started with `-incoming` on that channel; livemig's destinations
//! already exist when the source connects, and a QEMU 7.2 peer has no such mode. A capability
//! that rides on the existing main channel keeps one connection and the stream format
//! unchanged (a QEMU peer never sees it: both sides must turn it on).

use guest_ram::{Backing, GuestRam};

use crate::capabilities::Capability;
use crate::error::MigrationError;
use crate::session::{IncomingSession, OutgoingSession};

/// Source: attaches a copy of each `Memfd` block's descriptor to the stream's first bytes.
pub(super) fn hand_over(ram: &GuestRam, s: &OutgoingSession) -> Result<(), MigrationError> {
    let settings = s.settings();
    if !settings.has(Capability::XLocalHandover) {
        return Ok(());
    }
    if !settings.has(Capability::XIgnoreShared) {
        return Err(MigrationError::HandoverNeedsIgnoreShared);
    }
    let slot = s.fd_slot().ok_or(MigrationError::HandoverTransport)?;
    let fds = ram
        .blocks()
        .iter()
        .filter_map(|b| b.memfd())
        .map(|fd| fd.try_clone_to_owned())
        .collect::<Result<Vec<_>, _>>()
        .map_err(MigrationError::Handover)?;
    tracing::info!(
        descriptors = fds.len(),
        "x-local-handover: handing RAM over"
    );
    slot.attach(fds);
    Ok(())
}

/// Destination: maps each descriptor that came with the stream over its `Memfd` block (in
/// RAM-list order). Refuses descriptors with the capability off, and a count that differs
/// from its `Memfd` blocks.
pub(super) fn take_over(ram: &GuestRam, s: &mut IncomingSession) -> Result<(), MigrationError> {
    let fds = s.take_handover_fds();
    let handover = s.settings().has(Capability::XLocalHandover);
    let blocks: Vec<_> = ram
        .blocks()
        .iter()
        .filter(|b| *b.backing() == Backing::Memfd)
        .collect();
    let expected = if handover { blocks.len() } else { 0 };
    if fds.len() != expected {
        return Err(MigrationError::HandoverCount {
            expected,
            received: fds.len(),
            handover,
        });
    }
    if !handover {
        return Ok(());
    }
    if !s.settings().has(Capability::XIgnoreShared) {
        return Err(MigrationError::HandoverNeedsIgnoreShared);
    }
    for (block, fd) in blocks.into_iter().zip(fds) {
        block.adopt_memfd(fd)?;
    }
    tracing::info!(blocks = expected, "x-local-handover: RAM taken over");
    Ok(())
}
