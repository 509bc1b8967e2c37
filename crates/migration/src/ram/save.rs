//! Source side of RAM migration: dirty bitmaps, the page scan and the page records.

mod postcopy;
mod recover;

use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_ram::{Bitmap, DirtyLog, GuestRam};
use savevm::qemu_file::QemuFileWriter;
use savevm::ram::{self, BlockExtras, RamBlockInfo, RamEncoder, TARGET_PAGE_SIZE};

use super::multifd::{self, MultifdSender};
use super::shared;
use super::xbzrle::{Outcome, XbzrleCache};
use crate::capabilities::Capability;
use crate::convergence::{self, ThrottleParams};
use crate::counters::RamCounters;
use crate::error::MigrationError;
use crate::session::OutgoingSession;
use crate::settings::Settings;

/// An iteration returns to the migration thread after this long (QEMU's MAX_WAIT).
const MAX_ITERATION_TIME: Duration = Duration::from_millis(50);

/// Period over which the dirty-page rate is measured.
const DIRTY_RATE_PERIOD: Duration = Duration::from_secs(1);

const PAGE: u64 = TARGET_PAGE_SIZE as u64;

/// Source-side RAM migration state.
pub struct RamSaver {
    ram: Arc<GuestRam>,
    dirty_log: Box<dyn DirtyLog>,
    /// Statistics of the current migration (from its session at setup).
    counters: Arc<RamCounters>,
    bitmaps: Vec<Bitmap>,
    dirty_pages: u64,
    /// Pages the last sync found newly dirtied (`u64::MAX` before the first one).
    last_sync_new: u64,
    encoder: RamEncoder,
    /// Scan position: block index and page.
    pos: (usize, u64),
    in_downtime: bool,
    period_start: Instant,
    period_dirty: u64,
    tracking: bool,
    /// The XBZRLE cache, with the `xbzrle` capability.
    xbzrle: Option<XbzrleCache>,
    /// XBZRLE starts after the first complete lap over RAM.
    xbzrle_active: bool,
    /// Global RAM address of each block's first byte (XBZRLE cache key).
    block_base: Vec<u64>,
    /// Auto-converge settings, with the `auto-converge` capability.
    throttle: Option<ThrottleParams>,
    /// Periods in which the guest dirtied too fast (not reset by a good period, as QEMU).
    dirty_rate_high_cnt: u32,
    /// The vCPU throttle asked for so far (auto-converge).
    throttle_percent: u8,
    /// RAM bytes transferred when the current dirty-rate period started.
    xfer_prev: u64,
    /// Multifd channels, with the `multifd` capability.
    multifd: Option<MultifdSender>,
    /// Multifd bytes already accounted.
    multifd_accounted: u64,
    /// Per block: skipped by `x-ignore-shared` (never in the bitmaps).
    ignored: Vec<bool>,
    /// Postcopy: request queue, and whether the switch happened.
    postcopy: postcopy::SourcePostcopy,
}

/// What [`RamSaver::send_page`] put on the wire.
enum Sent {
    Zero,
    Normal,
    Xbzrle,
    Nothing,
}

impl RamSaver {
    /// Whether block `b` is skipped by `x-ignore-shared`.
    fn is_ignored(&self, b: usize) -> bool {
        self.ignored.get(b).copied().unwrap_or(false)
    }

    /// A saver over `ram`.
    pub fn new(ram: Arc<GuestRam>, dirty_log: Box<dyn DirtyLog>) -> Self {
        Self {
            ram,
            dirty_log,
            counters: Arc::default(),
            bitmaps: Vec::new(),
            dirty_pages: 0,
            last_sync_new: u64::MAX,
            encoder: RamEncoder::new(),
            pos: (0, 0),
            in_downtime: false,
            period_start: Instant::now(),
            period_dirty: 0,
            tracking: false,
            xbzrle: None,
            xbzrle_active: false,
            block_base: Vec::new(),
            throttle: None,
            dirty_rate_high_cnt: 0,
            throttle_percent: 0,
            xfer_prev: 0,
            multifd: None,
            multifd_accounted: 0,
            ignored: Vec::new(),
            postcopy: postcopy::SourcePostcopy::default(),
        }
    }

    fn counters(&self) -> &RamCounters {
        &self.counters
    }

    /// Starts dirty tracking, marks every existing page and writes the block list.
    pub fn setup(
        &mut self,
        f: &mut QemuFileWriter,
        s: &mut OutgoingSession,
    ) -> Result<(), MigrationError> {
        self.counters = s.runtime().ram.clone();
        super::handover::hand_over(&self.ram, s)?;
        let ignore_shared = s.settings().has(Capability::XIgnoreShared);
        self.ignored = self
            .ram
            .blocks()
            .iter()
            .map(|b| shared::is_ignored(b, ignore_shared))
            .collect();
        // Arm tracking first: a page first touched after this is reported by the next sync,
        // a page touched before it is in the populated set below. With every block skipped
        // there is nothing to track (a same-host migration then costs no RAM work at all).
        if self.ignored.iter().any(|i| !i) {
            self.dirty_log.start()?;
            self.tracking = true;
        }
        self.bitmaps.clear();
        for (b, (block, &ignored)) in self.ram.blocks().iter().zip(&self.ignored).enumerate() {
            self.bitmaps.push(if ignored {
                Bitmap::new(block.pages())
            } else {
                let mut bm = block.populated_pages()?;
                self.dirty_log.mark_deferred(b, &mut bm);
                bm
            });
        }
        self.dirty_pages = self.bitmaps.iter().map(Bitmap::count_ones).sum();
        self.last_sync_new = u64::MAX;
        let (xbzrle_cache, throttle) = features(s.settings());
        self.throttle = throttle;
        self.dirty_rate_high_cnt = 0;
        self.throttle_percent = 0;
        self.xfer_prev = 0;
        self.xbzrle = xbzrle_cache.map(XbzrleCache::new).transpose()?;
        self.xbzrle_active = false;
        let writers = s.take_multifd_channels();
        self.multifd = if writers.is_empty() {
            None
        } else {
            Some(multifd::start_sender(
                writers,
                multifd::compression(&s.settings().params),
                s.settings().has(Capability::ZeroCopySend),
            )?)
        };
        self.multifd_accounted = 0;
        self.block_base = shared::block_bases(&self.ram);
        self.encoder.reset();
        self.postcopy = postcopy::SourcePostcopy::default();
        self.pos = (0, 0);
        self.in_downtime = false;
        self.period_start = Instant::now();
        self.period_dirty = 0;
        let c = self.counters();
        // As QEMU's query-migrate: the total of the blocks actually migrated.
        let total = self
            .ram
            .blocks()
            .iter()
            .zip(&self.ignored)
            .filter(|(_, &i)| !i)
            .map(|(b, _)| b.len())
            .sum();
        RamCounters::set(&c.total, total);
        RamCounters::set(&c.remaining, self.dirty_pages * PAGE);
        RamCounters::set(&c.dirty_sync_count, 1);
        RamCounters::set(
            &c.xbzrle_cache_size,
            self.xbzrle.as_ref().map_or(0, XbzrleCache::size),
        );
        s.emit_pass(1);

        let start = f.total_transferred();
        let infos: Vec<RamBlockInfo> = self
            .ram
            .blocks()
            .iter()
            .map(|b| RamBlockInfo {
                idstr: b.idstr().to_string(),
                used_length: b.len(),
            })
            .collect();
        // With x-ignore-shared every block carries its guest physical base; the total still
        // counts the skipped blocks (spec §3.3).
        let extras: Vec<BlockExtras> = if ignore_shared {
            self.block_base
                .iter()
                .map(|&a| BlockExtras {
                    page_size: None,
                    mr_addr: Some(a),
                })
                .collect()
        } else {
            Vec::new()
        };
        ram::write_mem_size_ext(f, &infos, &extras);
        self.multifd_sync()?;
        ram::put_eos(f);
        self.flush_for_multifd(f)?;
        self.account(f.total_transferred() - start);
        Ok(())
    }

    fn account(&self, bytes: u64) {
        let c = self.counters();
        RamCounters::add(&c.transferred, bytes);
        if self.postcopy.active {
            RamCounters::add(&c.postcopy_bytes, bytes);
        } else if self.in_downtime {
            RamCounters::add(&c.downtime_bytes, bytes);
        } else {
            RamCounters::add(&c.precopy_bytes, bytes);
        }
    }

    /// Merges the dirty log into the bitmaps (one pass).
    fn sync(&mut self, s: &mut OutgoingSession) -> Result<(), MigrationError> {
        let new = if self.tracking {
            let mut new = self.dirty_log.sync(&mut self.bitmaps)?;
            // The log covers every block; pages of skipped blocks are not sent.
            for (bm, _) in self
                .bitmaps
                .iter_mut()
                .zip(&self.ignored)
                .filter(|(_, &i)| i)
            {
                new -= bm.count_ones().min(new);
                *bm = Bitmap::new(bm.len());
            }
            new
        } else {
            0
        };
        self.dirty_pages += new;
        self.last_sync_new = new;
        self.period_dirty += new;
        let c = self.counters.clone();
        let pass = c
            .dirty_sync_count
            .load(std::sync::atomic::Ordering::Relaxed)
            + 1;
        RamCounters::set(&c.dirty_sync_count, pass);
        RamCounters::set(&c.remaining, self.dirty_pages * PAGE);
        let elapsed = self.period_start.elapsed();
        if elapsed >= DIRTY_RATE_PERIOD {
            let rate = (self.period_dirty as f64 / elapsed.as_secs_f64()) as u64;
            RamCounters::set(&c.dirty_pages_rate, rate);
            self.trigger_throttle(s);
            self.period_start = Instant::now();
            self.period_dirty = 0;
        }
        s.emit_pass(pass);
        tracing::debug!(
            pass,
            dirty_pages = self.dirty_pages,
            new,
            "dirty bitmap sync"
        );
        Ok(())
    }

    /// Auto-converge: after two periods in which the guest dirtied faster than the trigger
    /// allows, ask the migration thread to throttle the vCPUs one step more.
    fn trigger_throttle(&mut self, s: &mut OutgoingSession) {
        let Some(p) = self.throttle else { return };
        let transferred = RamCounters::get(&self.counters.transferred);
        let xfer = transferred.saturating_sub(self.xfer_prev);
        let dirty = self.period_dirty * PAGE;
        self.xfer_prev = transferred;
        if !convergence::dirty_rate_too_high(xfer, dirty, p.trigger_threshold) {
            return;
        }
        self.dirty_rate_high_cnt += 1;
        if self.dirty_rate_high_cnt >= 2 {
            self.dirty_rate_high_cnt = 0;
            let current = self.throttle_percent;
            let next = convergence::next_throttle(current, &p, xfer, dirty);
            tracing::info!(
                from = current,
                to = next,
                "auto-converge: throttling the guest"
            );
            self.throttle_percent = next;
            s.request_throttle(next);
        }
    }

    /// Remaining bytes; syncs the dirty log when the estimate is below `threshold` (QEMU) or
    /// when nothing is left (so a running guest's writes during the pass are not left to the
    /// downtime before the bandwidth has been measured).
    pub fn pending(
        &mut self,
        threshold: u64,
        s: &mut OutgoingSession,
    ) -> Result<u64, MigrationError> {
        // Below the threshold QEMU syncs on every call. When the last sync found nothing new
        // (a quiet or paused guest), another one before the pages already dirty are sent
        // only costs a scan of the log: wait until they are (the switchover syncs anyway).
        let below = self.dirty_pages * PAGE < threshold;
        if self.dirty_pages == 0 || (below && self.last_sync_new != 0) {
            self.sync(s)?;
        }
        Ok(self.dirty_pages * PAGE)
    }

    /// Finds the next dirty page at or after the scan position, wrapping once.
    fn next_dirty(&mut self) -> Option<(usize, u64)> {
        if self.dirty_pages == 0 {
            return None;
        }
        let n = self.bitmaps.len();
        let (start_block, start_page) = self.pos;
        for step in 0..=n {
            let b = (start_block + step) % n.max(1);
            let from = if step == 0 { start_page } else { 0 };
            if let Some(p) = self.bitmaps.get(b).and_then(|bm| bm.next_set(from)) {
                if (b, p) < (start_block, start_page) && self.xbzrle.is_some() {
                    // Wrapped around: the first lap is over, XBZRLE may start (QEMU).
                    self.xbzrle_active = true;
                }
                return Some((b, p));
            }
        }
        None
    }

    /// Sends one dirty page; the caller found it with [`next_dirty`](Self::next_dirty).
    fn send_page(
        &mut self,
        f: &mut QemuFileWriter,
        b: usize,
        page: u64,
    ) -> Result<(), MigrationError> {
        self.dirty_log.arm(b, page)?;
        self.bitmaps[b].clear(page);
        self.dirty_pages -= 1;
        self.pos = (b, page + 1);
        let block = &self.ram.blocks()[b];
        let offset = page * PAGE;
        let encoder = &mut self.encoder;
        let addr = self.block_base.get(b).copied().unwrap_or(0) + offset;
        let xbzrle = if self.xbzrle_active {
            self.xbzrle.as_mut()
        } else {
            None
        };
        // Only XBZRLE needs the pass number (cache ages).
        let sync = match xbzrle {
            Some(_) => RamCounters::get(&self.counters.dirty_sync_count),
            None => 0,
        };
        let last_stage = self.in_downtime;
        let multifd = self.multifd.as_mut();
        // The page is read in place, and sent in place by the writer (or a multifd channel),
        // which holds the block's memory until then. A guest store racing with the zero check,
        // the XBZRLE copy or the send dirties the page again, so a torn view is resent.
        let bytes = block.page(page)?;
        let sent = if is_zero(bytes) {
            encoder.put_zero(f, b, block.idstr(), offset);
            if let Some(x) = xbzrle {
                x.zero_page(addr);
            }
            Sent::Zero
        } else if let Some(m) = multifd {
            // Zero pages stay on the main stream; data pages go to a channel (QEMU never
            // applies XBZRLE with multifd). Counted against the window now; compressed ones
            // by what the channels wrote, so `max-bandwidth` limits the link's bytes (QEMU 7.2
            // counts them uncompressed, which makes compression useless under a limit).
            m.queue(b, block.idstr(), offset, block.memory())?;
            f.rate_limit_account(m.take_wire_bytes().unwrap_or(PAGE + 8));
            // What the channels wrote so far, for the bandwidth measure.
            RamCounters::set(&self.counters.multifd_bytes, m.bytes);
            Sent::Normal
        } else if let Some(x) = xbzrle {
            match x.encode(addr, bytes, sync, last_stage) {
                Outcome::Unchanged => Sent::Nothing,
                Outcome::Delta(d) => {
                    encoder.put_xbzrle(f, b, block.idstr(), offset, d);
                    Sent::Xbzrle
                }
                Outcome::Raw(r) => {
                    encoder.put_page(f, b, block.idstr(), offset, r);
                    Sent::Normal
                }
            }
        } else {
            encoder.put_page_external(f, b, block.idstr(), offset, block.memory());
            Sent::Normal
        };
        let c = &self.counters;
        match sent {
            Sent::Zero => RamCounters::add(&c.duplicate, 1),
            Sent::Normal => RamCounters::add(&c.normal, 1),
            Sent::Xbzrle | Sent::Nothing => {}
        }
        Ok(())
    }

    /// Before each RAM EOS: every multifd channel writes a SYNC; accounts their bytes.
    fn multifd_sync(&mut self) -> Result<(), MigrationError> {
        let Some(m) = self.multifd.as_mut() else {
            return Ok(());
        };
        m.sync()?;
        let delta = m.bytes - self.multifd_accounted;
        self.multifd_accounted = m.bytes;
        RamCounters::set(&self.counters.multifd_bytes, m.bytes);
        RamCounters::set(
            &self.counters.dirty_sync_missed_zero_copy,
            m.zero_copy_missed,
        );
        self.account(delta);
        Ok(())
    }

    /// With multifd the destination holds every channel at a SYNC until it reads the EOS that
    /// follows, so that EOS must go out now rather than wait for the buffer to fill (QEMU
    /// flushes after each RAM section too).
    fn flush_for_multifd(&self, f: &mut QemuFileWriter) -> Result<(), MigrationError> {
        if self.multifd.is_some() {
            f.flush()?;
        }
        Ok(())
    }

    /// Publishes the XBZRLE counters.
    fn publish_xbzrle(&self) {
        if let Some(x) = &self.xbzrle {
            let (c, k) = (&self.counters, x.counters);
            RamCounters::set(&c.xbzrle_bytes, k.bytes);
            RamCounters::set(&c.xbzrle_pages, k.pages);
            RamCounters::set(&c.xbzrle_cache_miss, k.cache_miss);
            RamCounters::set(&c.xbzrle_overflow, k.overflow);
            RamCounters::set(&c.xbzrle_unencoded, k.unencoded);
        }
    }

    /// Sends dirty pages until the rate limit, 50 ms, or a clean bitmap.
    pub fn iterate(&mut self, f: &mut QemuFileWriter) -> Result<bool, MigrationError> {
        let start = Instant::now();
        let bytes0 = f.total_transferred();
        let mut done = false;
        let mut n = 0u64;
        while !f.is_rate_limited() {
            let Some((b, page)) = self.next_dirty() else {
                done = true;
                break;
            };
            self.send_page(f, b, page)?;
            n += 1;
            if n % 64 == 0 && start.elapsed() > MAX_ITERATION_TIME {
                break;
            }
        }
        self.multifd_sync()?;
        ram::put_eos(f);
        self.flush_for_multifd(f)?;
        if let Some(e) = f.error() {
            return Err(e.into());
        }
        self.account(f.total_transferred() - bytes0);
        RamCounters::set(&self.counters.remaining, self.dirty_pages * PAGE);
        self.publish_xbzrle();
        Ok(done)
    }

    /// Final pass with the guest stopped: sync once more and send everything left.
    pub fn complete(
        &mut self,
        f: &mut QemuFileWriter,
        s: &mut OutgoingSession,
    ) -> Result<(), MigrationError> {
        self.in_downtime = true;
        self.sync(s)?;
        let bytes0 = f.total_transferred();
        while let Some((b, page)) = self.next_dirty() {
            self.send_page(f, b, page)?;
        }
        self.multifd_sync()?;
        ram::put_eos(f);
        self.flush_for_multifd(f)?;
        if let Some(e) = f.error() {
            return Err(e.into());
        }
        self.account(f.total_transferred() - bytes0);
        RamCounters::set(&self.counters.remaining, 0);
        self.publish_xbzrle();
        Ok(())
    }

    /// What the multifd channels hold that the destination has not received yet (0 without
    /// multifd): pages queued to them and their sockets' unsent bytes.
    pub fn backlog(&self) -> u64 {
        self.multifd.as_ref().map_or(0, MultifdSender::backlog)
    }

    /// Stops tracking and drops the bitmaps. A later migration starts over from the pages
    /// that exist, so nothing dirtied meanwhile can be missed.
    pub fn cleanup(&mut self) {
        if self.tracking {
            self.dirty_log.stop();
            self.tracking = false;
        }
        self.bitmaps.clear();
        self.dirty_pages = 0;
        self.xbzrle = None;
        self.multifd = None;
    }
}

/// The optional features of this migration: the XBZRLE cache size (with `xbzrle`) and the
/// auto-converge settings (with `auto-converge`).
fn features(s: &Settings) -> (Option<u64>, Option<ThrottleParams>) {
    let p = &s.params;
    let xbzrle = s
        .caps
        .get(Capability::Xbzrle)
        .then_some(p.xbzrle_cache_size);
    let throttle = s
        .caps
        .get(Capability::AutoConverge)
        .then(|| ThrottleParams {
            trigger_threshold: p.throttle_trigger_threshold.into(),
            initial: p.cpu_throttle_initial,
            increment: p.cpu_throttle_increment,
            tailslow: p.cpu_throttle_tailslow,
            max: p.max_cpu_throttle,
        });
    (xbzrle, throttle)
}

/// True when every byte of `page` is zero: ORs 64-byte chunks (which vectorises) and stops at
/// the first non-zero chunk.
fn is_zero(page: &[u8]) -> bool {
    let mut chunks = page.chunks_exact(64);
    chunks.all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn zero_detection() {
        let mut p = vec![0u8; 4096];
        assert!(is_zero(&p));
        p[4095] = 1;
        assert!(!is_zero(&p));
        p[4095] = 0;
        p[0] = 1;
        assert!(!is_zero(&p));
    }
}
