//! One fault-injection case: a source and a destination process, a [`FaultRelay`] between
//! them stopped in a [`Phase`], an [`Action`], then the [`Outcome`] and its checks.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::{FaultRelay, Trigger};

use crate::common::{configure, deferred_destination, Vm};

const MIB: u64 = 1 << 20;

/// Where the stream is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The destination has the header and part of the configuration.
    Setup,
    /// The first pass over RAM is under way (a quarter of it sent).
    FirstPass,
    /// The third or a later pass (the guest dirties faster than the link).
    LaterPass,
    /// The guest is stopped on the source; the destination has RAM but no device state.
    Switchover,
    /// The destination is in the middle of the device sections.
    DeviceState,
    /// The destination has the whole stream and has answered; its answer is held.
    AfterEof,
}

/// What happens while the stream is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL the destination.
    KillDst,
    /// SIGKILL the source.
    KillSrc,
    /// `migrate_cancel` on the source.
    Cancel,
    /// Both TCP connections closed at once.
    Cut,
}

/// Every phase, in stream order.
pub const PHASES: &[Phase] = &[
    Phase::Setup,
    Phase::FirstPass,
    Phase::LaterPass,
    Phase::Switchover,
    Phase::DeviceState,
    Phase::AfterEof,
];

/// Every action.
pub const ACTIONS: &[Action] = &[
    Action::KillDst,
    Action::KillSrc,
    Action::Cancel,
    Action::Cut,
];

/// Migration settings of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub multifd: bool,
    pub xbzrle: bool,
    pub block: bool,
    pub return_path: bool,
}

impl Default for Variant {
    fn default() -> Self {
        Variant {
            multifd: false,
            xbzrle: false,
            block: false,
            return_path: true,
        }
    }
}

/// One side after the fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SideState {
    /// The guest runs here.
    Running,
    /// The process lives, the guest does not run (its run state).
    Stopped(String),
    /// Killed by the test, or exited (a destination whose load failed exits, as QEMU's).
    Gone,
}

/// Where the guest is after a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub source: SideState,
    pub destination: SideState,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |st: &SideState| match st {
            SideState::Running => "running".to_string(),
            SideState::Stopped(r) => format!("stopped ({r})"),
            SideState::Gone => "gone".to_string(),
        };
        write!(
            f,
            "source {}, destination {}",
            s(&self.source),
            s(&self.destination)
        )
    }
}

/// `MIG_RP_MSG_SHUT` with status 0 on the return path: the destination's "I have it".
const SHUT_OK: [u8; 8] = [0, 1, 0, 4, 0, 0, 0, 0];

pub fn guest_args(dir: &Path, v: Variant, image: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "-m",
        "32M",
        "--smp",
        "1",
        "--working-set",
        "4M",
        "--write-rate",
        "16M",
        "--pattern",
        "random",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if v.block {
        let path = dir.join(image);
        a.push("--drive".into());
        a.push(format!("file={},format=qcow2,id=drive0", path.display()));
    }
    a
}

pub fn qemu_img_create(path: &Path) {
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("16M")
        .status()
        .expect("qemu-img");
    assert!(ok.success());
}

pub fn caps(v: Variant) -> Vec<&'static str> {
    let mut c = vec!["ram-verify"];
    if v.multifd {
        c.push("multifd");
    }
    if v.xbzrle {
        c.push("xbzrle");
    }
    c
}

fn trigger(phase: Phase, v: Variant) -> Trigger {
    match phase {
        Phase::Setup => Trigger::Bytes(24),
        Phase::FirstPass | Phase::LaterPass => Trigger::Manual,
        // The FULL section headers of the first device and of `globalstate`.
        Phase::Switchover => Trigger::Stream(b"\x08soft-cpu".to_vec()),
        Phase::DeviceState => Trigger::Stream(b"\x0bglobalstate".to_vec()),
        Phase::AfterEof if v.return_path => Trigger::Reply(SHUT_OK.to_vec()),
        // Without a return path: after EOF, before the VMDESCRIPTION trailer.
        Phase::AfterEof => Trigger::Stream(b"{\"page_size\"".to_vec()),
    }
}

fn ram_stat(src: &mut Vm, key: &str) -> u64 {
    src.cmd("query-migrate", Value::Null)["ram"][key]
        .as_u64()
        .unwrap_or(0)
}

/// Holds the relay once the source's RAM statistics say the phase has come.
fn hold_in_pass(src: &mut Vm, relay: &FaultRelay, phase: Phase) {
    let t = Instant::now();
    loop {
        let reached = match phase {
            Phase::FirstPass => ram_stat(src, "transferred") >= 4 * MIB,
            _ => ram_stat(src, "dirty-sync-count") >= 3,
        };
        if reached {
            relay.hold();
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{phase:?} never came: {}",
            src.cmd("query-migrate", Value::Null)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn side_state(vm: &mut Vm) -> SideState {
    let Some(child) = vm.child.as_mut() else {
        return SideState::Gone;
    };
    if child.try_wait().unwrap().is_some() {
        return SideState::Gone;
    }
    match vm.qmp().execute("query-status", None) {
        Ok(v) if v["running"] == true => SideState::Running,
        Ok(v) if v["status"] == "shutdown" => {
            // Exiting (a destination whose load failed).
            vm.wait_exit();
            SideState::Gone
        }
        Ok(v) => SideState::Stopped(v["status"].as_str().unwrap_or("?").to_string()),
        Err(_) => SideState::Gone,
    }
}

/// Waits until a living side's migration is over (a failed destination exits).
pub fn settle(vm: &mut Vm, ctx: &str) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        let Some(child) = vm.child.as_mut() else {
            return;
        };
        if child.try_wait().unwrap().is_some() {
            return;
        }
        let exits_on_failure = vm.is_incoming();
        match vm.qmp().execute("query-migrate", None) {
            Ok(v) if matches!(v["status"].as_str(), Some("completed" | "cancelled")) => return,
            // A destination whose load failed exits (as QEMU's): wait for that.
            Ok(v) if v["status"] == "failed" && !exits_on_failure => return,
            Ok(_) => {}
            Err(_) if !exits_on_failure => return,
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let info = vm.qmp().execute("query-migrate", None);
    panic!(
        "{ctx}: the migration never ended: {info:?}\n{}",
        vm.stderr()
    );
}

/// The one window where no side runs the guest on its own: the destination reported, the
/// source read the report and sent its commit, and the destination died before the commit
/// reached it. The source cannot tell that from a destination that started the guest, so it
/// holds the guest paused (`postmigrate`); the operator resumes it with `cont` (checked).
fn held_on_source(phase: Phase, o: &Outcome) -> bool {
    phase == Phase::AfterEof
        && o.source == SideState::Stopped("postmigrate".into())
        && o.destination == SideState::Gone
}

/// Whether the outcome is one of those this design accepts for the case.
fn check(v: Variant, phase: Phase, action: Action, o: &Outcome, dst: &mut Vm) {
    let ctx = format!("{v:?} {phase:?} {action:?}: {o}");
    assert!(
        !(o.source == SideState::Running && o.destination == SideState::Running),
        "split brain: {ctx}"
    );
    if o.destination == SideState::Running {
        // ram-verify (and disk-verify) proved the destination's copy before it started.
        let info = dst.cmd("query-migrate", Value::Null);
        assert_eq!(info["status"], "completed", "{ctx}: {info}");
    }
    if action == Action::KillSrc {
        return; // the guest may die with its process; the destination never runs a partial one
    }
    let somewhere = o.source == SideState::Running || o.destination == SideState::Running;
    // Without a return path the source completes when its last byte is written (QEMU's
    // behaviour): a destination lost after that leaves the guest nowhere. That is why livemig
    // turns return-path on by default.
    let qemu_window = !v.return_path
        && matches!(
            phase,
            Phase::Switchover | Phase::DeviceState | Phase::AfterEof
        );
    assert!(
        somewhere || qemu_window || held_on_source(phase, o),
        "guest lost: {ctx}"
    );
}

/// Migrates a surviving source again, to a fresh destination (re-using the destination image,
/// so a journal left by a killed destination is replayed first), and checks it completes.
pub fn retry(dir: &Path, v: Variant, src: &mut Vm) {
    let args = guest_args(dir, v, "dst.qcow2");
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (mut dst2, uri) = deferred_destination(dir, "dst2", &args, &caps(v), Value::Null);
    src.cmd(
        "migrate-set-parameters",
        json!({"max-bandwidth": 1u64 << 30}),
    );
    src.cmd("migrate", json!({"uri": uri, "blk": v.block}));
    let info = src.wait_migration();
    assert_eq!(
        info["status"],
        "completed",
        "retry after the fault: {info}\n{}\n{}",
        src.stderr(),
        dst2.stderr()
    );
    dst2.wait_status("running");
    if v.block {
        assert!(!journal(dir).exists(), "a journal survived the retry");
    }
}

pub fn journal(dir: &Path) -> PathBuf {
    dir.join(".dst.qcow2.livemig-undo")
}

/// Runs one case and checks its outcome; returns it for the table.
pub fn run_case(v: Variant, phase: Phase, action: Action) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    if v.block {
        qemu_img_create(&dir.join("src.qcow2"));
        qemu_img_create(&dir.join("dst.qcow2"));
    }
    let mut sargs = guest_args(dir, v, "src.qcow2");
    sargs.extend(["--fill", "16M"].map(String::from));
    if v.block {
        sargs.extend(["--disk-write-rate", "512"].map(String::from));
    }
    let dargs = guest_args(dir, v, "dst.qcow2");
    let sargs: Vec<&str> = sargs.iter().map(|s| s.as_str()).collect();
    let dargs: Vec<&str> = dargs.iter().map(|s| s.as_str()).collect();
    let dst_image = v
        .block
        .then(|| std::fs::read(dir.join("dst.qcow2")).unwrap());

    let mut src = Vm::start(dir, "src", &sargs);
    let (mut dst, uri) = deferred_destination(dir, "dst", &dargs, &caps(v), Value::Null);
    let slow = matches!(phase, Phase::FirstPass | Phase::LaterPass);
    let mut params = json!({ "max-bandwidth": if slow { 16 * MIB } else { 1 << 30 } });
    if v.multifd {
        params["multifd-channels"] = json!(2);
    }
    let mut c = caps(v);
    if !v.return_path {
        src.cmd(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "return-path", "state": false}]}),
        );
    }
    c.push("events");
    configure(&mut src, &c, params);
    src.wait_status("running");

    let relay = FaultRelay::start(uri.strip_prefix("tcp:").unwrap(), trigger(phase, v));
    src.cmd("migrate", json!({"uri": relay.uri(), "blk": v.block}));
    if matches!(phase, Phase::FirstPass | Phase::LaterPass) {
        hold_in_pass(&mut src, &relay, phase);
    }
    assert!(
        relay.wait_triggered(Duration::from_secs(60)),
        "{phase:?} never reached ({} bytes): {}\n{}",
        relay.forwarded(),
        src.stderr(),
        dst.stderr()
    );

    match action {
        Action::KillDst => {
            dst.kill();
            relay.release();
        }
        Action::KillSrc => {
            src.kill();
            relay.release();
        }
        Action::Cancel => {
            let _ = src.qmp().execute("migrate_cancel", None);
            relay.release();
        }
        Action::Cut => relay.cut(),
    }
    let ctx = format!("{v:?} {phase:?} {action:?}");
    settle(&mut src, &format!("{ctx}, source"));
    settle(&mut dst, &format!("{ctx}, destination"));
    let outcome = Outcome {
        source: side_state(&mut src),
        destination: side_state(&mut dst),
    };
    check(v, phase, action, &outcome, &mut dst);
    if held_on_source(phase, &outcome) {
        // Nothing is lost: the paused source resumes.
        src.cmd("cont", Value::Null);
        src.wait_status("running");
    }

    if side_state(&mut src) == SideState::Running && outcome.destination != SideState::Running {
        if let Some(before) = &dst_image {
            if outcome.destination == SideState::Gone && !journal(dir).exists() {
                // A destination that failed and exited put its image back.
                assert_eq!(&std::fs::read(dir.join("dst.qcow2")).unwrap(), before);
            }
        }
        dst.kill();
        drop(relay);
        retry(dir, v, &mut src);
    }
    outcome
}
