//! The source side: the migration thread.
//!
//! ```text
//! migrate ─▶ [setup] connect ─ header ─ configuration ─ START sections (RAM: block list)
//!        ─▶ [active] loop { pending = Σ handler.pending(threshold)
//!                           decide(pending, threshold) ─Iterate─▶ PART sections
//!                           every 100 ms: measure bandwidth, threshold, rate-limit window }
//!        ─▶ [device] stop vCPUs ─ END sections ─ FULL device sections ─ EOF ─ VMDESCRIPTION
//!        ─▶ [completed] run state postmigrate (the source stays paused; `cont` resumes it)
//! any error ─▶ [failed]     the guest runs again if it was running; error kept for query-migrate
//! cancel    ─▶ [cancelling] ─▶ [cancelled], same recovery
//! ```
//!
//! The thread owns the [`Registry`] while it runs and hands it back through the VM's registry
//! slot before the final status is published, so a retry right after a failure finds it.
//! Dirty tracking restarts from the set of existing pages on every migration, so a retry sends
//! everything needed.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use savevm::qemu_file::QemuFileWriter;
use savevm::record::{self, Configuration, RpMessage, SectionHeader};
use savevm::{vmdesc, vmstate};
use transport::{Channel, ChannelReader, ChannelWriter, FdSource, MigrationUri, ShutdownHandle};

use crate::capabilities::{Capabilities, Capability};
use crate::convergence::{self, ConvergenceInput, Decision, WINDOW};
use crate::error::MigrationError;
use crate::global_state::GlobalState;
use crate::params::MultifdCompression;
use crate::registry::{EntryKind, Registry};
use crate::state::MigrationState;
use crate::status::{MigrationStatus, RunState};
use crate::vm::VmControl;

/// Where the VM keeps its registry while no migration runs.
pub type RegistrySlot = Arc<Mutex<Option<Registry>>>;

/// Everything one outgoing migration needs.
pub struct OutgoingJob {
    /// Destination.
    pub uri: MigrationUri,
    /// Machine type name written in the configuration record.
    pub machine: String,
    /// The VM's registry slot (taken for the migration, put back at the end).
    pub registry: RegistrySlot,
    /// Migration state of this VM.
    pub state: Arc<MigrationState>,
    /// The VM.
    pub vm: Arc<dyn VmControl>,
    /// The `globalstate` cell.
    pub global_state: GlobalState,
    /// Shutdown handle of the live channel, for `migrate_cancel`.
    pub shutdown: Arc<Mutex<Option<ShutdownHandle>>>,
}

/// Starts an outgoing migration: validates preconditions, moves to `setup` and spawns the
/// migration thread. `fds` resolves `fd:` URIs.
pub fn start(job: OutgoingJob, fds: &dyn FdSource) -> Result<JoinHandle<()>, MigrationError> {
    // The status change is the one place that admits a single migration at a time.
    if !job.state.set_status_from_any(MigrationStatus::Setup) {
        return Err(MigrationError::InProgress);
    }
    {
        let mut s = job.state.lock();
        s.error = None;
        s.timings = Default::default();
        s.timings.start = Some(Instant::now());
    }
    job.state.ram.reset();
    job.state.clear_cancel();
    job.global_state.clear();
    // fd: is resolved on the caller's thread (the monitor connection owns the fd table);
    // sockets and commands are opened by the migration thread.
    let channel = match &job.uri {
        MigrationUri::Fd(_) => match transport::connect(&job.uri, fds) {
            Ok(c) => Some(c),
            Err(e) => {
                let e = MigrationError::from(e);
                fail(&job.state, &e);
                return Err(e);
            }
        },
        _ => None,
    };
    let state = job.state.clone();
    // The thread takes the registry from the VM's slot, so a failed spawn loses nothing.
    std::thread::Builder::new()
        .name("live_migration".into())
        .spawn(move || migration_thread(job, channel))
        .map_err(|e| {
            let e = MigrationError::Protocol(format!("cannot start the migration thread: {e}"));
            fail(&state, &e);
            e
        })
}

fn fail(state: &MigrationState, e: &MigrationError) {
    let msg = e.report();
    tracing::error!("migration failed: {msg}");
    state.lock().error = Some(msg);
    state.set_status_from_any(MigrationStatus::Failed);
}

fn migration_thread(job: OutgoingJob, pre: Option<Channel>) {
    let taken = job
        .registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let Some(mut registry) = taken else {
        fail(&job.state, &MigrationError::InProgress);
        return;
    };
    let mut stopped = None;
    let result = run(&job, &mut registry, pre, &mut stopped);
    for e in registry.entries_mut() {
        if let EntryKind::Live(h) = &mut e.kind {
            h.save_cleanup();
        }
    }
    *job.shutdown.lock().unwrap_or_else(|p| p.into_inner()) = None;
    job.state.set_cancel_handles(Vec::new());
    job.state
        .multifd_channels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .0
        .clear();
    job.vm.set_cpu_throttle(0);
    job.state
        .ram
        .cpu_throttle_percentage
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let failed = result.is_err();
    if failed && stopped == Some(true) {
        if let Err(e) = job.vm.vm_start() {
            tracing::error!("could not restart the guest after a failed migration: {e}");
        }
    } else if failed && stopped == Some(false) {
        job.vm.set_run_state(RunState::Paused);
    }
    *job.registry.lock().unwrap_or_else(|p| p.into_inner()) = Some(registry);
    match result {
        Ok(()) => {
            job.vm.set_run_state(RunState::Postmigrate);
            job.state
                .set_status(MigrationStatus::Device, MigrationStatus::Completed);
        }
        Err(_) if job.state.cancel_requested() => {
            if !job
                .state
                .set_status(MigrationStatus::Cancelling, MigrationStatus::Cancelled)
            {
                job.state.set_status_from_any(MigrationStatus::Cancelled);
            }
        }
        Err(e) => fail(&job.state, &e),
    }
}

fn check_cancel(state: &MigrationState) -> Result<(), MigrationError> {
    if state.cancel_requested() {
        Err(MigrationError::Cancelled)
    } else {
        Ok(())
    }
}

/// Bandwidth bookkeeping of the current 100 ms window.
struct Window {
    start: Instant,
    bytes0: u64,
    pages0: u64,
    bandwidth: f64,
    threshold: u64,
}

fn pages_sent(state: &MigrationState) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    state.ram.normal.load(Relaxed) + state.ram.duplicate.load(Relaxed)
}

fn run(
    job: &OutgoingJob,
    registry: &mut Registry,
    pre: Option<Channel>,
    stopped: &mut Option<bool>,
) -> Result<(), MigrationError> {
    let state = &job.state;
    let channel = match pre {
        Some(c) => c,
        None => transport::connect(&job.uri, &transport::NoFds)?,
    };
    *job.shutdown.lock().unwrap_or_else(|p| p.into_inner()) = Some(channel.shutdown_handle());
    check_cancel(state)?;
    let caps: Capabilities = state.lock().caps.clone();
    let use_rp = caps.get(Capability::ReturnPath);
    if use_rp && !channel.is_bidirectional() {
        return Err(MigrationError::Protocol(format!(
            "the return-path capability needs a socket transport, not {}",
            job.uri
        )));
    }
    if caps.get(Capability::Multifd) {
        open_multifd_channels(job)?;
    }
    let (mut return_path, writer) = channel.into_split();
    let streamed = stream(job, registry, &caps, use_rp, writer, stopped);
    let (downtime_start, setup_ms, sent) = match streamed {
        Ok(t) => t,
        // The destination may have said why on the return path before it went away: a failed
        // load closes the connection, and that beats the broken pipe the source then sees.
        Err(e @ (MigrationError::Stream(_) | MigrationError::Transport(_))) if use_rp => {
            return Err(match await_shut(&mut return_path) {
                Err(reported @ MigrationError::DestinationFailed(_)) => reported,
                _ => e,
            })
        }
        Err(e) => return Err(e),
    };
    if use_rp {
        await_shut(&mut return_path)?;
    }
    let downtime = downtime_start.elapsed();
    tracing::info!(?downtime, "switchover done");
    let mut s = state.lock();
    let total = s
        .timings
        .start
        .map(|t| t.elapsed().as_millis() as u64)
        .unwrap_or(0);
    s.timings.total_time = Some(total);
    s.timings.downtime = Some(downtime.as_millis() as u64);
    let transfer_ms = total.saturating_sub(setup_ms).max(1);
    s.timings.mbps = sent as f64 * 8.0 / transfer_ms as f64 / 1000.0;
    Ok(())
}

/// Everything the source writes: setup, pre-copy, switchover, then the end of the stream.
/// Returns when the guest was stopped, the setup time and the bytes sent.
fn stream(
    job: &OutgoingJob,
    registry: &mut Registry,
    caps: &Capabilities,
    use_rp: bool,
    writer: ChannelWriter,
    stopped: &mut Option<bool>,
) -> Result<(Instant, u64, u64), MigrationError> {
    let state = &job.state;
    let slot = Arc::new(Mutex::new(Some(writer)));
    let mut f = QemuFileWriter::with_capacity(Box::new(SlotWriter(slot.clone())), 1 << 20);
    write_setup(job, registry, caps, use_rp, &mut f)?;
    let setup_ms = elapsed_ms(state);
    state.lock().timings.setup_time = Some(setup_ms);
    if !state.set_status(MigrationStatus::Setup, MigrationStatus::Active) {
        return Err(MigrationError::Cancelled);
    }
    precopy(job, registry, caps, &mut f)?;
    let downtime_start = complete(job, registry, caps, &mut f, stopped)?;
    let sent = f.total_transferred();
    drop(f);
    let writer = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(w) = writer {
        w.finish()?;
    }
    Ok((downtime_start, setup_ms, sent))
}

/// Header, configuration, the return-path request, and a START section per live handler.
fn write_setup(
    job: &OutgoingJob,
    registry: &mut Registry,
    caps: &Capabilities,
    use_rp: bool,
    f: &mut QemuFileWriter,
) -> Result<(), MigrationError> {
    record::write_header(f);
    Configuration {
        machine: job.machine.clone(),
        ..Default::default()
    }
    .write_to(f);
    if use_rp {
        record::write_command(f, record::MIG_CMD_OPEN_RETURN_PATH, &[]);
    }
    for e in registry.entries_mut() {
        if let EntryKind::Live(h) = &mut e.kind {
            if h.is_active(caps) {
                SectionHeader::Start {
                    section_id: e.section_id,
                    idstr: e.idstr.clone(),
                    instance_id: e.instance_id,
                    version_id: e.version_id,
                }
                .write_to(f);
                h.save_setup(f)?;
                record::write_footer(f, e.section_id);
            }
        }
    }
    Ok(f.flush()?)
}

/// The pre-copy loop: iterate while the guest runs until [`convergence::decide`] says switch
/// over; applies the rate limit and the auto-converge throttle on the way.
fn precopy(
    job: &OutgoingJob,
    registry: &mut Registry,
    caps: &Capabilities,
    f: &mut QemuFileWriter,
) -> Result<(), MigrationError> {
    let state = &job.state;
    let mut w = Window {
        start: Instant::now(),
        bytes0: f.total_transferred(),
        pages0: pages_sent(state),
        bandwidth: 0.0,
        threshold: 0,
    };
    f.set_rate_limit(convergence::window_budget(
        state.lock().params.max_bandwidth(),
    ));
    let mut throttle = 0u8;
    let mut previous_pending = None;
    let mut sent_at_previous = 0;
    let mut extra_iterations = 0;
    let result = loop {
        check_cancel(state)?;
        if !f.is_rate_limited() {
            let mut pending = 0;
            for e in registry.entries_mut() {
                if let EntryKind::Live(h) = &mut e.kind {
                    if h.is_active(caps) {
                        pending += h.pending(w.threshold)?;
                    }
                }
            }
            let input = ConvergenceInput {
                pending,
                threshold: w.threshold,
                bandwidth: w.bandwidth,
                previous_pending,
                sent_since_previous: f.total_transferred() - sent_at_previous,
                extra_iterations,
            };
            let decision = convergence::decide(input);
            tracing::debug!(?input, ?decision, "convergence");
            if decision == Decision::Complete {
                break Ok(());
            }
            if pending < w.threshold {
                extra_iterations += 1;
                previous_pending = Some(pending);
                sent_at_previous = f.total_transferred();
            }
            iterate_round(registry, caps, f)?;
        }
        if let Some(e) = f.error() {
            break Err(e.into());
        }
        rate_limit(state, f, &mut w)?;
        let want = state
            .ram
            .cpu_throttle_percentage
            .load(std::sync::atomic::Ordering::Relaxed) as u8;
        if want != throttle {
            job.vm.set_cpu_throttle(want);
            throttle = want;
        }
    };
    if throttle != 0 {
        job.vm.set_cpu_throttle(0);
    }
    result
}

/// Lets the stream writer be taken back after the last flush, to finish the channel.
struct SlotWriter(Arc<Mutex<Option<ChannelWriter>>>);

impl std::io::Write for SlotWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(w) => w.write(buf),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(w) => w.write_vectored(bufs),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

fn elapsed_ms(state: &MigrationState) -> u64 {
    state
        .lock()
        .timings
        .start
        .map(|t| t.elapsed().as_millis() as u64)
        .unwrap_or(0)
}

/// One round of PART sections; stops at the first handler that is not finished (QEMU).
fn iterate_round(
    registry: &mut Registry,
    caps: &Capabilities,
    f: &mut QemuFileWriter,
) -> Result<(), MigrationError> {
    for e in registry.entries_mut() {
        let EntryKind::Live(h) = &mut e.kind else {
            continue;
        };
        if !h.is_active(caps) {
            continue;
        }
        if f.is_rate_limited() {
            return Ok(());
        }
        SectionHeader::Part {
            section_id: e.section_id,
        }
        .write_to(f);
        let done = h.iterate(f)?;
        record::write_footer(f, e.section_id);
        if !done {
            break;
        }
    }
    Ok(())
}

/// Measures the window when it is over, and sleeps out the window when the budget is spent.
fn rate_limit(
    state: &MigrationState,
    f: &mut QemuFileWriter,
    w: &mut Window,
) -> Result<(), MigrationError> {
    let elapsed = w.start.elapsed();
    if elapsed >= WINDOW {
        let bytes = f.total_transferred() - w.bytes0;
        let pages = pages_sent(state) - w.pages0;
        let (limit_ms, max_bw) = {
            let s = state.lock();
            (s.params.downtime_limit_ms(), s.params.max_bandwidth())
        };
        let m = convergence::measure_window(bytes, pages, elapsed, limit_ms);
        w.bandwidth = m.bandwidth;
        w.threshold = m.threshold;
        let remaining = state
            .ram
            .remaining
            .load(std::sync::atomic::Ordering::Relaxed);
        {
            let mut s = state.lock();
            s.timings.mbps = m.mbps;
            s.timings.pages_per_second = m.pages_per_second;
            if let Some(d) = convergence::expected_downtime_ms(remaining, m.bandwidth) {
                s.timings.expected_downtime = Some(d);
            }
        }
        tracing::debug!(mbps = m.mbps, threshold = m.threshold, remaining, "window");
        f.set_rate_limit(convergence::window_budget(max_bw));
        f.reset_rate_limit();
        w.start = Instant::now();
        w.bytes0 = f.total_transferred();
        w.pages0 = pages_sent(state);
    } else if f.is_rate_limited() {
        let end = w.start + WINDOW;
        while Instant::now() < end {
            check_cancel(state)?;
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(10)));
        }
    }
    Ok(())
}

/// Connects the `multifd-channels` extra connections (after the main one, which a QEMU 7.2
/// destination takes as the main stream) and leaves them for the RAM handler.
fn open_multifd_channels(job: &OutgoingJob) -> Result<(), MigrationError> {
    if !job.uri.supports_multiple_channels() {
        return Err(MigrationError::Protocol(
            "multifd is not supported by current protocol".into(),
        ));
    }
    let (n, compression) = {
        let s = job.state.lock();
        (s.params.multifd_channels, s.params.multifd_compression)
    };
    if compression != MultifdCompression::None {
        return Err(MigrationError::Protocol(format!(
            "multifd compression '{compression}' is not supported by livemig"
        )));
    }
    let mut writers = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..n {
        let c = transport::connect(&job.uri, &transport::NoFds)?;
        handles.push(c.shutdown_handle());
        writers.push(c.into_split().1);
    }
    job.state.set_cancel_handles(handles);
    job.state
        .multifd_channels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .0 = writers;
    Ok(())
}

/// Waits for the destination's verdict on the return path.
fn await_shut(rp: &mut ChannelReader) -> Result<(), MigrationError> {
    loop {
        match record::read_rp(rp)? {
            Some(RpMessage::Shut(0)) => return Ok(()),
            Some(RpMessage::Shut(status)) => return Err(MigrationError::DestinationFailed(status)),
            Some(other) => tracing::debug!(?other, "return-path message"),
            None => {
                return Err(MigrationError::Protocol(
                    "the destination closed the return path without reporting".into(),
                ))
            }
        }
    }
}

/// Switchover: stop the guest, send what is left and the device state. Returns when the
/// guest was stopped.
fn complete(
    job: &OutgoingJob,
    registry: &mut Registry,
    caps: &Capabilities,
    f: &mut QemuFileWriter,
    stopped: &mut Option<bool>,
) -> Result<Instant, MigrationError> {
    let state = &job.state;
    let downtime_start = Instant::now();
    job.global_state.store(job.vm.run_state().as_str());
    let was_running = job
        .vm
        .vm_stop(RunState::FinishMigrate)
        .map_err(MigrationError::Vm)?;
    *stopped = Some(was_running);
    if !state.set_status(MigrationStatus::Active, MigrationStatus::Device) {
        return Err(MigrationError::Cancelled);
    }
    f.set_rate_limit(0);
    for e in registry.entries_mut() {
        if let EntryKind::Live(h) = &mut e.kind {
            if h.is_active(caps) {
                SectionHeader::End {
                    section_id: e.section_id,
                }
                .write_to(f);
                h.complete(f)?;
                record::write_footer(f, e.section_id);
            }
        }
    }
    let ram_done = downtime_start.elapsed();
    let mut devices = Vec::new();
    for e in registry.entries_mut() {
        let EntryKind::Device(d) = &mut e.kind else {
            continue;
        };
        if !d.needed(caps) {
            continue;
        }
        SectionHeader::Full {
            section_id: e.section_id,
            idstr: e.idstr.clone(),
            instance_id: e.instance_id,
            version_id: e.version_id,
        }
        .write_to(f);
        let body = vmstate::save(&d.description(), &d.save(), f)?;
        record::write_footer(f, e.section_id);
        devices.push((e.idstr.clone(), e.instance_id, body));
    }
    record::write_eof(f);
    let mut desc = vmdesc::VmDescBuilder::new(savevm::ram::TARGET_PAGE_SIZE as u64);
    for (idstr, instance, body) in devices {
        desc.add_device(&idstr, instance, body);
    }
    let json = desc.to_qemu_json();
    record::write_vmdesc(f, json.as_bytes());
    f.flush()?;
    check_cancel(state)?;
    tracing::debug!(?ram_done, stream = ?downtime_start.elapsed(), "switchover: stream sent");
    Ok(downtime_start)
}
