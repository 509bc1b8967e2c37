//! The stream from end to end, and switchover: stop the guest, pause for `migrate-continue` if
//! `pause-before-switchover` is on, send what is left and the device state, end the stream;
//! with the return path, the destination's verdict.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use savevm::qemu_file::QemuFileWriter;
use savevm::record::{self, SectionHeader};
use savevm::{vmdesc, vmstate};
use transport::ChannelWriter;

use super::precopy::PrecopyEnd;
use super::{precopy, setup, Job, Sent};
use crate::capabilities::Capability;
use crate::error::MigrationError;
use crate::postcopy::rp_reader::SourceReturnPath;
use crate::postcopy::source::Switch;
use crate::postcopy::{self, PostcopyError};
use crate::registry::{EntryKind, Registry};
use crate::session::OutgoingSession;
use crate::status::{MigrationStatus, RunState};

/// Everything the source writes: setup, pre-copy, switchover, then the end of the stream.
/// `stopped` records whether the guest was stopped and was running before.
pub(super) fn stream(
    job: &Job,
    registry: &mut Registry,
    s: &mut OutgoingSession,
    use_rp: bool,
    writer: ChannelWriter,
    rp: &mut SourceReturnPath,
    stopped: &mut Option<bool>,
) -> Result<Sent, MigrationError> {
    let slot = Arc::new(Mutex::new(Some(writer)));
    let mut f = QemuFileWriter::with_capacity(Box::new(SlotWriter(slot.clone())), 1 << 20);
    setup::write_setup(&job.machine, registry, s, use_rp, &mut f)?;
    {
        let mut t = job.runtime.timings();
        t.setup_time = Some(t.elapsed_ms());
    }
    if !job
        .state
        .set_status(MigrationStatus::Setup, MigrationStatus::Active)
    {
        return Err(MigrationError::Cancelled);
    }
    // What the main channel's socket still holds: on a slow link, megabytes that the
    // destination must receive before it can run, so they count as pending.
    let unsent = || {
        slot.try_lock()
            .ok()
            .and_then(|w| w.as_ref().and_then(ChannelWriter::unsent_bytes))
            .unwrap_or(0)
    };
    let (downtime_start, downtime) = match precopy::precopy(job, registry, s, &mut f, &unsent)? {
        PrecopyEnd::Converged => (complete(job, registry, s, &mut f, use_rp, stopped)?, None),
        PrecopyEnd::Postcopy => {
            let rp = rp.thread().ok_or(PostcopyError::NoReturnPath)?;
            let sw = Switch {
                vm: job.vm.as_ref(),
                state: &job.state,
                runtime: &job.runtime,
                global_state: &job.global_state,
                tls: &job.tls,
            };
            // ram-verify goes after the last page, not in the package (the destination's RAM
            // is incomplete then).
            let mut devices =
                |r: &mut Registry, s: &OutgoingSession, f: &mut QemuFileWriter, end: bool| {
                    let keep = |id: &str| (id == crate::verify::IDSTR) == end;
                    write_device_sections(r, s, f, &keep).map(drop)
                };
            let o = postcopy::source::run(&sw, registry, s, &mut f, rp, stopped, &mut devices)?;
            (o.stopped_at, Some(o.downtime))
        }
    };
    let bytes = f.total_transferred();
    drop(f);
    let mut writer = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if !use_rp {
        if let Some(w) = writer.take() {
            w.finish()?;
        }
    }
    Ok(Sent {
        downtime_start,
        postcopy: downtime.is_some(),
        downtime,
        bytes,
        writer,
    })
}

/// Switchover: stop the guest, send what is left and the device state. Returns when the
/// guest was stopped.
fn complete(
    job: &Job,
    registry: &mut Registry,
    s: &mut OutgoingSession,
    f: &mut QemuFileWriter,
    use_rp: bool,
    stopped: &mut Option<bool>,
) -> Result<Instant, MigrationError> {
    let downtime_start = Instant::now();
    job.global_state.store(job.vm.run_state().as_str());
    *stopped = Some(job.vm.vm_stop(RunState::FinishMigrate)?);
    // QEMU 7.2: the switchover happens in `active`, or in `device` after a pause.
    if s.settings().has(Capability::PauseBeforeSwitchover) {
        job.state
            .pause_before_switchover(job.runtime.cancel_token())?;
    } else if job.state.status() != MigrationStatus::Active {
        return Err(MigrationError::Cancelled);
    }
    f.set_rate_limit(0);
    for e in registry.entries_mut() {
        if let EntryKind::Live(h) = &mut e.kind {
            if h.is_active(&s.settings().caps) {
                SectionHeader::End {
                    section_id: e.section_id,
                }
                .write_to(f);
                h.complete(f, s)?;
                record::write_footer(f, e.section_id);
            }
        }
    }
    let ram_done = downtime_start.elapsed();
    write_devices(registry, s, f, use_rp)?;
    f.flush()?;
    job.runtime.cancel_token().check()?;
    tracing::debug!(?ram_done, stream = ?downtime_start.elapsed(), "switchover: stream sent");
    Ok(downtime_start)
}

/// FULL sections of the needed devices, EOF, and the VMDESCRIPTION trailer (announcing the
/// switchover commit when the destination can report back, see [`commit`]).
fn write_devices(
    registry: &mut Registry,
    s: &OutgoingSession,
    f: &mut QemuFileWriter,
    use_rp: bool,
) -> Result<(), MigrationError> {
    let mut desc = write_device_sections(registry, s, f, &|_| true)?;
    if use_rp {
        desc.announce_commit();
    }
    record::write_eof(f);
    record::write_vmdesc(f, desc.to_qemu_json().as_bytes());
    Ok(())
}

/// The FULL sections of the needed devices whose idstr `keep` accepts, and their JSON
/// description.
pub(crate) fn write_device_sections(
    registry: &mut Registry,
    s: &OutgoingSession,
    f: &mut QemuFileWriter,
    keep: &dyn Fn(&str) -> bool,
) -> Result<vmdesc::VmDescBuilder, MigrationError> {
    let mut desc = vmdesc::VmDescBuilder::new(savevm::ram::TARGET_PAGE_SIZE as u64);
    for e in registry.entries_mut() {
        let EntryKind::Device(d) = &mut e.kind else {
            continue;
        };
        if !d.needed(&s.settings().caps) || !keep(&e.idstr) {
            continue;
        }
        d.pre_save()?;
        SectionHeader::Full {
            section_id: e.section_id,
            idstr: e.idstr.clone(),
            instance_id: e.instance_id,
            version_id: e.version_id,
        }
        .write_to(f);
        let body = vmstate::save(&d.description(), &d.save(), f)?;
        record::write_footer(f, e.section_id);
        desc.add_device(&e.idstr, e.instance_id, body);
    }
    Ok(desc)
}

/// Confirms the switchover after the destination's `SHUT 0`: from now on the guest is the
/// destination's. A failure to write is logged, not returned: the destination then keeps the
/// guest stopped and so does the source (`cont` resumes it here) — see
/// [`savevm::record::write_commit`].
pub(super) fn commit(writer: Option<ChannelWriter>) {
    let Some(w) = writer else { return };
    let mut f = QemuFileWriter::new(Box::new(w));
    record::write_commit(&mut f);
    if let Err(e) = f.flush() {
        tracing::warn!(
            "the switchover commit did not go out ({e}): the guest is paused here and not \
             started there; `cont` resumes it here"
        );
    }
}

/// Lets the stream writer be taken back after the last flush, to finish the channel.
struct SlotWriter(Arc<Mutex<Option<ChannelWriter>>>);

impl SlotWriter {
    fn with<R>(
        &self,
        closed: std::io::Result<R>,
        f: impl FnOnce(&mut ChannelWriter) -> std::io::Result<R>,
    ) -> std::io::Result<R> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(w) => f(w),
            None => closed,
        }
    }
}

impl std::io::Write for SlotWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.with(Err(std::io::ErrorKind::BrokenPipe.into()), |w| w.write(buf))
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.with(Err(std::io::ErrorKind::BrokenPipe.into()), |w| {
            w.write_vectored(bufs)
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.with(Ok(()), |w| w.flush())
    }
}
