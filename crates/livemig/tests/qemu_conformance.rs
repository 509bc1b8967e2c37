//! Management conformance with QEMU 7.2, reply by reply: the same QMP requests go to a
//! `qemu-system-x86_64 -M none` and to `livemig run --machine none`, and the replies (return
//! values or error class + text) must be equal. Also: every capability livemig lists can be
//! switched on. The QEMU comparisons are skipped (visible SKIP) when QEMU is missing.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::qemu::{QemuProc, QEMU_RAM};
use common::{retry_connect, Vm};
use monitor::{ClientError, QmpClient};
use serde_json::{json, Value};

const NONE_MACHINE: &[&str] = &[
    "--machine",
    "none",
    "-m",
    QEMU_RAM,
    "--smp",
    "1",
    "--fill",
    "8M",
    "--working-set",
    "2M",
    "--write-rate",
    "8M",
];

/// The reply as comparable JSON: `{"return": ...}` or `{"error": {"class", "desc"}}`.
fn reply(c: &mut QmpClient, name: &str, args: Value) -> Value {
    let args = (!args.is_null()).then_some(args);
    match c.execute(name, args) {
        Ok(v) => json!({ "return": v }),
        Err(ClientError::Command { class, desc }) => {
            json!({"error": {"class": class.as_str(), "desc": desc}})
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

fn connect(path: &Path) -> QmpClient {
    retry_connect(|| QmpClient::connect_unix(path))
}

/// Waits until `query-migrate` shows a final status; returns the reply.
fn wait_final(c: &mut QmpClient) -> Value {
    common::wait_final_migration(|| c.execute("query-migrate", None).unwrap())
}

/// The `MIGRATION` statuses announced so far.
fn migration_events(c: &mut QmpClient) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(ev) = c.next_event(Duration::from_millis(300)).unwrap() {
        if ev["event"] == "MIGRATION" {
            out.push(ev["data"]["status"].as_str().unwrap_or("").to_string());
        }
    }
    out
}

fn set_caps(c: &mut QmpClient, caps: &[(&str, bool)]) -> Value {
    let list: Vec<Value> = caps
        .iter()
        .map(|(c, on)| json!({"capability": c, "state": on}))
        .collect();
    reply(
        c,
        "migrate-set-capabilities",
        json!({ "capabilities": list }),
    )
}

fn listed_caps(c: &mut QmpClient) -> Vec<String> {
    let list = c.execute("query-migrate-capabilities", None).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["capability"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_listed_capability_can_be_switched_on() {
    let dir = tempfile::tempdir().unwrap();
    let vm = Vm::start(dir.path(), "vm", NONE_MACHINE);
    let mut c = connect(&vm.qmp_path);
    let listed = listed_caps(&mut c);
    let ok = json!({"return": {}});
    for cap in &listed {
        // QEMU's dependencies: switched on together (and off again below).
        let needs: &[&str] = match cap.as_str() {
            "zero-copy-send" => &["multifd"],
            "x-local-handover" => &["x-ignore-shared"],
            _ => &[],
        };
        let mut on: Vec<(&str, bool)> = needs.iter().map(|n| (*n, true)).collect();
        on.push((cap, true));
        assert_eq!(set_caps(&mut c, &on), ok, "{cap} is listed");
        let on = c.execute("query-migrate-capabilities", None).unwrap();
        assert!(
            on.as_array()
                .unwrap()
                .contains(&json!({"capability": cap, "state": true})),
            "{cap}: {on}"
        );
        // return-path is on by default in livemig; leave it as found.
        if cap != "return-path" {
            assert_eq!(set_caps(&mut c, &[(cap, false)]), ok);
        }
        for n in needs {
            assert_eq!(set_caps(&mut c, &[(n, false)]), ok);
        }
    }
    // All of them together, too — except zero-copy-send, which QEMU's rules refuse beside
    // xbzrle, and postcopy-ram, refused beside x-ignore-shared (as QEMU 7.2 itself does).
    let all: Vec<(&str, bool)> = listed
        .iter()
        .filter(|c| *c != "zero-copy-send" && *c != "postcopy-ram")
        .map(|c| (c.as_str(), true))
        .collect();
    assert_eq!(set_caps(&mut c, &all), ok);
    // A capability list copied from QEMU 7.2 (everything off) is accepted; switching on one
    // that is not listed is refused.
    for cap in [
        "postcopy-preempt",
        "x-colo",
        "release-ram",
        "background-snapshot",
        "compress",
    ] {
        assert!(!listed.iter().any(|l| l == cap), "{cap} does not work yet");
        assert_eq!(set_caps(&mut c, &[(cap, false)]), ok);
        let e = set_caps(&mut c, &[(cap, true)]);
        assert_eq!(e["error"]["class"], "GenericError", "{e}");
    }
    // livemig's own capability comes last, so QEMU's names keep their positions.
    assert_eq!(listed.last().map(String::as_str), Some("ram-verify"));
}

/// QEMU and livemig side by side, each with its QMP client.
struct Pair {
    _qemu: QemuProc,
    _livemig: Vm,
    q: QmpClient,
    l: QmpClient,
}

impl Pair {
    fn start(
        dir: &Path,
        qemu: &Path,
        name: &str,
        qemu_args: &[&str],
        livemig_args: &[&str],
    ) -> Pair {
        let proc = QemuProc::start(qemu, dir, &format!("{name}-qemu"), qemu_args);
        let mut args = NONE_MACHINE.to_vec();
        args.extend(livemig_args);
        let vm = Vm::start(dir, &format!("{name}-livemig"), &args);
        let q = connect(&proc.qmp);
        let l = connect(&vm.qmp_path);
        Pair {
            _qemu: proc,
            _livemig: vm,
            q,
            l,
        }
    }

    /// Sends the request to both and asserts equal replies; returns QEMU's.
    fn same(&mut self, name: &str, args: Value) -> Value {
        let q = reply(&mut self.q, name, args.clone());
        let l = reply(&mut self.l, name, args.clone());
        assert_eq!(
            q, l,
            "{name} {args}: QEMU (left) and livemig (right) differ"
        );
        q
    }
}

fn qemu(test: &str) -> Option<std::path::PathBuf> {
    testkit::require_qemu_system(test)
}

#[test]
fn command_replies_match_qemu() {
    let Some(qemu) = qemu("command_replies_match_qemu") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pair::start(dir.path(), &qemu, "src", &[], &[]);
    // migrate-continue: QEMU's state check and argument texts.
    p.same("migrate-continue", json!({"state": "pre-switchover"}));
    p.same("migrate-continue", json!({"state": "bogus"}));
    p.same("migrate-continue", json!({"state": 5}));
    p.same("migrate-continue", json!({}));
    // Post-copy recovery commands exist and refuse with QEMU's GenericError texts.
    let e = p.same("migrate-pause", Value::Null);
    assert_eq!(e["error"]["class"], "GenericError");
    let e = p.same("migrate-recover", json!({"uri": "tcp:127.0.0.1:1"}));
    assert_eq!(e["error"]["class"], "GenericError");
    p.same("migrate-recover", json!({}));
    // Negative numbers wrap like QEMU's visitor, then meet the range checks.
    p.same("migrate-set-parameters", json!({"max-bandwidth": -2000}));
    let q = p.same("query-migrate-parameters", Value::Null);
    assert_eq!(q["return"]["max-bandwidth"], json!(u64::MAX - 1999));
    p.same("migrate-set-parameters", json!({"max-bandwidth": -1}));
    p.same("migrate-set-parameters", json!({"downtime-limit": -5}));
    p.same("migrate-set-parameters", json!({"announce-initial": -1}));
    p.same("migrate-set-parameters", json!({"xbzrle-cache-size": -1}));
    p.same("migrate-set-parameters", json!({"multifd-channels": -1}));
    p.same("migrate-set-parameters", json!({"compress-level": -1}));
    p.same(
        "migrate-set-parameters",
        json!({"max-bandwidth": 134217728}),
    );
    // Type errors.
    p.same("migrate-set-parameters", json!({"max-bandwidth": "x"}));
    p.same("migrate-set-parameters", json!({"max-bandwidth": 1.5}));
    p.same("migrate-set-parameters", json!({"multifd-channels": "2"}));
    p.same("migrate-set-parameters", json!({"block-incremental": 1}));
    p.same("migrate-set-parameters", json!({"tls-creds": 5}));
    p.same(
        "migrate-set-parameters",
        json!({"multifd-compression": "x"}),
    );
    p.same("migrate", json!({"uri": 5}));
    p.same("migrate", json!({}));
    p.same(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events"}]}),
    );
    p.same(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "bogus", "state": true}]}),
    );
    p.same("migrate-set-parameters", json!({"bogus": 1}));
    // The introspection livemig answers is QEMU's format: the probes libvirt makes resolve
    // to the same kinds of entities.
    for c in [&mut p.q, &mut p.l] {
        let schema = c.execute("query-qmp-schema", None).unwrap();
        let schema = schema.as_array().unwrap();
        let cmd = schema
            .iter()
            .find(|e| e["name"] == "migrate-set-parameters")
            .unwrap();
        assert_eq!(cmd["meta-type"], "command");
        let args = schema
            .iter()
            .find(|e| e["name"] == cmd["arg-type"])
            .unwrap();
        let bw = args["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "max-bandwidth")
            .unwrap();
        let ty = schema.iter().find(|e| e["name"] == bw["type"]).unwrap();
        assert_eq!(ty["json-type"], "int", "{ty}");
    }
}

#[test]
fn a_failed_migrate_shows_its_own_error() {
    let Some(qemu) = qemu("a_failed_migrate_shows_its_own_error") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pair::start(dir.path(), &qemu, "src", &[], &[]);
    let closed = format!("tcp:127.0.0.1:{}", testkit::free_tcp_port());
    for c in [&mut p.q, &mut p.l] {
        c.execute("migrate", Some(json!({ "uri": closed })))
            .unwrap();
        let info = wait_final(c);
        assert_eq!(info["status"], "failed", "{info}");
        assert!(info["error-desc"].is_string(), "{info}");
    }
    // A later migrate that fails at once must not show the first failure's text. (livemig
    // adds the cause to QEMU's text.)
    let q = reply(&mut p.q, "migrate", json!({"uri": "bogus:x"}));
    let l = reply(&mut p.l, "migrate", json!({"uri": "bogus:x"}));
    let q = q["error"]["desc"].as_str().unwrap();
    assert!(l["error"]["desc"].as_str().unwrap().starts_with(q), "{l}");
    p.same("query-migrate", Value::Null);
}

#[test]
fn destination_behaviour_matches_qemu() {
    let Some(qemu) = qemu("destination_behaviour_matches_qemu") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut dst = Pair::start(
        dir.path(),
        &qemu,
        "dst",
        &["-S", "-incoming", "defer"],
        &["-S", "--incoming", "defer"],
    );
    // cont while waiting for the migration is accepted; the guest starts once it completes.
    dst.same("cont", Value::Null);
    dst.same("query-status", Value::Null);
    // One MIGRATION `setup` per migrate-incoming attempt, failed ones included, whatever the
    // events capability.
    dst.same("migrate-incoming", json!({"uri": "bogus:x"}));
    let uri_q = format!("tcp:127.0.0.1:{}", testkit::free_tcp_port());
    let uri_l = format!("tcp:127.0.0.1:{}", testkit::free_tcp_port());
    dst.q
        .execute("migrate-incoming", Some(json!({ "uri": uri_q })))
        .unwrap();
    dst.l
        .execute("migrate-incoming", Some(json!({ "uri": uri_l })))
        .unwrap();
    assert_eq!(migration_events(&mut dst.q), migration_events(&mut dst.l));
    // Two livemig sources, one into each destination.
    let mut sources = Vec::new();
    for (name, uri) in [("src-q", &uri_q), ("src-l", &uri_l)] {
        let mut vm = Vm::start(dir.path(), name, NONE_MACHINE);
        vm.wait_status("running");
        vm.cmd("migrate", json!({ "uri": uri }));
        let info = vm.wait_migration();
        assert_eq!(info["status"], "completed", "{info}\n{}", vm.stderr());
        sources.push(vm);
    }
    for c in [&mut dst.q, &mut dst.l] {
        let t = Instant::now();
        while c.execute("query-status", None).unwrap()["status"] != "running" {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the guest never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // After completion the destination shows its status only. (The guest starts a moment
    // before the status is published, in QEMU too.)
    wait_final(&mut dst.q);
    wait_final(&mut dst.l);
    let q = dst.same("query-migrate", Value::Null);
    assert_eq!(q, json!({"return": {"status": "completed"}}));
    dst.same("query-status", Value::Null);
}

/// A peer that accepts the migration connection and never reads from it.
fn dead_peer() -> (
    String,
    std::thread::JoinHandle<()>,
    std::sync::mpsc::Sender<()>,
) {
    let (listener, port) = testkit::bound_tcp_listener().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let h = std::thread::spawn(move || {
        let conn = listener.accept();
        let _ = rx.recv();
        drop(conn);
    });
    (format!("tcp:127.0.0.1:{port}"), h, tx)
}

/// Starts a migration to a dead peer, checks the `migration` yank instance, yanks it and
/// returns the final `query-migrate` and `query-status`.
fn yank_stuck_migration(c: &mut QmpClient) -> (Value, Value) {
    let (uri, peer, release) = dead_peer();
    c.execute("migrate", Some(json!({ "uri": uri }))).unwrap();
    let t = Instant::now();
    while c.execute("query-migrate", None).unwrap()["status"] != "active" {
        assert!(t.elapsed() < Duration::from_secs(30), "never active");
        std::thread::sleep(Duration::from_millis(20));
    }
    let instances = c.execute("query-yank", None).unwrap();
    assert!(
        instances
            .as_array()
            .unwrap()
            .contains(&json!({"type": "migration"})),
        "{instances}"
    );
    let r = reply(c, "yank", json!({"instances": [{"type": "migration"}]}));
    assert_eq!(r, json!({"return": {}}));
    let info = wait_final(c);
    let status = c.execute("query-status", None).unwrap();
    release.send(()).unwrap();
    peer.join().unwrap();
    (json!({"status": info["status"]}), status)
}

#[test]
fn yank_unblocks_a_migration_stuck_on_a_dead_peer() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--machine",
        "none",
        "-m",
        QEMU_RAM,
        "--smp",
        "0",
        "--fill",
        "48M",
    ];
    let mut vm = Vm::start(dir.path(), "src", &args);
    vm.wait_status("running");
    let mut l = connect(&vm.qmp_path);
    let (l_info, l_status) = yank_stuck_migration(&mut l);
    assert_eq!(l_info, json!({"status": "failed"}), "{}", vm.stderr());
    assert_eq!(l_status["status"], "running");
    // The migration instance is gone with the migration.
    assert_eq!(l.execute("query-yank", None).unwrap(), json!([]));

    let Some(qemu) = qemu("yank_unblocks_a_migration_stuck_on_a_dead_peer (QEMU part)") else {
        return;
    };
    // QEMU with RAM full of data, so its stream cannot fit in the socket buffers.
    let ram = dir.path().join("qemu.ram");
    let mut data = vec![0u8; common::qemu::RAM as usize];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for w in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&ram, data).unwrap();
    let mut q = common::qemu::Qemu::start(&qemu, dir.path(), &ram, &[]);
    let (q_info, q_status) = yank_stuck_migration(&mut q.qmp);
    assert_eq!(q_info, l_info);
    assert_eq!(q_status, l_status);
}

/// The reply with descriptor numbers (which differ between processes) replaced by 0.
fn without_fd_numbers(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if let Some(fd) = m.get_mut("fd") {
                    *fd = json!(0);
                }
                m.values_mut().for_each(walk);
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

fn add_fd(c: &mut QmpClient, args: Value) -> Value {
    let f = tempfile::tempfile().unwrap();
    let fd = std::os::fd::AsFd::as_fd(&f);
    match c.execute_with_fd("add-fd", Some(args), fd) {
        Ok(v) => json!({ "return": v }),
        Err(ClientError::Command { class, desc }) => {
            json!({"error": {"class": class.as_str(), "desc": desc}})
        }
        Err(e) => panic!("add-fd: {e}"),
    }
}

#[test]
fn fd_sets_match_qemu() {
    let Some(qemu) = qemu("fd_sets_match_qemu") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pair::start(dir.path(), &qemu, "vm", &[], &[]);
    p.same("query-fdsets", Value::Null);
    p.same("add-fd", json!({}));
    p.same("remove-fd", json!({"fdset-id": 3}));
    p.same("remove-fd", json!({}));
    let mut fds = Vec::new();
    for args in [
        json!({"fdset-id": 3, "opaque": "rw"}),
        json!({"fdset-id": 3}),
        json!({}),
        json!({}),
        json!({"fdset-id": -1}),
    ] {
        let q = add_fd(&mut p.q, args.clone());
        let l = add_fd(&mut p.l, args.clone());
        assert_eq!(
            without_fd_numbers(q.clone()),
            without_fd_numbers(l.clone()),
            "{args}"
        );
        fds.push((q["return"]["fd"].clone(), l["return"]["fd"].clone()));
    }
    let q = p.q.execute("query-fdsets", None).unwrap();
    let l = p.l.execute("query-fdsets", None).unwrap();
    assert_eq!(without_fd_numbers(q), without_fd_numbers(l));
    // Remove the first descriptor of set 3 by number, then set 0 whole.
    let (qfd, lfd) = fds[0].clone();
    let q = reply(&mut p.q, "remove-fd", json!({"fdset-id": 3, "fd": qfd}));
    let l = reply(&mut p.l, "remove-fd", json!({"fdset-id": 3, "fd": lfd}));
    assert_eq!(q, l);
    p.same("remove-fd", json!({"fdset-id": 0}));
    p.same("remove-fd", json!({"fdset-id": 0}));
    let q = p.q.execute("query-fdsets", None).unwrap();
    let l = p.l.execute("query-fdsets", None).unwrap();
    assert_eq!(without_fd_numbers(q), without_fd_numbers(l));
}

/// Polls `query-dirty-rate` until the measurement is done; returns the reply without its
/// `start-time` (a clock reading).
fn wait_dirty_rate(c: &mut QmpClient) -> Value {
    let t = Instant::now();
    loop {
        let mut v = c.execute("query-dirty-rate", None).unwrap();
        if v["status"] == "measured" {
            v.as_object_mut().unwrap().remove("start-time");
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "never measured: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dirty_rate_matches_qemu() {
    let Some(qemu) = qemu("dirty_rate_matches_qemu") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pair::start(dir.path(), &qemu, "vm", &[], &[]);
    p.same("query-dirty-rate", Value::Null);
    p.same("calc-dirty-rate", json!({}));
    p.same("calc-dirty-rate", json!({"calc-time": 0}));
    p.same("calc-dirty-rate", json!({"calc-time": 61}));
    p.same("calc-dirty-rate", json!({"calc-time": 1, "mode": "bogus"}));
    p.same(
        "calc-dirty-rate",
        json!({"calc-time": 1, "sample-pages": 100}),
    );
    // QEMU 7.2 under TCG crashes on any request naming dirty-ring or dirty-bitmap (it asks
    // KVM about its dirty ring), so those checks are livemig's alone (texts: QEMU's source).
    for (args, text) in [
        (
            json!({"calc-time": 1, "sample-pages": 256, "mode": "dirty-bitmap"}),
            "either sample-pages or dirty-ring can be specified.",
        ),
        (
            json!({"calc-time": 1, "mode": "dirty-ring"}),
            "mode dirty-ring is not enabled, use other method instead.",
        ),
    ] {
        let e = reply(&mut p.l, "calc-dirty-rate", args);
        assert_eq!(e["error"]["desc"], text);
    }
    // Page sampling. Both VMs have 64 MiB: too small a block to sample, so the rate is 0 on
    // both (dirty_rate_sees_a_writing_guest measures a guest that writes).
    let args = json!({"calc-time": 1, "sample-pages": 256});
    p.same("calc-dirty-rate", args.clone());
    // A second request while measuring is refused (QEMU's measuring state is set by its
    // thread a moment later, so only livemig's reply is certain here).
    let e = reply(&mut p.l, "calc-dirty-rate", args);
    assert_eq!(
        e["error"]["desc"],
        "the dirty rate is already being measured."
    );
    let q = wait_dirty_rate(&mut p.q);
    let l = wait_dirty_rate(&mut p.l);
    assert_eq!(q, l);
}

#[test]
fn dirty_rate_sees_a_writing_guest() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "-m",
        "256M",
        "--smp",
        "1",
        "--working-set",
        "192M",
        "--write-rate",
        "64M",
    ];
    let mut vm = Vm::start(dir.path(), "vm", &args);
    vm.wait_status("running");
    let mut c = connect(&vm.qmp_path);
    for mode in ["page-sampling", "dirty-bitmap"] {
        c.execute(
            "calc-dirty-rate",
            Some(json!({"calc-time": 1, "mode": mode})),
        )
        .unwrap();
        let v = wait_dirty_rate(&mut c);
        assert_eq!(v["mode"], mode);
        assert!(v["dirty-rate"].as_u64().unwrap() > 0, "{mode}: {v}");
    }
    vm.quit();
}

const UUID_A: &str = "6d3a9e3e-54c2-4b7e-9a41-0c2b7c1f0a11";
const UUID_B: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

#[test]
fn query_uuid_matches_qemu() {
    let Some(qemu) = qemu("query_uuid_matches_qemu") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pair::start(dir.path(), &qemu, "a", &[], &[]);
    p.same("query-uuid", Value::Null);
    let mut p = Pair::start(
        dir.path(),
        &qemu,
        "b",
        &["-uuid", UUID_A],
        &["--uuid", UUID_A],
    );
    let q = p.same("query-uuid", Value::Null);
    assert_eq!(q, json!({"return": {"UUID": UUID_A}}));
}

/// A QEMU source with `uuid` and validate-uuid on migrates into a livemig destination with
/// `dst_uuid`; returns the destination's final query-migrate.
fn qemu_into_livemig_with_uuids(qemu: &Path, dir: &Path, uuid: &str, dst_uuid: &str) -> Value {
    let mut dst_args = NONE_MACHINE.to_vec();
    dst_args.extend(["--uuid", dst_uuid, "--incoming", "defer"]);
    let mut dst = Vm::start(dir, &format!("dst-{dst_uuid}"), &dst_args);
    let uri = format!("tcp:127.0.0.1:{}", testkit::free_tcp_port());
    dst.cmd("migrate-incoming", json!({ "uri": uri }));
    let src = QemuProc::start(qemu, dir, &format!("src-{dst_uuid}"), &["-uuid", uuid]);
    let mut c = connect(&src.qmp);
    set_caps(&mut c, &[("validate-uuid", true)]);
    c.execute("migrate", Some(json!({ "uri": uri }))).unwrap();
    common::wait_final_migration(|| dst.cmd("query-migrate", Value::Null))
}

#[test]
fn validate_uuid_checks_the_configuration_like_qemu() {
    let Some(qemu) = qemu("validate_uuid_checks_the_configuration_like_qemu") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // QEMU's configuration subsection, read by livemig: another VM's stream is refused.
    let info = qemu_into_livemig_with_uuids(&qemu, dir.path(), UUID_A, UUID_B);
    assert_eq!(info["status"], "failed", "{info}");
    let text = format!("UUID received is {UUID_A} and local is {UUID_B}");
    assert!(
        info["error-desc"].as_str().unwrap().contains(&text),
        "{info}"
    );
    let info = qemu_into_livemig_with_uuids(&qemu, dir.path(), UUID_A, UUID_A);
    assert_eq!(info["status"], "completed", "{info}");

    // livemig's subsection, read by QEMU.
    for (dst_uuid, want) in [(UUID_B, "failed"), (UUID_A, "completed")] {
        let uri = format!("tcp:127.0.0.1:{}", testkit::free_tcp_port());
        let dst = QemuProc::start(
            &qemu,
            dir.path(),
            &format!("qdst-{dst_uuid}"),
            &["-uuid", dst_uuid, "-incoming", &uri],
        );
        let mut args = NONE_MACHINE.to_vec();
        args.extend(["--uuid", UUID_A]);
        let mut src = Vm::start(dir.path(), &format!("lsrc-{dst_uuid}"), &args);
        src.wait_status("running");
        let mut c = connect(&src.qmp_path);
        set_caps(&mut c, &[("validate-uuid", true)]);
        c.execute("migrate", Some(json!({ "uri": uri }))).unwrap();
        let info = wait_final(&mut c);
        assert_eq!(info["status"], want, "{info}\n{}", src.stderr());
        drop(dst);
    }
}
