//! End-to-end tests of the engine in one process: a source registry migrates over a real
//! transport into a destination registry, with a thread writing guest RAM meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use guest_ram::{Backing, GuestRam, RamBlock, UffdDirtyLog};
use migration::incoming::{self, IncomingJob};
use migration::outgoing::{self, OutgoingJob};
use migration::ram::RamHandler;
use migration::verify::RamVerify;
use migration::{
    Capability, EventBus, GlobalState, MigrationError, MigrationState, MigrationStatus, Registry,
    RunState, VmControl,
};
use transport::{MigrationUri, NoFds};

const MIB: u64 = 1 << 20;

/// A VM whose "vCPU" is a thread writing RAM while running.
struct FakeVm {
    state: Mutex<RunState>,
    running: Arc<AtomicBool>,
}

impl VmControl for FakeVm {
    fn run_state(&self) -> RunState {
        *self.state.lock().unwrap()
    }
    fn vm_stop(&self, state: RunState) -> Result<bool, String> {
        let was = self.running.swap(false, Ordering::SeqCst);
        // Let an in-flight write finish: the writer checks the flag before each write.
        thread::sleep(Duration::from_millis(2));
        *self.state.lock().unwrap() = state;
        Ok(was)
    }
    fn vm_start(&self) -> Result<(), String> {
        self.running.store(true, Ordering::SeqCst);
        *self.state.lock().unwrap() = RunState::Running;
        Ok(())
    }
    fn set_run_state(&self, state: RunState) {
        *self.state.lock().unwrap() = state;
    }
}

struct Side {
    ram: Arc<GuestRam>,
    state: Arc<MigrationState>,
    vm: Arc<FakeVm>,
    registry: Arc<Mutex<Option<Registry>>>,
    global: GlobalState,
}

fn side(size: u64, running: bool) -> Side {
    let ram = Arc::new(GuestRam::new(vec![RamBlock::new(
        "pc.ram",
        size,
        Backing::Anonymous,
    )
    .unwrap()]));
    let state = Arc::new(MigrationState::new(Arc::new(EventBus::new())));
    let vm = Arc::new(FakeVm {
        state: Mutex::new(if running {
            RunState::Running
        } else {
            RunState::Paused
        }),
        running: Arc::new(AtomicBool::new(running)),
    });
    let global = GlobalState::new();
    let mut reg = Registry::new();
    let log = Box::new(UffdDirtyLog::new(ram.clone()));
    reg.register_live(Box::new(RamHandler::new(ram.clone(), log, state.clone())));
    reg.register_device("globalstate", Some(0), Box::new(global.clone()));
    reg.register_device(
        migration::verify::IDSTR,
        Some(0),
        Box::new(RamVerify::new(ram.clone())),
    );
    Side {
        ram,
        state,
        vm,
        registry: Arc::new(Mutex::new(Some(reg))),
        global,
    }
}

fn fill(ram: &GuestRam, bytes: u64, seed: u64) {
    let b = &ram.blocks()[0];
    let mut x = seed;
    let mut page = vec![0u8; 4096];
    for p in 0..bytes / 4096 {
        if p % 8 == 7 {
            continue; // never touched: not sent at all
        }
        if p % 8 == 3 {
            b.write_page(p, &[0u8; 4096]).unwrap(); // touched but zero: a ZERO record
            continue;
        }
        for w in page.chunks_mut(8) {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            w.copy_from_slice(&x.to_le_bytes());
        }
        b.write_page(p, &page).unwrap();
    }
}

/// Writes pages of the first `ws` bytes while the VM runs.
fn writer(
    ram: Arc<GuestRam>,
    running: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    ws: u64,
) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let b = ram.blocks()[0].clone();
        let mut n = 0u64;
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::SeqCst) {
            if !running.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(1));
                continue;
            }
            let p = (n * 7919) % (ws / 4096);
            buf[..8].copy_from_slice(&n.to_le_bytes());
            // Direct store through the mapping (not write_page, which the VMM tracker marks):
            // the kernel's dirty log has to see it.
            unsafe_write(&b, p, &buf);
            n += 1;
            if n % 64 == 0 {
                thread::sleep(Duration::from_micros(200));
            }
        }
        n
    })
}

fn unsafe_write(b: &RamBlock, page: u64, data: &[u8]) {
    // SAFETY: page < pages(), the mapping lives as long as `b`, and data is one page.
    unsafe {
        std::ptr::copy_nonoverlapping(
            data.as_ptr(),
            b.host_ptr().add((page * 4096) as usize),
            4096,
        );
    }
}

fn outgoing_job(src: &Side, uri: &str) -> OutgoingJob {
    OutgoingJob {
        uri: uri.parse().unwrap(),
        machine: "livemig-test".into(),
        registry: src.registry.clone(),
        state: src.state.clone(),
        vm: src.vm.clone(),
        global_state: src.global.clone(),
        shutdown: Arc::new(Mutex::new(None)),
    }
}

fn wait_final(state: &MigrationState) -> MigrationStatus {
    let t = Instant::now();
    loop {
        let s = state.status();
        if !s.is_running() && s != MigrationStatus::None {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "migration stuck in {s}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

fn incoming_thread(
    dst: &Side,
    uri: &str,
) -> (String, thread::JoinHandle<Result<(), MigrationError>>) {
    let listener = transport::listen(&uri.parse::<MigrationUri>().unwrap(), &NoFds).unwrap();
    let desc = listener.local_description();
    dst.state.lock().incoming = true;
    dst.state
        .set_status(MigrationStatus::None, MigrationStatus::Setup);
    let job = IncomingJob {
        listener,
        machine: "livemig-test".into(),
        state: dst.state.clone(),
        vm: dst.vm.clone(),
        global_state: dst.global.clone(),
        autostart: true,
    };
    let reg = dst.registry.clone();
    let h = thread::spawn(move || {
        let mut r = reg.lock().unwrap().take().unwrap();
        let res = incoming::run_incoming(job, &mut r);
        *reg.lock().unwrap() = Some(r);
        res
    });
    (desc, h)
}

fn enable_verify(s: &Side) {
    let mut st = s.state.lock();
    st.caps.set(Capability::RamVerify, true);
    st.caps.set(Capability::Events, true);
}

#[test]
fn live_migration_over_tcp_with_running_writer_and_verify() {
    let src = side(64 * MIB, true);
    let dst = side(64 * MIB, false);
    fill(&src.ram, 32 * MIB, 1);
    enable_verify(&src);
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(
        src.ram.clone(),
        src.vm.running.clone(),
        stop.clone(),
        8 * MIB,
    );
    let (uri, dh) = incoming_thread(&dst, "tcp:127.0.0.1:0");
    thread::sleep(Duration::from_millis(50));
    let h = outgoing::start(outgoing_job(&src, &uri), &NoFds).unwrap();
    assert_eq!(
        wait_final(&src.state),
        MigrationStatus::Completed,
        "{:?}",
        src.state.info()
    );
    h.join().unwrap();
    dh.join().unwrap().expect("destination load");
    stop.store(true, Ordering::SeqCst);
    assert!(w.join().unwrap() > 0);
    assert_eq!(src.vm.run_state(), RunState::Postmigrate);
    assert_eq!(dst.vm.run_state(), RunState::Running);
    assert_eq!(dst.state.status(), MigrationStatus::Completed);
    assert_eq!(src.ram.blocks()[0].digest(), dst.ram.blocks()[0].digest());
    let info = src.state.info();
    let ram = info.ram.unwrap();
    assert!(
        ram.normal > 0 && ram.duplicate > 0 && ram.dirty_sync_count >= 2,
        "{ram:?}"
    );
    assert!(info.downtime.is_some());
}

#[test]
fn save_to_file_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.mig");
    let src = side(16 * MIB, false);
    fill(&src.ram, 16 * MIB, 2);
    enable_verify(&src);
    let uri = format!("file:{}", path.display());
    let h = outgoing::start(outgoing_job(&src, &uri), &NoFds).unwrap();
    assert_eq!(wait_final(&src.state), MigrationStatus::Completed);
    h.join().unwrap();
    let dst = side(16 * MIB, false);
    let (_, dh) = incoming_thread(&dst, &uri);
    dh.join().unwrap().unwrap();
    assert_eq!(src.ram.blocks()[0].digest(), dst.ram.blocks()[0].digest());
    // The source was paused: the destination adopts that run state.
    assert_eq!(dst.vm.run_state(), RunState::Paused);
}

#[test]
fn ram_size_mismatch_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.mig");
    let src = side(16 * MIB, false);
    let uri = format!("file:{}", path.display());
    let h = outgoing::start(outgoing_job(&src, &uri), &NoFds).unwrap();
    assert_eq!(wait_final(&src.state), MigrationStatus::Completed);
    h.join().unwrap();
    let dst = side(32 * MIB, false);
    let (_, dh) = incoming_thread(&dst, &uri);
    let err = dh.join().unwrap().unwrap_err();
    assert!(matches!(err, MigrationError::RamBlockSize { .. }), "{err}");
    assert_eq!(dst.state.status(), MigrationStatus::Failed);
    assert!(dst
        .state
        .info()
        .error_desc
        .unwrap()
        .contains("Length mismatch: pc.ram"));
}

#[test]
fn unreachable_destination_fails_and_source_keeps_running() {
    let src = side(8 * MIB, true);
    // A port nobody listens on.
    let (_refusing, port) = transport::test_support::refusing_tcp_port().unwrap();
    let h = outgoing::start(outgoing_job(&src, &format!("tcp:127.0.0.1:{port}")), &NoFds).unwrap();
    assert_eq!(wait_final(&src.state), MigrationStatus::Failed);
    h.join().unwrap();
    let info = src.state.info();
    assert!(info
        .error_desc
        .unwrap()
        .contains(&format!("tcp:127.0.0.1:{port}")));
    assert_eq!(src.vm.run_state(), RunState::Running);
    assert!(
        src.registry.lock().unwrap().is_some(),
        "registry handed back"
    );
}

#[test]
fn cancel_mid_migration_then_retry_succeeds() {
    let src = side(64 * MIB, true);
    fill(&src.ram, 64 * MIB, 3);
    enable_verify(&src);
    src.state.lock().params.max_bandwidth = 20 * MIB;
    let dst1 = side(64 * MIB, false);
    let (uri1, dh1) = incoming_thread(&dst1, "tcp:127.0.0.1:0");
    let job = outgoing_job(&src, &uri1);
    let shutdown = job.shutdown.clone();
    let h = outgoing::start(job, &NoFds).unwrap();
    let t = Instant::now();
    while src.state.status() != MigrationStatus::Active && t.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(300));
    assert!(src.state.set_status_from_any(MigrationStatus::Cancelling));
    src.state.request_cancel();
    if let Some(s) = shutdown.lock().unwrap().as_ref() {
        s.shutdown();
    }
    assert_eq!(wait_final(&src.state), MigrationStatus::Cancelled);
    h.join().unwrap();
    assert_eq!(src.vm.run_state(), RunState::Running);
    assert!(
        dh1.join().unwrap().is_err(),
        "destination saw a truncated stream"
    );

    // Retry to a fresh destination, unlimited bandwidth.
    src.state.lock().params.max_bandwidth = 0;
    let dst2 = side(64 * MIB, false);
    let (uri2, dh2) = incoming_thread(&dst2, "tcp:127.0.0.1:0");
    let h = outgoing::start(outgoing_job(&src, &uri2), &NoFds).unwrap();
    assert_eq!(wait_final(&src.state), MigrationStatus::Completed);
    h.join().unwrap();
    dh2.join().unwrap().unwrap();
    assert_eq!(src.ram.blocks()[0].digest(), dst2.ram.blocks()[0].digest());
}

#[test]
fn corrupt_streams_are_typed_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.mig");
    let src = side(4 * MIB, false);
    fill(&src.ram, 2 * MIB, 5);
    enable_verify(&src);
    let uri = format!("file:{}", path.display());
    let h = outgoing::start(outgoing_job(&src, &uri), &NoFds).unwrap();
    assert_eq!(wait_final(&src.state), MigrationStatus::Completed);
    h.join().unwrap();
    let good = std::fs::read(&path).unwrap();
    let dst = side(4 * MIB, false);
    let mut reg = dst.registry.lock().unwrap().take().unwrap();
    let load = |bytes: Vec<u8>, reg: &mut Registry| {
        let mut rp = incoming::ReturnPath::new(None);
        incoming::load_stream(
            Box::new(std::io::Cursor::new(bytes)),
            reg,
            "livemig-test",
            &mut rp,
        )
    };
    load(good.clone(), &mut reg).expect("the intact stream loads");
    // Every truncation point of the header and section structure, then a stride of the rest.
    let cuts = (0..200).chain((200..good.len()).step_by(997));
    for cut in cuts {
        assert!(
            load(good[..cut].to_vec(), &mut reg).is_err(),
            "truncated at {cut} loaded"
        );
    }
    // Flipped bytes: an error or (for bytes inside page data caught by ram-verify) an error too;
    // never a panic. Page payloads that ram-verify cannot see do not exist: it hashes all RAM.
    let mut x = 0x9e37_79b9u64;
    for _ in 0..400 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut bad = good.clone();
        let at = (x as usize) % bad.len();
        bad[at] ^= 1 << (x % 8);
        let _ = load(bad, &mut reg);
    }
}
