//! A [`Machine`]: guest RAM, vCPUs, the migration registry and the migration state of one VM,
//! plus the operations the monitors expose (`migrate`, `migrate_cancel`, `migrate-incoming`,
//! `stop`, `cont`, `quit`).
//!
//! The machine owns the registry between migrations; an outgoing migration thread takes it and
//! hands it back at the end (see `migration::outgoing`). Errors keep QEMU's texts, which
//! management software matches on.

mod build;
mod config;
mod guest;
mod timer;
mod vcpus;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use block::Disk;
use guest_ram::GuestRam;
use migration::block::{abort_incoming, clear_block_options, BlockMigrationOptions};
use migration::incoming::IncomingJob;
use migration::outgoing::{OutgoingJob, RegistrySlot};
use migration::{
    Capability, CapabilityError, Event, EventBus, GlobalState, MigrationError, MigrationState,
    MigrationStatus, ParamError, ParameterUpdate, RunState, VmControl,
};
use transport::{FdSource, MigrationUri, ShutdownHandle};

pub use config::{Accel, DiskWorkload, MachineConfig, MachineError, MachineType, SerialTarget};
pub use guest::{Guest, GuestControl};
pub use timer::{Timer, TimerState};
pub use vcpus::{SoftCpuDevice, Vcpus};

use crate::kvm::KvmVm;

/// One VM.
pub struct Machine {
    cfg: MachineConfig,
    ram: Arc<GuestRam>,
    control: Arc<GuestControl>,
    disks: Vec<Arc<Disk>>,
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
        let parts = build::build(&cfg)?;
        let m = Arc::new(Machine {
            cfg,
            ram: parts.ram,
            control: parts.control,
            disks: parts.disks,
            events: parts.events,
            state: parts.state,
            registry: Arc::new(Mutex::new(Some(parts.registry))),
            global: parts.global,
            shutdown: Arc::new(Mutex::new(None)),
            threads: Mutex::new(Vec::new()),
            incoming_started: AtomicBool::new(false),
            incoming_result: Mutex::new(None),
            incoming_uri: Mutex::new(None),
            quit: (Mutex::new(false), Condvar::new()),
        });
        if !m.cfg.incoming && !m.cfg.start_paused {
            m.control.vm_start().map_err(MachineError::Vm)?;
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
            vm: self.control.clone(),
            global_state: self.global.clone(),
            shutdown: self.shutdown.clone(),
        };
        if let Some(opts) = block {
            opts.apply(&self.state)
                .map_err(MachineError::BlockOptions)?;
        }
        let h = migration::outgoing::start(job, fds).map_err(|e| {
            clear_block_options(&self.state);
            match e {
                MigrationError::InProgress => MachineError::InProgress,
                e => MachineError::Migration(e),
            }
        })?;
        self.reap_threads();
        lock(&self.threads).push(h);
        Ok(())
    }

    /// `migrate-set-capabilities`: refused while a migration runs; otherwise the merged set
    /// is checked against the current parameters and applied all or nothing.
    pub fn set_capabilities(&self, changes: &[(Capability, bool)]) -> Result<(), CapabilityError> {
        if self.state.status().is_running() {
            return Err(CapabilityError::MigrationRunning);
        }
        let mut s = self.state.lock();
        let s = &mut *s;
        s.caps.apply(changes, &s.params)
    }

    /// `migrate-set-parameters`: the merged set is checked against this VM (its RAM size
    /// bounds `xbzrle-cache-size`) and the capabilities, then applied all or nothing.
    pub fn set_parameters(&self, update: &ParameterUpdate) -> Result<(), ParamError> {
        let mut s = self.state.lock();
        let limits = s.caps.param_limits(Some(self.ram.total_size()));
        s.params.apply(update, &limits)
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
            vm: self.control.clone(),
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
                if res.is_err() {
                    // Never leave half-written destination images behind.
                    if let Err(e) = abort_incoming(&me.disks) {
                        tracing::error!("could not discard the incoming disk images: {e}");
                    }
                }
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
            self.control
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
            _ => self.control.vm_start().map_err(MachineError::Vm),
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
        self.control.shutdown();
    }
}
