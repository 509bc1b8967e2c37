//! [`MigrationState`]: what a VM knows about its migrations, shared between the migration
//! thread, the monitors and the VMM.
//!
//! The state is behind one short-held mutex (never held across I/O); RAM counters are atomics
//! the migration thread updates without taking it. Every status change goes through
//! [`MigrationState::set_status`], which checks the transition and emits the `MIGRATION` event.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use transport::{ChannelReader, ChannelWriter, ShutdownHandle};

use crate::capabilities::{Capabilities, Capability};
use crate::events::{Event, EventBus};
use crate::info::{MigrationInfo, RamStats, XbzrleCacheStats};
use crate::params::MigrationParameters;
use crate::status::MigrationStatus;

/// RAM counters updated by the migration thread (relaxed atomics: statistics only).
#[derive(Debug, Default)]
pub struct RamCounters {
    /// Bytes of RAM records written.
    pub transferred: AtomicU64,
    /// Zero pages sent.
    pub duplicate: AtomicU64,
    /// Full pages sent.
    pub normal: AtomicU64,
    /// Dirty pages left × page size.
    pub remaining: AtomicU64,
    /// Total RAM bytes.
    pub total: AtomicU64,
    /// Bitmap syncs.
    pub dirty_sync_count: AtomicU64,
    /// Dirty pages per second in the last ≥1 s period.
    pub dirty_pages_rate: AtomicU64,
    /// Bytes sent while the guest ran.
    pub precopy_bytes: AtomicU64,
    /// Bytes sent while the guest was stopped.
    pub downtime_bytes: AtomicU64,
    /// XBZRLE: cache size in bytes (0 when XBZRLE is off).
    pub xbzrle_cache_size: AtomicU64,
    /// XBZRLE: bytes of delta records.
    pub xbzrle_bytes: AtomicU64,
    /// XBZRLE: cache hits.
    pub xbzrle_pages: AtomicU64,
    /// XBZRLE: cache misses.
    pub xbzrle_cache_miss: AtomicU64,
    /// XBZRLE: deltas that overflowed.
    pub xbzrle_overflow: AtomicU64,
    /// XBZRLE: page bytes sent as deltas.
    pub xbzrle_unencoded: AtomicU64,
    /// Auto-converge: the vCPU throttle in percent (0 = not throttling).
    pub cpu_throttle_percentage: AtomicU64,
    /// Bytes written on multifd channels.
    pub multifd_bytes: AtomicU64,
}

impl RamCounters {
    fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }

    /// Adds `n` to a counter.
    pub fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets a counter.
    pub fn set(a: &AtomicU64, n: u64) {
        a.store(n, Ordering::Relaxed);
    }

    /// Resets every counter for a new migration.
    pub fn reset(&self) {
        for a in [
            &self.transferred,
            &self.duplicate,
            &self.normal,
            &self.remaining,
            &self.total,
            &self.dirty_sync_count,
            &self.dirty_pages_rate,
            &self.precopy_bytes,
            &self.downtime_bytes,
            &self.xbzrle_cache_size,
            &self.xbzrle_bytes,
            &self.xbzrle_pages,
            &self.xbzrle_cache_miss,
            &self.xbzrle_overflow,
            &self.xbzrle_unencoded,
            &self.cpu_throttle_percentage,
            &self.multifd_bytes,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

/// Timing and rate figures of the current or last migration.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// When `migrate` was accepted.
    pub start: Option<Instant>,
    /// Setup time in ms.
    pub setup_time: Option<u64>,
    /// Total time in ms (set at the end).
    pub total_time: Option<u64>,
    /// Downtime in ms (set at completion).
    pub downtime: Option<u64>,
    /// Expected downtime in ms.
    pub expected_downtime: Option<u64>,
    /// Last measured throughput.
    pub mbps: f64,
    /// Last measured pages per second.
    pub pages_per_second: u64,
}

/// The mutable part of [`MigrationState`].
#[derive(Debug, Default)]
pub struct StateInner {
    /// Current status.
    pub status: MigrationStatus,
    /// Parameters.
    pub params: MigrationParameters,
    /// Capabilities.
    pub caps: Capabilities,
    /// Error of the last failed migration.
    pub error: Option<String>,
    /// Timing figures.
    pub timings: Timings,
    /// Addresses an incoming migration listens on (`socket-address`).
    pub socket_address: Option<Vec<serde_json::Value>>,
    /// True for a destination (status events always include `setup`).
    pub incoming: bool,
}

/// Migration state of one VM.
pub struct MigrationState {
    inner: Mutex<StateInner>,
    /// RAM counters.
    pub ram: Arc<RamCounters>,
    /// Block-migration counters (the `disk` member of `query-migrate`).
    pub disk: Arc<crate::block::DiskCounters>,
    /// Set by `migrate_cancel`; polled by the migration thread.
    cancel: AtomicBool,
    /// Multifd channels opened for the current migration, until the RAM handler takes them:
    /// writers on the source, readers on the destination.
    pub multifd_channels: Mutex<(Vec<ChannelWriter>, Vec<ChannelReader>)>,
    /// Shutdown handles of the multifd channels, for `migrate_cancel`.
    cancel_handles: Mutex<Vec<ShutdownHandle>>,
    events: Arc<EventBus>,
}

impl std::fmt::Debug for MigrationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationState")
            .field("inner", &*self.lock())
            .field("ram", &self.ram)
            .field("cancel", &self.cancel)
            .finish_non_exhaustive()
    }
}

impl MigrationState {
    /// A fresh state emitting events on `events`.
    pub fn new(events: Arc<EventBus>) -> Self {
        Self {
            inner: Mutex::new(StateInner::default()),
            ram: Arc::new(RamCounters::default()),
            disk: Arc::default(),
            cancel: AtomicBool::new(false),
            multifd_channels: Mutex::new((Vec::new(), Vec::new())),
            cancel_handles: Mutex::new(Vec::new()),
            events,
        }
    }

    /// Locks the state.
    pub fn lock(&self) -> MutexGuard<'_, StateInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The event bus.
    pub fn events(&self) -> &Arc<EventBus> {
        &self.events
    }

    /// Current status.
    pub fn status(&self) -> MigrationStatus {
        self.lock().status
    }

    /// Moves from `from` to `to` if the current status is `from` and the move is legal;
    /// emits `MIGRATION` (with the `events` capability, or always for a destination's setup).
    pub fn set_status(&self, from: MigrationStatus, to: MigrationStatus) -> bool {
        let emit = {
            let mut s = self.lock();
            if s.status != from || !from.can_transition_to(to) {
                return false;
            }
            s.status = to;
            s.caps.get(Capability::Events) || (s.incoming && to == MigrationStatus::Setup)
        };
        if emit {
            self.events.emit(Event::Migration { status: to });
        }
        true
    }

    /// Moves to `to` from whatever running status the migration is in.
    pub fn set_status_from_any(&self, to: MigrationStatus) -> bool {
        let from = self.status();
        self.set_status(from, to)
    }

    /// Requests cancellation; interrupts the multifd channels' I/O.
    pub fn request_cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        for h in self
            .cancel_handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            h.shutdown();
        }
    }

    /// Remembers (or, with an empty list, forgets) the extra channels `migrate_cancel` must
    /// interrupt.
    pub fn set_cancel_handles(&self, handles: Vec<ShutdownHandle>) {
        *self
            .cancel_handles
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = handles;
    }

    /// Clears a cancel request (at the start of a migration).
    pub fn clear_cancel(&self) {
        self.cancel.store(false, Ordering::SeqCst);
    }

    /// True once `migrate_cancel` was requested.
    pub fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Emits `MIGRATION_PASS` if the `events` capability is on.
    pub fn emit_pass(&self, pass: u64) {
        if self.lock().caps.get(Capability::Events) {
            self.events.emit(Event::MigrationPass { pass });
        }
    }

    /// The `query-migrate` reply.
    pub fn info(&self) -> MigrationInfo {
        let s = self.lock();
        let status = s.status;
        let mut info = MigrationInfo {
            socket_address: s.socket_address.clone(),
            ..Default::default()
        };
        // A destination that only listens shows its address and no status (QEMU).
        if status == MigrationStatus::None || (s.incoming && status == MigrationStatus::Setup) {
            return info;
        }
        info.status = Some(status);
        if status == MigrationStatus::Failed {
            info.error_desc = s.error.clone();
        }
        if !status.has_ram_stats() {
            return info;
        }
        let t = &s.timings;
        let now_ms = t
            .start
            .map(|st| st.elapsed().as_millis() as u64)
            .unwrap_or(0);
        let completed = status == MigrationStatus::Completed;
        info.total_time = Some(if completed {
            t.total_time.unwrap_or(now_ms)
        } else {
            now_ms
        });
        info.setup_time = Some(t.setup_time.unwrap_or(0));
        if completed {
            info.downtime = t.downtime;
        } else {
            info.expected_downtime = Some(
                t.expected_downtime
                    .unwrap_or_else(|| s.params.downtime_limit_ms()),
            );
        }
        let r = &self.ram;
        let g = RamCounters::get;
        let normal = g(&r.normal);
        info.ram = Some(RamStats {
            transferred: g(&r.transferred),
            remaining: if completed { 0 } else { g(&r.remaining) },
            total: g(&r.total),
            duplicate: g(&r.duplicate),
            normal,
            normal_bytes: normal * savevm::ram::TARGET_PAGE_SIZE as u64,
            dirty_pages_rate: if completed { 0 } else { g(&r.dirty_pages_rate) },
            mbps: t.mbps,
            dirty_sync_count: g(&r.dirty_sync_count),
            page_size: savevm::ram::TARGET_PAGE_SIZE as u64,
            pages_per_second: t.pages_per_second,
            precopy_bytes: g(&r.precopy_bytes),
            downtime_bytes: g(&r.downtime_bytes),
            multifd_bytes: g(&r.multifd_bytes),
            ..Default::default()
        });
        // Block migration: only while it runs, never after completion (QEMU).
        if !completed {
            info.disk = self.disk.stats();
        }
        let throttle = g(&r.cpu_throttle_percentage);
        if throttle > 0 && status.is_running() {
            info.cpu_throttle_percentage = Some(throttle);
        }
        if s.caps.get(Capability::Xbzrle) {
            let (pages, miss, bytes) = (
                g(&r.xbzrle_pages),
                g(&r.xbzrle_cache_miss),
                g(&r.xbzrle_bytes),
            );
            let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            info.xbzrle_cache = Some(XbzrleCacheStats {
                cache_size: g(&r.xbzrle_cache_size),
                bytes,
                pages,
                cache_miss: miss,
                cache_miss_rate: ratio(miss, pages + miss),
                encoding_rate: ratio(g(&r.xbzrle_unencoded), bytes),
                overflow: g(&r.xbzrle_overflow),
            });
        }
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_destination_shows_only_its_address() {
        let events = Arc::new(EventBus::new());
        let rx = events.subscribe();
        let state = MigrationState::new(events);
        assert_eq!(state.info().to_json(), serde_json::json!({}));
        {
            let mut s = state.lock();
            s.incoming = true;
            s.socket_address = Some(vec![serde_json::json!({"type": "inet", "port": "4444"})]);
        }
        assert!(state.set_status(MigrationStatus::None, MigrationStatus::Setup));
        // The destination's `setup` event is sent even without the events capability.
        assert!(matches!(
            rx.try_recv().map(|e| e.event),
            Ok(Event::Migration { .. })
        ));
        let v = state.info().to_json();
        assert!(v.get("status").is_none(), "{v}");
        assert_eq!(v["socket-address"][0]["port"], "4444");
        assert!(state.set_status(MigrationStatus::Setup, MigrationStatus::Active));
        assert_eq!(state.info().to_json()["status"], "active");
        // Without the capability later changes emit nothing.
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn illegal_transitions_are_refused() {
        let state = MigrationState::new(Arc::new(EventBus::new()));
        assert!(!state.set_status(MigrationStatus::None, MigrationStatus::Completed));
        assert!(state.set_status(MigrationStatus::None, MigrationStatus::Setup));
        assert!(!state.set_status(MigrationStatus::Active, MigrationStatus::Completed));
        assert_eq!(state.status(), MigrationStatus::Setup);
    }
}
