//! The software guest: vCPU threads, pause/resume, state save.
//!
//! Run-state machine (changed only under `Shared::ctl`):
//!
//! ```text
//!            pause()               stop()/drop
//!  Running ----------> Paused ---------------> Stopping
//!     ^      resume()    |                        ^
//!     +------------------+------------------------+
//! ```
//!
//! `pause()` returns only when every live vCPU thread is parked on the condition variable. A vCPU
//! checks the pause flag after every page write and publishes its [`SoftCpuState`] before it
//! parks, so once `pause()` returns no guest store is in flight, the next dirty-log sync sees all
//! of them, and [`SoftGuest::save_state`] reflects exactly the writes that were done.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use guest_ram::{GuestRam, RamBlock, PAGE_SIZE};
use tracing::{debug, warn};

use super::{Error, Pattern, SoftCpuState, WorkloadConfig};

/// Byte offsets within a page of the words each write stores.
pub const WORD_OFFSETS: [u64; 4] = [0, 1024, 2048, 3072];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Running,
    Paused,
    Stopping,
}

struct Ctl {
    run: Run,
    parked: usize,
    alive: usize,
}

struct VcpuSlot {
    writes: AtomicU64,
    generation: AtomicU64,
    state: Mutex<SoftCpuState>,
}

struct Shared {
    ctl: Mutex<Ctl>,
    cv: Condvar,
    /// True whenever `ctl.run != Running`: the vCPUs' lock-free fast-path check.
    hold: AtomicBool,
    /// CPU throttle in percent (auto-converge): vCPUs sleep that share of the time.
    throttle: AtomicU8,
    slots: Vec<VcpuSlot>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running software guest. Dropping it stops and joins the vCPU threads.
pub struct SoftGuest {
    cfg: WorkloadConfig,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for SoftGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftGuest")
            .field("cfg", &self.cfg)
            .field("running", &self.is_running())
            .finish()
    }
}

impl SoftGuest {
    /// Starts a fresh workload: `cfg.vcpus` threads named `vcpu0`, `vcpu1`, ... writing guest RAM.
    pub fn start(ram: Arc<GuestRam>, cfg: WorkloadConfig) -> Result<SoftGuest, Error> {
        let states = (0..cfg.vcpus as u64)
            .map(|i| SoftCpuState::initial(cfg.seed, i))
            .collect();
        Self::spawn(ram, cfg, states, Run::Running)
    }

    /// Continues a workload from states saved by [`SoftGuest::save_state`] (on the migration
    /// destination), running.
    pub fn start_from(
        ram: Arc<GuestRam>,
        cfg: WorkloadConfig,
        states: Vec<SoftCpuState>,
    ) -> Result<SoftGuest, Error> {
        Self::spawn(ram, cfg, states, Run::Running)
    }

    /// Like [`SoftGuest::start_from`] but with every vCPU parked until [`SoftGuest::resume`].
    pub fn start_paused_from(
        ram: Arc<GuestRam>,
        cfg: WorkloadConfig,
        states: Vec<SoftCpuState>,
    ) -> Result<SoftGuest, Error> {
        let guest = Self::spawn(ram, cfg, states, Run::Paused)?;
        guest.pause();
        Ok(guest)
    }

    fn spawn(
        ram: Arc<GuestRam>,
        cfg: WorkloadConfig,
        states: Vec<SoftCpuState>,
        run: Run,
    ) -> Result<SoftGuest, Error> {
        cfg.validate(&ram)?;
        check_states(&cfg, &states)?;
        let block = ram.blocks()[cfg.block].clone();
        let shared = Arc::new(Shared {
            ctl: Mutex::new(Ctl {
                run,
                parked: 0,
                alive: 0,
            }),
            cv: Condvar::new(),
            hold: AtomicBool::new(run != Run::Running),
            throttle: AtomicU8::new(0),
            slots: states
                .iter()
                .map(|s| VcpuSlot {
                    writes: AtomicU64::new(0),
                    generation: AtomicU64::new(s.generation),
                    state: Mutex::new(*s),
                })
                .collect(),
        });
        let mut guest = SoftGuest {
            cfg: cfg.clone(),
            shared: shared.clone(),
            threads: Vec::with_capacity(cfg.vcpus),
        };
        for (i, st) in states.into_iter().enumerate() {
            let vcpu = Vcpu {
                index: i,
                state: st,
                slice: cfg.slice_of(i),
                cfg: cfg.clone(),
                block: block.clone(),
                shared: shared.clone(),
            };
            shared.lock().alive += 1;
            match std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn(move || vcpu.run())
            {
                Ok(h) => guest.threads.push(h),
                Err(source) => {
                    shared.lock().alive -= 1;
                    // Dropping `guest` stops the threads spawned so far.
                    return Err(Error::Spawn { vcpu: i, source });
                }
            }
        }
        debug!(
            vcpus = cfg.vcpus,
            working_set = cfg.working_set,
            "software guest started"
        );
        Ok(guest)
    }

    /// The workload configuration.
    pub fn config(&self) -> &WorkloadConfig {
        &self.cfg
    }

    /// Stops all vCPUs and waits until each one is parked after its last write.
    pub fn pause(&self) {
        let mut ctl = self.shared.lock();
        if ctl.run == Run::Stopping {
            return;
        }
        ctl.run = Run::Paused;
        self.shared.hold.store(true, Ordering::Release);
        // Wake vCPUs sleeping in the rate limiter.
        self.shared.cv.notify_all();
        while ctl.parked < ctl.alive {
            ctl = self
                .shared
                .cv
                .wait(ctl)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        let mut ctl = self.shared.lock();
        if ctl.run != Run::Paused {
            return;
        }
        ctl.run = Run::Running;
        self.shared.hold.store(false, Ordering::Release);
        self.shared.cv.notify_all();
    }

    /// Throttles every vCPU to run only `100 - percent` % of the time (QEMU's CPU throttling
    /// for auto-converge: run 10 ms, then sleep `percent / (100 - percent)` × 10 ms). 0 stops
    /// throttling; values above 99 are clamped.
    pub fn set_throttle(&self, percent: u8) {
        self.shared
            .throttle
            .store(percent.min(99), Ordering::Relaxed);
    }

    /// The current throttle in percent.
    pub fn throttle(&self) -> u8 {
        self.shared.throttle.load(Ordering::Relaxed)
    }

    /// True unless paused or stopping.
    pub fn is_running(&self) -> bool {
        self.shared.lock().run == Run::Running
    }

    /// Page writes done by each vCPU since this `SoftGuest` was started.
    pub fn writes(&self) -> Vec<u64> {
        self.shared
            .slots
            .iter()
            .map(|s| s.writes.load(Ordering::Relaxed))
            .collect()
    }

    /// Sum of [`SoftGuest::writes`].
    pub fn total_writes(&self) -> u64 {
        self.writes().iter().sum()
    }

    /// The generation counter of each vCPU (writes since the workload first started, across
    /// migrations).
    pub fn generations(&self) -> Vec<u64> {
        self.shared
            .slots
            .iter()
            .map(|s| s.generation.load(Ordering::Relaxed))
            .collect()
    }

    /// The vCPU states, for migration. Only valid while paused.
    pub fn save_state(&self) -> Result<Vec<SoftCpuState>, Error> {
        let ctl = self.shared.lock();
        if ctl.run != Run::Paused || ctl.parked < ctl.alive {
            return Err(Error::NotPaused);
        }
        Ok(self
            .shared
            .slots
            .iter()
            .map(|s| *s.state.lock().unwrap_or_else(PoisonError::into_inner))
            .collect())
    }

    /// Stops and joins the vCPU threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        {
            let mut ctl = self.shared.lock();
            ctl.run = Run::Stopping;
            self.shared.hold.store(true, Ordering::Release);
            self.shared.cv.notify_all();
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                warn!("a software vCPU thread panicked");
            }
        }
    }
}

impl Drop for SoftGuest {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn check_states(cfg: &WorkloadConfig, states: &[SoftCpuState]) -> Result<(), Error> {
    let bad = |reason: String| Err(Error::StateMismatch { reason });
    if states.len() != cfg.vcpus {
        return bad(format!(
            "{} vCPU states for {} vCPUs",
            states.len(),
            cfg.vcpus
        ));
    }
    for (i, s) in states.iter().enumerate() {
        let pages = cfg.slice_of(i).end - cfg.slice_of(i).start;
        if s.vcpu != i as u64 {
            return bad(format!("state {i} is for vCPU {}", s.vcpu));
        }
        if s.position >= pages {
            return bad(format!(
                "vCPU {i} position {} is outside its {pages}-page slice",
                s.position
            ));
        }
        if s.rng == 0 {
            return bad(format!("vCPU {i} random state is zero"));
        }
    }
    Ok(())
}

/// One vCPU thread's private data.
struct Vcpu {
    index: usize,
    state: SoftCpuState,
    slice: std::ops::Range<u64>,
    cfg: WorkloadConfig,
    block: Arc<RamBlock>,
    shared: Arc<Shared>,
}

impl Vcpu {
    fn run(mut self) {
        let random = self.cfg.pattern == Pattern::Random;
        let pages = self.slice.end - self.slice.start;
        let shared = self.shared.clone();
        let slot = &shared.slots[self.index];
        let mut paced = Pacer::new(self.cfg.write_rate);
        let mut ran_since = Instant::now();
        loop {
            if self.shared.hold.load(Ordering::Acquire) {
                if !self.park() {
                    break;
                }
                paced = Pacer::new(self.cfg.write_rate);
                continue;
            }
            let (idx, value) = self.state.step(random, pages, self.cfg.seed);
            let base = (self.slice.start + idx) * PAGE_SIZE;
            let mut ok = true;
            for (k, off) in WORD_OFFSETS.iter().enumerate() {
                let word = value.rotate_left(16 * k as u32);
                ok &= self
                    .block
                    .guest_write(base + off, &word.to_le_bytes())
                    .is_ok();
            }
            if !ok {
                // Cannot happen with a validated configuration; leave rather than spin.
                warn!(vcpu = self.index, "software vCPU write outside its block");
                break;
            }
            slot.writes.fetch_add(1, Ordering::Relaxed);
            slot.generation
                .store(self.state.generation, Ordering::Relaxed);
            paced.after_write(&self.shared);
            if let Some(pause) = throttle_pause(&self.shared, ran_since) {
                wait_until(&self.shared, Instant::now() + pause);
                paced = Pacer::new(self.cfg.write_rate);
                ran_since = Instant::now();
            }
        }
        *slot.state.lock().unwrap_or_else(PoisonError::into_inner) = self.state;
        let mut ctl = self.shared.lock();
        ctl.alive -= 1;
        self.shared.cv.notify_all();
    }

    /// Parks until resumed; returns false if the guest is stopping.
    fn park(&self) -> bool {
        let slot = &self.shared.slots[self.index];
        *slot.state.lock().unwrap_or_else(PoisonError::into_inner) = self.state;
        let mut ctl = self.shared.lock();
        ctl.parked += 1;
        self.shared.cv.notify_all();
        while ctl.run == Run::Paused {
            ctl = self
                .shared
                .cv
                .wait(ctl)
                .unwrap_or_else(PoisonError::into_inner);
        }
        ctl.parked -= 1;
        ctl.run != Run::Stopping
    }
}

/// Spaces writes so that a vCPU dirties at most `rate` bytes/s (4096 per page write).
struct Pacer {
    rate: Option<u64>,
    start: Instant,
    writes: u64,
}

impl Pacer {
    fn new(rate: Option<u64>) -> Self {
        Pacer {
            rate,
            start: Instant::now(),
            writes: 0,
        }
    }

    fn after_write(&mut self, shared: &Shared) {
        let Some(rate) = self.rate else {
            return;
        };
        self.writes += 1;
        let due = self.start
            + Duration::from_secs_f64(self.writes as f64 * PAGE_SIZE as f64 / rate as f64);
        wait_until(shared, due);
    }
}

/// Runs of this long alternate with throttle sleeps.
const THROTTLE_SLICE: Duration = Duration::from_millis(10);

/// The sleep due after running since `ran_since`, if throttled and a slice is over.
fn throttle_pause(shared: &Shared, ran_since: Instant) -> Option<Duration> {
    let pct = u32::from(shared.throttle.load(Ordering::Relaxed));
    if pct == 0 || ran_since.elapsed() < THROTTLE_SLICE {
        return None;
    }
    Some(THROTTLE_SLICE * pct / (100 - pct))
}

/// Sleeps until `due`, waking early when the guest is paused or stopped.
fn wait_until(shared: &Shared, due: Instant) {
    let mut ctl = None;
    loop {
        let now = Instant::now();
        if now >= due || shared.hold.load(Ordering::Acquire) {
            return;
        }
        let guard = ctl.take().unwrap_or_else(|| shared.lock());
        if shared.hold.load(Ordering::Acquire) {
            return;
        }
        let (g, _) = shared
            .cv
            .wait_timeout(guard, due - now)
            .unwrap_or_else(PoisonError::into_inner);
        ctl = Some(g);
    }
}
