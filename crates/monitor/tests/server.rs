//! Endpoints, listeners and several clients at once.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use common::{mock::MockBackend, Raw, TestServer};
use monitor::{
    bind_tcp, bind_unix, parse_endpoint, ClientLimits, MonitorServer, Protocol, QmpClient, Running,
    ServerHandle,
};
use serde_json::json;

#[test]
fn unix_socket_is_owner_only() {
    let srv = TestServer::start(Protocol::Qmp);
    let mode = std::fs::metadata(&srv.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn bind_unix_refuses_live_socket_and_regular_file() {
    let srv = TestServer::start(Protocol::Qmp);
    assert!(monitor::bind_unix(&srv.path).is_err());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    assert!(monitor::bind_unix(&file).is_err());
    // A stale socket (nobody listening) is replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(monitor::bind_unix(&stale).is_ok());
}

#[test]
fn several_clients_at_once() {
    let srv = TestServer::start(Protocol::Qmp);
    let mut clients: Vec<QmpClient> = (0..5)
        .map(|_| QmpClient::connect(&srv.target()).unwrap())
        .collect();
    let threads: Vec<_> = clients
        .drain(..)
        .map(|mut c| {
            std::thread::spawn(move || {
                for _ in 0..20 {
                    assert_eq!(c.execute("query-status", None).unwrap()["running"], true);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn tcp_qmp_and_hmp_on_port_zero() {
    let backend = Arc::new(MockBackend::new());
    let qmp = MonitorServer::new(backend.clone(), Protocol::Qmp)
        .serve_tcp(bind_tcp("127.0.0.1", 0).unwrap())
        .unwrap();
    let hmp = MonitorServer::new(backend.clone(), Protocol::Hmp)
        .serve_tcp(bind_tcp("127.0.0.1", 0).unwrap())
        .unwrap();
    assert!(qmp.description().starts_with("tcp:127.0.0.1:"));
    let mut q = QmpClient::connect(qmp.description()).unwrap();
    q.execute("stop", None).unwrap();
    let addr = hmp.description().strip_prefix("tcp:").unwrap().to_string();
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    let mut text = String::new();
    let mut s = std::io::BufReader::new(stream.try_clone().unwrap());
    std::io::BufRead::read_line(&mut s, &mut text).unwrap();
    assert!(text.ends_with("monitor - type 'help' for more information\r\n"));
    std::io::Write::write_all(&mut &stream, b"info status\r\n").unwrap();
    let mut line = String::new();
    loop {
        line.clear();
        std::io::BufRead::read_line(&mut s, &mut line).unwrap();
        if line.contains("VM status") {
            break;
        }
    }
    assert_eq!(line, "(qemu) VM status: paused\r\n");
}

#[test]
fn start_from_endpoint_spec_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.sock");
    let spec = parse_endpoint(&format!("unix:{},server=on,wait=off", path.display())).unwrap();
    let backend = Arc::new(MockBackend::new());
    let running = MonitorServer::new(backend, Protocol::Qmp)
        .start(&spec)
        .unwrap();
    let Running::Server(handle) = running else {
        panic!("expected a server")
    };
    let mut q = QmpClient::connect(&format!("unix:{}", path.display())).unwrap();
    assert_eq!(q.execute("query-migrate", None).unwrap(), json!({}));
    handle.shutdown();
    assert!(!path.exists());
    assert!(std::os::unix::net::UnixStream::connect(&path).is_err());
    // The connected client is still served.
    assert_eq!(q.execute("query-status", None).unwrap()["running"], true);
}

#[test]
fn client_mode_connects_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mgmt.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let spec = parse_endpoint(&format!("unix:{}", path.display())).unwrap();
    let backend = Arc::new(MockBackend::new());
    let running = MonitorServer::new(backend, Protocol::Qmp)
        .start(&spec)
        .unwrap();
    assert!(matches!(running, Running::Connection(_)));
    let (stream, _) = listener.accept().unwrap();
    let mut c = Raw::new(stream);
    c.negotiate();
    assert_eq!(
        c.call(r#"{"execute": "query-status"}"#)["return"]["status"],
        "running"
    );
}

#[test]
fn migrate_with_progress_returns_final_info() {
    let srv = TestServer::start(Protocol::Qmp);
    srv.backend.script(2, None);
    let info = monitor::migrate_with_progress(&srv.target(), "tcp:127.0.0.1:4444", false).unwrap();
    assert_eq!(info["status"], "completed");
    assert_eq!(info["downtime"], 5);
    srv.backend.script(0, Some("connection refused"));
    let info = monitor::migrate_with_progress(&srv.target(), "tcp:127.0.0.1:4444", false).unwrap();
    assert_eq!(info["status"], "failed");
    assert_eq!(info["error-desc"], "connection refused");
    let e = monitor::migrate_with_progress(&srv.target(), "bogus", false).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Parameter 'uri' expects a valid migration protocol"
    );
}

#[test]
fn plain_streams_like_stdio() {
    use std::os::unix::net::UnixStream;
    let backend = Arc::new(MockBackend::new());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let reader = theirs.try_clone().unwrap();
    let t = MonitorServer::new(backend, Protocol::Qmp)
        .serve_io(reader, theirs)
        .unwrap();
    let mut c = Raw::new(ours);
    c.negotiate();
    assert_eq!(c.call(r#"{"execute": "query-status", "id": 1}"#)["id"], 1);
    // getfd cannot work without SCM_RIGHTS.
    let r = c.call(r#"{"execute": "getfd", "arguments": {"fdname": "x"}}"#);
    assert_eq!(
        r["error"]["desc"],
        "No file descriptor supplied via SCM_RIGHTS"
    );
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    t.join().unwrap();
}

/// A small deterministic generator (no extra dependency).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u8 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u8
    }
}

#[test]
fn garbage_input_never_breaks_the_server() {
    let alphabet = br#"{}[]":, \n\r\t0123456789.-eE"executeargumentsidmigrateuri\tnullfalse"#;
    for protocol in [Protocol::Qmp, Protocol::Hmp] {
        let srv = TestServer::start(protocol);
        let mut rng = Lcg(7);
        for round in 0..20 {
            let mut c = srv.connect();
            let len = 200 + round * 300;
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    let r = rng.next();
                    if i % 3 == 0 {
                        r
                    } else {
                        alphabet[r as usize % alphabet.len()]
                    }
                })
                .collect();
            let _ = std::io::Write::write_all(&mut c.stream, &bytes);
            drop(c);
        }
        // Still serving.
        let mut c = srv.connect();
        match protocol {
            Protocol::Qmp => {
                c.negotiate();
                assert_eq!(
                    c.call(r#"{"execute": "query-status"}"#)["return"]["running"],
                    true
                );
            }
            Protocol::Hmp => {
                c.line();
                c.until_prompt();
                // Random lines may have been valid commands (`s` stops the VM).
                assert!(c.hmp("info status").starts_with("VM status: "));
            }
        }
    }
}

/// A QMP server on a temporary socket with the given limits.
fn limited(limits: ClientLimits) -> (ServerHandle, String, tempfile::TempDir) {
    limited_as(Protocol::Qmp, limits)
}

fn limited_as(
    protocol: Protocol,
    limits: ClientLimits,
) -> (ServerHandle, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mon.sock");
    let handle = MonitorServer::new(Arc::new(MockBackend::new()), protocol)
        .with_limits(limits)
        .serve_unix(bind_unix(&path).unwrap())
        .unwrap();
    (handle, path.display().to_string(), dir)
}

#[test]
fn idle_connections_never_lock_management_out() {
    // Default limits: 64 clients, a negotiation timeout far longer than this test.
    let srv = TestServer::start(Protocol::Qmp);
    let max = ClientLimits::default().max_clients;
    let mut idle: Vec<Raw> = (0..max + 6).map(|_| srv.connect()).collect();
    // A negotiated client that only waits for events, connected after the idle ones.
    let mut listener = QmpClient::connect(&srv.target()).unwrap();
    let mut c = QmpClient::connect(&srv.target()).unwrap();
    assert_eq!(c.execute("query-status", None).unwrap()["running"], true);
    // The silent, never-negotiated connections were the ones evicted.
    assert_eq!(
        listener.execute("query-status", None).unwrap()["running"],
        true
    );
    // Evictions happen when a newcomer is admitted, so they are done by now.
    let mut closed = 0;
    for r in &mut idle {
        r.stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        closed += usize::from(r.closed());
    }
    assert_eq!(closed, idle.len() + 2 - max, "idle connections closed");
}

#[test]
fn a_client_that_never_negotiates_is_closed() {
    let (_h, target, _dir) = limited(ClientLimits {
        negotiation_timeout: Duration::from_millis(300),
        ..ClientLimits::default()
    });
    let mut silent = Raw::new(UnixStream::connect(&target).unwrap());
    assert!(silent.line().contains("\"QMP\""));
    // Raw's read timeout (20 s) is the generous bound: closed means EOF, not a timeout.
    assert!(silent.closed());
    // A negotiated client that stays quiet for longer than the timeout is kept.
    let mut quiet = QmpClient::connect(&target).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        quiet.execute("query-status", None).unwrap()["running"],
        true
    );
}

#[test]
fn a_full_listener_evicts_the_longest_idle_negotiated_client() {
    let (_h, target, _dir) = limited(ClientLimits {
        max_clients: 2,
        ..ClientLimits::default()
    });
    let mut old = QmpClient::connect(&target).unwrap();
    let mut recent = QmpClient::connect(&target).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    recent.execute("query-status", None).unwrap();
    let mut newcomer = QmpClient::connect(&target).unwrap();
    assert_eq!(
        newcomer.execute("query-status", None).unwrap()["running"],
        true
    );
    assert_eq!(
        recent.execute("query-status", None).unwrap()["running"],
        true
    );
    assert!(old.execute("query-status", None).is_err());
}

#[test]
fn hmp_has_no_negotiation_to_time_out() {
    let (_h, target, _dir) = limited_as(
        Protocol::Hmp,
        ClientLimits {
            negotiation_timeout: Duration::from_millis(100),
            ..ClientLimits::default()
        },
    );
    let mut hmp = Raw::new(UnixStream::connect(&target).unwrap());
    hmp.until_prompt();
    std::thread::sleep(Duration::from_millis(800));
    assert!(hmp.hmp("info status").contains("VM status: running"));
}
