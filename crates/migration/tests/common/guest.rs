//! A simulated guest for the engine tests: RAM filled with a known pattern, and a "vCPU" thread
//! that keeps storing into it while the VM runs.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use guest_ram::GuestRam;
use migration::VmControl;
use testkit::FakeVm;

/// Fills the first `bytes` of the first block: pseudo-random pages from `seed`, every 8th page
/// never touched, every 8th+3 touched but zero.
pub fn fill(ram: &GuestRam, bytes: u64, seed: u64) {
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

/// A simulated vCPU rewriting `ws` bytes of RAM while `vm` runs. Each store happens under a
/// gate that `vm_stop` takes after clearing the running flag, so no store is still in flight
/// once the VM reports stopped (as a real VMM's vCPU pause guarantees).
pub fn writer(
    ram: Arc<GuestRam>,
    vm: &FakeVm,
    stop: Arc<AtomicBool>,
    ws: u64,
) -> thread::JoinHandle<u64> {
    writer_counted(ram, vm, stop, ws, Arc::new(AtomicU64::new(0)))
}

/// [`writer`], publishing its store count in `writes` as it goes.
pub fn writer_counted(
    ram: Arc<GuestRam>,
    vm: &FakeVm,
    stop: Arc<AtomicBool>,
    ws: u64,
    writes: Arc<AtomicU64>,
) -> thread::JoinHandle<u64> {
    let running = vm.running_flag();
    let gate = Arc::new(std::sync::Mutex::new(()));
    let g = gate.clone();
    vm.on_stop(move || drop(g.lock()));
    thread::spawn(move || {
        let b = ram.blocks()[0].clone();
        let mut n = 0u64;
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::SeqCst) {
            let held = gate.lock().unwrap_or_else(|p| p.into_inner());
            if !running.load(Ordering::SeqCst) {
                drop(held);
                thread::sleep(Duration::from_millis(1));
                continue;
            }
            let p = (n * 7919) % (ws / 4096);
            buf[..8].copy_from_slice(&n.to_le_bytes());
            // A guest store (not write_page, which the VMM tracker marks): the kernel's dirty
            // log has to see it.
            b.guest_write(p * 4096, &buf).unwrap();
            drop(held);
            n += 1;
            writes.store(n, Ordering::SeqCst);
            if n % 64 == 0 {
                thread::sleep(Duration::from_micros(200));
            }
        }
        n
    })
}

/// A destination "vCPU": once the VM runs, reads every page of the first block in a scattered
/// order (a read of a page not there yet waits in the kernel until the source's copy is
/// placed), then keeps going until stopped. Returns the pages read.
pub fn reader(ram: Arc<GuestRam>, vm: &FakeVm, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    let running = vm.running_flag();
    thread::spawn(move || {
        let b = ram.blocks()[0].clone();
        let pages = b.pages();
        let mut buf = vec![0u8; 4096];
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            if !running.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(1));
                continue;
            }
            b.copy_page_to((n * 7919) % pages, &mut buf).unwrap();
            n += 1;
        }
        n
    })
}

/// A source (running) and a destination of `size` bytes of RAM with `postcopy-ram`, `events`
/// and `ram-verify` on.
pub fn postcopy_pair(size: u64) -> (testkit::RamVm, testkit::RamVm) {
    let src = testkit::ram_vm(size, true);
    let dst = testkit::ram_vm(size, false);
    for s in [&src, &dst] {
        s.enable(&[
            migration::Capability::PostcopyRam,
            migration::Capability::Events,
            migration::Capability::RamVerify,
        ]);
    }
    (src, dst)
}

/// Starts a migration of `src` into `dst` through `to` (a URI), with a slow background phase,
/// switches to postcopy and waits until some postcopy pages went out.
pub fn start_postcopy(src: &testkit::RamVm, dst: &testkit::RamVm, to: &str) {
    src.migrate(to).unwrap();
    testkit::wait_for(Duration::from_secs(60), "some pre-copy", || {
        src.state
            .info()
            .ram
            .is_some_and(|r| r.transferred > 2 * (1 << 20))
    });
    src.state.start_postcopy().unwrap();
    testkit::wait_for(
        Duration::from_secs(60),
        "the destination runs the guest",
        || dst.vm.run_state() == migration::RunState::Running,
    );
    testkit::wait_for(Duration::from_secs(60), "some postcopy pages", || {
        src.state
            .info()
            .ram
            .is_some_and(|r| r.postcopy_bytes > (1 << 20))
    });
}

/// A 16 MiB pair (see [`postcopy_pair`], RAM filled from `seed`) in postcopy over TCP, with
/// a 1 MiB/s background phase that lasts while a test breaks the link.
pub fn slow_postcopy(seed: u64) -> (testkit::RamVm, testkit::RamVm) {
    const MIB: u64 = 1 << 20;
    let (src, dst) = postcopy_pair(16 * MIB);
    fill(&src.ram, 16 * MIB, seed);
    src.set_params(serde_json::json!({
        "max-bandwidth": 8 * MIB,
        "max-postcopy-bandwidth": MIB,
    }));
    let uri = dst.listen("tcp:127.0.0.1:0");
    start_postcopy(&src, &dst, &uri);
    (src, dst)
}
