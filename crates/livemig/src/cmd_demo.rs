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

use crate::cmd_run::AccelArg;

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
    /// Bytes of RAM filled with data before the migration (software guest).
    #[arg(long, default_value = "256M")]
    pub fill: String,
    /// Guest backend: KVM with the built-in payload when /dev/kvm is usable, else software.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
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

fn spawn(
    name: &'static str,
    dir: &Path,
    a: &DemoArgs,
    kvm: bool,
    extra: &[String],
) -> anyhow::Result<Vm> {
    let qmp = dir.join(format!("{name}.qmp"));
    let exe = std::env::current_exe().context("cannot find the livemig executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["run", "-m", &a.memory, "--smp", &a.smp.to_string()]);
    if kvm {
        let serial = dir.join(format!("{name}.serial"));
        cmd.args(["--accel", "kvm", "--serial"])
            .arg(format!("file:{}", serial.display()));
    } else {
        cmd.args(["--accel", "soft", "--working-set", &a.working_set])
            .args(["--write-rate", &a.write_rate, "--pattern", "random"]);
    }
    cmd.arg("--qmp")
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
    let kvm = match a.accel {
        AccelArg::Kvm => true,
        AccelArg::Soft => false,
        AccelArg::Auto => vmm::kvm::kvm_available(),
    };
    if kvm {
        println!(
            "livemig demo: KVM guest (the built-in payload: fills 1 MiB, rewrites 256 KiB, prints a \
             counter on its serial port), {} RAM, {} vCPU(s)",
            a.memory, a.smp
        );
    } else {
        println!(
            "livemig demo: software guest, {} RAM, {} vCPUs writing {} at {}/s each",
            a.memory, a.smp, a.working_set, a.write_rate
        );
    }
    let mut dst = spawn(
        "destination",
        dir.path(),
        &a,
        kvm,
        &[
            "--incoming".into(),
            "tcp:127.0.0.1:0".into(),
            "--incoming-uri-file".into(),
            uri_file.display().to_string(),
        ],
    )?;
    let fill: Vec<String> = if kvm {
        Vec::new()
    } else {
        vec!["--fill".into(), a.fill.clone()]
    };
    let mut src = spawn("source", dir.path(), &a, kvm, &fill)?;
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
    // Let the guest run a little (the KVM payload fills its memory first).
    std::thread::sleep(Duration::from_millis(if kvm { 3000 } else { 300 }));
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
    if kvm {
        std::thread::sleep(Duration::from_millis(1000));
        print_serial_continuity(dir.path());
    }
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

/// Shows that the KVM guest's serial counter went on, on the destination, from where the
/// source stopped (no reboot).
fn print_serial_continuity(dir: &Path) {
    let read = |name: &str| {
        let text = std::fs::read_to_string(dir.join(format!("{name}.serial"))).unwrap_or_default();
        payload::Output::parse(&text)
    };
    let (src, dst) = (read("source"), read("destination"));
    let last = src.counts.last().copied();
    let first = dst.counts.first().copied();
    let newest = dst.counts.last().copied();
    match (last, first, newest) {
        (Some(l), Some(f), Some(n)) => {
            println!(
            "  guest counter   count={l} was the source's last line; the destination went on with \
             count={f} .. count={n} (boots on the destination: {}, failed self-checks: {})",
            dst.starts,
            dst.selfchecks.iter().filter(|c| matches!(c, payload::SelfCheck::Fail { .. })).count()
        )
        }
        _ => println!("  guest counter   no serial output to compare"),
    }
}
