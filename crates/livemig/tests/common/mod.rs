//! Helpers for the end-to-end tests: `livemig run` processes driven over QMP.

#![allow(dead_code)]

pub mod guest;
pub mod postcopy_switch;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use monitor::QmpClient;
use serde_json::{json, Value};

/// A `livemig run` child process with a QMP socket; killed on drop.
pub struct Vm {
    pub child: Option<Child>,
    pub qmp_path: PathBuf,
    pub qmp: Option<QmpClient>,
    pub stderr_path: PathBuf,
    incoming: bool,
}

pub const SMALL: &[&str] = &[
    "-m",
    "64M",
    "--smp",
    "2",
    "--working-set",
    "8M",
    "--write-rate",
    "32M",
    "--pattern",
    "random",
];

impl Vm {
    /// Starts `livemig run ARGS --qmp unix:DIR/NAME.qmp` and connects to its QMP socket.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Vm {
        Self::start_with(dir, name, args, |_| {})
    }

    /// Like [`Vm::start`], letting `configure` adjust the command (e.g. to pass an fd).
    pub fn start_with(
        dir: &Path,
        name: &str,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Vm {
        Self::start_wrapped(dir, name, &[], args, configure)
    }

    /// Like [`Vm::start_with`], run through `wrapper` (e.g. `ip netns exec NS`).
    pub fn start_wrapped(
        dir: &Path,
        name: &str,
        wrapper: &[&str],
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Vm {
        let qmp_path = dir.join(format!("{name}.qmp"));
        let stderr_path = dir.join(format!("{name}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let bin = env!("CARGO_BIN_EXE_livemig");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("run").args(args);
        // The software guest unless a test asks for KVM (`auto` would pick KVM where usable).
        if !args.contains(&"--accel") {
            cmd.args(["--accel", "soft"]);
        }
        cmd.arg("--qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        configure(&mut cmd);
        let child = cmd.spawn().expect("spawn livemig run");
        let mut vm = Vm {
            child: Some(child),
            qmp_path,
            qmp: None,
            stderr_path,
            incoming: args.contains(&"--incoming"),
        };
        let t = Instant::now();
        while !vm.qmp_path.exists() {
            if let Some(st) = vm.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{name} exited early ({st}): {}", vm.stderr());
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{name}: no QMP socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        vm.qmp = Some(retry_connect(|| QmpClient::connect_unix(&vm.qmp_path)));
        vm
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn qmp(&mut self) -> &mut QmpClient {
        self.qmp.as_mut().expect("QMP connected")
    }

    /// Executes a command that must succeed.
    pub fn cmd(&mut self, name: &str, args: Value) -> Value {
        let args = if args.is_null() { None } else { Some(args) };
        match self.qmp().execute(name, args) {
            Ok(v) => v,
            Err(e) => panic!("{name} failed: {e}\nstderr of this VM:\n{}", self.stderr()),
        }
    }

    /// Executes a command that must fail; returns the error text.
    pub fn cmd_err(&mut self, name: &str, args: Value) -> String {
        let args = if args.is_null() { None } else { Some(args) };
        match self.qmp().execute(name, args) {
            Ok(v) => panic!("{name} unexpectedly succeeded: {v}"),
            Err(e) => e.to_string(),
        }
    }

    pub fn status(&mut self) -> String {
        self.cmd("query-status", Value::Null)["status"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn enable_verify(&mut self) {
        self.cmd(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "ram-verify", "state": true}, {"capability": "events", "state": true}]}),
        );
    }

    /// [`wait_migration`](Self::wait_migration), asserting it completed (the failure shows
    /// both sides' stderr).
    pub fn wait_completed(&mut self, dst: &Vm) -> Value {
        let info = self.wait_migration();
        assert_eq!(
            info["status"],
            "completed",
            "{info}\nsource: {}\ndestination: {}",
            self.stderr(),
            dst.stderr()
        );
        info
    }

    /// Polls `query-migrate` until the status is final; returns the reply.
    pub fn wait_migration(&mut self) -> Value {
        let t = Instant::now();
        loop {
            let info = self.cmd("query-migrate", Value::Null);
            if matches!(
                info["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            ) {
                return info;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "migration stuck: {info}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the run state is `want`.
    pub fn wait_status(&mut self, want: &str) {
        let t = Instant::now();
        while self.status() != want {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "never reached {want}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `quit` and waits for the process.
    pub fn quit(mut self) -> Output {
        let _ = self.qmp().execute("quit", None);
        self.wait_exit()
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self) -> Output {
        let mut child = self.child.take().expect("running");
        let t = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().unwrap();
        Output {
            status: out.status,
            stdout: out.stdout,
            stderr: self.stderr().into_bytes(),
        }
    }

    /// Whether this VM was started as a migration destination.
    pub fn is_incoming(&self) -> bool {
        self.incoming
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a destination listening on `uri` (port 0 allowed); returns it and the real URI.
pub fn destination(dir: &Path, name: &str, args: &[&str], uri: &str) -> (Vm, String) {
    let uri_file = dir.join(format!("{name}.uri"));
    let uri_file_s = uri_file.display().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--incoming", uri, "--incoming-uri-file", &uri_file_s]);
    let mut vm = Vm::start(dir, name, &all);
    let t = Instant::now();
    while !uri_file.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{name} did not listen: {}",
            vm.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // A socket destination waits for its source; a file: one may already have loaded.
    if uri.starts_with("tcp:") || uri.starts_with("unix:") {
        assert_eq!(vm.status(), "inmigrate");
    }
    (vm, std::fs::read_to_string(uri_file).unwrap())
}

/// Calls `query` (a `query-migrate`) until the status is final; returns the reply.
pub fn wait_final_migration(mut query: impl FnMut() -> Value) -> Value {
    let t = Instant::now();
    loop {
        let info = query();
        if matches!(
            info["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            return info;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "migration stuck: {info}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects with `connect`, retrying for a while: a server's socket file appears at bind(),
/// a moment before it listens.
pub fn retry_connect<T, E: std::fmt::Display>(mut connect: impl FnMut() -> Result<T, E>) -> T {
    let t = Instant::now();
    loop {
        match connect() {
            Ok(c) => return c,
            Err(e) if t.elapsed() > Duration::from_secs(20) => panic!("connect: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Sets capabilities `caps` (all on) and parameters `params` over QMP.
pub fn configure(vm: &mut Vm, caps: &[&str], params: Value) {
    if !caps.is_empty() {
        let list: Vec<Value> = caps
            .iter()
            .map(|c| json!({"capability": c, "state": true}))
            .collect();
        vm.cmd("migrate-set-capabilities", json!({ "capabilities": list }));
    }
    if !params.is_null() {
        vm.cmd("migrate-set-parameters", params);
    }
}

/// Starts a destination with `--incoming defer`, configures it (capabilities such as multifd
/// must be on before it listens, as with QEMU), then listens on a free loopback port; returns
/// it and the URI to migrate to.
pub fn deferred_destination(
    dir: &Path,
    name: &str,
    args: &[&str],
    caps: &[&str],
    params: Value,
) -> (Vm, String) {
    let mut all = args.to_vec();
    all.extend(["--incoming", "defer"]);
    let mut vm = Vm::start(dir, name, &all);
    configure(&mut vm, caps, params);
    vm.cmd("migrate-incoming", json!({"uri": "tcp:127.0.0.1:0"}));
    let listening = vm.cmd("query-migrate", Value::Null);
    let port = listening["socket-address"][0]["port"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (vm, format!("tcp:127.0.0.1:{port}"))
}

/// Like [`deferred_destination`], listening on `uri` as given (e.g. `unix:PATH`); the
/// engine's informational messages go to its stderr too (`LIVEMIG_LOG=migration=info`).
pub fn deferred_destination_on(
    dir: &Path,
    name: &str,
    args: &[&str],
    caps: &[&str],
    uri: &str,
) -> Vm {
    let mut all = args.to_vec();
    all.extend(["--incoming", "defer"]);
    let mut vm = Vm::start_with(dir, name, &all, |c| {
        c.env("LIVEMIG_LOG", "migration=info");
    });
    configure(&mut vm, caps, Value::Null);
    vm.cmd("migrate-incoming", json!({ "uri": uri }));
    vm
}

/// True when nobody holds a write lock on the image `img`: `qemu-img info` fails while a
/// process has it locked for writing (the caller checked that qemu-img is installed).
pub fn image_unlocked(img: &Path) -> bool {
    let out = Command::new("qemu-img")
        .args(["info", img.to_str().unwrap()])
        .output()
        .expect("run qemu-img");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("lock"),
        "qemu-img info failed for another reason: {stderr}"
    );
    out.status.success()
}
