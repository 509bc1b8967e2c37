//! The source side: the migration thread.
//!
//! ```text
//! migrate ─▶ start() ─ [setup] thread: connect (main, multifd; each a TLS handshake with
//!                       tls-creds) ─ header ─ configuration
//!                       ─ START sections (RAM: block list)                      setup.rs
//!        ─▶ [active] loop { pending = Σ handler.pending(threshold)
//!                           decide(pending, threshold) ─Iterate─▶ PART sections
//!                           every 100 ms: measure bandwidth, threshold, rate-limit window;
//!                           apply the throttle a handler asked for }          precopy.rs
//!        ─▶ stop vCPUs ─ [pre-switchover] wait for migrate-continue ─ [device]  (only with
//!           pause-before-switchover; else still [active])
//!           ─ END sections ─ FULL device sections ─ EOF ─ VMDESCRIPTION
//!                    ─ with return-path: wait for the destination's SHUT      switchover.rs
//!        ─▶ or, after migrate-start-postcopy: [postcopy-active] see crate::postcopy
//!        ─▶ [completed] run state postmigrate (the source stays paused; `cont` resumes it);
//!           then the handlers clean up (dirty tracking stops)
//! any error ─▶ [failed]     the guest runs again if it was running; error kept for query-migrate
//! cancel    ─▶ [cancelling] ─▶ [cancelled], same recovery
//! ```
//!
//! [`start`] takes everything the migration needs by value; the thread owns it and returns the
//! registry in [`Finished`] when the migration ended, after the final status is published.
//! Dirty tracking restarts from the set of existing pages on every migration, so a retry sends
//! everything needed.

mod precopy;
mod setup;
mod switchover;

use std::sync::Arc;
use std::time::Instant;

use transport::{Channel, ChannelWriter, FdSource, MigrationUri};

use crate::block::BlockMigrationOptions;
use crate::capabilities::Capability;
use crate::counters::RamCounters;
use crate::error::MigrationError;
use crate::global_state::GlobalState;
use crate::handle::{self, Finished, MigrationHandle, OnFinished, Rejected};
use crate::postcopy::rp_reader::SourceReturnPath;
use crate::postcopy::PostcopyError;
use crate::registry::{EntryKind, Registry};
use crate::runtime::Runtime;
use crate::session::OutgoingSession;
use crate::state::MigrationState;
use crate::status::{MigrationStatus, RunState};
use crate::tls::TlsObjects;
use crate::vm::VmControl;

/// Everything one outgoing migration needs, handed over by value.
pub struct Outgoing {
    /// Destination.
    pub uri: MigrationUri,
    /// Machine type name written in the configuration record.
    pub machine: String,
    /// The VM's registry; it comes back in [`Finished`] (or [`Rejected`]).
    pub registry: Registry,
    /// The VM.
    pub vm: Arc<dyn VmControl>,
    /// The `globalstate` cell.
    pub global_state: GlobalState,
    /// `migrate -b` / `-i`: block migration for this migration only.
    pub block: Option<BlockMigrationOptions>,
    /// Run on the migration thread after the final status.
    pub on_finished: Option<OnFinished>,
    /// The VM's TLS objects, for `tls-creds` (every channel over TLS when it is set).
    pub tls: TlsObjects,
}

/// What the migration thread works with besides the registry.
struct Job {
    uri: MigrationUri,
    machine: String,
    vm: Arc<dyn VmControl>,
    global_state: GlobalState,
    state: Arc<MigrationState>,
    runtime: Arc<Runtime>,
    block: bool,
    tls: TlsObjects,
}

/// Starts an outgoing migration: moves to `setup` and spawns the migration thread. `fds`
/// resolves `fd:` URIs (on the caller's thread: the monitor connection owns the fd table).
/// Fails with the registry back when another migration runs, the block options conflict with
/// the capabilities, an `fd:` cannot be resolved or the thread cannot start.
pub fn start(
    job: Outgoing,
    state: &Arc<MigrationState>,
    fds: &dyn FdSource,
) -> Result<MigrationHandle, Box<Rejected>> {
    let Outgoing {
        uri,
        machine,
        registry,
        vm,
        global_state,
        block,
        on_finished,
        tls,
    } = job;
    let reject = |registry, error| Err(Box::new(Rejected { registry, error }));
    let settings = match block {
        Some(b) => match state.apply_block_options(b) {
            Ok(s) => s,
            Err(e) => return reject(registry, e),
        },
        None => state.settings(),
    };
    let runtime = Arc::new(Runtime::new(settings));
    if let Err(e) = state.begin(runtime.clone()) {
        if block.is_some() {
            state.clear_block_options();
        }
        return reject(registry, e);
    }
    global_state.clear();
    let job = Job {
        uri,
        machine,
        vm,
        global_state,
        state: state.clone(),
        runtime: runtime.clone(),
        block: block.is_some(),
        tls,
    };
    let abandon = |e: &MigrationError| {
        if block.is_some() {
            state.clear_block_options();
        }
        tracing::error!("migration failed: {}", e.report());
        state.fail(e);
    };
    // fd: is resolved here; sockets and commands are opened by the migration thread.
    let pre = match &job.uri {
        MigrationUri::Fd(_) => match transport::connect(&job.uri, fds) {
            Ok(c) => Some(c),
            Err(e) => {
                let e = MigrationError::from(e);
                abandon(&e);
                return reject(registry, e);
            }
        },
        _ => None,
    };
    let spawned = handle::spawn("live_migration", runtime, registry, move |mut registry| {
        let mut stopped = None;
        let result = run(&job, &mut registry, pre, &mut stopped).map_err(|e| {
            // A cancel shuts the channels down, so the thread usually fails with the broken
            // pipe it caused; the caller wants to know it was cancelled.
            if job.runtime.cancel_token().is_cancelled() {
                MigrationError::Cancelled
            } else {
                e
            }
        });
        // After a success the final status goes out first, as QEMU's does: stopping dirty
        // tracking alone costs tens of milliseconds per GiB. A failure cleans up first, so
        // the guest restarts with nothing of the migration left.
        let ok = result.is_ok();
        if !ok {
            save_cleanup(&mut registry);
        }
        job.finish(&result, stopped);
        if ok {
            save_cleanup(&mut registry);
        }
        if let Some(f) = on_finished {
            f();
        }
        Finished { registry, result }
    });
    spawned.inspect_err(|r| abandon(&r.error))
}

/// Every live handler's `save_cleanup`.
fn save_cleanup(registry: &mut Registry) {
    for e in registry.entries_mut() {
        if let EntryKind::Live(h) = &mut e.kind {
            h.save_cleanup();
        }
    }
}

impl Job {
    /// The end (after a failure's cleanup, before a success's): end throttling, restart the
    /// guest after a failure, drop the one-migration block options, publish the final status.
    fn finish(&self, result: &Result<(), MigrationError>, stopped: Option<bool>) {
        let throttle = &self.runtime.ram.cpu_throttle_percentage;
        if RamCounters::get(throttle) != 0 {
            self.vm.set_cpu_throttle(0);
            RamCounters::set(throttle, 0);
        }
        let failed = result.is_err();
        if failed && stopped == Some(true) {
            if let Err(e) = self.vm.vm_start() {
                tracing::error!(
                    "could not restart the guest after a failed migration: {}",
                    crate::error_report(&e)
                );
            }
        } else if failed && stopped == Some(false) {
            self.vm.set_run_state(RunState::Paused);
        }
        if self.block {
            self.state.clear_block_options();
        }
        let state = &self.state;
        match result {
            Ok(()) => {
                self.vm.set_run_state(RunState::Postmigrate);
                // `active`, or `device` after a pause before switchover.
                if !state.set_status(MigrationStatus::Active, MigrationStatus::Completed)
                    && !state.set_status(MigrationStatus::Device, MigrationStatus::Completed)
                {
                    state.set_status(MigrationStatus::PostcopyActive, MigrationStatus::Completed);
                }
            }
            Err(_) if self.runtime.cancel_token().is_cancelled() => state.cancelled(),
            Err(e) => {
                tracing::error!("migration failed: {}", e.report());
                state.fail(e);
            }
        }
    }
}

/// The whole migration on the thread: channels, stream, the destination's verdict, figures.
fn run(
    job: &Job,
    registry: &mut Registry,
    pre: Option<Channel>,
    stopped: &mut Option<bool>,
) -> Result<(), MigrationError> {
    let settings = job.runtime.settings();
    let cancel = job.runtime.cancel_token();
    let tls = job.tls.client(&settings.params, &job.uri)?;
    let channel = match pre {
        Some(c) => c,
        None => transport::connect(&job.uri, &transport::NoFds)?,
    };
    cancel.register(channel.shutdown_handle());
    cancel.check()?;
    let channel = match &tls {
        Some(tls) => transport::tls::client(channel, tls)?,
        None => channel,
    };
    let postcopy = settings.has(Capability::PostcopyRam);
    if postcopy && !channel.is_bidirectional() {
        return Err(PostcopyError::NoReturnPath.into());
    }
    // Postcopy needs the return path whether or not `return-path` is on (QEMU).
    let use_rp = (settings.has(Capability::ReturnPath) || postcopy) && channel.is_bidirectional();
    if settings.has(Capability::ReturnPath) && !use_rp {
        tracing::info!("{} has no reverse direction: no return path", job.uri);
    }
    let multifd = if settings.has(Capability::Multifd) {
        setup::connect_multifd(&job.uri, settings, cancel, tls.as_ref())?
    } else {
        Vec::new()
    };
    let mut session =
        OutgoingSession::new(job.runtime.clone(), job.state.events().clone(), multifd);
    let (return_path, writer) = channel.into_split();
    let mut return_path = SourceReturnPath::new(return_path, postcopy)?;
    session.set_fd_slot(writer.fd_slot());
    let streamed = switchover::stream(
        job,
        registry,
        &mut session,
        use_rp,
        writer,
        &mut return_path,
        stopped,
    );
    let sent = match streamed {
        Ok(sent) => sent,
        // The destination may have said why on the return path before it went away: a failed
        // load closes the connection, and that beats the broken pipe the source then sees.
        Err(e @ (MigrationError::Stream(_) | MigrationError::Transport(_))) if use_rp => {
            return Err(match return_path.await_shut() {
                Err(reported @ MigrationError::DestinationFailed(_)) => reported,
                _ => e,
            })
        }
        Err(e) => return Err(e),
    };
    if use_rp && sent.postcopy {
        // The guest already runs there: its report ends the migration, nothing to commit.
        return_path.await_shut()?;
    } else if use_rp {
        // Everything is sent; the destination reports before it starts the guest. Until then
        // the guest runs nowhere: `info migrate` says so, and migrate_cancel resumes it here.
        job.runtime.set_awaiting_destination(true);
        let verdict = return_path.await_shut();
        job.runtime.set_awaiting_destination(false);
        verdict?;
        job.runtime.cancel_token().check()?;
        switchover::commit(sent.writer);
    }
    let mut t = job.runtime.timings();
    let total = t.elapsed_ms();
    let downtime = sent
        .downtime
        .unwrap_or_else(|| sent.downtime_start.elapsed());
    tracing::info!(?downtime, "switchover done");
    t.total_time = Some(total);
    t.downtime = Some(downtime.as_millis() as u64);
    let transfer_ms = total.saturating_sub(t.setup_time.unwrap_or(0)).max(1);
    t.mbps = sent.bytes as f64 * 8.0 / transfer_ms as f64 / 1000.0;
    Ok(())
}

/// What [`switchover::stream`] reports.
struct Sent {
    /// When the guest was stopped.
    downtime_start: Instant,
    /// Postcopy: stop → package sent (else the downtime ends with the destination's report).
    downtime: Option<std::time::Duration>,
    /// The migration switched to postcopy.
    postcopy: bool,
    /// Bytes written on the main channel.
    bytes: u64,
    /// The main channel, still open when the destination reports back (for the commit).
    writer: Option<ChannelWriter>,
}
