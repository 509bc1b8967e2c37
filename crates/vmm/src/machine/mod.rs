//! A [`Machine`]: guest RAM, vCPUs, the migration registry and the migration state of one VM,
//! plus the operations the monitors expose (`migrate`, `migrate_cancel`, `migrate-incoming`,
//! `stop`, `cont`, `quit`).
//!
//! The machine owns the registry between migrations and hands it to each migration by value
//! (`migration::outgoing::start`, `migration::incoming::start`); the migration's thread returns
//! it when it ends, and the machine takes it back from the finished [`MigrationHandle`] before
//! the next one. Errors keep QEMU's texts, which management software matches on.

mod build;
mod config;
mod dirty_rate;
mod guest;
mod timer;
mod vcpus;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use block::Disk;
use guest_ram::{DirtyLog, GuestRam};
use migration::block::BlockMigrationOptions;
use migration::dirty_rate::{DirtyRateError, DirtyRateMode, DirtyRateRequest, DirtyRateState};
use migration::incoming::Incoming;
use migration::outgoing::Outgoing;
use migration::TlsObjects;
use migration::{
    Capability, CapabilityError, Event, EventBus, GlobalState, MigrationError, MigrationHandle,
    MigrationState, ParamError, ParameterUpdate, Registry, Rejected, RunState, VmControl,
};
use transport::tls::TlsObject;
use transport::{FdSource, MigrationUri};

pub use config::{Accel, DiskWorkload, MachineConfig, MachineError, MachineType, SerialTarget};
pub use guest::{Guest, GuestControl};
pub use timer::{Timer, TimerState};
pub use vcpus::{SoftCpuDevice, Vcpus};

use crate::kvm::KvmVm;

/// Where the registry is: with the machine, or lent to a migration.
enum Home {
    Idle(Registry),
    Outgoing(MigrationHandle),
    Incoming(MigrationHandle),
    /// A migration thread panicked and took the registry with it.
    Lost,
}

/// What waiters wait for: `quit`, or the end of the incoming migration.
#[derive(Default)]
struct Waiters {
    flags: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl Waiters {
    fn set(&self, quit: bool, incoming_done: bool) {
        let mut f = lock(&self.flags);
        f.0 |= quit;
        f.1 |= incoming_done;
        self.cv.notify_all();
    }
}

/// One VM.
pub struct Machine {
    cfg: MachineConfig,
    ram: Arc<GuestRam>,
    control: Arc<GuestControl>,
    disks: Vec<Arc<Disk>>,
    events: Arc<EventBus>,
    state: Arc<MigrationState>,
    home: Mutex<Home>,
    global: GlobalState,
    incoming_started: AtomicBool,
    incoming_result: Mutex<Option<Result<(), String>>>,
    incoming_uri: Mutex<Option<String>>,
    waiters: Arc<Waiters>,
    dirty_rate: dirty_rate::SharedDirtyRate,
    /// `tls-creds-x509` / `authz-simple` objects; each migration gets a copy.
    tls: Mutex<TlsObjects>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Machine {
    /// Builds the VM; starts the vCPUs unless `-S` or `--incoming`.
    pub fn new(cfg: MachineConfig) -> Result<Arc<Machine>, MachineError> {
        let parts = build::build(&cfg)?;
        let m = Arc::new(Machine {
            cfg,
            ram: parts.ram,
            control: parts.control,
            disks: parts.disks,
            events: parts.events,
            state: parts.state,
            home: Mutex::new(Home::Idle(parts.registry)),
            global: parts.global,
            incoming_started: AtomicBool::new(false),
            incoming_result: Mutex::new(None),
            incoming_uri: Mutex::new(None),
            waiters: Arc::default(),
            dirty_rate: Arc::default(),
            tls: Mutex::new(TlsObjects::default()),
        });
        m.state.set_uuid(m.cfg.uuid);
        if !m.cfg.incoming && !m.cfg.start_paused {
            m.control.vm_start()?;
        }
        if let Some(vm) = m.kvm().cloned() {
            m.watch_guest_stop(vm);
        }
        Ok(m)
    }

    /// When the KVM guest stops on its own (power-off, triple fault), the process ends like
    /// QEMU's does: `SHUTDOWN` event, then quit.
    fn watch_guest_stop(self: &Arc<Self>, vm: Arc<KvmVm>) {
        let me = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("guest-stop".into())
            .spawn(move || loop {
                let reason = vm.wait_stopped(Duration::from_millis(200));
                let Some(m) = me.upgrade() else { return };
                if m.quit_requested() {
                    return;
                }
                if let Some(reason) = reason {
                    tracing::warn!(?reason, "the guest stopped");
                    m.events.emit(Event::Shutdown {
                        guest: true,
                        reason: "guest-shutdown".into(),
                    });
                    m.request_quit();
                    return;
                }
                drop(m);
                // No vCPU runs yet (a destination before its migration): wait_stopped returned at once.
                std::thread::sleep(Duration::from_millis(200));
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot watch the guest for power-off: {e}");
        }
    }

    /// Guest RAM.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// The software vCPUs, if the guest is a software guest.
    pub fn vcpus(&self) -> Option<&Arc<Vcpus>> {
        match self.control.guest() {
            Guest::Soft(v) => Some(v),
            Guest::Kvm(_) => None,
        }
    }

    /// The KVM VM, if the guest runs on KVM.
    pub fn kvm(&self) -> Option<&Arc<KvmVm>> {
        match self.control.guest() {
            Guest::Kvm(vm) => Some(vm),
            Guest::Soft(_) => None,
        }
    }

    /// The guest control (vCPUs and disk writers).
    pub fn control(&self) -> &Arc<GuestControl> {
        &self.control
    }

    /// The disks.
    pub fn disks(&self) -> &[Arc<Disk>] {
        &self.disks
    }

    /// Migration state (status, parameters, capabilities, statistics).
    pub fn migration(&self) -> &Arc<MigrationState> {
        &self.state
    }

    /// Event bus.
    pub fn events(&self) -> &Arc<EventBus> {
        &self.events
    }

    /// The configuration.
    pub fn config(&self) -> &MachineConfig {
        &self.cfg
    }

    /// Current run state.
    pub fn run_state(&self) -> RunState {
        self.control.run_state()
    }

    /// True while the migration holding the registry has not published its final status.
    /// Once it has, its thread only cleans up (stops dirty tracking) and returns the registry.
    fn busy(&self, h: &MigrationHandle) -> bool {
        !h.is_finished() && self.state.status().is_running()
    }

    /// Takes the registry back from a finished migration (recording an incoming migration's
    /// outcome); `InProgress` while one runs.
    fn reclaim(&self, home: &mut Home) -> Result<Registry, MachineError> {
        match std::mem::replace(home, Home::Lost) {
            Home::Idle(r) => Ok(r),
            Home::Outgoing(h) if self.busy(&h) => {
                *home = Home::Outgoing(h);
                Err(MachineError::InProgress)
            }
            Home::Incoming(h) if self.busy(&h) && !lock(&self.waiters.flags).1 => {
                *home = Home::Incoming(h);
                Err(MachineError::InProgress)
            }
            Home::Outgoing(h) => Ok(h.join()?.registry),
            Home::Incoming(h) => {
                let finished = h.join()?;
                let machine = self.cfg.machine;
                *lock(&self.incoming_result) = Some(finished.result.map_err(|e| {
                    let report = e.report();
                    match (&e, machine) {
                        (MigrationError::UnknownRamBlock(b), MachineType::Microvm) => {
                            crate::kvm::microvm::explain_unknown_block(&report, b)
                        }
                        _ => report,
                    }
                }));
                Ok(finished.registry)
            }
            Home::Lost => Err(MigrationError::ThreadPanicked.into()),
        }
    }

    /// Puts back what a migration that did not start returned.
    fn rejected(&self, home: &mut Home, r: Rejected) -> MachineError {
        *home = Home::Idle(r.registry);
        match r.error {
            MigrationError::InProgress => MachineError::InProgress,
            e => MachineError::Migration(e),
        }
    }

    /// `migrate [-b|-i] URI`: starts an outgoing migration in the background. `block` asks for
    /// block migration of every disk (`-b`, full copy; `-i` with `incremental`, only what the
    /// top images hold).
    pub fn migrate(
        &self,
        uri: &str,
        fds: &dyn FdSource,
        block: Option<BlockMigrationOptions>,
    ) -> Result<(), MachineError> {
        if self.state.status().is_running() {
            return Err(MachineError::InProgress);
        }
        match self.run_state() {
            RunState::Postmigrate => return Err(MachineError::Postmigrate),
            RunState::Inmigrate => return Err(MachineError::Inmigrate),
            _ => {}
        }
        let uri: MigrationUri = match uri.parse() {
            Ok(u) => u,
            Err(e) => {
                // QEMU moves to setup, then fails: query-migrate shows `failed`, without
                // the error of an earlier migration.
                self.state.fail_before_start();
                return Err(MachineError::BadUri(e));
            }
        };
        let mut home = lock(&self.home);
        let registry = self.reclaim(&mut home)?;
        let job = Outgoing {
            uri,
            machine: self.cfg.machine.wire_name().into(),
            registry,
            vm: self.control.clone(),
            global_state: self.global.clone(),
            block,
            on_finished: None,
            tls: lock(&self.tls).clone(),
        };
        match migration::outgoing::start(job, &self.state, fds) {
            Ok(h) => {
                *home = Home::Outgoing(h);
                Ok(())
            }
            Err(r) => Err(self.rejected(&mut home, *r)),
        }
    }

    /// `migrate-set-capabilities`: refused while a migration runs; otherwise the merged set
    /// is checked against the current parameters and applied all or nothing.
    pub fn set_capabilities(&self, changes: &[(Capability, bool)]) -> Result<(), CapabilityError> {
        self.state.set_capabilities(changes)
    }

    /// `migrate-set-parameters`: the merged set is checked against this VM (its RAM size
    /// bounds `xbzrle-cache-size`) and the capabilities, then applied all or nothing.
    pub fn set_parameters(&self, update: &ParameterUpdate) -> Result<(), ParamError> {
        self.state
            .set_parameters(update, Some(self.ram.total_size()))
    }

    /// `object-add` / `--object`: a TLS credentials or authorization object (files are read
    /// now). Migrations already running keep the objects they started with.
    pub fn object_add(&self, object: TlsObject) -> Result<(), MachineError> {
        lock(&self.tls).add(object).map_err(MachineError::Object)
    }

    /// `object-del`.
    pub fn object_del(&self, id: &str) -> Result<(), MachineError> {
        lock(&self.tls).remove(id).map_err(MachineError::Object)
    }

    /// `migrate_cancel`: always succeeds.
    pub fn migrate_cancel(&self) {
        self.state.cancel();
    }

    /// `migrate-incoming URI` (or `--incoming URI`): listens and loads in the background.
    pub fn migrate_incoming(&self, uri: &str, fds: &dyn FdSource) -> Result<(), MachineError> {
        if !self.cfg.incoming {
            return Err(MachineError::NotIncoming);
        }
        if self.incoming_started.swap(true, Ordering::SeqCst) {
            return Err(MachineError::IncomingStarted);
        }
        let started = self.start_incoming(uri, fds);
        if started.is_err() {
            self.incoming_started.store(false, Ordering::SeqCst);
        }
        started
    }

    fn start_incoming(&self, uri: &str, fds: &dyn FdSource) -> Result<(), MachineError> {
        let prepared = self.prepare_incoming(uri, fds);
        let Ok((listener, registry, mut home)) = prepared else {
            // migration::incoming::start announces the attempts that get that far.
            self.state.announce_incoming();
            return prepared.map(|_| ());
        };
        let local = listener.local_description();
        let waiters = self.waiters.clone();
        let job = Incoming {
            listener,
            machine: self.cfg.machine.wire_name().into(),
            registry,
            vm: self.control.clone(),
            global_state: self.global.clone(),
            autostart: !self.cfg.start_paused,
            on_finished: Some(Box::new(move || waiters.set(false, true))),
            tls: lock(&self.tls).clone(),
        };
        match migration::incoming::start(job, &self.state) {
            Ok(h) => {
                *home = Home::Incoming(h);
                *lock(&self.incoming_uri) = Some(local);
                Ok(())
            }
            Err(r) => Err(self.rejected(&mut home, *r)),
        }
    }

    /// Parses `uri`, listens and takes the registry for an incoming migration.
    fn prepare_incoming(
        &self,
        uri: &str,
        fds: &dyn FdSource,
    ) -> Result<(transport::Listener, Registry, MutexGuard<'_, Home>), MachineError> {
        let parsed: MigrationUri = uri
            .parse()
            .map_err(|_| MachineError::BadIncomingUri(uri.to_string()))?;
        let listener =
            transport::listen(&parsed, fds).map_err(|e| MachineError::Migration(e.into()))?;
        let mut home = lock(&self.home);
        let registry = self.reclaim(&mut home)?;
        Ok((listener, registry, home))
    }

    /// The URI the incoming migration listens on, with the real port (e.g. `tcp:127.0.0.1:41811`).
    pub fn incoming_uri(&self) -> Option<String> {
        lock(&self.incoming_uri).clone()
    }

    /// The outcome of the incoming migration, once it ended.
    pub fn incoming_result(&self) -> Option<Result<(), String>> {
        if let Some(r) = lock(&self.incoming_result).clone() {
            return Some(r);
        }
        let mut home = lock(&self.home);
        let done = lock(&self.waiters.flags).1;
        if matches!(&*home, Home::Incoming(h) if done || h.is_finished()) {
            match self.reclaim(&mut home) {
                Ok(registry) => *home = Home::Idle(registry),
                Err(e) => tracing::error!("{}", migration::error_report(&e)),
            }
        }
        drop(home);
        lock(&self.incoming_result).clone()
    }

    /// `stop`.
    pub fn stop(&self) -> Result<(), MachineError> {
        if self.run_state().is_running() {
            self.control.vm_stop(RunState::Paused)?;
        }
        Ok(())
    }

    /// `cont`. While an incoming migration is awaited or loading, the guest starts when it
    /// completes (QEMU's `autostart`).
    pub fn cont(&self) -> Result<(), MachineError> {
        let deferred = self.state.with_autostart(|autostart| {
            let waiting = self.run_state() == RunState::Inmigrate;
            *autostart |= waiting;
            waiting
        });
        if deferred {
            return Ok(());
        }
        match self.run_state() {
            RunState::Running => Ok(()),
            _ if self.state.status().is_running() => Err(MachineError::InProgress),
            _ => Ok(self.control.vm_start()?),
        }
    }

    /// `calc-dirty-rate`: starts measuring the guest's dirty rate (QEMU's checks and texts).
    /// livemig never uses KVM's dirty ring, so `dirty-ring` is refused and `dirty-bitmap`
    /// runs a dirty log of its own (not while a migration uses the VM's).
    pub fn calc_dirty_rate(
        &self,
        calc_time: i64,
        sample_pages: Option<i64>,
        mode: Option<DirtyRateMode>,
    ) -> Result<(), DirtyRateError> {
        if lock(&self.dirty_rate).measured == Some(false) {
            return Err(DirtyRateError::Busy);
        }
        let req = DirtyRateRequest::check(calc_time, sample_pages, mode, false)?;
        let log = (req.mode == DirtyRateMode::DirtyBitmap && !self.state.status().is_running())
            .then(|| match self.control.guest() {
                Guest::Soft(_) => {
                    Box::new(guest_ram::UffdDirtyLog::new(self.ram.clone())) as Box<dyn DirtyLog>
                }
                Guest::Kvm(vm) => vm.dirty_log(),
            });
        dirty_rate::start(&self.dirty_rate, self.ram.clone(), req, log)
    }

    /// `query-dirty-rate`.
    pub fn query_dirty_rate(&self) -> DirtyRateState {
        lock(&self.dirty_rate).clone()
    }

    /// Asks the process to quit (`quit`).
    pub fn request_quit(&self) {
        self.waiters.set(true, false);
    }

    /// Blocks until `quit`, or until the incoming migration ended if `until_incoming_done`.
    pub fn wait(&self, until_incoming_done: bool) {
        let mut f = lock(&self.waiters.flags);
        while !(f.0 || (until_incoming_done && f.1)) {
            f = self.waiters.cv.wait(f).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// True once `quit` was requested.
    pub fn quit_requested(&self) -> bool {
        lock(&self.waiters.flags).0
    }

    /// Cancels a running migration (outgoing, or incoming still waiting or loading), joins
    /// its thread and stops the vCPUs.
    pub fn shutdown(&self) {
        let mut home = lock(&self.home);
        if let Home::Outgoing(h) | Home::Incoming(h) = &*home {
            h.cancel();
        }
        if let Home::Outgoing(_) | Home::Incoming(_) = &*home {
            match self.reclaim_finished(&mut home) {
                Ok(registry) => *home = Home::Idle(registry),
                Err(e) => tracing::error!("{}", migration::error_report(&e)),
            }
        }
        drop(home);
        self.control.shutdown();
    }

    /// Waits for the migration thread and takes the registry back.
    fn reclaim_finished(&self, home: &mut Home) -> Result<Registry, MachineError> {
        match std::mem::replace(home, Home::Lost) {
            Home::Outgoing(h) | Home::Incoming(h) => {
                let finished = h.join()?;
                if self.incoming_started.load(Ordering::SeqCst) {
                    lock(&self.incoming_result)
                        .get_or_insert(finished.result.map_err(|e| e.report()));
                }
                Ok(finished.registry)
            }
            other => {
                *home = other;
                Err(MigrationError::ThreadPanicked.into())
            }
        }
    }
}
