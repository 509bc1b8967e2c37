//! [`Side`]: one end of an in-process migration, driven through the engine's public API the
//! way a VMM drives it — `outgoing::start` / `incoming::start` with the registry handed over,
//! taken back from the finished [`MigrationHandle`] — so engine, block and KVM tests share one
//! harness. [`ram_registry`] builds the registry most of them use.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use block::Disk;
use guest_ram::{GuestRam, UffdDirtyLog};
use migration::block::verify as block_verify;
use migration::block::{BlockHandler, BlockMigrationOptions, DiskVerify};
use migration::incoming::Incoming;
use migration::outgoing::Outgoing;
use migration::ram::RamHandler;
use migration::verify::{self, RamVerify};
use migration::{
    Capability, EventBus, GlobalState, MigrationError, MigrationHandle, MigrationState,
    MigrationStatus, ParameterUpdate, Registry, TlsObjects, VmControl,
};
use transport::{MigrationUri, NoFds};

/// Machine type both ends of a test pair present.
pub const MACHINE: &str = "livemig-test";

/// How long [`Side::wait_final`] waits before it fails the test.
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);

enum Home {
    Idle(Registry),
    Busy(MigrationHandle),
    Gone,
}

/// One VM of a test pair: its migration state, its VM control and its registry.
pub struct Side<V: VmControl + 'static> {
    /// Migration state (status, settings, statistics).
    pub state: Arc<MigrationState>,
    /// The VM.
    pub vm: Arc<V>,
    /// The `globalstate` cell.
    pub global: GlobalState,
    home: Mutex<Home>,
    tls: Mutex<TlsObjects>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<V: VmControl + 'static> Side<V> {
    /// A side over `registry` (which must hold `global` as `globalstate`).
    pub fn new(registry: Registry, vm: Arc<V>, global: GlobalState) -> Self {
        Self {
            state: Arc::new(MigrationState::new(Arc::new(EventBus::new()))),
            vm,
            global,
            home: Mutex::new(Home::Idle(registry)),
            tls: Mutex::new(TlsObjects::default()),
        }
    }

    /// The TLS objects (`tls-creds-x509`, `authz-simple`) this side's migrations get.
    pub fn set_tls(&self, tls: TlsObjects) {
        *lock(&self.tls) = tls;
    }

    /// Switches capabilities on.
    pub fn enable(&self, caps: &[Capability]) {
        let changes: Vec<_> = caps.iter().map(|&c| (c, true)).collect();
        self.state.set_capabilities(&changes).expect("capabilities");
    }

    /// Sets parameters from a QMP-style JSON object.
    pub fn set_params(&self, json: serde_json::Value) {
        let map = json.as_object().expect("a JSON object");
        let update = ParameterUpdate::from_json(map).expect("valid parameters");
        self.state
            .set_parameters(&update, None)
            .expect("parameters");
    }

    fn take_registry(&self) -> Registry {
        match std::mem::replace(&mut *lock(&self.home), Home::Gone) {
            Home::Idle(r) => r,
            Home::Busy(_) => panic!("a migration is still running on this side"),
            Home::Gone => panic!("the registry was lost"),
        }
    }

    /// Starts an outgoing migration to `uri` (`migrate`); `Err` when it could not start.
    pub fn migrate(&self, uri: &str) -> Result<(), MigrationError> {
        self.migrate_with(uri, None)
    }

    /// [`migrate`](Self::migrate) with `-b` / `-i`.
    pub fn migrate_with(
        &self,
        uri: &str,
        block: Option<BlockMigrationOptions>,
    ) -> Result<(), MigrationError> {
        let uri: MigrationUri = uri.parse().expect("a valid URI");
        let job = Outgoing {
            uri,
            machine: MACHINE.into(),
            registry: self.take_registry(),
            vm: self.vm.clone(),
            global_state: self.global.clone(),
            block,
            on_finished: None,
            tls: lock(&self.tls).clone(),
        };
        self.started(migration::outgoing::start(job, &self.state, &NoFds))
    }

    /// Starts listening for an incoming migration on `uri`; returns the URI a source
    /// connects to (with the real port). The guest starts after loading unless `-S`
    /// (`autostart` false).
    pub fn listen_with(&self, uri: &str, autostart: bool) -> String {
        let parsed: MigrationUri = uri.parse().expect("a valid URI");
        let listener = transport::listen(&parsed, &NoFds).expect("listen");
        let local = listener.local_description();
        let job = Incoming {
            listener,
            machine: MACHINE.into(),
            registry: self.take_registry(),
            vm: self.vm.clone(),
            global_state: self.global.clone(),
            autostart,
            on_finished: None,
            tls: lock(&self.tls).clone(),
        };
        self.started(migration::incoming::start(job, &self.state))
            .expect("incoming migration starts");
        local
    }

    /// [`listen_with`](Self::listen_with), starting the guest after loading.
    pub fn listen(&self, uri: &str) -> String {
        self.listen_with(uri, true)
    }

    fn started(
        &self,
        r: Result<MigrationHandle, Box<migration::Rejected>>,
    ) -> Result<(), MigrationError> {
        let mut home = lock(&self.home);
        match r {
            Ok(h) => {
                *home = Home::Busy(h);
                Ok(())
            }
            Err(r) => {
                *home = Home::Idle(r.registry);
                Err(r.error)
            }
        }
    }

    /// Waits until the migration reached a final status and returns it.
    #[track_caller]
    pub fn wait_final(&self) -> MigrationStatus {
        let mut last = MigrationStatus::None;
        let done = crate::wait_until(MIGRATION_TIMEOUT, || {
            last = self.state.status();
            !last.is_running() && last != MigrationStatus::None
        });
        assert!(done, "migration stuck in {last}");
        last
    }

    /// Waits for the migration thread, takes the registry back and returns the outcome.
    pub fn finish(&self) -> Result<(), MigrationError> {
        let mut home = lock(&self.home);
        match std::mem::replace(&mut *home, Home::Gone) {
            Home::Busy(h) => {
                let finished = h.join().expect("the migration thread did not panic");
                *home = Home::Idle(finished.registry);
                finished.result
            }
            other => {
                *home = other;
                panic!("no migration was started on this side")
            }
        }
    }

    /// `migrate_cancel`.
    pub fn cancel(&self) {
        self.state.cancel();
    }

    /// True when the registry is home (no migration holds it).
    pub fn has_registry(&self) -> bool {
        matches!(*lock(&self.home), Home::Idle(_))
    }

    /// Runs `f` on the registry (no migration may hold it).
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        match &mut *lock(&self.home) {
            Home::Idle(r) => f(r),
            _ => panic!("the registry is not home"),
        }
    }
}

/// The registry of a RAM-only VM, in QEMU's order: `block` (over `disks`, active only with
/// `-b`/`-i`), `ram` with the kernel's dirty log, `globalstate`, `ram-verify`, `disk-verify`.
pub fn ram_registry(ram: &Arc<GuestRam>, disks: Vec<Arc<Disk>>, global: &GlobalState) -> Registry {
    let mut reg = Registry::new();
    reg.register_live(Box::new(BlockHandler::new(disks.clone())));
    let log = Box::new(UffdDirtyLog::new(ram.clone()));
    reg.register_live(Box::new(RamHandler::new(ram.clone(), log)));
    reg.register_device("globalstate", Some(0), Box::new(global.clone()));
    reg.register_device(
        verify::IDSTR,
        Some(0),
        Box::new(RamVerify::new(ram.clone())),
    );
    reg.register_device(
        block_verify::IDSTR,
        Some(0),
        Box::new(DiskVerify::new(disks)),
    );
    reg
}

/// A RAM-only VM for engine tests: one anonymous block `pc.ram` of `size` bytes behind
/// [`ram_registry`], a [`FakeVm`](crate::FakeVm) running or paused, and its [`Side`] (reached through `Deref`).
pub struct RamVm {
    /// The guest's RAM.
    pub ram: Arc<GuestRam>,
    /// The migration side driving it.
    pub side: Side<crate::FakeVm>,
}

impl std::ops::Deref for RamVm {
    type Target = Side<crate::FakeVm>;
    fn deref(&self) -> &Side<crate::FakeVm> {
        &self.side
    }
}

/// A [`RamVm`] of `size` bytes whose guest is `running` or paused.
pub fn ram_vm(size: u64, running: bool) -> RamVm {
    let block = guest_ram::RamBlock::new("pc.ram", size, guest_ram::Backing::Anonymous)
        .expect("allocate test RAM");
    let ram = Arc::new(GuestRam::new(vec![block]));
    let global = GlobalState::new();
    let reg = ram_registry(&ram, Vec::new(), &global);
    RamVm {
        side: Side::new(reg, Arc::new(crate::FakeVm::new(running)), global),
        ram,
    }
}
