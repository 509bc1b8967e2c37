//! The pre-copy loop: iterate while the guest runs until [`convergence::decide`] says switch
//! over.
//!
//! Before switching over, the bytes already written but not yet at the destination count
//! too: the stream's own buffer and the socket's queue (`SIOCOUTQ`, queued or
//! unacknowledged), and what the handlers' own channels hold
//! ([`LiveHandler::backlog`](crate::handler::LiveHandler::backlog): the pages queued to the
//! multifd channels and their sockets' queues). On a loopback they are nothing; on a
//! 1 Gbit/s link each socket holds megabytes, tens of ms that the destination waits for
//! after the guest stopped, so a switchover that ignored them would overshoot
//! `downtime-limit` by that much (QEMU 7.2 counts only dirty pages). When only that backlog
//! is in the way, the loop waits for it to drain, then syncs and decides again. [`Pacing`]
//! carries the loop's state between rounds: the 100 ms rate-limit window and its bandwidth
//! measurement, the switchover bookkeeping, and the vCPU throttle in effect.

use std::time::{Duration, Instant};

use savevm::qemu_file::QemuFileWriter;
use savevm::record::SectionHeader;

use super::Job;
use crate::convergence::{self, ConvergenceInput, Decision, WINDOW};
use crate::counters::RamCounters;
use crate::error::MigrationError;
use crate::registry::{EntryKind, Registry};
use crate::session::OutgoingSession;

/// State of the pre-copy loop between rounds.
struct Pacing {
    /// Start of the current rate-limit window.
    window_start: Instant,
    /// Bytes sent when the window started.
    bytes0: u64,
    /// Pages sent when the window started.
    pages0: u64,
    /// Last measured bandwidth in bytes/ms (0 before the first window).
    bandwidth: f64,
    /// `bandwidth × downtime-limit`.
    threshold: u64,
    /// Pending bytes at the previous decision below the threshold.
    previous_pending: Option<u64>,
    /// Bytes sent at that decision.
    sent_at_previous: u64,
    /// Iterations made below the threshold.
    extra_iterations: u32,
}

impl Pacing {
    fn new(f: &QemuFileWriter, ram: &RamCounters) -> Self {
        Self {
            window_start: Instant::now(),
            bytes0: sent_bytes(f, ram),
            pages0: ram.pages_sent(),
            bandwidth: 0.0,
            threshold: 0,
            previous_pending: None,
            sent_at_previous: 0,
            extra_iterations: 0,
        }
    }

    /// Decides on `pending` bytes; records an iteration below the threshold.
    fn decide(&mut self, pending: u64, sent: u64) -> Decision {
        let input = ConvergenceInput {
            pending,
            threshold: self.threshold,
            bandwidth: self.bandwidth,
            previous_pending: self.previous_pending,
            sent_since_previous: sent - self.sent_at_previous,
            extra_iterations: self.extra_iterations,
        };
        let decision = convergence::decide(input);
        tracing::debug!(?input, ?decision, "convergence");
        if decision == Decision::Iterate && pending < self.threshold {
            self.extra_iterations += 1;
            self.previous_pending = Some(pending);
            self.sent_at_previous = sent;
        }
        decision
    }
}

/// How pre-copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PrecopyEnd {
    /// Converged: switch over with the guest stopped.
    Converged,
    /// `migrate-start-postcopy`: switch to postcopy.
    Postcopy,
}

/// Runs pre-copy rounds until switchover (or a postcopy request); applies the rate limit and
/// the throttle that the handlers ask for on the way. Throttling ends when the loop does.
/// `unsent` tells how many bytes the main channel's socket has not delivered yet; the
/// handlers' channels are asked here.
pub(super) fn precopy(
    job: &Job,
    registry: &mut Registry,
    s: &mut OutgoingSession,
    f: &mut QemuFileWriter,
    unsent: &dyn Fn() -> u64,
) -> Result<PrecopyEnd, MigrationError> {
    let rt = job.runtime.clone();
    let mut pacing = Pacing::new(f, &rt.ram);
    f.set_rate_limit(convergence::window_budget(rt.limits().max_bandwidth));
    loop {
        rt.cancel_token().check()?;
        if rt.postcopy_requested() {
            return Ok(PrecopyEnd::Postcopy);
        }
        if !f.is_rate_limited() {
            let dirty = pending(registry, s, pacing.threshold)?;
            if pacing.decide(dirty, sent_bytes(f, &rt.ram)) == Decision::Complete {
                let goal = pacing.threshold.saturating_sub(dirty);
                let registry = &*registry;
                let backlog = || unsent() + channels_backlog(registry, s);
                if stream_buffered(f) + backlog() <= goal {
                    return Ok(PrecopyEnd::Converged);
                }
                // Only the link's backlog is in the way: let it drain with the guest running,
                // then sync and decide again.
                f.flush()?;
                if !drain(&backlog, goal, &rt)? {
                    return Ok(PrecopyEnd::Converged);
                }
                continue;
            }
            iterate_round(registry, s, f)?;
        }
        if let Some(e) = f.error() {
            return Err(e.into());
        }
        rate_limit(job, f, &mut pacing)?;
        if let Some(percent) = s.take_throttle_request() {
            job.vm.set_cpu_throttle(percent);
            RamCounters::set(&rt.ram.cpu_throttle_percentage, u64::from(percent));
        }
    }
}

/// Bytes in the main stream's buffer, not yet written to its channel.
fn stream_buffered(f: &QemuFileWriter) -> u64 {
    f.total_transferred() - f.total_flushed()
}

/// Σ [`LiveHandler::backlog`](crate::handler::LiveHandler::backlog) over the active live
/// handlers: what their own channels hold.
fn channels_backlog(registry: &Registry, s: &OutgoingSession) -> u64 {
    let caps = &s.settings().caps;
    registry.active_live(caps).map(|(_, h)| h.backlog()).sum()
}

/// Waits (5 ms steps, cancellable) until the sockets' backlog is at most `goal`: true; false
/// if it has not shrunk for a second (a stalled peer: switch over anyway, as without this
/// wait).
fn drain(
    unsent: &dyn Fn() -> u64,
    goal: u64,
    rt: &crate::runtime::Runtime,
) -> Result<bool, MigrationError> {
    let mut best = unsent();
    let mut since = Instant::now();
    while best > goal {
        if since.elapsed() >= Duration::from_secs(1) {
            return Ok(false);
        }
        rt.cancel_token().check()?;
        std::thread::sleep(Duration::from_millis(5));
        let now = unsent();
        if now < best {
            best = now;
            since = Instant::now();
        }
    }
    Ok(true)
}

/// Σ `pending` over the active live handlers.
fn pending(
    registry: &mut Registry,
    s: &mut OutgoingSession,
    threshold: u64,
) -> Result<u64, MigrationError> {
    let mut pending = 0;
    for (_, h) in registry.active_live_mut(s.settings().caps.clone()) {
        pending += h.pending(threshold, s)?;
    }
    Ok(pending)
}

/// One round of PART sections; stops at the first handler that is not finished (QEMU).
fn iterate_round(
    registry: &mut Registry,
    s: &mut OutgoingSession,
    f: &mut QemuFileWriter,
) -> Result<(), MigrationError> {
    for e in registry.entries_mut() {
        let EntryKind::Live(h) = &mut e.kind else {
            continue;
        };
        if !h.is_active(&s.settings().caps) {
            continue;
        }
        if f.is_rate_limited() {
            return Ok(());
        }
        SectionHeader::Part {
            section_id: e.section_id,
        }
        .write_to(f);
        let done = h.iterate(f, s)?;
        savevm::record::write_footer(f, e.section_id);
        if !done {
            break;
        }
    }
    Ok(())
}

/// Bytes sent so far on the main stream and the multifd channels (QEMU 7.2's
/// `migration_total_bytes`): with multifd the pages travel on the channels, so the bandwidth
/// and the switchover threshold must count them.
fn sent_bytes(f: &QemuFileWriter, ram: &RamCounters) -> u64 {
    f.total_transferred() + RamCounters::get(&ram.multifd_bytes)
}

/// Measures the window when it is over, and sleeps out the window when the budget is spent.
fn rate_limit(job: &Job, f: &mut QemuFileWriter, p: &mut Pacing) -> Result<(), MigrationError> {
    let rt = &job.runtime;
    let elapsed = p.window_start.elapsed();
    if elapsed >= WINDOW {
        let bytes = sent_bytes(f, &rt.ram) - p.bytes0;
        let pages = rt.ram.pages_sent() - p.pages0;
        let limits = rt.limits();
        let m = convergence::measure_window(bytes, pages, elapsed, limits.downtime_limit_ms);
        p.bandwidth = m.bandwidth;
        p.threshold = m.threshold;
        let remaining = RamCounters::get(&rt.ram.remaining);
        {
            let mut t = rt.timings();
            t.mbps = m.mbps;
            t.pages_per_second = m.pages_per_second;
            if let Some(d) = convergence::expected_downtime_ms(remaining, m.bandwidth) {
                t.expected_downtime = Some(d);
            }
        }
        tracing::debug!(mbps = m.mbps, threshold = m.threshold, remaining, "window");
        f.set_rate_limit(convergence::window_budget(limits.max_bandwidth));
        f.reset_rate_limit();
        p.window_start = Instant::now();
        p.bytes0 = sent_bytes(f, &rt.ram);
        p.pages0 = rt.ram.pages_sent();
    } else if f.is_rate_limited() {
        let end = p.window_start + WINDOW;
        while Instant::now() < end {
            rt.cancel_token().check()?;
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(10)));
        }
    }
    Ok(())
}
