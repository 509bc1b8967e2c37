//! A minimal VMM that migrates itself between two processes with livemig's engine, using only
//! its public API: guest RAM with kernel dirty tracking, one device, a "vCPU" thread writing
//! RAM, and a migration over a unix socket with `ram-verify`.
//!
//! ```text
//! cargo run -p migration --example embed          # source; it starts the destination itself
//! ```
//!
//! The source spawns `embed dest SOCKET` (this same program), migrates its running guest into
//! it and compares what the destination reports (the device's counter, RAM verified by the
//! engine) with its own state after switchover.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use guest_ram::{Backing, GuestRam, RamBlock, UffdDirtyLog};
use migration::incoming::Incoming;
use migration::outgoing::Outgoing;
use migration::ram::RamHandler;
use migration::verify::{self, RamVerify};
use migration::{
    Capability, DeviceState, EventBus, GlobalState, MigrationError, MigrationState, Registry,
    RunState, VmControl, VmError,
};
use savevm::vmstate::{FieldKind, Value, VmStateDescription, VmStateValue};

const RAM: u64 = 16 << 20;

/// The guest: a vCPU thread that bumps a counter and writes it into RAM while running.
struct Vm {
    ram: Arc<GuestRam>,
    counter: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
    run_state: Mutex<RunState>,
}

impl Vm {
    fn new() -> Arc<Vm> {
        let block = RamBlock::new("pc.ram", RAM, Backing::Anonymous).expect("guest RAM");
        let vm = Arc::new(Vm {
            ram: Arc::new(GuestRam::new(vec![block])),
            counter: Arc::default(),
            running: Arc::default(),
            run_state: Mutex::new(RunState::Paused),
        });
        let (ram, counter, running) = (vm.ram.clone(), vm.counter.clone(), vm.running.clone());
        std::thread::spawn(move || loop {
            if running.load(Ordering::SeqCst) {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let page = n % (RAM / 4096);
                let mut data = [0u8; 4096];
                data[..8].copy_from_slice(&n.to_le_bytes());
                // The VMM's own writes are tracked too (dirty log OR VMM tracker).
                ram.blocks()[0]
                    .write_page(page, &data)
                    .expect("page in range");
            }
            std::thread::sleep(Duration::from_micros(50));
        });
        vm
    }

    /// Everything that migrates, in QEMU's order: RAM, devices, `globalstate`, `ram-verify`.
    fn registry(&self, global: &GlobalState) -> Registry {
        let mut reg = Registry::new();
        let log = Box::new(UffdDirtyLog::new(self.ram.clone()));
        reg.register_live(Box::new(RamHandler::new(self.ram.clone(), log)));
        reg.register_device("counter", Some(0), Box::new(Counter(self.counter.clone())));
        reg.register_device("globalstate", Some(0), Box::new(global.clone()));
        reg.register_device(
            verify::IDSTR,
            Some(0),
            Box::new(RamVerify::new(self.ram.clone())),
        );
        reg
    }
}

impl VmControl for Vm {
    fn run_state(&self) -> RunState {
        *self.run_state.lock().unwrap()
    }
    fn vm_stop(&self, state: RunState) -> Result<bool, VmError> {
        let was = self.running.swap(false, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1)); // let an in-flight write finish
        *self.run_state.lock().unwrap() = state;
        Ok(was)
    }
    fn vm_start(&self) -> Result<(), VmError> {
        self.running.store(true, Ordering::SeqCst);
        *self.run_state.lock().unwrap() = RunState::Running;
        Ok(())
    }
    fn set_run_state(&self, state: RunState) {
        *self.run_state.lock().unwrap() = state;
    }
}

/// The device: one versioned field.
struct Counter(Arc<AtomicU64>);

impl DeviceState for Counter {
    fn description(&self) -> VmStateDescription {
        VmStateDescription::new("counter", 1)
            .minimum_version(1)
            .field("value", FieldKind::U64)
    }
    fn save(&self) -> VmStateValue {
        VmStateValue::new().with("value", Value::Uint(self.0.load(Ordering::SeqCst)))
    }
    fn load(&mut self, value: &VmStateValue, _version: u32) -> Result<(), MigrationError> {
        let v = value
            .get_u64("value")
            .map_err(|e| MigrationError::DeviceLoad {
                idstr: "counter".into(),
                reason: e.to_string(),
            })?;
        self.0.store(v, Ordering::SeqCst);
        Ok(())
    }
}

fn destination(socket: &str) -> Result<(), Box<dyn std::error::Error>> {
    let vm = Vm::new();
    let state = Arc::new(MigrationState::new(Arc::new(EventBus::new())));
    let global = GlobalState::new();
    let listener = transport::listen(&format!("unix:{socket}").parse()?, &transport::NoFds)?;
    let job = Incoming {
        listener,
        machine: "embed".into(),
        registry: vm.registry(&global),
        vm: vm.clone(),
        global_state: global,
        autostart: false, // -S: report the loaded state before the guest moves on
        on_finished: None,
        tls: Default::default(),
    };
    let handle = migration::incoming::start(job, &state).map_err(|r| r.error.report())?;
    // RAM was verified against the source's digest before this returns Ok.
    handle.join()?.result.map_err(|e| e.report())?;
    println!("counter={}", vm.counter.load(Ordering::SeqCst));
    vm.vm_start()?;
    std::thread::sleep(Duration::from_millis(50));
    eprintln!(
        "destination: the guest runs on (counter {})",
        vm.counter.load(Ordering::SeqCst)
    );
    Ok(())
}

fn source() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("mig.sock");
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("dest")
        .arg(&socket)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let vm = Vm::new();
    vm.vm_start()?;
    let state = Arc::new(MigrationState::new(Arc::new(EventBus::new())));
    state.set_capabilities(&[(Capability::RamVerify, true)])?;
    let global = GlobalState::new();
    while !socket.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200)); // let the guest dirty some memory
    let job = Outgoing {
        uri: format!("unix:{}", socket.display()).parse()?,
        machine: "embed".into(),
        registry: vm.registry(&global),
        vm: vm.clone(),
        global_state: global,
        block: None,
        on_finished: None,
        tls: Default::default(),
    };
    let handle =
        migration::outgoing::start(job, &state, &transport::NoFds).map_err(|r| r.error.report())?;
    let finished = handle.join()?;
    finished.result.map_err(|e| e.report())?;
    let info = state.info();
    let out = child.wait_with_output()?;
    let reported = String::from_utf8_lossy(&out.stdout);
    let expected = format!("counter={}", vm.counter.load(Ordering::SeqCst));
    println!(
        "migrated: {:?}, downtime {:?} ms, {} pages; destination says {}",
        info.status,
        info.downtime,
        info.ram.map_or(0, |r| r.normal),
        reported.trim()
    );
    if !out.status.success() || reported.trim() != expected {
        return Err(format!("destination: {} (expected {expected})", out.status).into());
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("dest") if args.len() == 3 => destination(&args[2]),
        _ => source(),
    };
    if let Err(e) = result {
        eprintln!("embed: {e}");
        std::process::exit(1);
    }
}
