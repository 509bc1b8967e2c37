//! QMP over a unix socket against the mock backend.

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{TestServer, WAIT};
use migration::{Capability, MigrationStatus, RunState};
use monitor::{send_with_fd, ClientError, ErrorClass, Protocol, QmpClient};
use serde_json::{json, Value};

fn err(v: &Value) -> (&str, &str) {
    (
        v["error"]["class"].as_str().unwrap_or("?"),
        v["error"]["desc"].as_str().unwrap_or("?"),
    )
}

#[test]
fn greeting_is_qemu_shaped_and_crlf_terminated() {
    let srv = TestServer::start(Protocol::Qmp);
    let mut c = srv.connect();
    let line = c.line();
    let g: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        g["QMP"]["version"]["qemu"],
        json!({"micro": 22, "minor": 2, "major": 7})
    );
    assert_eq!(
        g["QMP"]["version"]["package"],
        format!("livemig {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(g["QMP"]["capabilities"], json!(["oob"]));
    assert!(line.starts_with(r#"{"QMP": {"version": "#), "{line}");
}

#[test]
fn capabilities_negotiation() {
    let srv = TestServer::start(Protocol::Qmp);
    let mut c = srv.connect();
    c.json();
    let r = c.call(r#"{"execute": "query-status", "id": 1}"#);
    assert_eq!(
        err(&r),
        (
            "CommandNotFound",
            "Expecting capabilities negotiation with 'qmp_capabilities'"
        )
    );
    assert_eq!(r["id"], 1);
    let r = c.call(r#"{"execute": "nosuch"}"#);
    assert_eq!(err(&r).0, "CommandNotFound");
    let r = c.call(r#"{"exec-oob": "yank", "arguments": {"instances": []}}"#);
    assert_eq!(err(&r).1, "QMP input member 'exec-oob' is unexpected");
    let r = c.call(r#"{"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]}}"#);
    assert_eq!(
        err(&r).1,
        "Parameter 'enable[0]' does not accept value 'bogus'"
    );
    assert_eq!(
        c.call(r#"{"execute": "qmp_capabilities"}"#),
        json!({"return": {}})
    );
    let r = c.call(r#"{"execute": "qmp_capabilities"}"#);
    assert_eq!(
        err(&r),
        (
            "CommandNotFound",
            "Capabilities negotiation is already complete, command ignored"
        )
    );
    let r = c.call(r#"{"execute": "query-status"}"#);
    assert_eq!(
        r["return"],
        json!({"status": "running", "singlestep": false, "running": true})
    );
    // Without oob negotiated, exec-oob is not a request member (QEMU).
    let r = c.call(r#"{"exec-oob": "yank", "id": 1, "arguments": {"instances": []}}"#);
    assert_eq!(err(&r).1, "QMP input member 'exec-oob' is unexpected");
}

#[test]
fn out_of_band_execution_follows_qemus_rules() {
    let srv = TestServer::start(Protocol::Qmp);
    let mut c = srv.connect();
    c.json();
    let r = c.call(r#"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}"#);
    assert_eq!(r, json!({"return": {}}));
    let r = c.call(r#"{"exec-oob": "yank", "id": "y", "arguments": {"instances": []}}"#);
    assert_eq!(r, json!({"return": {}, "id": "y"}));
    let r = c.call(r#"{"exec-oob": "query-status", "id": 2}"#);
    assert_eq!(err(&r).1, "The command query-status does not support OOB");
    let r = c.call(r#"{"exec-oob": "migrate-pause", "id": 3}"#);
    assert_eq!(
        err(&r).1,
        "migrate-pause is currently only supported during postcopy-active state"
    );
    let r = c.call(r#"{"exec-oob": "yank", "execute": "yank", "arguments": {"instances": []}}"#);
    assert_eq!(
        err(&r).1,
        "QMP input member 'execute' clashes with 'exec-oob'"
    );
    // No migration runs: the migration instance does not exist.
    let r = c.call(r#"{"exec-oob": "yank", "arguments": {"instances": [{"type": "migration"}]}}"#);
    assert_eq!(err(&r), ("DeviceNotFound", "Instance not found"));
    assert_eq!(
        c.call(r#"{"execute": "query-yank"}"#),
        json!({"return": []})
    );
}

#[test]
fn id_is_echoed_verbatim() {
    let srv = TestServer::start(Protocol::Qmp);
    let mut c = srv.connect();
    c.negotiate();
    for id in [
        json!("abc"),
        json!(42),
        json!({"a": [1, null, "x"]}),
        json!(1.5),
    ] {
        let req = json!({"execute": "query-status", "id": id});
        assert_eq!(c.call(&req.to_string())["id"], id);
        let req = json!({"execute": "nosuch", "id": id});
        let r = c.call(&req.to_string());
        assert_eq!(r["id"], id);
        assert_eq!(
            err(&r),
            ("CommandNotFound", "The command nosuch has not been found")
        );
        let req = json!({"execute": "migrate", "id": id});
        assert_eq!(c.call(&req.to_string())["id"], id);
    }
    assert!(c.call(r#"{"execute": "query-status"}"#).get("id").is_none());
}

#[test]
fn framework_errors() {
    let srv = TestServer::start(Protocol::Qmp);
    let mut c = srv.connect();
    c.negotiate();
    let cases: &[(&str, &str)] = &[
        (r#"[1, 2]"#, "QMP input must be a JSON object"),
        (r#""text""#, "QMP input must be a JSON object"),
        (r#"{"execute": }"#, "JSON parse error, expecting value"),
        (r#"{"id": 1}"#, "QMP input lacks member 'execute'"),
        (
            r#"{"execute": 5}"#,
            "QMP input member 'execute' must be a string",
        ),
        (
            r#"{"execute": "migrate", "arguments": [1]}"#,
            "QMP input member 'arguments' must be an object",
        ),
        (
            r#"{"execute": "stop", "extra": 1}"#,
            "QMP input member 'extra' is unexpected",
        ),
        (r#"{"execute": "migrate"}"#, "Parameter 'uri' is missing"),
        (
            r#"{"execute": "migrate", "arguments": {"uri": 5}}"#,
            "Invalid parameter type for 'uri', expected: string",
        ),
        (
            r#"{"execute": "migrate", "arguments": {"uri": "tcp:x:1", "blk": "yes"}}"#,
            "Invalid parameter type for 'blk', expected: boolean",
        ),
        (
            r#"{"execute": "migrate", "arguments": {"uri": "tcp:x:1", "bogus": 1}}"#,
            "Parameter 'bogus' is unexpected",
        ),
        (
            r#"{"execute": "query-migrate", "arguments": {"x": 1}}"#,
            "Parameter 'x' is unexpected",
        ),
        (
            r#"{"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "bogus", "state": true}]}}"#,
            "Parameter 'capability' does not accept value 'bogus'",
        ),
        (
            r#"{"execute": "migrate-set-parameters", "arguments": {"downtime-limit": "x"}}"#,
            "Parameter 'downtime-limit' expects uint64",
        ),
        (
            r#"{"execute": "migrate-set-parameters", "arguments": {"bogus": 1}}"#,
            "Parameter 'bogus' is unexpected",
        ),
        (
            r#"{"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "x-colo", "state": true}]}}"#,
            "Capability 'x-colo' is not supported by livemig",
        ),
        (
            r#"{"execute": "migrate-start-postcopy"}"#,
            "Enable postcopy with migrate_set_capability before the start of migration",
        ),
        (
            r#"{"exec-oob": "migrate-pause"}"#,
            "QMP input member 'exec-oob' is unexpected",
        ),
        (r#"}"#, "JSON parse error, expecting value"),
    ];
    for (input, desc) in cases {
        let r = c.call(input);
        assert_eq!(err(&r), ("GenericError", *desc), "input {input}");
    }
    // The connection is still fine afterwards.
    assert_eq!(
        c.call(r#"{"execute": "query-status"}"#)["return"]["running"],
        true
    );
}

#[test]
fn commands_happy_paths() {
    let srv = TestServer::start(Protocol::Qmp);
    let mut q = QmpClient::connect(&srv.target()).unwrap();
    assert_eq!(q.execute("query-migrate", None).unwrap(), json!({}));

    let r = q.execute(
        "migrate",
        Some(json!({"uri": "tcp:127.0.0.1:4444", "blk": true, "detach": true})),
    );
    assert_eq!(r.unwrap(), json!({}));
    {
        let s = srv.backend.state();
        assert_eq!(s.migrations.len(), 1);
        assert_eq!(s.migrations[0].uri, "tcp:127.0.0.1:4444");
        assert!(s.migrations[0].opts.blk && s.migrations[0].opts.detach);
        assert!(!s.migrations[0].opts.inc && !s.migrations[0].opts.resume);
    }
    let info = q.execute("query-migrate", None).unwrap();
    assert_eq!(info["status"], "active");
    assert_eq!(info["expected-downtime"], 300);
    assert_eq!(info["ram"]["page-size"], 4096);

    // A second migrate while one runs: the backend's error is passed through.
    match q.execute("migrate", Some(json!({"uri": "tcp:127.0.0.1:4445"}))) {
        Err(ClientError::Command { class, desc }) => {
            assert_eq!(class, ErrorClass::GenericError);
            assert_eq!(desc, "There's a migration process in progress");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(q.execute("migrate_cancel", None).unwrap(), json!({}));
    assert_eq!(
        q.execute("query-migrate", None).unwrap(),
        json!({"status": "cancelled"})
    );

    let caps = json!({"capabilities": [{"capability": "events", "state": true},
                                       {"capability": "ram-verify", "state": true}]});
    q.execute("migrate-set-capabilities", Some(caps)).unwrap();
    assert!(srv.backend.state().caps.get(Capability::RamVerify));
    let list = q.execute("query-migrate-capabilities", None).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), Capability::supported().count());
    assert_eq!(list[0], json!({"state": false, "capability": "xbzrle"}));
    assert!(list.contains(&json!({"state": true, "capability": "events"})));
    assert_eq!(
        list.last(),
        Some(&json!({"state": true, "capability": "ram-verify"}))
    );

    q.execute(
        "migrate-set-parameters",
        Some(json!({"max-bandwidth": 1000, "downtime-limit": 50})),
    )
    .unwrap();
    let p = q.execute("query-migrate-parameters", None).unwrap();
    assert_eq!(
        (p["max-bandwidth"].clone(), p["downtime-limit"].clone()),
        (json!(1000), json!(50))
    );
    assert_eq!(p["multifd-compression"], "none");
    let e = q.execute(
        "migrate-set-parameters",
        Some(json!({"downtime-limit": 3_000_000})),
    );
    assert_eq!(
        e.unwrap_err().to_string(),
        "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"
    );

    q.execute("stop", None).unwrap();
    assert_eq!(
        q.execute("query-status", None).unwrap(),
        json!({"status": "paused", "singlestep": false, "running": false})
    );
    q.execute("cont", None).unwrap();
    assert_eq!(srv.backend.state().run_state, RunState::Running);

    q.execute("migrate-incoming", Some(json!({"uri": "tcp:127.0.0.1:0"})))
        .unwrap();
    assert_eq!(
        srv.backend.state().incoming,
        vec!["tcp:127.0.0.1:0".to_string()]
    );
    assert_eq!(
        q.execute("query-status", None).unwrap()["status"],
        "inmigrate"
    );

    let names: Vec<String> = q
        .execute("query-commands", None)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    for n in [
        "migrate",
        "query-migrate",
        "migrate-set-capabilities",
        "getfd",
        "quit",
        "human-monitor-command",
        "query-version",
        "qmp_capabilities",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    let v = q.execute("query-version", None).unwrap();
    assert_eq!(v["qemu"]["major"], 7);
    assert_eq!(
        v["package"],
        format!("livemig {}", env!("CARGO_PKG_VERSION"))
    );

    let out = q.execute(
        "human-monitor-command",
        Some(json!({"command-line": "info status"})),
    );
    assert_eq!(out.unwrap(), json!("VM status: paused (inmigrate)\r\n"));
    let out = q.execute(
        "human-monitor-command",
        Some(json!({"command-line": "nosuch"})),
    );
    assert_eq!(out.unwrap(), json!("unknown command: 'nosuch'\r\n"));
}

#[test]
fn hmp_migrate_through_qmp_continues_detached() {
    let srv = TestServer::start(Protocol::Qmp);
    let mut q = QmpClient::connect(&srv.target()).unwrap();
    let out = q
        .execute(
            "human-monitor-command",
            Some(json!({"command-line": "migrate tcp:127.0.0.1:1"})),
        )
        .unwrap();
    assert_eq!(
        out,
        json!("terminal does not allow synchronous migration, continuing detached\r\n")
    );
    assert_eq!(srv.backend.state().status, MigrationStatus::Active);
}

#[test]
fn events_reach_every_negotiated_client_with_timestamps() {
    let srv = TestServer::start(Protocol::Qmp);
    let mut a = QmpClient::connect(&srv.target()).unwrap();
    let mut b = QmpClient::connect(&srv.target()).unwrap();
    // Not yet negotiated: must not get events emitted before it negotiates.
    let mut late = srv.connect();
    late.json();
    a.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "events", "state": true}]})),
    )
    .unwrap();
    a.execute("migrate", Some(json!({"uri": "unix:/tmp/x"})))
        .unwrap();
    for client in [&mut a, &mut b] {
        let ev = client.next_event(WAIT).unwrap().expect("MIGRATION setup");
        assert_eq!(ev["event"], "MIGRATION");
        assert_eq!(ev["data"], json!({"status": "setup"}));
        assert!(ev["timestamp"]["seconds"].as_u64().unwrap() > 1_600_000_000);
        assert!(ev["timestamp"]["microseconds"].as_u64().unwrap() < 1_000_000);
        let ev = client.next_event(WAIT).unwrap().expect("MIGRATION active");
        assert_eq!(ev["data"]["status"], "active");
    }
    b.execute("stop", None).unwrap();
    let ev = a.next_event(WAIT).unwrap().expect("STOP");
    assert_eq!(ev["event"], "STOP");
    assert!(ev.get("data").is_none());
    // The late client negotiates now; its first message is the reply, not an old event.
    assert_eq!(
        late.call(r#"{"execute": "qmp_capabilities", "id": "n"}"#),
        json!({"return": {}, "id": "n"})
    );
    b.execute("cont", None).unwrap();
    assert_eq!(late.json()["event"], "RESUME");
}

#[test]
fn quit_sends_shutdown_then_reply_then_exits() {
    let srv = TestServer::start(Protocol::Qmp);
    let mut other = QmpClient::connect(&srv.target()).unwrap();
    let mut c = srv.connect();
    c.negotiate();
    c.send(r#"{"execute": "quit", "id": 9}"#);
    let mut got_reply = false;
    let mut got_event = false;
    while !(got_reply && got_event) {
        let m = c.json();
        if m.get("event").is_some() {
            assert_eq!(m["event"], "SHUTDOWN");
            assert_eq!(
                m["data"],
                json!({"guest": false, "reason": "host-qmp-quit"})
            );
            got_event = true;
        } else {
            assert_eq!(m, json!({"return": {}, "id": 9}));
            got_reply = true;
        }
    }
    assert!(c.closed());
    assert_eq!(srv.backend.state().quits, 1);
    let ev = other
        .next_event(WAIT)
        .unwrap()
        .expect("SHUTDOWN on the other client");
    assert_eq!(ev["event"], "SHUTDOWN");
}

fn same_file(a: &impl AsFd, b: &impl AsFd) -> bool {
    use std::os::fd::AsRawFd;
    let stat = |fd: i32| {
        // SAFETY: fstat writes one stat struct into the zeroed buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open for the duration of the call; `st` is valid for writes.
        assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
        (st.st_dev, st.st_ino)
    };
    stat(a.as_fd().as_raw_fd()) == stat(b.as_fd().as_raw_fd())
}

#[test]
fn getfd_over_scm_rights_then_migrate_fd_uses_it() {
    let srv = TestServer::start(Protocol::Qmp);
    let mut c = srv.connect();
    c.negotiate();
    let r = c.call(r#"{"execute": "getfd", "arguments": {"fdname": "mig"}}"#);
    assert_eq!(err(&r).1, "No file descriptor supplied via SCM_RIGHTS");

    let (mine, theirs) = UnixStream::pair().unwrap();
    send_with_fd(
        &c.stream,
        br#"{"execute": "getfd", "arguments": {"fdname": "3mig"}}"#,
        theirs.as_fd(),
    )
    .unwrap();
    assert_eq!(
        err(&c.reply()).1,
        "Parameter 'fdname' expects a name not starting with a digit"
    );
    send_with_fd(
        &c.stream,
        br#"{"execute": "getfd", "arguments": {"fdname": "mig"}, "id": 1}"#,
        theirs.as_fd(),
    )
    .unwrap();
    assert_eq!(c.reply(), json!({"return": {}, "id": 1}));

    // Another connection does not see this connection's descriptors.
    let mut q = QmpClient::connect(&srv.target()).unwrap();
    let e = q
        .execute("migrate", Some(json!({"uri": "fd:mig"})))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "File descriptor named 'mig' has not been found"
    );

    assert_eq!(
        c.call(r#"{"execute": "migrate", "arguments": {"uri": "fd:mig"}}"#),
        json!({"return": {}})
    );
    let s = srv.backend.state();
    let fd = s.migrations[0]
        .fd
        .as_ref()
        .expect("backend got the descriptor");
    assert!(same_file(fd, &theirs));
    assert!(!same_file(fd, &mine));
}

#[test]
fn closefd_and_execute_with_fd() {
    let srv = TestServer::start(Protocol::Qmp);
    let mut q = QmpClient::connect(&srv.target()).unwrap();
    let (_a, b) = UnixStream::pair().unwrap();
    q.execute_with_fd("getfd", Some(json!({"fdname": "x"})), b.as_fd())
        .unwrap();
    q.execute("closefd", Some(json!({"fdname": "x"}))).unwrap();
    let e = q
        .execute("closefd", Some(json!({"fdname": "x"})))
        .unwrap_err();
    assert_eq!(e.to_string(), "File descriptor named 'x' not found");
    q.execute_with_fd("getfd", Some(json!({"fdname": "in"})), b.as_fd())
        .unwrap();
    q.execute("migrate-incoming", Some(json!({"uri": "fd:in"})))
        .unwrap();
    assert!(same_file(&srv.backend.state().incoming_fds[0], &b));
}

#[test]
fn requests_without_newlines_and_split_across_writes() {
    let srv = TestServer::start(Protocol::Qmp);
    let mut c = srv.connect();
    c.json();
    // qemu.qmp sends compact JSON with no separator at all.
    c.send(r#"{"execute":"qmp_capabilities","id":1}{"execute":"query-status","id":2}"#);
    assert_eq!(c.json()["id"], 1);
    assert_eq!(c.json()["id"], 2);
    c.send(r#"{"execute": "query-"#);
    c.send(r#"status", "id": 3}"#);
    assert_eq!(c.reply()["id"], 3);
}

#[test]
fn oversize_request_gets_error_and_disconnect_server_survives() {
    let srv = TestServer::start(Protocol::Qmp);
    let mut c = srv.connect();
    c.negotiate();
    let big = format!(
        r#"{{"execute": "migrate", "arguments": {{"uri": "{}"#,
        "a".repeat(1 << 20)
    );
    // The server may close while we are still writing; ignore write errors.
    let _ = std::io::Write::write_all(&mut c.stream, big.as_bytes());
    let r = c.json();
    assert_eq!(err(&r).0, "GenericError");
    assert!(err(&r).1.starts_with("JSON parse error"), "{r}");
    assert!(c.closed());
    let mut again = QmpClient::connect(&srv.target()).unwrap();
    again.execute("query-status", None).unwrap();
}

#[test]
fn too_deep_nesting_is_refused() {
    let srv = TestServer::start(Protocol::Qmp);
    let mut c = srv.connect();
    c.negotiate();
    c.send(&"[".repeat(2000));
    assert_eq!(
        err(&c.json()),
        ("GenericError", "JSON parse error, nesting too deep")
    );
    assert!(c.closed());
}

#[test]
fn client_vanishing_mid_request_does_not_stick_the_server() {
    let srv = TestServer::start(Protocol::Qmp);
    for _ in 0..3 {
        let mut c = srv.connect();
        c.json();
        c.send(r#"{"execute": "qmp_capabilities"}{"execute": "query-st"#);
        drop(c);
    }
    // A client that leaves right after sending a slow command.
    let mut c = srv.connect();
    c.negotiate();
    c.send(r#"{"execute": "query-migrate"}"#);
    drop(c);
    let mut q = QmpClient::connect(&srv.target()).unwrap();
    q.set_reply_timeout(Duration::from_secs(20));
    assert_eq!(
        q.execute("query-status", None).unwrap()["status"],
        "running"
    );
}

#[test]
fn respond_runs_the_request_path_without_a_socket() {
    let backend = std::sync::Arc::new(common::mock::MockBackend::new());
    let mut s = monitor::Session::new(backend.clone());
    let mut negotiated = false;
    let r = monitor::qmp::respond(&mut s, br#"{"execute": "stop", "id": 1}"#, &mut negotiated);
    assert_eq!(err(&r).0, "CommandNotFound");
    assert_eq!(r["id"], json!(1));
    let r = monitor::qmp::respond(
        &mut s,
        br#"{"execute": "qmp_capabilities"}"#,
        &mut negotiated,
    );
    assert_eq!(r, json!({"return": {}}));
    assert!(negotiated);
    let r = monitor::qmp::respond(&mut s, br#"{"execute": "stop"}"#, &mut negotiated);
    assert_eq!(r, json!({"return": {}}));
    assert_eq!(backend.state().run_state, RunState::Paused);
    let r = monitor::qmp::respond(&mut s, br#"{"execute": }"#, &mut negotiated);
    assert_eq!(err(&r).1, "JSON parse error, expecting value");
    let r = monitor::qmp::respond(&mut s, br#"{"execute": "quit"}"#, &mut negotiated);
    assert_eq!(r, json!({"return": {}}));
    assert!(s.quit_requested);
    assert_eq!(backend.state().quits, 0, "the connection loop calls quit");
}
