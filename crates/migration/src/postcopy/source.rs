//! The source's switch to postcopy and its background phase, on the migration thread.
//!
//! ```text
//! [active] ─▶ [postcopy-active]  stop guest ─ END of handlers without postcopy (disks)
//!    ─ RAM: final sync, POSTCOPY_RAM_DISCARD × n
//!    ─ PACKAGED { LISTEN, FULL device sections, PING 3, RUN }      ◀── downtime ends here
//!    ─ loop { PART ram: requested pages first, then dirty ones }    (max-postcopy-bandwidth;
//!                                                                  requests are not held back)
//!    ─ END ram (EOS) ─ [FULL ram-verify] ─ EOF ─▶ the caller waits for SHUT 0
//! ```
//!
//! From the moment the package is out the destination may run the guest: whatever fails later,
//! the source's guest is not restarted. A broken link during the background phase pauses it
//! (`recover_source.rs`).

use std::time::{Duration, Instant};

use savevm::qemu_file::{QemuFileWriter, SharedBuffer};
use savevm::record::{
    self, SectionHeader, MIG_CMD_PACKAGED, MIG_CMD_PING, MIG_CMD_POSTCOPY_LISTEN,
    MIG_CMD_POSTCOPY_RUN,
};

use super::rp_reader::RpReader;
use super::PostcopyHandler;
use crate::convergence::{window_budget, WINDOW};
use crate::error::MigrationError;
use crate::global_state::GlobalState;
use crate::handler::LiveHandler;
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::session::OutgoingSession;
use crate::state::MigrationState;
use crate::status::{MigrationStatus, RunState};
use crate::vm::VmControl;

/// The PING sent after POSTCOPY_ADVISE; its PONG means the destination accepted it.
pub(crate) const ADVISE_PING: u32 = 1;

/// What the switch needs from the migration thread.
pub(crate) struct Switch<'a> {
    pub vm: &'a dyn VmControl,
    pub state: &'a MigrationState,
    pub runtime: &'a Runtime,
    pub global_state: &'a GlobalState,
    /// For a recovery's new connection.
    pub tls: &'a crate::tls::TlsObjects,
}

/// What the postcopy phase reports.
pub(crate) struct Outcome {
    /// When the guest was stopped.
    pub stopped_at: Instant,
    /// Stop → package sent (QEMU's postcopy downtime).
    pub downtime: Duration,
}

/// Writes FULL device sections (the migration thread's function, so both ends of the stream
/// describe devices the same way): with `false` those of the package, with `true` those that
/// go after the last page (`ram-verify`).
pub(crate) type DeviceWriter<'a> = &'a mut dyn FnMut(
    &mut Registry,
    &OutgoingSession,
    &mut QemuFileWriter,
    bool,
) -> Result<(), MigrationError>;

/// The switch and the background phase, up to EOF. `stopped` is set as the switchover sets it,
/// then to `Some(false)` once the destination may run the guest (never restart it here).
pub(crate) fn run(
    sw: &Switch<'_>,
    registry: &mut Registry,
    s: &mut OutgoingSession,
    f: &mut QemuFileWriter,
    rp: &mut RpReader,
    stopped: &mut Option<bool>,
    devices: DeviceWriter<'_>,
) -> Result<Outcome, MigrationError> {
    // Nothing moves before the destination said it can take postcopy (its answer to the
    // PING after ADVISE): a destination without userfaultfd fails while the guest runs here.
    rp.await_pong(ADVISE_PING, sw.runtime.cancel_token())?;
    if !sw
        .state
        .set_status(MigrationStatus::Active, MigrationStatus::PostcopyActive)
    {
        return Err(MigrationError::Cancelled);
    }
    let stopped_at = Instant::now();
    sw.global_state.store(sw.vm.run_state().as_str());
    *stopped = Some(sw.vm.vm_stop(RunState::FinishMigrate)?);
    f.set_rate_limit(0);
    // Handlers that cannot go on after the switch end now; RAM sends its discard list.
    for (id, h) in active_live(registry, s) {
        if let Some(p) = h.postcopy() {
            p.discard_dirty(f, s)?;
        } else {
            SectionHeader::End { section_id: id }.write_to(f);
            h.complete(f, s)?;
            record::write_footer(f, id);
        }
    }
    let package = package(registry, s, devices)?;
    let len = u32::try_from(package.len()).map_err(|_| MigrationError::OutOfMemory {
        what: "a postcopy package over 4 GiB",
        bytes: package.len() as u64,
    })?;
    record::write_command(f, MIG_CMD_PACKAGED, &len.to_be_bytes());
    f.put_buffer(&package);
    f.flush()?;
    // The destination may start the guest from now on.
    *stopped = Some(false);
    let downtime = stopped_at.elapsed();
    tracing::info!(?downtime, "postcopy: package sent, background phase");
    // A broken link pauses here until the operator resumes over a new one.
    while let Err(e) = background(sw, registry, s, f, rp) {
        super::recover_source::pause_until_resumed(sw, registry, s, f, rp, e)?;
    }
    for (id, p) in active_postcopy(registry, s) {
        SectionHeader::End { section_id: id }.write_to(f);
        p.complete_postcopy(f)?;
        record::write_footer(f, id);
    }
    devices(registry, s, f, true)?;
    record::write_eof(f);
    f.flush()?;
    Ok(Outcome {
        stopped_at,
        downtime,
    })
}

/// The active live handlers with their section ids.
/// The active live handlers that go on after the switch (RAM), with their section ids.
pub(super) fn active_postcopy<'a>(
    registry: &'a mut Registry,
    s: &OutgoingSession,
) -> impl Iterator<Item = (u32, &'a mut dyn PostcopyHandler)> + 'a {
    active_live(registry, s).filter_map(|(id, h)| Some((id, h.postcopy()?)))
}

fn active_live<'a>(
    registry: &'a mut Registry,
    s: &OutgoingSession,
) -> impl Iterator<Item = (u32, &'a mut Box<dyn LiveHandler>)> + 'a {
    registry.active_live_mut(s.settings().caps.clone())
}

/// LISTEN, the device sections, PING 3, RUN: the nested stream of the PACKAGED command.
fn package(
    registry: &mut Registry,
    s: &OutgoingSession,
    devices: DeviceWriter<'_>,
) -> Result<Vec<u8>, MigrationError> {
    let buf = SharedBuffer::new();
    let mut pf = QemuFileWriter::new(Box::new(buf.clone()));
    record::write_command(&mut pf, MIG_CMD_POSTCOPY_LISTEN, &[]);
    devices(registry, s, &mut pf, false)?;
    record::write_command(&mut pf, MIG_CMD_PING, &3u32.to_be_bytes());
    record::write_command(&mut pf, MIG_CMD_POSTCOPY_RUN, &[]);
    pf.flush()?;
    Ok(buf.take())
}

/// The background phase's rate-limit window: a tenth of pre-copy's, so that a window's burst
/// of background pages (which a requested page queues behind in the socket) stays small.
const BACKGROUND_WINDOW: Duration = Duration::from_millis(10);

/// PART sections until RAM is all sent; requests are served even when the window's budget is
/// spent, background pages wait for the next window.
fn background(
    sw: &Switch<'_>,
    registry: &mut Registry,
    s: &mut OutgoingSession,
    f: &mut QemuFileWriter,
    rp: &mut RpReader,
) -> Result<(), MigrationError> {
    let budget = window_budget(sw.state.settings().params.max_postcopy_bandwidth)
        / (WINDOW.as_millis() / BACKGROUND_WINDOW.as_millis()) as u64;
    f.set_rate_limit(budget);
    f.reset_rate_limit();
    let mut window_start = Instant::now();
    loop {
        let mut done = true;
        for (id, p) in active_postcopy(registry, s) {
            SectionHeader::Part { section_id: id }.write_to(f);
            done &= p.iterate_postcopy(f, &mut || rp.poll_requests())?;
            record::write_footer(f, id);
        }
        f.flush()?;
        if done {
            return Ok(());
        }
        // Sleep out a spent window, but wake for a page request.
        while f.is_rate_limited() && window_start.elapsed() < BACKGROUND_WINDOW {
            if rp.has_requests() {
                break;
            }
            rp.check()?;
            std::thread::sleep(Duration::from_micros(200));
        }
        if window_start.elapsed() >= BACKGROUND_WINDOW {
            f.reset_rate_limit();
            window_start = Instant::now();
        }
        if let Some(e) = f.error() {
            return Err(e.into());
        }
        sw.runtime.cancel_token().check()?;
    }
}
