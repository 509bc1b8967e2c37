//! `livemig demo`: the whole flow on one machine — a destination process listening on
//! loopback, a source process running a guest, a live migration between them driven over QMP,
//! and the statistics. Everything happens through the same monitors an operator would use.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use monitor::QmpClient;
use serde_json::{json, Value};

/// Arguments of `livemig demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Guest RAM size.
    #[arg(short = 'm', long, default_value = "512M")]
    pub memory: String,
    /// vCPUs of the software guest.
    #[arg(long, default_value_t = 2)]
    pub smp: usize,
    /// Bytes the guest keeps rewriting.
    #[arg(long, default_value = "32M")]
    pub working_set: String,
    /// Dirtying rate per vCPU (bytes/s).
    #[arg(long, default_value = "64M")]
    pub write_rate: String,
    /// Bytes of RAM filled with data before the migration.
    #[arg(long, default_value = "256M")]
    pub fill: String,
}

/// A child `livemig run` that is killed if the demo ends early.
struct Vm {
    name: &'static str,
    child: Child,
    qmp: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn(name: &'static str, dir: &Path, a: &DemoArgs, extra: &[String]) -> anyhow::Result<Vm> {
    let qmp = dir.join(format!("{name}.qmp"));
    let exe = std::env::current_exe().context("cannot find the livemig executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["run", "-m", &a.memory, "--smp", &a.smp.to_string()])
        .args([
            "--working-set",
            &a.working_set,
            "--write-rate",
            &a.write_rate,
        ])
        .args(["--pattern", "random"])
        .arg("--qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .args(extra)
        .stdin(Stdio::null());
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start the {name} process"))?;
    Ok(Vm { name, child, qmp })
}

fn wait_for(path: &Path, vm: &mut Vm) -> anyhow::Result<()> {
    let t = Instant::now();
    while !path.exists() {
        if let Some(status) = vm.child.try_wait()? {
            bail!("the {} process exited early ({status})", vm.name);
        }
        if t.elapsed() > Duration::from_secs(20) {
            bail!("the {} process did not create {}", vm.name, path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn connect(vm: &mut Vm) -> anyhow::Result<QmpClient> {
    let path = vm.qmp.clone();
    wait_for(&path, vm)?;
    // The socket file appears at bind(), a moment before listen(): retry briefly.
    let t = Instant::now();
    loop {
        match QmpClient::connect_unix(&path) {
            Ok(c) => return Ok(c),
            Err(e) if t.elapsed() > Duration::from_secs(5) => {
                return Err(e).with_context(|| format!("cannot connect to {}", path.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn num(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

/// Runs the demo.
pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let uri_file = dir.path().join("incoming-uri");
    println!(
        "livemig demo: software guest, {} RAM, {} vCPUs writing {} at {}/s each",
        a.memory, a.smp, a.working_set, a.write_rate
    );
    let mut dst = spawn(
        "destination",
        dir.path(),
        &a,
        &[
            "--incoming".into(),
            "tcp:127.0.0.1:0".into(),
            "--incoming-uri-file".into(),
            uri_file.display().to_string(),
        ],
    )?;
    let mut src = spawn("source", dir.path(), &a, &["--fill".into(), a.fill.clone()])?;
    let mut src_qmp = connect(&mut src)?;
    let mut dst_qmp = connect(&mut dst)?;
    wait_for(&uri_file, &mut dst)?;
    let uri = std::fs::read_to_string(&uri_file)?;
    println!(
        "destination pid {} listening on {uri}; source pid {}",
        dst.child.id(),
        src.child.id()
    );
    src_qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [
            {"capability": "events", "state": true},
            {"capability": "ram-verify", "state": true}
        ]})),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let before = src_qmp.execute("query-status", None)?;
    println!(
        "source guest is {} — migrating to {uri}",
        before["status"].as_str().unwrap_or("?")
    );
    let info = monitor::migrate_with_progress(&format!("unix:{}", src.qmp.display()), &uri, true)?;
    let status = info["status"].as_str().unwrap_or("unknown");
    if status != "completed" {
        bail!(
            "migration {status}: {}",
            info["error-desc"].as_str().unwrap_or("")
        );
    }
    let t = Instant::now();
    let dst_status = loop {
        let s = dst_qmp.execute("query-status", None)?;
        if s["status"] == "running" || t.elapsed() > Duration::from_secs(10) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let src_status = src_qmp.execute("query-status", None)?;
    let ram = &info["ram"];
    println!("migration completed:");
    println!(
        "  total time      {} ms (setup {} ms)",
        num(&info, &["total-time"]),
        num(&info, &["setup-time"])
    );
    println!(
        "  downtime        {} ms (includes hashing guest RAM for ram-verify on the source; \
         `livemig bench` measures downtime without it)",
        num(&info, &["downtime"])
    );
    println!(
        "  transferred     {} KiB at {:.1} Mbit/s",
        num(ram, &["transferred"]) / 1024,
        ram["mbps"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  pages           {} normal, {} zero",
        num(ram, &["normal"]),
        num(ram, &["duplicate"])
    );
    println!(
        "  passes          {} (dirty-sync-count)",
        num(ram, &["dirty-sync-count"])
    );
    println!("  RAM check       destination RAM verified identical to the source at switchover (ram-verify)");
    println!(
        "  source          {}",
        src_status["status"].as_str().unwrap_or("?")
    );
    println!(
        "  destination     {}",
        dst_status["status"].as_str().unwrap_or("?")
    );
    println!(
        "query-migrate on the source:\n{}",
        serde_json::to_string_pretty(&info)?
    );
    for (qmp, vm) in [(&mut src_qmp, &mut src), (&mut dst_qmp, &mut dst)] {
        let _ = qmp.execute("quit", None);
        let _ = vm.child.wait();
    }
    if dst_status["status"] != "running" {
        bail!("the destination guest is not running");
    }
    Ok(ExitCode::SUCCESS)
}
