//! Measuring the guest's dirty rate for `calc-dirty-rate` (the rules and formulas are
//! `migration::dirty_rate`): a `dirtyrate` thread samples page hashes, or runs a dirty log of
//! its own, over `calc-time` seconds and publishes the result for `query-dirty-rate`.
//!
//! The dirty log is the same kind a migration uses (uffd-wp or KVM's), so `dirty-bitmap` is
//! refused while a migration runs (the log is the migration's then); page sampling only reads
//! guest RAM and runs at any time, like QEMU's.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guest_ram::{DirtyLog, GuestRam};
use migration::dirty_rate::{
    logged_rate, sampled_rate, samples_for_block, DirtyRateError, DirtyRateMode, DirtyRateRequest,
    DirtyRateState,
};

/// The last measurement, shared with the thread that makes it.
pub type SharedDirtyRate = Arc<Mutex<DirtyRateState>>;

fn lock(s: &SharedDirtyRate) -> std::sync::MutexGuard<'_, DirtyRateState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Seconds of the host's monotonic clock (QEMU reports `QEMU_CLOCK_REALTIME` seconds).
fn uptime_secs() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split('.').next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Starts a measurement on its own thread. `log` is a fresh dirty log for `dirty-bitmap`
/// (`None` when none can be had now, e.g. during a migration).
pub fn start(
    state: &SharedDirtyRate,
    ram: Arc<GuestRam>,
    req: DirtyRateRequest,
    log: Option<Box<dyn DirtyLog>>,
) -> Result<(), DirtyRateError> {
    if req.mode == DirtyRateMode::DirtyBitmap && log.is_none() {
        return Err(DirtyRateError::Unavailable(
            "the dirty log is in use by a migration".into(),
        ));
    }
    {
        let mut s = lock(state);
        if s.measured == Some(false) {
            return Err(DirtyRateError::Busy);
        }
        *s = DirtyRateState {
            measured: Some(false),
            start_time: uptime_secs(),
            request: Some(req),
            dirty_rate: None,
        };
    }
    let shared = state.clone();
    let spawned = std::thread::Builder::new()
        .name("dirtyrate".into())
        .spawn(move || {
            let rate = measure(&ram, req, log);
            let mut s = lock(&shared);
            s.measured = Some(true);
            s.dirty_rate = match rate {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!("dirty rate measurement failed: {e}");
                    None
                }
            };
        });
    if let Err(e) = spawned {
        lock(state).measured = None;
        return Err(DirtyRateError::Unavailable(e.to_string()));
    }
    Ok(())
}

fn measure(
    ram: &GuestRam,
    req: DirtyRateRequest,
    log: Option<Box<dyn DirtyLog>>,
) -> Result<u64, guest_ram::Error> {
    let period = Duration::from_secs(req.calc_time);
    match (req.mode, log) {
        (DirtyRateMode::DirtyBitmap, Some(mut log)) => {
            let mut bitmaps = ram.new_bitmaps();
            log.start()?;
            let t = Instant::now();
            std::thread::sleep(period);
            let synced = log.sync(&mut bitmaps);
            let ms = t.elapsed().as_millis() as u64;
            log.stop();
            synced?;
            let pages: u64 = bitmaps.iter().map(|b| b.count_ones()).sum();
            Ok(logged_rate(pages, savevm::ram::TARGET_PAGE_SIZE as u64, ms))
        }
        _ => sample(ram, req.sample_pages, period),
    }
}

/// Page sampling: hashes of random pages before and after `period`.
fn sample(ram: &GuestRam, sample_pages: u64, period: Duration) -> Result<u64, guest_ram::Error> {
    let mut rng =
        Instant::now().elapsed().as_nanos() as u64 ^ 0x9e37_79b9_7f4a_7c15 ^ uptime_secs();
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut picks = Vec::new();
    let mut block_mib = 0;
    for (i, b) in ram.blocks().iter().enumerate() {
        let n = samples_for_block(b.len(), sample_pages);
        if n == 0 || b.pages() == 0 {
            continue;
        }
        block_mib += b.len() >> 20;
        for _ in 0..n {
            let page = next() % b.pages();
            picks.push((i, page, hash_page(ram, i, page)?));
        }
    }
    let t = Instant::now();
    std::thread::sleep(period);
    let mut dirty = 0;
    for &(i, page, before) in &picks {
        if hash_page(ram, i, page)? != before {
            dirty += 1;
        }
    }
    let ms = t.elapsed().as_millis() as u64;
    Ok(sampled_rate(dirty, picks.len() as u64, block_mib, ms))
}

fn hash_page(ram: &GuestRam, block: usize, page: u64) -> Result<u64, guest_ram::Error> {
    let mut h = DefaultHasher::new();
    h.write(ram.blocks()[block].page(page)?);
    Ok(h.finish())
}
