//! `livemig bench` case (a): 2 GiB (÷ scale) of incompressible RAM, guest paused, over
//! loopback TCP — livemig beside QEMU 7.2 on the identical bytes, and beside a raw TCP copy
//! of them (the ceiling for one stream).
//!
//! The source's RAM is one file in `/dev/shm` mapped shared: livemig's source VM maps it, and
//! so does QEMU's source (`-M none` with a `memory-backend-file` on the same path), so both
//! send exactly the same bytes. Every destination — the raw copy's, QEMU's and livemig's —
//! is a fresh file in `/dev/shm` mapped shared, so all pay the same first-touch cost, and is
//! compared with the source after the run (digest for livemig, byte for byte for QEMU), then
//! deleted. Both implementations get the same parameters (no bandwidth limit, 2 multifd
//! channels) and the return path on, so a source completes once its destination has loaded
//! everything; the time is the source's `total-time`.
//!
//! Each round runs, in this order: raw copy (into a fresh and into a preallocated file), then for 1 channel and for multifd×2: QEMU,
//! livemig, QEMU with a preallocated destination, livemig with one — alternating, so the
//! host's noise hits each alike.
//!
//! **Preallocation.** Under this nested KVM a fresh page costs more to fault in and zero than
//! to receive, so a destination spends most of a migration allocating. QEMU's `-mem-prealloc`
//! (livemig's `run --mem-prealloc`) moves that cost before the migration: the destination
//! allocates all its RAM at start, while it waits for the stream. The time is then not in
//! the migration's total, but the destination holds all of its memory from the start, so the
//! rows with it are labelled and the time livemig's allocation took is printed beside them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use guest_ram::{Backing, RamBlock};
use migration::{Capability, ParameterUpdate};
use serde_json::{json, Value};
use vmm::machine::{Machine, MachineConfig};

use super::pair::{migrate, Outcome};
use super::plot::Timeline;
use super::qemu::{self, QemuVm};
use super::table::Table;
use super::{fill_random, raw_tcp_copy, GIB};
use crate::size::human;
use crate::timeline::Sample;

/// Both implementations' own bandwidth limit, out of the way.
const NO_LIMIT: u64 = 100_000_000_000;

pub(super) const RAW: &str = "raw TCP copy";
const RAW_PRE: &str = "raw TCP copy, prealloc";
pub(super) const QEMU_SINGLE: &str = "QEMU 7.2, 1 channel";
pub(super) const OURS_SINGLE: &str = "livemig, 1 channel";
pub(super) const QEMU_MULTIFD: &str = "QEMU 7.2, multifd x2";
pub(super) const OURS_MULTIFD: &str = "livemig, multifd x2";
const QEMU_SINGLE_PRE: &str = "QEMU 7.2, 1 channel, prealloc";
const OURS_SINGLE_PRE: &str = "livemig, 1 channel, prealloc";
const QEMU_MULTIFD_PRE: &str = "QEMU 7.2, multifd x2, prealloc";
const OURS_MULTIFD_PRE: &str = "livemig, multifd x2, prealloc";

/// The rows of one way of migrating: (QEMU's, livemig's).
fn rows(multifd: bool, prealloc: bool) -> (&'static str, &'static str) {
    match (multifd, prealloc) {
        (false, false) => (QEMU_SINGLE, OURS_SINGLE),
        (true, false) => (QEMU_MULTIFD, OURS_MULTIFD),
        (false, true) => (QEMU_SINGLE_PRE, OURS_SINGLE_PRE),
        (true, true) => (QEMU_MULTIFD_PRE, OURS_MULTIFD_PRE),
    }
}

fn params() -> Value {
    json!({"max-bandwidth": NO_LIMIT, "multifd-channels": 2})
}

fn configure(m: &Machine, multifd: bool) -> anyhow::Result<()> {
    m.set_capabilities(&[(Capability::Multifd, multifd)])?;
    let p = params();
    let update = ParameterUpdate::from_json(p.as_object().context("a JSON object")?)?;
    m.set_parameters(&update)?;
    Ok(())
}

fn shm_file(dir: &Path, name: &str) -> (PathBuf, Backing) {
    let path = dir.join(name);
    let backing = Backing::File {
        path: path.clone(),
        share: true,
    };
    (path, backing)
}

/// One livemig migration of `src` into a fresh destination; its outcome and the time the
/// destination took to start (its preallocation, if asked).
fn livemig_run(
    src: &Arc<Machine>,
    cfg: &MachineConfig,
    dir: &Path,
    digest: &[u8; 32],
    (multifd, prealloc): (bool, bool),
) -> anyhow::Result<(Outcome, f64)> {
    let (path, backing) = shm_file(dir, "livemig-dst.ram");
    let started = std::time::Instant::now();
    let dst = Machine::new(MachineConfig {
        incoming: true,
        backing,
        prealloc,
        ..cfg.clone()
    })?;
    let start_ms = started.elapsed().as_secs_f64() * 1000.0;
    configure(src, multifd)?;
    configure(&dst, multifd)?;
    let o = migrate(src, &dst)?;
    let same = dst.ram().blocks()[0].digest() == *digest;
    dst.shutdown();
    drop(dst);
    std::fs::remove_file(&path)?;
    if !same {
        bail!("livemig: destination RAM differs from the source");
    }
    // The next run migrates the same source again.
    src.cont()?;
    src.stop()?;
    Ok((o, start_ms))
}

/// One QEMU migration from a QEMU mapping `src_ram` into a fresh destination; its time in ms
/// and its timeline.
fn qemu_run(
    dir: &Path,
    src_ram: &Path,
    size: u64,
    (multifd, prealloc): (bool, bool),
) -> anyhow::Result<(f64, Vec<Sample>)> {
    let dst_ram = dir.join("qemu-dst.ram");
    std::fs::File::create(&dst_ram)?.set_len(size)?;
    let result = (|| -> anyhow::Result<(f64, Vec<Sample>)> {
        let args: &[&str] = if prealloc {
            &["-incoming", "defer", "-mem-prealloc"]
        } else {
            &["-incoming", "defer"]
        };
        let mut dst = QemuVm::start(dir, "dst", &dst_ram, size, args)?;
        let mut src = QemuVm::start(dir, "src", src_ram, size, &[])?;
        dst.configure(multifd, params())?;
        src.configure(multifd, params())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let uri = format!("tcp:127.0.0.1:{port}");
        dst.qmp
            .execute("migrate-incoming", Some(json!({ "uri": uri })))?;
        let (info, samples) = qemu::migrate(&mut src, &mut dst, &uri)?;
        drop((src, dst));
        if !qemu::same_contents(src_ram, &dst_ram)? {
            bail!("QEMU: destination RAM differs from the source");
        }
        Ok((
            info["total-time"].as_f64().context("no total-time")?,
            samples,
        ))
    })();
    std::fs::remove_file(&dst_ram)?;
    result
}

/// Runs case (a) with `rounds` alternating rounds; its table and each way's last timeline.
pub(super) fn case_a(scale: u64, rounds: usize) -> anyhow::Result<(Table, Vec<Timeline>)> {
    let size = 2 * GIB / scale;
    let have_qemu = qemu::installed();
    println!(
        "(a) {} of incompressible RAM, guest paused, loopback, RAM in /dev/shm files \
         ({rounds} alternating rounds{})",
        human(size),
        if have_qemu {
            ""
        } else {
            "; SKIP QEMU: qemu-system-x86_64 not installed"
        }
    );
    let dir = super::scratch_dir()?;
    let (src_ram, backing) = shm_file(dir.path(), "src.ram");
    let cfg = MachineConfig {
        memory: size,
        start_paused: true,
        ..Default::default()
    };
    let src = Machine::new(MachineConfig {
        backing,
        ..cfg.clone()
    })?;
    let result = rounds_of(&src, &cfg, dir.path(), &src_ram, size, rounds, have_qemu);
    src.shutdown();
    result
}

fn rounds_of(
    src: &Arc<Machine>,
    cfg: &MachineConfig,
    dir: &Path,
    src_ram: &Path,
    size: u64,
    rounds: usize,
    have_qemu: bool,
) -> anyhow::Result<(Table, Vec<Timeline>)> {
    let block = &src.ram().blocks()[0];
    let mut timelines: Vec<Timeline> = Vec::new();
    let mut keep = |name: &str, samples: Vec<Sample>| {
        timelines.retain(|(n, _)| n != name);
        timelines.push((name.to_string(), samples));
    };
    fill_random(block)?;
    let digest = block.digest();
    let raw = |dir: &Path, prealloc: bool| -> anyhow::Result<f64> {
        let (path, backing) = shm_file(dir, "raw-dst.ram");
        let dst = RamBlock::new("raw", size, backing)?;
        if prealloc {
            dst.prealloc()?;
        }
        let t = raw_tcp_copy(block, &dst);
        drop(dst);
        std::fs::remove_file(&path)?;
        Ok(t?.as_secs_f64() * 1000.0)
    };
    // An uncounted first copy: the first read of the source file's pages is not any one
    // way's cost.
    raw(dir, false)?;
    let mut table = Table::new(
        &format!(
            "(a) {}, medians and spread over {rounds} rounds",
            human(size)
        ),
        size,
    );
    let mut prealloc_ms = Vec::new();
    for round in 1..=rounds {
        let mut parts = Vec::new();
        for (name, prealloc) in [(RAW, false), (RAW_PRE, true)] {
            let ms = raw(dir, prealloc)?;
            table.record(name, ms);
            parts.push(format!("{name} {ms:.0}"));
        }
        for way in [(false, false), (false, true), (true, false), (true, true)] {
            let (q, ours) = rows(way.0, way.1);
            if have_qemu {
                let (ms, samples) = qemu_run(dir, src_ram, size, way)?;
                table.record(q, ms);
                keep(q, samples);
                parts.push(format!("{q} {ms:.0}"));
            }
            let (o, start_ms) = livemig_run(src, cfg, dir, &digest, way)?;
            if way.1 {
                prealloc_ms.push(start_ms);
            }
            let (ms, passes) = (o.total_ms() as f64, o.passes());
            table.record(ours, ms);
            keep(ours, o.timeline);
            parts.push(format!("{ours} {ms:.0} ({passes} passes)"));
        }
        println!("  round {round} (ms): {}", parts.join(" | "));
    }
    print!("{}", table.render());
    if let Some(s) = super::table::Spread::of(&prealloc_ms) {
        println!(
            "  prealloc: the destination allocates all {} at start, before the migration, in \
             {s} ms (livemig; not in the totals above)",
            human(size),
        );
    }
    let ratio = |fast, slow| {
        table
            .speedup(fast, slow)
            .map_or("-".to_string(), |r| format!("{r:.2}"))
    };
    println!(
        "  => throughput livemig / raw copy (medians): 1 channel {}, multifd {}; with \
         prealloc (both): 1 channel {}, multifd {} (target >= 0.9)",
        ratio(OURS_SINGLE, RAW),
        ratio(OURS_MULTIFD, RAW),
        ratio(OURS_SINGLE_PRE, RAW_PRE),
        ratio(OURS_MULTIFD_PRE, RAW_PRE)
    );
    if have_qemu {
        let best_qemu = table
            .fastest(&[QEMU_SINGLE, QEMU_MULTIFD, QEMU_SINGLE_PRE, QEMU_MULTIFD_PRE])
            .unwrap_or(QEMU_SINGLE);
        let best_ours = table
            .fastest(&[OURS_SINGLE, OURS_MULTIFD, OURS_SINGLE_PRE, OURS_MULTIFD_PRE])
            .unwrap_or(OURS_SINGLE);
        println!(
            "  => time QEMU / livemig (medians): 1 channel {}, multifd {}; best vs best \
             ({best_qemu} / {best_ours}) {} (target >= 1.6)",
            ratio(OURS_SINGLE, QEMU_SINGLE),
            ratio(OURS_MULTIFD, QEMU_MULTIFD),
            ratio(best_ours, best_qemu)
        );
    }
    Ok((table, timelines))
}
