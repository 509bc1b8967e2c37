//! The destination side: accept the source's connections, load the stream into the registry,
//! start the guest.
//!
//! ```text
//! migrate-incoming ─▶ start() ─ [setup] thread: accept main (+ multifd channels, QEMU's order)
//!                 (with tls-creds: a TLS handshake on each, tls-authz checked)
//!   ─▶ [active] load_stream (load.rs) ─ return path: PONGs, then SHUT 0|1
//!      postcopy: at RUN ─▶ [postcopy-active], guest started, the rest of RAM loaded while it
//!      runs (pages placed through userfaultfd, see `crate::postcopy`), SHUT 0 at the end
//!   ─▶ disks activated (with late-block-activate: only if the guest starts now, else at cont)
//!   ─▶ [completed] guest started if the source was running and no -S (or a cont came while
//!      loading); else its run state
//! any error ─▶ [failed] handlers' load_cleanup(failed) discards what must not survive
//!              (staged disk images); the caller decides what to do with the process
//! ```
//!
//! [`start`] takes everything by value, like [`crate::outgoing::start`], and the thread returns
//! the registry in [`Finished`]. Cancelling (`migrate_cancel`, or dropping the
//! VM) shuts the listener down, so a destination waiting for a source can always be stopped.

mod accept;
mod load;
mod return_path;

use std::io::Write;
use std::sync::Arc;

use savevm::qemu_file::QemuFileReader;
use savevm::record;
use transport::Listener;

use crate::capabilities::Capability;
use crate::error::MigrationError;
use crate::global_state::GlobalState;
use crate::handle::{self, Finished, MigrationHandle, OnFinished, Rejected};
use crate::postcopy::{PostcopyError, PostcopyPhase};
use crate::registry::{EntryKind, Registry};
use crate::runtime::Runtime;
use crate::session::IncomingSession;
use crate::state::MigrationState;
use crate::status::{MigrationStatus, RunState};
use crate::tls::TlsObjects;
use crate::vm::VmControl;

/// How often a destination waiting for multifd connections checks its main channel.
const CHANNEL_POLL: std::time::Duration = std::time::Duration::from_millis(100);

pub use accept::SOURCE_HELLO_TIMEOUT;
pub use load::load_stream;
use load::Stage;
pub(crate) use load::{load_records, LoadEnd};
pub use return_path::{ReturnPath, RpSender};

/// Everything the destination needs, handed over by value.
pub struct Incoming {
    /// Bound listener for the migration URI.
    pub listener: Listener,
    /// Local machine type.
    pub machine: String,
    /// The VM's registry; it comes back in [`Finished`] (or [`Rejected`]).
    pub registry: Registry,
    /// The VM to start afterwards.
    pub vm: Arc<dyn VmControl>,
    /// Received `globalstate`.
    pub global_state: GlobalState,
    /// Start the guest after loading (no `-S`).
    pub autostart: bool,
    /// Run on the migration thread after the final status.
    pub on_finished: Option<OnFinished>,
    /// The VM's TLS objects, for `tls-creds` / `tls-authz` (every channel over TLS when
    /// `tls-creds` is set).
    pub tls: TlsObjects,
}

/// Starts listening for an incoming migration: the `setup` event (always, even if the start is
/// refused), status `setup` (with the listening addresses in `query-migrate`), then a thread
/// accepts, loads and starts the guest. A caller that fails before it gets here (a bad URI)
/// announces the attempt itself with [`MigrationState::announce_incoming`]. The settings
/// (capabilities, parameters) are read when the source connects, as QEMU does.
pub fn start(job: Incoming, state: &Arc<MigrationState>) -> Result<MigrationHandle, Box<Rejected>> {
    let Incoming {
        listener,
        machine,
        registry,
        vm,
        global_state,
        autostart,
        on_finished,
        tls,
    } = job;
    state.announce_incoming();
    let runtime = Arc::new(Runtime::new(state.settings()));
    // Unknown credentials are reported now; they are resolved again when the source connects.
    if let Err(error) = tls.server(&runtime.settings().params) {
        return Err(Box::new(Rejected { registry, error }));
    }
    let addr = listener.socket_address().map(|a| vec![a.to_qmp()]);
    if let Err(error) = state.begin_incoming(addr, runtime.clone()) {
        return Err(Box::new(Rejected { registry, error }));
    }
    runtime
        .cancel_token()
        .register_listener(listener.shutdown_handle());
    tracing::info!(
        "waiting for an incoming migration on {}",
        listener.local_description()
    );
    let state = state.clone();
    let thread_runtime = runtime.clone();
    let spawned = handle::spawn(
        "incoming",
        runtime.clone(),
        registry,
        move |mut registry| {
            let job = Job {
                runtime: thread_runtime,
                machine,
                vm,
                global_state,
                autostart,
                state,
                tls,
            };
            let result = job.accept_and_load(&listener, &mut registry);
            for e in registry.entries_mut() {
                if let EntryKind::Live(h) = &mut e.kind {
                    h.load_cleanup(result.is_err());
                }
            }
            job.state.end_incoming();
            match &result {
                Ok(()) => {
                    if !job
                        .state
                        .set_status(MigrationStatus::Active, MigrationStatus::Completed)
                    {
                        job.state.set_status(
                            MigrationStatus::PostcopyActive,
                            MigrationStatus::Completed,
                        );
                    }
                }
                Err(_) if job.runtime.cancel_token().is_cancelled() => job.state.cancelled(),
                Err(e) => {
                    // QEMU's words on the destination.
                    tracing::error!("load of migration failed: {}", e.report());
                    job.state.fail(e);
                }
            }
            if let Some(f) = on_finished {
                f();
            }
            Finished { registry, result }
        },
    );
    spawned.inspect_err(|r| {
        state_after_reject(&r.error, &runtime);
    })
}

/// A destination whose thread could not start listens no more.
fn state_after_reject(e: &MigrationError, runtime: &Runtime) {
    tracing::error!("cannot start the incoming migration: {}", e.report());
    runtime.cancel_token().cancel();
}

struct Job {
    runtime: Arc<Runtime>,
    machine: String,
    vm: Arc<dyn VmControl>,
    global_state: GlobalState,
    autostart: bool,
    state: Arc<MigrationState>,
    tls: TlsObjects,
}

impl Job {
    fn accept_and_load(
        &self,
        listener: &Listener,
        registry: &mut Registry,
    ) -> Result<(), MigrationError> {
        let cancel = self.runtime.cancel_token();
        let tls = self.tls.server(&self.state.settings().params)?;
        let main = accept::accept_source(listener, cancel, SOURCE_HELLO_TIMEOUT, tls.as_ref())?;
        // The settings in force when the source connects (a deferred destination may be
        // configured after migrate-incoming); TLS stays as the main channel was accepted.
        let settings = self.state.settings();
        if settings.params.uses_tls() != tls.is_some() {
            return Err(MigrationError::TlsCredsNotFound(settings.params.tls_creds));
        }
        let mut multifd = Vec::new();
        if settings.has(Capability::Multifd) {
            // QEMU 7.2: the first connection is the main stream, then one per multifd channel.
            let expected = usize::from(settings.params.multifd_channels);
            for connected in 0..expected {
                // A source that failed before it connected them all never will: waiting
                // ends when its main channel goes (QEMU 7.2's destination waits forever).
                let c = loop {
                    if let Some(c) = listener.accept_timeout(CHANNEL_POLL)? {
                        break c;
                    }
                    if main.writer.peer_closed() {
                        return Err(MigrationError::MultifdSourceGone {
                            connected,
                            expected,
                        });
                    }
                };
                cancel.register(c.shutdown_handle());
                let c = match &tls {
                    Some(tls) => transport::tls::server(c, tls)?,
                    None => c,
                };
                multifd.push(c.into_split().0);
            }
            multifd = crate::ram::multifd::accept_channels(multifd)?;
        }
        let start = std::time::Instant::now();
        self.state
            .set_status(MigrationStatus::Setup, MigrationStatus::Active);
        let writer = main.writer;
        let rp_writer = main
            .bidirectional
            .then(|| Box::new(writer) as Box<dyn Write + Send>);
        let mut rp = ReturnPath::new(rp_writer);
        let mut session = IncomingSession::new(self.runtime.clone(), settings, multifd);
        session.set_migration_state(self.state.clone());
        session.set_handover_fds(main.fds);
        let mut f = QemuFileReader::with_capacity(main.reader, 1 << 20);
        let late = session.settings().has(Capability::LateBlockActivate);
        let loaded = load::load_from(&mut f, registry, &self.machine, &mut rp, &mut session)
            .and_then(|stage| match stage {
                Stage::Done(l) => Ok(l),
                Stage::PostcopyRun => {
                    self.postcopy_run(&mut f, registry, &mut rp, &mut session, tls.as_ref())
                }
            })
            .and_then(|l| cancel.check().map(|()| l));
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                let _ = rp.shut(false);
                if matches!(
                    session.postcopy_phase(),
                    PostcopyPhase::Running | PostcopyPhase::Recovering
                ) {
                    return Err(self.fail_after_run(registry, e));
                }
                return Err(e);
            }
        };
        rp.shut(true)?;
        if loaded.commit_announced {
            // A livemig source confirms after it heard us; without that it kept the guest.
            tracing::debug!("waiting for the source's switchover commit");
            if !record::read_commit(&mut f)? {
                return Err(MigrationError::NoSwitchoverCommit);
            }
        }
        load::commit_load(registry)?;
        if session.postcopy_phase() != PostcopyPhase::Running {
            self.state
                .with_autostart(|requested| self.start_guest(self.autostart || *requested, late))?;
        }
        self.runtime.timings().total_time = Some(start.elapsed().as_millis() as u64);
        Ok(())
    }

    /// Postcopy RUN: `postcopy-active`, the guest starts here (as after a pre-copy), then the
    /// rest of the RAM is loaded while it runs; a broken link pauses until the source comes
    /// back (`crate::postcopy`'s recovery), and loading goes on from its new connection.
    fn postcopy_run(
        &self,
        f: &mut QemuFileReader,
        registry: &mut Registry,
        rp: &mut ReturnPath,
        s: &mut IncomingSession,
        tls: Option<&transport::tls::ServerTls>,
    ) -> Result<load::Loaded, MigrationError> {
        self.state
            .set_status(MigrationStatus::Active, MigrationStatus::PostcopyActive);
        let late = s.settings().has(Capability::LateBlockActivate);
        self.state
            .with_autostart(|requested| self.start_guest(self.autostart || *requested, late))?;
        loop {
            match load::load_rest(f, registry, rp, s) {
                Ok(Stage::Done(l)) => return Ok(l),
                Ok(Stage::PostcopyRun) => {
                    return Err(PostcopyError::OutOfOrder {
                        command: "POSTCOPY_RUN",
                        phase: "running",
                    }
                    .into())
                }
                Err(e) => {
                    *f = crate::postcopy::pause_until_recovered(
                        &self.state,
                        &self.runtime,
                        registry,
                        rp,
                        s,
                        tls,
                        e,
                    )?
                }
            }
        }
    }

    /// The stream failed while the guest runs here on incomplete RAM: release the faulting
    /// vCPUs (the RAM is unregistered, missing pages read as zero), then stop the guest.
    fn fail_after_run(&self, registry: &mut Registry, e: MigrationError) -> MigrationError {
        for entry in registry.entries_mut() {
            if let EntryKind::Live(h) = &mut entry.kind {
                h.load_cleanup(true);
            }
        }
        if let Err(stop) = self.vm.vm_stop(RunState::Paused) {
            tracing::error!(
                "cannot stop the guest after a failed postcopy: {}",
                crate::error_report(&stop)
            );
        }
        PostcopyError::FailedAfterRun(Box::new(e)).into()
    }

    /// Starts the guest if the source was running and `autostart` (no `-S`, or a `cont` came
    /// while loading), else adopts its run state. Disks are activated first (QEMU's
    /// `process_incoming_migration_bh`): always, or with `late` (`late-block-activate`) only
    /// when the guest starts now, leaving it to `cont` otherwise. A failed activation keeps
    /// the guest stopped (QEMU) instead of failing the completed migration.
    fn start_guest(&self, autostart: bool, late: bool) -> Result<(), MigrationError> {
        let global = self.global_state.get();
        let was_running = matches!(global.as_deref(), None | Some("running"));
        let mut autostart = autostart;
        if !late || (autostart && was_running) {
            if let Err(e) = self.vm.activate_block() {
                tracing::error!(
                    "cannot activate the disks, the guest stays stopped: {}",
                    crate::error_report(&e)
                );
                autostart = false;
            }
        }
        match global.as_deref() {
            None | Some("running") if autostart => Ok(self.vm.vm_start()?),
            None | Some("running") => {
                self.vm.set_run_state(RunState::Paused);
                Ok(())
            }
            Some(other) => {
                self.vm
                    .set_run_state(other.parse().unwrap_or(RunState::Paused));
                Ok(())
            }
        }
    }
}
