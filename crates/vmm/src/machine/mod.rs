//! A [`Machine`]: guest RAM, vCPUs, the migration registry and the migration state of one VM,
//! plus the operations the monitors expose (`migrate`, `migrate_cancel`, `migrate-incoming`,
//! `stop`, `cont`, `quit`).
//!
//! The machine owns the registry between migrations; an outgoing migration thread takes it and
//! hands it back at the end (see `migration::outgoing`). Errors keep QEMU's texts, which
//! management software matches on.

mod timer;
mod vcpus;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use guest_ram::{Backing, GuestRam, RamBlock, UffdDirtyLog};
use migration::incoming::IncomingJob;
use migration::outgoing::{OutgoingJob, RegistrySlot};
use migration::ram::RamHandler;
use migration::verify::{self, RamVerify};
use migration::{
    EventBus, GlobalState, MigrationError, MigrationState, MigrationStatus, Registry, RunState,
    VmControl,
};
use transport::{FdSource, MigrationUri, ShutdownHandle};

pub use timer::{Timer, TimerState};
pub use vcpus::{SoftCpuDevice, Vcpus};

use crate::soft::{self, WorkloadConfig};

/// Which machine the VM presents on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MachineType {
    /// livemig's software machine: one RAM block `pc.ram`, a `soft-cpu` section per vCPU.
    #[default]
    Soft,
    /// What QEMU 7.2's `-M none` presents: RAM block `ram`, `timer` and `globalstate`
    /// (interop with QEMU); the software guest's vCPU state is not migrated.
    None,
}

impl MachineType {
    /// Machine type name in the configuration record.
    pub fn wire_name(self) -> &'static str {
        match self {
            Self::Soft => "livemig-soft",
            Self::None => "none",
        }
    }

    /// Name of the main RAM block.
    pub fn ram_block_name(self) -> &'static str {
        match self {
            Self::Soft => "pc.ram",
            Self::None => "ram",
        }
    }
}

/// How to build a machine.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Machine type.
    pub machine: MachineType,
    /// Guest RAM size in bytes.
    pub memory: u64,
    /// RAM backing.
    pub backing: Backing,
    /// The software guest's workload; None: no vCPU runs (an idle guest).
    pub workload: Option<WorkloadConfig>,
    /// Bytes of RAM filled with pseudo-random data (and some zero pages) at boot.
    pub fill: u64,
    /// `-S`: do not start the vCPUs.
    pub start_paused: bool,
    /// Started with `--incoming`: wait for a migration instead of booting.
    pub incoming: bool,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            machine: MachineType::Soft,
            memory: 256 << 20,
            backing: Backing::Anonymous,
            workload: None,
            fill: 0,
            start_paused: false,
            incoming: false,
        }
    }
}

/// Errors of machine operations; the texts are QEMU's where QEMU has one.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The RAM could not be created.
    #[error("cannot create guest RAM")]
    Ram(#[from] guest_ram::Error),
    /// The software guest could not start.
    #[error("cannot start the software guest")]
    Guest(#[from] soft::Error),
    /// A migration is running.
    #[error("There's a migration process in progress")]
    InProgress,
    /// The source already migrated successfully.
    #[error("Can't migrate the vm that was paused due to previous migration")]
    Postmigrate,
    /// The VM waits for an incoming migration.
    #[error("Guest is waiting for an incoming migration")]
    Inmigrate,
    /// Bad URI.
    #[error("Parameter 'uri' expects a valid migration protocol")]
    BadUri(#[source] transport::UriError),
    /// Incoming URI not understood.
    #[error("unknown migration protocol: {0}")]
    BadIncomingUri(String),
    /// `migrate-incoming` without `--incoming`.
    #[error("'-incoming' was not specified on the command line")]
    NotIncoming,
    /// `migrate-incoming` twice.
    #[error("The incoming migration has already been started")]
    IncomingStarted,
    /// The migration failed to start.
    #[error(transparent)]
    Migration(#[from] MigrationError),
    /// vCPU control failed.
    #[error("{0}")]
    Vm(String),
}

/// One VM.
pub struct Machine {
    cfg: MachineConfig,
    ram: Arc<GuestRam>,
    vcpus: Arc<Vcpus>,
    events: Arc<EventBus>,
    state: Arc<MigrationState>,
    registry: RegistrySlot,
    global: GlobalState,
    shutdown: Arc<Mutex<Option<ShutdownHandle>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    incoming_started: AtomicBool,
    incoming_result: Mutex<Option<Result<(), String>>>,
    incoming_uri: Mutex<Option<String>>,
    quit: (Mutex<bool>, Condvar),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Machine {
    /// Builds the VM; starts the vCPUs unless `-S` or `--incoming`.
    pub fn new(cfg: MachineConfig) -> Result<Arc<Machine>, MachineError> {
        let block = RamBlock::new(
            cfg.machine.ram_block_name(),
            cfg.memory,
            cfg.backing.clone(),
        )?;
        let ram = Arc::new(GuestRam::new(vec![block]));
        if cfg.fill > 0 && !cfg.incoming {
            soft::fill_initial(&ram, 0, cfg.fill.min(cfg.memory), 0x5eed)?;
        }
        let events = Arc::new(EventBus::new());
        let state = Arc::new(MigrationState::new(events.clone()));
        let initial = if cfg.incoming {
            RunState::Inmigrate
        } else if cfg.start_paused {
            RunState::Prelaunch
        } else {
            RunState::Paused
        };
        let vcpus = Arc::new(Vcpus::new(
            ram.clone(),
            cfg.workload.clone(),
            initial,
            events.clone(),
        ));
        let global = GlobalState::new();
        let mut reg = Registry::new();
        if cfg.machine == MachineType::None {
            // Same registration order as QEMU's none machine: timer, ram, globalstate.
            reg.register_device("timer", Some(0), Box::new(Timer::default()));
        }
        let log = Box::new(UffdDirtyLog::new(ram.clone()));
        reg.register_live(Box::new(RamHandler::new(ram.clone(), log, state.clone())));
        if cfg.machine == MachineType::Soft {
            for i in 0..vcpus.count() {
                let dev = Box::new(SoftCpuDevice::new(vcpus.clone(), i));
                reg.register_device("soft-cpu", Some(i as u32), dev);
            }
        }
        reg.register_device("globalstate", Some(0), Box::new(global.clone()));
        reg.register_device(
            verify::IDSTR,
            Some(0),
            Box::new(RamVerify::new(ram.clone())),
        );
        let m = Arc::new(Machine {
            cfg,
            ram,
            vcpus,
            events,
            state,
            registry: Arc::new(Mutex::new(Some(reg))),
            global,
            shutdown: Arc::new(Mutex::new(None)),
            threads: Mutex::new(Vec::new()),
            incoming_started: AtomicBool::new(false),
            incoming_result: Mutex::new(None),
            incoming_uri: Mutex::new(None),
            quit: (Mutex::new(false), Condvar::new()),
        });
        if !m.cfg.incoming && !m.cfg.start_paused {
            m.vcpus.vm_start().map_err(MachineError::Vm)?;
        }
        Ok(m)
    }

    /// Guest RAM.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// The vCPUs.
    pub fn vcpus(&self) -> &Arc<Vcpus> {
        &self.vcpus
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
        self.vcpus.run_state()
    }

    /// `migrate URI`: starts an outgoing migration in the background.
    pub fn migrate(&self, uri: &str, fds: &dyn FdSource) -> Result<(), MachineError> {
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
                // QEMU moves to setup, then fails: query-migrate shows `failed`.
                if self.state.set_status_from_any(MigrationStatus::Setup) {
                    self.state
                        .set_status(MigrationStatus::Setup, MigrationStatus::Failed);
                }
                return Err(MachineError::BadUri(e));
            }
        };
        let job = OutgoingJob {
            uri,
            machine: self.cfg.machine.wire_name().into(),
            registry: self.registry.clone(),
            state: self.state.clone(),
            vm: self.vcpus.clone(),
            global_state: self.global.clone(),
            shutdown: self.shutdown.clone(),
        };
        let h = migration::outgoing::start(job, fds).map_err(|e| match e {
            MigrationError::Protocol(_) => MachineError::InProgress,
            e => MachineError::Migration(e),
        })?;
        self.reap_threads();
        lock(&self.threads).push(h);
        Ok(())
    }

    /// `migrate_cancel`: always succeeds.
    pub fn migrate_cancel(&self) {
        if !self.state.status().is_running() {
            return;
        }
        self.state.request_cancel();
        self.state.set_status_from_any(MigrationStatus::Cancelling);
        if let Some(h) = lock(&self.shutdown).as_ref() {
            h.shutdown();
        }
    }

    /// `migrate-incoming URI` (or `--incoming URI`): listens and loads in the background.
    pub fn migrate_incoming(
        self: &Arc<Self>,
        uri: &str,
        fds: &dyn FdSource,
    ) -> Result<(), MachineError> {
        if !self.cfg.incoming {
            return Err(MachineError::NotIncoming);
        }
        if self.incoming_started.swap(true, Ordering::SeqCst) {
            return Err(MachineError::IncomingStarted);
        }
        let parsed: MigrationUri = uri.parse().map_err(|_| {
            self.incoming_started.store(false, Ordering::SeqCst);
            MachineError::BadIncomingUri(uri.to_string())
        })?;
        let listener = transport::listen(&parsed, fds).map_err(|e| {
            self.incoming_started.store(false, Ordering::SeqCst);
            MachineError::Migration(e.into())
        })?;
        {
            let mut s = self.state.lock();
            s.incoming = true;
            s.socket_address = listener.socket_address().map(|a| vec![a.to_qmp()]);
        }
        self.state.set_status_from_any(MigrationStatus::Setup);
        tracing::info!(
            "waiting for an incoming migration on {}",
            listener.local_description()
        );
        *lock(&self.incoming_uri) = Some(listener.local_description());
        let job = IncomingJob {
            listener,
            machine: self.cfg.machine.wire_name().into(),
            state: self.state.clone(),
            vm: self.vcpus.clone(),
            global_state: self.global.clone(),
            autostart: !self.cfg.start_paused,
        };
        let me = self.clone();
        let h = std::thread::Builder::new()
            .name("incoming".into())
            .spawn(move || {
                let taken = lock(&me.registry).take();
                let Some(mut reg) = taken else { return };
                let res = migration::incoming::run_incoming(job, &mut reg);
                *lock(&me.registry) = Some(reg);
                me.state.lock().socket_address = None;
                *lock(&me.incoming_result) = Some(res.map_err(|e| e.report()));
                me.notify_quit_waiters();
            })
            .map_err(|e| MachineError::Vm(format!("cannot start the incoming thread: {e}")))?;
        lock(&self.threads).push(h);
        Ok(())
    }

    /// The URI the incoming migration listens on, with the real port (e.g. `tcp:127.0.0.1:41811`).
    pub fn incoming_uri(&self) -> Option<String> {
        lock(&self.incoming_uri).clone()
    }

    /// The outcome of the incoming migration, once it ended.
    pub fn incoming_result(&self) -> Option<Result<(), String>> {
        lock(&self.incoming_result).clone()
    }

    /// `stop`.
    pub fn stop(&self) -> Result<(), MachineError> {
        if self.run_state().is_running() {
            self.vcpus
                .vm_stop(RunState::Paused)
                .map_err(MachineError::Vm)?;
        }
        Ok(())
    }

    /// `cont`.
    pub fn cont(&self) -> Result<(), MachineError> {
        match self.run_state() {
            RunState::Running => Ok(()),
            RunState::Inmigrate => Err(MachineError::Inmigrate),
            _ if self.state.status().is_running() => Err(MachineError::InProgress),
            _ => self.vcpus.vm_start().map_err(MachineError::Vm),
        }
    }

    /// Asks the process to quit (`quit`).
    pub fn request_quit(&self) {
        *lock(&self.quit.0) = true;
        self.quit.1.notify_all();
    }

    fn notify_quit_waiters(&self) {
        let _g = lock(&self.quit.0);
        self.quit.1.notify_all();
    }

    /// Blocks until `quit`, or until the incoming migration ended if `until_incoming_done`.
    pub fn wait(&self, until_incoming_done: bool) {
        let mut q = lock(&self.quit.0);
        let done = |q: bool| q || (until_incoming_done && self.incoming_result().is_some());
        while !done(*q) {
            q = self.quit.1.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// True once `quit` was requested.
    pub fn quit_requested(&self) -> bool {
        *lock(&self.quit.0)
    }

    fn reap_threads(&self) {
        let mut t = lock(&self.threads);
        let (done, live): (Vec<_>, Vec<_>) = t.drain(..).partition(|h| h.is_finished());
        *t = live;
        for h in done {
            let _ = h.join();
        }
    }

    /// Cancels a running migration, stops the vCPUs and joins every thread.
    pub fn shutdown(&self) {
        self.migrate_cancel();
        let threads: Vec<_> = lock(&self.threads).drain(..).collect();
        for h in threads {
            if !h.is_finished() && self.state.lock().incoming {
                // An incoming thread may wait in accept(); it ends with the process.
                continue;
            }
            let _ = h.join();
        }
        self.vcpus.shutdown();
    }
}
