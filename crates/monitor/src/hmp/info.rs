//! Text of `info migrate`, `info migrate_capabilities`, `info migrate_parameters` and
//! `info status`, line for line as QEMU 7.2 prints them (spec §6.8).
//!
//! Every function returns text with `\n` line ends; the connection turns them into `\r\n`.

use std::fmt::Write as _;

use migration::params::{ParamKind, PARAMS};
use migration::{Capabilities, MigrationInfo, MigrationParameters, MigrationStatus, RunState};
use serde_json::Value;

/// The fixed `globals:` block that starts `info migrate` (livemig always sends the global
/// state, the configuration record and section footers, like QEMU's defaults).
pub const GLOBALS: &str = "globals:\n\
store-global-state: on\n\
only-migratable: off\n\
send-configuration: on\n\
send-section-footer: on\n\
decompress-error-check: on\n\
clear-bitmap-shift: 18\n";

/// `info migrate`.
pub fn migrate(info: &MigrationInfo) -> String {
    let mut o = String::from(GLOBALS);
    // `write!` into a String cannot fail.
    if let Some(status) = info.status {
        let _ = write!(o, "Migration status: {status}");
        match (&info.error_desc, status) {
            (Some(desc), MigrationStatus::Failed) => {
                let _ = writeln!(o, " ({desc})");
            }
            _ => o.push('\n'),
        }
        let _ = writeln!(o, "total time: {} ms", info.total_time.unwrap_or(0));
        if let Some(v) = info.expected_downtime {
            let _ = writeln!(o, "expected downtime: {v} ms");
        }
        if let Some(v) = info.downtime {
            let _ = writeln!(o, "downtime: {v} ms");
        }
        if let Some(v) = info.setup_time {
            let _ = writeln!(o, "setup: {v} ms");
        }
    }
    if let Some(ram) = &info.ram {
        let _ = writeln!(o, "transferred ram: {} kbytes", ram.transferred >> 10);
        let _ = writeln!(o, "throughput: {:.2} mbps", ram.mbps);
        let _ = writeln!(o, "remaining ram: {} kbytes", ram.remaining >> 10);
        let _ = writeln!(o, "total ram: {} kbytes", ram.total >> 10);
        let _ = writeln!(o, "duplicate: {} pages", ram.duplicate);
        let _ = writeln!(o, "skipped: {} pages", ram.skipped);
        let _ = writeln!(o, "normal: {} pages", ram.normal);
        let _ = writeln!(o, "normal bytes: {} kbytes", ram.normal_bytes >> 10);
        let _ = writeln!(o, "dirty sync count: {}", ram.dirty_sync_count);
        let _ = writeln!(o, "page size: {} kbytes", ram.page_size >> 10);
        let _ = writeln!(o, "multifd bytes: {} kbytes", ram.multifd_bytes >> 10);
        let _ = writeln!(o, "pages-per-second: {}", ram.pages_per_second);
        if ram.dirty_pages_rate != 0 {
            let _ = writeln!(o, "dirty pages rate: {} pages", ram.dirty_pages_rate);
        }
        if ram.postcopy_requests != 0 {
            let _ = writeln!(o, "postcopy request count: {}", ram.postcopy_requests);
        }
        if ram.precopy_bytes != 0 {
            let _ = writeln!(o, "precopy ram: {} kbytes", ram.precopy_bytes >> 10);
        }
        if ram.downtime_bytes != 0 {
            let _ = writeln!(o, "downtime ram: {} kbytes", ram.downtime_bytes >> 10);
        }
        if ram.postcopy_bytes != 0 {
            let _ = writeln!(o, "postcopy ram: {} kbytes", ram.postcopy_bytes >> 10);
        }
        if ram.dirty_sync_missed_zero_copy != 0 {
            let _ = writeln!(
                o,
                "Zero-copy-send fallbacks happened: {} times",
                ram.dirty_sync_missed_zero_copy
            );
        }
    }
    if let Some(disk) = &info.disk {
        let _ = writeln!(o, "transferred disk: {} kbytes", disk.transferred >> 10);
        let _ = writeln!(o, "remaining disk: {} kbytes", disk.remaining >> 10);
        let _ = writeln!(o, "total disk: {} kbytes", disk.total >> 10);
    }
    if let Some(x) = &info.xbzrle_cache {
        let _ = writeln!(o, "cache size: {} bytes", x.cache_size);
        let _ = writeln!(o, "xbzrle transferred: {} kbytes", x.bytes >> 10);
        let _ = writeln!(o, "xbzrle pages: {} pages", x.pages);
        let _ = writeln!(o, "xbzrle cache miss: {} pages", x.cache_miss);
        let _ = writeln!(o, "xbzrle cache miss rate: {:.2}", x.cache_miss_rate);
        let _ = writeln!(o, "xbzrle encoding rate: {:.2}", x.encoding_rate);
        let _ = writeln!(o, "xbzrle overflow: {}", x.overflow);
    }
    if let Some(pct) = info.cpu_throttle_percentage {
        let _ = writeln!(o, "cpu throttle percentage: {pct}");
    }
    if info.awaiting_destination {
        o.push_str(
            "waiting for the destination to confirm it loaded the guest; migrate_cancel resumes \
             the guest here, and if the destination did load it, it may then run on both sides\n",
        );
    }
    if let Some(addrs) = &info.socket_address {
        o.push_str("socket address: [\n");
        for a in addrs {
            let _ = writeln!(o, "\t{}", socket_address_uri(a));
        }
        o.push_str("]\n");
    }
    o
}

/// A QAPI `SocketAddress` as QEMU's `SocketAddress_to_str` writes it.
pub fn socket_address_uri(a: &serde_json::Value) -> String {
    let s = |k: &str| match a.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    };
    match a.get("type").and_then(|t| t.as_str()) {
        Some("inet") => {
            let host = s("host");
            if host.contains(':') {
                format!("tcp:[{host}]:{}", s("port"))
            } else {
                format!("tcp:{host}:{}", s("port"))
            }
        }
        Some("unix") => format!("unix:{}", s("path")),
        Some("vsock") => format!("vsock:{}:{}", s("cid"), s("port")),
        Some("fd") => format!("fd:{}", s("str")),
        _ => a.to_string(),
    }
}

/// `info migrate_capabilities`: `<name>: on|off` for every capability, enum order.
pub fn migrate_capabilities(caps: &Capabilities) -> String {
    let mut o = String::new();
    for (c, on) in caps.list() {
        let _ = writeln!(o, "{c}: {}", on_off(on));
    }
    o
}

/// `info migrate_parameters`, in QEMU 7.2's order and formats.
pub fn migrate_parameters(params: &MigrationParameters) -> String {
    let mut o = String::new();
    for spec in PARAMS {
        let Some(unit) = spec.hmp_unit else {
            continue;
        };
        let name = spec.name;
        let _ = match (spec.value(params), spec.kind) {
            (Value::Bool(b), _) => writeln!(o, "{name}: {}", on_off(b)),
            (Value::String(s), ParamKind::Enum(_)) => writeln!(o, "{name}: {s}"),
            (Value::String(s), _) => writeln!(o, "{name}: '{s}'"),
            (v, _) => writeln!(o, "{name}: {v}{unit}"),
        };
    }
    o
}

/// `info status`.
pub fn status(state: RunState) -> String {
    if state.is_running() {
        "VM status: running\n".to_string()
    } else if state == RunState::Paused {
        "VM status: paused\n".to_string()
    } else {
        format!("VM status: paused ({state})\n")
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use migration::RamStats;
    use serde_json::json;

    /// The completed-migration block captured from QEMU 7.2.22 (spec §6.8).
    const CAPTURED_COMPLETED: &str = "Migration status: completed
total time: 8 ms
downtime: 1 ms
setup: 1 ms
transferred ram: 517 kbytes
throughput: 733.06 mbps
remaining ram: 0 kbytes
total ram: 33288 kbytes
duplicate: 8211 pages
skipped: 0 pages
normal: 111 pages
normal bytes: 444 kbytes
dirty sync count: 2
page size: 4 kbytes
multifd bytes: 0 kbytes
pages-per-second: 0
precopy ram: 517 kbytes
";

    /// The `query-migrate` reply captured at the same time (spec §6.3).
    pub(crate) fn captured_completed_info() -> MigrationInfo {
        MigrationInfo {
            status: Some(MigrationStatus::Completed),
            setup_time: Some(1),
            downtime: Some(1),
            total_time: Some(8),
            ram: Some(RamStats {
                total: 34086912,
                postcopy_requests: 0,
                dirty_sync_count: 2,
                multifd_bytes: 0,
                pages_per_second: 0,
                downtime_bytes: 0,
                page_size: 4096,
                remaining: 0,
                postcopy_bytes: 0,
                mbps: 733.056,
                transferred: 529535,
                dirty_sync_missed_zero_copy: 0,
                precopy_bytes: 529535,
                duplicate: 8211,
                dirty_pages_rate: 0,
                skipped: 0,
                normal_bytes: 454656,
                normal: 111,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn info_migrate_completed_matches_qemu_capture() {
        let text = migrate(&captured_completed_info());
        assert_eq!(text, format!("{GLOBALS}{CAPTURED_COMPLETED}"));
    }

    #[test]
    fn info_migrate_other_states() {
        assert_eq!(migrate(&MigrationInfo::default()), GLOBALS);
        let failed = MigrationInfo {
            status: Some(MigrationStatus::Failed),
            error_desc: Some("Parameter 'uri' expects a valid migration protocol".into()),
            ..Default::default()
        };
        assert_eq!(
            migrate(&failed),
            format!(
                "{GLOBALS}Migration status: failed (Parameter 'uri' expects a valid migration \
                 protocol)\ntotal time: 0 ms\n"
            )
        );
        let listening = MigrationInfo {
            socket_address: Some(vec![
                json!({"port": "41811", "ipv4": true, "host": "127.0.0.1", "type": "inet"}),
                json!({"type": "unix", "path": "/tmp/m.sock"}),
            ]),
            ..Default::default()
        };
        assert_eq!(
            migrate(&listening),
            format!("{GLOBALS}socket address: [\n\ttcp:127.0.0.1:41811\n\tunix:/tmp/m.sock\n]\n")
        );
        let active = MigrationInfo {
            status: Some(MigrationStatus::Active),
            expected_downtime: Some(300),
            total_time: Some(1500),
            setup_time: Some(0),
            ram: Some(RamStats {
                dirty_pages_rate: 12,
                remaining: 4096,
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = migrate(&active);
        assert!(
            t.contains("\nexpected downtime: 300 ms\nsetup: 0 ms\n"),
            "{t}"
        );
        assert!(t.contains("\ndirty pages rate: 12 pages\n"), "{t}");
        assert!(t.contains("\nremaining ram: 4 kbytes\n"), "{t}");
        assert!(!t.contains("precopy ram"), "{t}");
    }

    #[test]
    fn info_migrate_parameters_default_text() {
        let p = MigrationParameters {
            max_bandwidth: 134217728,
            ..Default::default()
        };
        let expected = "announce-initial: 50 ms
announce-max: 550 ms
announce-rounds: 5
announce-step: 100 ms
compress-level: 1
compress-threads: 8
compress-wait-thread: on
decompress-threads: 2
throttle-trigger-threshold: 50
cpu-throttle-initial: 20
cpu-throttle-increment: 10
cpu-throttle-tailslow: off
max-cpu-throttle: 99
tls-creds: ''
tls-hostname: ''
max-bandwidth: 134217728 bytes/second
downtime-limit: 300 ms
x-checkpoint-delay: 20000 ms
block-incremental: off
multifd-channels: 2
multifd-compression: none
xbzrle-cache-size: 67108864 bytes
max-postcopy-bandwidth: 0
tls-authz: ''
";
        assert_eq!(migrate_parameters(&p), expected);
    }

    #[test]
    fn info_capabilities_lists_ram_verify() {
        let mut caps = Capabilities::default();
        caps.set(migration::Capability::Events, true);
        let t = migrate_capabilities(&caps);
        // Only what livemig implements, in QEMU's order, the extension last.
        assert!(t.starts_with("xbzrle: off\nauto-converge: off\n"), "{t}");
        assert!(t.contains("\nevents: on\n"));
        assert!(t.contains("\npostcopy-ram: off\n"), "{t}");
        assert!(!t.contains("postcopy-preempt"), "{t}");
        assert!(t.ends_with("\nram-verify: off\n"), "{t}");
        assert_eq!(
            t.lines().count(),
            migration::Capability::supported().count()
        );
    }

    #[test]
    fn info_status_variants() {
        assert_eq!(status(RunState::Running), "VM status: running\n");
        assert_eq!(status(RunState::Paused), "VM status: paused\n");
        assert_eq!(
            status(RunState::Postmigrate),
            "VM status: paused (postmigrate)\n"
        );
        assert_eq!(
            status(RunState::Inmigrate),
            "VM status: paused (inmigrate)\n"
        );
        assert_eq!(
            status(RunState::Prelaunch),
            "VM status: paused (prelaunch)\n"
        );
        assert_eq!(
            status(RunState::FinishMigrate),
            "VM status: paused (finish-migrate)\n"
        );
    }
}
