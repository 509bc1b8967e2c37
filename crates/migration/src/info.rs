//! `query-migrate` data: [`RamStats`] (QEMU's `MigrationStats`), [`DiskStats`] and
//! [`MigrationInfo`]. Field names serialize exactly as QEMU's QAPI members (kebab-case).

use serde::Serialize;

use crate::capabilities::Capability;
use crate::counters::RamCounters;
use crate::runtime::Runtime;
use crate::status::MigrationStatus;

/// RAM transfer statistics, QEMU's `MigrationStats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RamStats {
    /// RAM bytes put on the wire, record headers and EOS markers included.
    pub transferred: u64,
    /// Dirty pages still to send × page size.
    pub remaining: u64,
    /// Total guest RAM.
    pub total: u64,
    /// Zero pages sent.
    pub duplicate: u64,
    /// Always 0 (legacy).
    pub skipped: u64,
    /// Full pages sent.
    pub normal: u64,
    /// `normal` × page size.
    pub normal_bytes: u64,
    /// Pages dirtied per second over the last ≥1 s period.
    pub dirty_pages_rate: u64,
    /// Throughput in megabits per second.
    pub mbps: f64,
    /// Number of dirty bitmap syncs (passes).
    pub dirty_sync_count: u64,
    /// Post-copy page requests served.
    pub postcopy_requests: u64,
    /// Target page size.
    pub page_size: u64,
    /// Bytes on multifd channels (always 0).
    pub multifd_bytes: u64,
    /// Pages sent per second in the last window.
    pub pages_per_second: u64,
    /// RAM bytes sent while the guest ran.
    pub precopy_bytes: u64,
    /// RAM bytes sent while the guest was stopped.
    pub downtime_bytes: u64,
    /// RAM bytes sent after the switch to post-copy.
    pub postcopy_bytes: u64,
    /// Zero-copy fallbacks (always 0).
    pub dirty_sync_missed_zero_copy: u64,
}

/// XBZRLE cache statistics, QEMU's `XBZRLECacheStats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct XbzrleCacheStats {
    /// Cache size in bytes.
    pub cache_size: u64,
    /// Bytes of XBZRLE records.
    pub bytes: u64,
    /// Cache hits.
    pub pages: u64,
    /// Cache misses.
    pub cache_miss: u64,
    /// Misses per page looked up.
    pub cache_miss_rate: f64,
    /// Page bytes encoded per byte sent.
    pub encoding_rate: f64,
    /// Deltas that did not fit.
    pub overflow: u64,
}

pub use crate::counters::DiskStats;

/// The reply of `query-migrate`; members are present only when QEMU would show them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    /// Current status; absent when no migration ever ran (or a destination only listens).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_status")]
    pub status: Option<MigrationStatus>,
    /// RAM statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram: Option<RamStats>,
    /// XBZRLE statistics, with the `xbzrle` capability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xbzrle_cache: Option<XbzrleCacheStats>,
    /// Disk statistics while block migration runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskStats>,
    /// Total time in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_time: Option<u64>,
    /// Expected downtime in ms (active states).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_downtime: Option<u64>,
    /// Actual downtime in ms (completed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime: Option<u64>,
    /// Setup time in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_time: Option<u64>,
    /// vCPU throttle in percent while auto-converge throttles the guest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_percentage: Option<u64>,
    /// Error text of a failed migration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_desc: Option<String>,
    /// Addresses a destination listens on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_address: Option<Vec<serde_json::Value>>,
    /// livemig extension, destination in postcopy: page-request latency (fault read → page
    /// placed), once a request was timed. QEMU clients ignore members they do not know.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_postcopy_latency: Option<crate::latency::LatencySummary>,
    /// livemig (HMP only, not in QMP): the source sent everything and waits for the
    /// destination's verdict on the return path; the guest runs on neither side.
    #[serde(skip)]
    pub awaiting_destination: bool,
}

fn ser_status<S: serde::Serializer>(
    s: &Option<MigrationStatus>,
    ser: S,
) -> Result<S::Ok, S::Error> {
    match s {
        Some(st) => ser.serialize_str(st.as_str()),
        None => ser.serialize_none(),
    }
}

impl MigrationInfo {
    /// The reply as a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// What [`build`] reads from the VM's migration state.
pub(crate) struct Snapshot<'a> {
    pub status: MigrationStatus,
    pub incoming: bool,
    pub error: Option<&'a str>,
    pub socket_address: Option<&'a Vec<serde_json::Value>>,
    pub runtime: Option<&'a Runtime>,
}

/// The `query-migrate` reply for a state and the runtime of its current or last migration.
pub(crate) fn build(s: Snapshot<'_>) -> MigrationInfo {
    let status = s.status;
    let mut info = MigrationInfo {
        socket_address: s.socket_address.cloned(),
        ..Default::default()
    };
    // A destination that only listens shows its address and no status (QEMU).
    if status == MigrationStatus::None || (s.incoming && status == MigrationStatus::Setup) {
        return info;
    }
    info.status = Some(status);
    // livemig also says why a postcopy is paused (QEMU 7.2 only logs it).
    if matches!(
        status,
        MigrationStatus::Failed | MigrationStatus::PostcopyPaused
    ) {
        info.error_desc = s.error.map(str::to_string);
    }
    // A destination reports its status only (QEMU's `fill_destination_migration_info`);
    // livemig adds the error text of a failed load and its postcopy request latency.
    if s.incoming {
        info.x_postcopy_latency = s.runtime.and_then(|rt| rt.ram.postcopy_latency.summary());
        return info;
    }
    let Some(rt) = s.runtime.filter(|_| status.has_ram_stats()) else {
        return info;
    };
    let completed = status == MigrationStatus::Completed;
    info.awaiting_destination = rt.awaiting_destination();
    {
        let t = rt.timings();
        let now_ms = t.elapsed_ms();
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
                    .unwrap_or_else(|| rt.settings().params.downtime_limit_ms()),
            );
        }
        info.ram = Some(ram_stats(&rt.ram, completed, t.mbps, t.pages_per_second));
    }
    // Block migration: only while it runs, never after completion (QEMU).
    if !completed {
        info.disk = rt.disk.stats();
    }
    let throttle = RamCounters::get(&rt.ram.cpu_throttle_percentage);
    if throttle > 0 && status.is_running() {
        info.cpu_throttle_percentage = Some(throttle);
    }
    if rt.settings().has(Capability::Xbzrle) {
        info.xbzrle_cache = Some(xbzrle_stats(&rt.ram));
    }
    info
}

fn ram_stats(r: &RamCounters, completed: bool, mbps: f64, pages_per_second: u64) -> RamStats {
    let g = RamCounters::get;
    let normal = g(&r.normal);
    let page = savevm::ram::TARGET_PAGE_SIZE as u64;
    RamStats {
        transferred: g(&r.transferred),
        remaining: if completed { 0 } else { g(&r.remaining) },
        total: g(&r.total),
        duplicate: g(&r.duplicate),
        normal,
        normal_bytes: normal * page,
        dirty_pages_rate: if completed { 0 } else { g(&r.dirty_pages_rate) },
        mbps,
        dirty_sync_count: g(&r.dirty_sync_count),
        page_size: page,
        pages_per_second,
        precopy_bytes: g(&r.precopy_bytes),
        downtime_bytes: g(&r.downtime_bytes),
        postcopy_bytes: g(&r.postcopy_bytes),
        postcopy_requests: g(&r.postcopy_requests),
        multifd_bytes: g(&r.multifd_bytes),
        dirty_sync_missed_zero_copy: g(&r.dirty_sync_missed_zero_copy),
        ..Default::default()
    }
}

fn xbzrle_stats(r: &RamCounters) -> XbzrleCacheStats {
    let g = RamCounters::get;
    let (pages, miss, bytes) = (
        g(&r.xbzrle_pages),
        g(&r.xbzrle_cache_miss),
        g(&r.xbzrle_bytes),
    );
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    XbzrleCacheStats {
        cache_size: g(&r.xbzrle_cache_size),
        bytes,
        pages,
        cache_miss: miss,
        cache_miss_rate: ratio(miss, pages + miss),
        encoding_rate: ratio(g(&r.xbzrle_unencoded), bytes),
        overflow: g(&r.xbzrle_overflow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_with_qemu_member_names() {
        let info = MigrationInfo {
            status: Some(MigrationStatus::Completed),
            ram: Some(RamStats {
                normal_bytes: 4096,
                page_size: 4096,
                ..Default::default()
            }),
            setup_time: Some(1),
            ..Default::default()
        };
        let v = info.to_json();
        assert_eq!(v["status"], "completed");
        assert_eq!(v["ram"]["normal-bytes"], 4096);
        assert_eq!(v["setup-time"], 1);
        assert!(v.get("downtime").is_none());
        assert_eq!(MigrationInfo::default().to_json(), serde_json::json!({}));
    }
}
