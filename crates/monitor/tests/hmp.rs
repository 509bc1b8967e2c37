//! HMP over a unix socket against the mock backend.

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use common::TestServer;
use migration::{Capability, MigrationInfo, MigrationStatus, RamStats, RunState};
use monitor::{send_with_fd, Protocol};

fn hmp() -> (TestServer, common::Raw) {
    let srv = TestServer::start(Protocol::Hmp);
    let mut c = srv.connect();
    let banner = c.line();
    assert_eq!(
        banner,
        format!(
            "livemig {} monitor - type 'help' for more information",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(c.until_prompt(), "");
    (srv, c)
}

#[test]
fn help_is_generated_from_the_table() {
    let (_srv, mut c) = hmp();
    let all = c.hmp("help");
    assert!(all.ends_with("\r\n"));
    let lines: Vec<&str> = all.trim_end().split("\r\n").collect();
    assert!(lines.contains(&"migrate [-d] [-b] [-i] [-r] uri -- migrate to URI (-d: do not wait for completion; -b: with full copy of the disks; -i: incremental disk copy; -r: resume a paused post-copy migration)"));
    assert!(lines.contains(&"migrate_set_parameter parameter value -- set a migration parameter"));
    assert!(lines.contains(&"info [subcommand] -- show various information about the system state"));
    assert_eq!(c.hmp("help stop"), "stop|s  -- stop emulation\r\n");
    assert_eq!(
        c.hmp("help info status"),
        "info status  -- show the current VM status (running|paused)\r\n"
    );
    let info = c.hmp("info");
    assert!(
        info.contains("info migrate_parameters  -- show current migration parameters\r\n"),
        "{info}"
    );
    assert_eq!(c.hmp("? nosuch"), "unknown command: 'nosuch'\r\n");
}

#[test]
fn unknown_commands_and_parse_errors() {
    let (_srv, mut c) = hmp();
    assert_eq!(c.hmp("nosuch arg"), "unknown command: 'nosuch'\r\n");
    assert_eq!(c.hmp("info nosuch"), "unknown command: 'info nosuch'\r\n");
    assert_eq!(c.hmp(""), "");
    assert_eq!(
        c.hmp("migrate"),
        "migrate: string expected\r\nTry \"help migrate\" for more information\r\n"
    );
    assert_eq!(
        c.hmp("stop now"),
        "stop: extraneous characters at the end of line\r\nTry \"help stop\" for more information\r\n"
    );
    assert_eq!(
        c.hmp("migrate_set_capability events maybe"),
        "Expected 'on' or 'off'\r\nTry \"help migrate_set_capability\" for more information\r\n"
    );
    assert_eq!(
        c.hmp("info status extra"),
        "status: extraneous characters at the end of line\r\nTry \"help info status\" for more information\r\n"
    );
}

#[test]
fn migrate_flags_follow_declaration_order() {
    let (srv, mut c) = hmp();
    assert_eq!(
        c.hmp("migrate -b -d tcp:127.0.0.1:4444"),
        "migrate: unsupported option -d\r\nTry \"help migrate\" for more information\r\n"
    );
    assert!(srv.backend.state().migrations.is_empty());
    assert_eq!(c.hmp("migrate -d -b tcp:127.0.0.1:4444"), "");
    let s = srv.backend.state();
    assert_eq!(s.migrations[0].uri, "tcp:127.0.0.1:4444");
    assert!(s.migrations[0].opts.detach && s.migrations[0].opts.blk && !s.migrations[0].opts.inc);
}

#[test]
fn migrate_without_detach_waits_for_the_end() {
    let (srv, mut c) = hmp();
    srv.backend.script(2, None);
    assert_eq!(c.hmp("migrate exec:cat>/dev/null"), "");
    assert_eq!(srv.backend.state().status, MigrationStatus::Completed);
    assert_eq!(c.hmp("info status"), "VM status: paused (postmigrate)\r\n");

    srv.backend
        .script(1, Some("Unable to write to socket: Broken pipe"));
    assert_eq!(
        c.hmp("migrate tcp:127.0.0.1:1"),
        "Error: Unable to write to socket: Broken pipe\r\n"
    );
    // A refused migrate prints the backend's error.
    assert_eq!(
        c.hmp("migrate bogus:x"),
        "Error: Parameter 'uri' expects a valid migration protocol\r\n"
    );
    let info = c.hmp("info migrate");
    assert!(info.ends_with(
        "Migration status: failed (Parameter 'uri' expects a valid migration protocol)\r\ntotal time: 0 ms\r\n"
    ), "{info}");
}

#[test]
fn second_migrate_and_cancel() {
    let (srv, mut c) = hmp();
    assert_eq!(c.hmp("migrate -d tcp:127.0.0.1:1"), "");
    assert_eq!(
        c.hmp("migrate -d tcp:127.0.0.1:2"),
        "Error: There's a migration process in progress\r\n"
    );
    assert_eq!(c.hmp("migrate_cancel"), "");
    assert_eq!(srv.backend.state().status, MigrationStatus::Cancelled);
    assert_eq!(c.hmp("migrate_incoming tcp:127.0.0.1:0"), "");
    assert_eq!(
        srv.backend.state().incoming,
        vec!["tcp:127.0.0.1:0".to_string()]
    );
    assert_eq!(
        c.hmp("migrate_incoming tcp:127.0.0.1:0"),
        "Error: The incoming migration has already been started\r\n"
    );
}

#[test]
fn info_migrate_matches_the_qemu_capture() {
    let (srv, mut c) = hmp();
    srv.backend.state().info_override = Some(MigrationInfo {
        status: Some(MigrationStatus::Completed),
        setup_time: Some(1),
        downtime: Some(1),
        total_time: Some(8),
        ram: Some(RamStats {
            total: 34086912,
            dirty_sync_count: 2,
            page_size: 4096,
            mbps: 733.056,
            transferred: 529535,
            precopy_bytes: 529535,
            duplicate: 8211,
            normal_bytes: 454656,
            normal: 111,
            ..Default::default()
        }),
        ..Default::default()
    });
    let expected = "globals:
store-global-state: on
only-migratable: off
send-configuration: on
send-section-footer: on
decompress-error-check: on
clear-bitmap-shift: 18
Migration status: completed
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
    assert_eq!(c.hmp("info migrate"), expected.replace('\n', "\r\n"));
}

#[test]
fn parameters_and_capabilities() {
    let (srv, mut c) = hmp();
    assert_eq!(c.hmp("migrate_set_parameter max-bandwidth 32"), "");
    assert_eq!(srv.backend.state().params.max_bandwidth(), 32 << 20);
    assert_eq!(c.hmp("migrate_set_parameter max-bandwidth 10k"), "");
    assert_eq!(srv.backend.state().params.max_bandwidth(), 10240);
    assert_eq!(c.hmp("migrate_set_parameter downtime-limit 500"), "");
    assert_eq!(c.hmp("migrate_set_parameter xbzrle-cache-size 128M"), "");
    assert_eq!(c.hmp("migrate_set_parameter block-incremental yes"), "");
    assert_eq!(
        c.hmp("migrate_set_parameter bogus 1"),
        "Error: invalid parameter value: bogus\r\n"
    );
    assert_eq!(
        c.hmp("migrate_set_parameter downtime-limit 3000000"),
        "Error: Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms\r\n"
    );
    let p = c.hmp("info migrate_parameters");
    assert!(
        p.contains("\r\nmax-bandwidth: 10240 bytes/second\r\ndowntime-limit: 500 ms\r\n"),
        "{p}"
    );
    assert!(p.contains("\r\nblock-incremental: on\r\n"), "{p}");
    assert!(
        p.contains("\r\nxbzrle-cache-size: 134217728 bytes\r\n"),
        "{p}"
    );
    assert!(
        p.starts_with("announce-initial: 50 ms\r\n") && p.ends_with("tls-authz: ''\r\n"),
        "{p}"
    );
    assert!(!p.contains("multifd-zlib-level"));

    assert_eq!(c.hmp("migrate_set_capability events on"), "");
    assert_eq!(c.hmp("migrate_set_capability ram-verify on"), "");
    assert!(srv.backend.state().caps.get(Capability::Events));
    assert_eq!(
        c.hmp("migrate_set_capability bogus on"),
        "Error: invalid parameter value: bogus\r\n"
    );
    assert_eq!(
        c.hmp("migrate_set_capability x-colo on"),
        "Error: Capability 'x-colo' is not supported by livemig\r\n"
    );
    assert_eq!(
        c.hmp("migrate_start_postcopy"),
        "Error: Enable postcopy with migrate_set_capability before the start of migration\r\n"
    );
    assert_eq!(c.hmp("migrate_set_capability postcopy-ram on"), "");
    assert_eq!(
        c.hmp("migrate_start_postcopy"),
        "Error: Postcopy must be started after migration has been started\r\n"
    );
    assert_eq!(c.hmp("migrate_set_capability postcopy-ram off"), "");
    let caps = c.hmp("info migrate_capabilities");
    assert!(caps.starts_with("xbzrle: off\r\n"));
    assert!(caps.contains("\r\nevents: on\r\n"));
    assert!(caps.ends_with("\r\nram-verify: on\r\n"));
}

#[test]
fn status_stop_cont() {
    let (srv, mut c) = hmp();
    assert_eq!(c.hmp("info status"), "VM status: running\r\n");
    assert_eq!(c.hmp("stop"), "");
    assert_eq!(c.hmp("info status"), "VM status: paused\r\n");
    assert_eq!(c.hmp("c"), "");
    assert_eq!(srv.backend.state().run_state, RunState::Running);
    srv.backend.state().run_state = RunState::Inmigrate;
    assert_eq!(c.hmp("info status"), "VM status: paused (inmigrate)\r\n");
    assert_eq!(
        c.hmp("cont"),
        "Error: Migration is not finalized yet; the VM cannot be resumed\r\n"
    );
}

#[test]
fn getfd_over_hmp_and_quit() {
    let (srv, mut c) = hmp();
    let (_a, b) = UnixStream::pair().unwrap();
    assert_eq!(
        c.hmp("getfd mig"),
        "Error: No file descriptor supplied via SCM_RIGHTS\r\n"
    );
    send_with_fd(&c.stream, b"getfd mig\n", b.as_fd()).unwrap();
    assert_eq!(c.until_prompt(), "");
    assert_eq!(c.hmp("migrate -d fd:mig"), "");
    assert!(srv.backend.state().migrations[0].fd.is_some());
    assert_eq!(
        c.hmp("closefd mig"),
        "Error: File descriptor named 'mig' not found\r\n"
    );
    c.send("quit\n");
    assert!(c.closed());
    assert_eq!(c.buffered(), "");
    assert_eq!(srv.backend.state().quits, 1);
}

#[test]
fn overlong_line_disconnects_and_server_survives() {
    let (srv, mut c) = hmp();
    let _ = std::io::Write::write_all(&mut c.stream, "x".repeat((1 << 20) + 100).as_bytes());
    assert!(c.closed());
    assert!(c.buffered().contains("Error: input line too long"));
    let mut again = srv.connect();
    again.line();
    again.until_prompt();
    assert_eq!(again.hmp("info status"), "VM status: running\r\n");
}

#[test]
fn client_leaving_during_synchronous_migrate_ends_its_session() {
    let (srv, mut c) = hmp();
    // A descriptor parked in the session's table: it is closed when the session ends, which
    // the other end of the socket pair observes as end of file.
    let (mut watch, parked) = UnixStream::pair().unwrap();
    send_with_fd(&c.stream, b"getfd keep\n", parked.as_fd()).unwrap();
    assert_eq!(c.until_prompt(), "");
    drop(parked);
    srv.backend.script(u32::MAX, None); // never completes on its own
    c.send("migrate tcp:127.0.0.1:1\n");
    let mut probe = srv.connect();
    probe.line();
    probe.until_prompt();
    while !probe
        .hmp("info migrate")
        .contains("Migration status: active")
    {}
    drop(c);
    watch.set_read_timeout(Some(common::WAIT)).unwrap();
    let mut buf = [0u8; 1];
    let n = std::io::Read::read(&mut watch, &mut buf).expect("session did not end");
    assert_eq!(n, 0);
    // The migration itself goes on.
    assert_eq!(srv.backend.state().status, MigrationStatus::Active);
    assert_eq!(probe.hmp("info status"), "VM status: running\r\n");
}
