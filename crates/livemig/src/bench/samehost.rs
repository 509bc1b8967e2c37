//! `livemig bench` case (h): same-host migration, where guest RAM changes process without
//! being copied. Downtime and total time of a running guest of 1, 4 and 16 GiB (divided by
//! `--scale`), by four methods measured side by side:
//!
//! | method | RAM | capabilities | channel |
//! | --- | --- | --- | --- |
//! | memfd handover | memfd | `x-ignore-shared`, `x-local-handover` | `unix:` (SCM_RIGHTS) |
//! | shared file | file on /dev/shm, shared | `x-ignore-shared` | `unix:` |
//! | copy | memfd | none: every populated page is sent | loopback TCP |
//! | QEMU 7.2 | `-M none`, memory-backend-file on /dev/shm, `share=on` | `x-ignore-shared` | `unix:` |
//!
//! The livemig guest is the software guest (one vCPU rewriting a small working set), plus the
//! payload on KVM at the sizes KVM accepts (`vmm::kvm::MAX_RAM`); QEMU's `-M none` has no vCPU.
//! Source and destination of a livemig migration are two machines in this process (as in the
//! other cases); QEMU's are two processes mapping the same file.
//!
//! Each method is a *chain*: the destination of one round is the source of the next, so a guest
//! is filled once and keeps running across the rounds, like a VMM restarted again and again.
//! Every round runs each method once, in an order that rotates from round to round. Figures:
//! the source's `query-migrate` `total-time` and `downtime` (milliseconds, as QEMU reports
//! them), and the wall time from `migrate` until the source completed (polled every 0.2 ms);
//! median and [min–max] over the rounds.
//!
//! Memory: a guest touches 1/32 of its RAM; the rest stays sparse (memfd and tmpfs holes, and
//! the copy sends only populated pages, so its destination stays sparse too). The /dev/shm files
//! live in a temporary directory removed at the end. A copy round that takes longer than
//! [`COPY_BUDGET`] ends the copy's rounds at that size (the report says so).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use guest_ram::Backing;
use migration::Capability;
use monitor::QmpClient;
use serde_json::{json, Value};
use vmm::machine::{Accel, Machine, MachineConfig};
use vmm::soft::{Pattern, WorkloadConfig};

use super::pair::{migrate_listening, Outcome};
use super::qemu::QemuProcess;
use super::{GIB, MIB};
use crate::size::human;

/// A copy round slower than this ends the copy's rounds at that size.
const COPY_BUDGET: Duration = Duration::from_secs(30);
/// Targets from issue 15, independent of the RAM size.
const TARGET_TOTAL_MS: f64 = 10.0;
const TARGET_DOWNTIME_MS: f64 = 5.0;
/// The payload's parameters on KVM: small, guest code is slow under nested KVM.
const KVM_CMDLINE: &str = "fill=4194304 ws=1048576";

/// One migration's figures.
#[derive(Clone, Copy, Debug)]
struct Sample {
    total_ms: f64,
    downtime_ms: f64,
    wall_ms: f64,
    sent: u64,
}

impl Sample {
    fn of(o: &Outcome) -> Sample {
        Sample {
            total_ms: o.total_ms() as f64,
            downtime_ms: o.info.downtime.unwrap_or(0) as f64,
            wall_ms: o.wall.as_secs_f64() * 1000.0,
            sent: o.transferred(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Handover,
    SharedFile,
    Copy,
    Qemu,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Handover => "memfd handover",
            Method::SharedFile => "shared file",
            Method::Copy => "copy (TCP)",
            Method::Qemu => "QEMU 7.2 x-ignore-shared",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Method::Handover => "handover",
            Method::SharedFile => "shared",
            Method::Copy => "copy",
            Method::Qemu => "qemu",
        }
    }

    fn caps(self) -> Vec<(Capability, bool)> {
        match self {
            Method::Handover => vec![
                (Capability::XIgnoreShared, true),
                (Capability::XLocalHandover, true),
            ],
            Method::SharedFile | Method::Qemu => vec![(Capability::XIgnoreShared, true)],
            Method::Copy => Vec::new(),
        }
    }
}

/// A livemig guest moving from machine to machine, one migration per round.
struct Chain {
    method: Method,
    cfg: MachineConfig,
    current: Arc<Machine>,
    dir: PathBuf,
    rounds: usize,
}

impl Chain {
    fn new(method: Method, base: &MachineConfig, shm: &Path, dir: &Path) -> anyhow::Result<Chain> {
        let mut cfg = base.clone();
        cfg.backing = match method {
            Method::SharedFile => Backing::File {
                path: shm.join(format!("{}.ram", kind(&cfg))),
                share: true,
            },
            _ => Backing::Memfd,
        };
        let current = Machine::new(cfg.clone())?;
        current.set_capabilities(&method.caps())?;
        Ok(Chain {
            method,
            cfg,
            current,
            dir: dir.to_owned(),
            rounds: 0,
        })
    }

    /// `soft-handover`, `kvm-shared`, …: names its files.
    fn name(&self) -> String {
        format!("{}-{}", kind(&self.cfg), self.method.slug())
    }

    /// Migrates the guest into a new machine, which becomes the chain's guest.
    fn round(&mut self) -> anyhow::Result<Sample> {
        self.rounds += 1;
        let dst = Machine::new(MachineConfig {
            incoming: true,
            ..self.cfg.clone()
        })?;
        dst.set_capabilities(&self.method.caps())?;
        let listen = match self.method {
            Method::Copy => "tcp:127.0.0.1:0".to_string(),
            _ => unix_uri(&self.dir, &self.name(), self.rounds),
        };
        let o = migrate_listening(&self.current, &dst, &listen, |uri| {
            Ok((uri.to_string(), ()))
        })?;
        let old = std::mem::replace(&mut self.current, dst);
        old.shutdown();
        Ok(Sample::of(&o))
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        self.current.shutdown();
    }
}

fn kind(cfg: &MachineConfig) -> &'static str {
    match cfg.accel {
        Accel::Kvm => "kvm",
        _ => "soft",
    }
}

fn unix_uri(dir: &Path, name: &str, round: usize) -> String {
    format!(
        "unix:{}",
        dir.join(format!("{name}-{round}.sock")).display()
    )
}

/// QEMU 7.2 `-M none` processes on one RAM file, moving the guest on each round.
struct QemuChain {
    dir: PathBuf,
    file: PathBuf,
    size: u64,
    current: (QemuProcess, QmpClient),
    rounds: usize,
}

impl QemuChain {
    fn new(size: u64, shm: &Path, dir: &Path) -> anyhow::Result<QemuChain> {
        let file = shm.join("qemu.ram");
        let current = Self::spawn(dir, "qemu-0", &file, size, false)?;
        Ok(QemuChain {
            dir: dir.to_owned(),
            file,
            size,
            current,
            rounds: 0,
        })
    }

    fn spawn(
        dir: &Path,
        name: &str,
        file: &Path,
        size: u64,
        incoming: bool,
    ) -> anyhow::Result<(QemuProcess, QmpClient)> {
        let mut args: Vec<String> = ["-nodefaults", "-display", "none", "-accel", "tcg"]
            .map(String::from)
            .to_vec();
        args.extend([
            "-object".into(),
            format!(
                "memory-backend-file,id=ram,size={size},mem-path={},share=on",
                file.display()
            ),
            "-machine".into(),
            "none,memory-backend=ram".into(),
        ]);
        if incoming {
            args.extend(["-incoming".into(), "defer".into()]);
        }
        let (p, mut q) = QemuProcess::start(dir, name, &args)?;
        qmp(
            &mut q,
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]}),
        )?;
        Ok((p, q))
    }

    fn round(&mut self) -> anyhow::Result<Sample> {
        self.rounds += 1;
        let name = format!("qemu-{}", self.rounds);
        let (dp, mut dq) = Self::spawn(&self.dir, &name, &self.file, self.size, true)?;
        let uri = unix_uri(&self.dir, Method::Qemu.slug(), self.rounds);
        qmp(&mut dq, "migrate-incoming", json!({ "uri": uri }))?;
        let src = &mut self.current.1;
        let t = Instant::now();
        qmp(src, "migrate", json!({ "uri": uri }))?;
        let info = loop {
            let info = qmp(src, "query-migrate", Value::Null)?;
            match info["status"].as_str() {
                Some("completed") => break info,
                Some("failed" | "cancelled") => bail!("QEMU migration {info}"),
                _ if t.elapsed() > Duration::from_secs(60) => bail!("QEMU migration stuck"),
                _ => std::thread::sleep(Duration::from_micros(200)),
            }
        };
        let wall = t.elapsed();
        // The destination runs the guest before it is used as the next source.
        let t = Instant::now();
        while qmp(&mut dq, "query-status", Value::Null)?["status"] != "running" {
            if t.elapsed() > Duration::from_secs(10) {
                bail!("the QEMU destination does not run");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.current = (dp, dq);
        let ms = |k: &str| info[k].as_u64().unwrap_or(0) as f64;
        Ok(Sample {
            total_ms: ms("total-time"),
            downtime_ms: ms("downtime"),
            wall_ms: wall.as_secs_f64() * 1000.0,
            sent: info["ram"]["transferred"].as_u64().unwrap_or(0),
        })
    }
}

fn qmp(q: &mut QmpClient, cmd: &str, args: Value) -> anyhow::Result<Value> {
    let args = (!args.is_null()).then_some(args);
    q.execute(cmd, args).with_context(|| format!("QEMU {cmd}"))
}

/// Median, min and max.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.as_slice() {
        [] => (0.0, 0.0, 0.0),
        s => (s[s.len() / 2], s[0], s[s.len() - 1]),
    }
}

fn report(label: &str, samples: &[Sample]) {
    let field = |f: fn(&Sample) -> f64| spread(&samples.iter().map(f).collect::<Vec<_>>());
    let (t, t0, t1) = field(|s| s.total_ms);
    let (d, d0, d1) = field(|s| s.downtime_ms);
    let (w, w0, w1) = field(|s| s.wall_ms);
    let (b, _, _) = field(|s| s.sent as f64);
    println!(
        "  {label:<36} total {t:>5.0} ms [{t0:.0}–{t1:.0}]  downtime {d:>4.0} ms [{d0:.0}–{d1:.0}]  \
         wall {w:>8.2} ms [{w0:.2}–{w1:.2}]  sent {}  ({} rounds)",
        human(b as u64),
        samples.len()
    );
}

/// What a method measured at one size, or why it stopped.
struct Series {
    label: String,
    samples: Vec<Sample>,
    stopped: Option<String>,
}

enum Runner {
    Livemig(Chain),
    Qemu(QemuChain),
}

impl Runner {
    fn round(&mut self) -> anyhow::Result<Sample> {
        match self {
            Runner::Livemig(c) => c.round(),
            Runner::Qemu(c) => c.round(),
        }
    }
}

/// Runs `rounds` alternating rounds over `runners`; a copy slower than [`COPY_BUDGET`] stops.
fn alternate(mut runners: Vec<(Series, Runner)>, rounds: usize) -> anyhow::Result<Vec<Series>> {
    for round in 0..rounds {
        let n = runners.len();
        for i in 0..n {
            let (series, runner) = &mut runners[(round + i) % n];
            if series.stopped.is_some() {
                continue;
            }
            let sample = runner
                .round()
                .with_context(|| format!("{} round {}", series.label, round + 1))?;
            let copy = matches!(runner, Runner::Livemig(c) if c.method == Method::Copy);
            if copy && sample.wall_ms > COPY_BUDGET.as_secs_f64() * 1000.0 {
                series.stopped = Some(format!(
                    "stopped after round {}: {:.1} s per copy",
                    round + 1,
                    sample.wall_ms / 1000.0
                ));
            }
            series.samples.push(sample);
        }
    }
    Ok(runners.into_iter().map(|(s, _)| s).collect())
}

fn series(label: String) -> Series {
    Series {
        label,
        samples: Vec::new(),
        stopped: None,
    }
}

/// Measures one RAM size: the software guest by three methods, QEMU if installed, and the
/// payload on KVM where KVM takes that size.
fn one_size(size: u64, rounds: usize, qemu: bool) -> anyhow::Result<Vec<Series>> {
    let dir = tempfile::tempdir()?;
    let shm = shm_dir()?;
    let soft = MachineConfig {
        memory: size,
        fill: size / 32,
        workload: Some(WorkloadConfig {
            vcpus: 1,
            working_set: (16 * MIB).min(size / 32),
            write_rate: Some(64 * MIB),
            pattern: Pattern::Random,
            seed: 15,
            ..Default::default()
        }),
        ..Default::default()
    };
    let kvm = MachineConfig {
        memory: size,
        accel: Accel::Kvm,
        cmdline: Some(KVM_CMDLINE.into()),
        workload: Some(WorkloadConfig {
            vcpus: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut runners = Vec::new();
    let methods = [Method::Handover, Method::SharedFile, Method::Copy];
    for m in methods {
        let label = format!("soft {}", m.name());
        runners.push((
            series(label),
            Runner::Livemig(Chain::new(m, &soft, shm.path(), dir.path())?),
        ));
    }
    if qemu {
        runners.push((
            series(Method::Qemu.name().into()),
            Runner::Qemu(QemuChain::new(size, shm.path(), dir.path())?),
        ));
    }
    if size <= vmm::kvm::MAX_RAM && vmm::kvm::kvm_available() {
        for m in methods {
            let label = format!("KVM {}", m.name());
            runners.push((
                series(label),
                Runner::Livemig(Chain::new(m, &kvm, shm.path(), dir.path())?),
            ));
        }
        // Let the payload boot and count before its first migration.
        std::thread::sleep(Duration::from_secs(1));
    }
    alternate(runners, rounds)
}

/// A scratch directory on /dev/shm (tmpfs), removed when dropped.
fn shm_dir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::tempdir_in("/dev/shm").context("a scratch directory on /dev/shm")
}

/// Runs case (h).
pub(super) fn case_h(scale: u64, rounds: usize) -> anyhow::Result<()> {
    let qemu = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    println!(
        "(h) same-host migration of a running guest (touching 1/32 of its RAM), {rounds} \
         alternating rounds; median [min–max]; targets: total <= {TARGET_TOTAL_MS} ms, downtime \
         <= {TARGET_DOWNTIME_MS} ms at any size"
    );
    if !qemu {
        println!("  SKIP QEMU: qemu-system-x86_64 not installed");
    }
    if !vmm::kvm::kvm_available() {
        println!("  SKIP KVM: /dev/kvm not available");
    }
    let mut all = Vec::new();
    for gib in [1, 4, 16] {
        let size = (gib * GIB / scale).max(64 * MIB);
        println!(" {} guest:", human(size));
        if size > vmm::kvm::MAX_RAM {
            println!(
                "  (KVM: not measured, the KVM machine takes at most {})",
                human(vmm::kvm::MAX_RAM)
            );
        }
        for s in one_size(size, rounds, qemu)? {
            report(&s.label, &s.samples);
            if let Some(why) = &s.stopped {
                println!("    {}: {why}", s.label);
            }
            all.push((size, s));
        }
    }
    println!("  => targets (median total <= {TARGET_TOTAL_MS} ms and downtime <= {TARGET_DOWNTIME_MS} ms):");
    for (size, s) in all.iter().filter(|(_, s)| !s.label.contains("copy")) {
        let (t, _, _) = spread(&s.samples.iter().map(|x| x.total_ms).collect::<Vec<_>>());
        let (d, _, _) = spread(&s.samples.iter().map(|x| x.downtime_ms).collect::<Vec<_>>());
        let met = t <= TARGET_TOTAL_MS && d <= TARGET_DOWNTIME_MS;
        println!(
            "     {:>9} {:<36} {}",
            human(*size),
            s.label,
            if met { "met" } else { "NOT met" }
        );
    }
    Ok(())
}
