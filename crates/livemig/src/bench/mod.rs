//! `livemig bench`: migration speed and downtime over loopback TCP, measured in one run next to
//! a raw TCP copy of the same bytes (the ceiling for a single stream).
//!
//! Cases (sizes scale with `--scale`, default 1):
//! * (a) 2 GiB of incompressible RAM, guest paused — throughput vs the raw copy (target ≥ 0.9);
//! * (b) 4 GiB of never-touched RAM — total time (target ≤ 50 ms);
//! * (c) 1 GiB with a running 64 MiB working-set writer — downtime (target ≤ 20 ms), at a
//!   bounded write rate and at an unbounded one;
//! * (d) the guest payload on KVM, migrated by livemig and by QEMU 7.2 (see `kvm`);
//! * (e) text-like RAM over a shaped 1 Gbit/s link, multifd-compression none / zlib / zstd
//!   and zero-copy-send,
//!   livemig beside QEMU 7.2 (see `compress`; not in the default set, it takes minutes).
//! * (t) what TLS costs: plain vs TLS, single channel and multifd, alternating rounds (see `tls`).
//!
//! Source and destination are two VMs in this process connected by a real loopback TCP socket;
//! each side has its own threads, as in a two-process migration.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use guest_ram::{Backing, RamBlock};
use vmm::machine::{Machine, MachineConfig};
use vmm::soft::{Pattern, WorkloadConfig};

use crate::size::human;
use pair::{machines, migrate, Outcome};

mod compress;
mod kvm;
mod link;
mod pair;
mod qemu;
mod samehost;
mod tls;
mod tls_qemu;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Arguments of `livemig bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Divide every RAM size by this factor (for quick runs on small machines).
    #[arg(long, default_value_t = 1)]
    pub scale: u64,
    /// Only run the named cases (a, b, c, d, e, t); a to d when absent.
    #[arg(long)]
    pub only: Vec<String>,
    /// Rounds of case (a); the median ratio is reported (the host's noise varies a lot).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Rounds of case (e), each running every method on both implementations in turn.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Link speed of case (e) in Mbit/s (the relay's pace).
    #[arg(long, default_value_t = 1000)]
    pub link_mbit: u64,
}

fn fill_random(block: &RamBlock) -> anyhow::Result<()> {
    let mut buf = vec![0u8; MIB as usize];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for off in (0..block.len()).step_by(buf.len()) {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = (block.len() - off).min(buf.len() as u64) as usize;
        block.write_range(off, &buf[..n])?;
    }
    Ok(())
}

/// Copies a whole RAM block to another over loopback TCP with plain write/read calls.
fn raw_tcp_copy(src: &RamBlock, dst: &RamBlock) -> anyhow::Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let len = src.len() as usize;
    // No guest runs on either block while the copy runs.
    let from: &[u8] = (**src.memory()).as_ref();
    let t = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let sender = s.spawn(move || -> std::io::Result<()> {
            let mut c = TcpStream::connect(addr)?;
            for chunk in from.chunks(1 << 20) {
                c.write_all(chunk)?;
            }
            Ok(())
        });
        let (mut conn, _) = listener.accept()?;
        dst.fill_range(0, len, |to| conn.read_exact(to))??;
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("sender panicked"))??;
        Ok(())
    })?;
    Ok(t.elapsed())
}

fn report(name: &str, o: &Outcome) {
    let ram = o.info.ram.clone().unwrap_or_default();
    let secs = o.total_ms().max(1) as f64 / 1000.0;
    println!(
        "  {name}: total {} ms (wall {:.1} ms), downtime {} ms, setup {} ms, passes {}, sent {}, {:.0} MiB/s, \
         normal {} / zero {} pages",
        o.total_ms(),
        o.wall.as_secs_f64() * 1000.0,
        o.info.downtime.unwrap_or(0),
        o.info.setup_time.unwrap_or(0),
        o.passes(),
        human(o.transferred()),
        o.transferred() as f64 / MIB as f64 / secs,
        ram.normal,
        ram.duplicate,
    );
}

fn case_a(scale: u64, repeat: usize) -> anyhow::Result<()> {
    let size = 2 * GIB / scale;
    println!(
        "(a) {} of incompressible RAM, guest paused ({repeat} rounds)",
        human(size)
    );
    let cfg = MachineConfig {
        memory: size,
        start_paused: true,
        ..Default::default()
    };
    let src = Machine::new(cfg.clone())?;
    fill_random(&src.ram().blocks()[0])?;
    // Both copies write into freshly mapped memory; an uncounted first copy makes the host back
    // that much memory, so neither side pays for it alone.
    raw_tcp_copy(
        &src.ram().blocks()[0],
        &RamBlock::new("warm-up", size, Backing::Anonymous)?,
    )?;
    let mut ratios = Vec::new();
    let (mut best_raw, mut best_mig) = (0f64, 0f64);
    for round in 1..=repeat {
        // Each round measures the raw copy and the migration back to back, into fresh memory.
        let scratch = RamBlock::new("scratch", size, Backing::Anonymous)?;
        let raw = raw_tcp_copy(&src.ram().blocks()[0], &scratch)?;
        drop(scratch);
        let dst = Machine::new(MachineConfig {
            incoming: true,
            ..cfg.clone()
        })?;
        let o = migrate(&src, &dst)?;
        if src.ram().blocks()[0].digest() != dst.ram().blocks()[0].digest() {
            bail!("destination RAM differs from the source");
        }
        dst.shutdown();
        drop(dst);
        // The next round migrates the same source again.
        src.cont()?;
        src.stop()?;
        let raw_mibs = size as f64 / MIB as f64 / raw.as_secs_f64();
        let mig_mibs = size as f64 / MIB as f64 / (o.total_ms().max(1) as f64 / 1000.0);
        report(&format!("round {round} livemig"), &o);
        println!(
            "  round {round} raw TCP copy: {:.1} ms, {raw_mibs:.0} MiB/s; ratio {:.3}",
            raw.as_secs_f64() * 1000.0,
            mig_mibs / raw_mibs
        );
        ratios.push(mig_mibs / raw_mibs);
        best_raw = best_raw.max(raw_mibs);
        best_mig = best_mig.max(mig_mibs);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "  => guest RAM throughput ratio livemig / raw copy: median {:.3}, best {:.3}, worst {:.3} \
         (target >= 0.9)",
        ratios[ratios.len() / 2],
        ratios[ratios.len() - 1],
        ratios[0]
    );
    println!(
        "  => best rounds: livemig {best_mig:.0} MiB/s, raw copy {best_raw:.0} MiB/s, ratio {:.3} \
         (the host's noise moves both sides between rounds)",
        best_mig / best_raw
    );
    src.shutdown();
    Ok(())
}

fn case_b(scale: u64) -> anyhow::Result<()> {
    let size = 4 * GIB / scale;
    println!("(b) {} of never-touched RAM", human(size));
    let (src, dst) = machines(size, None, true)?;
    let o = migrate(&src, &dst)?;
    report("livemig", &o);
    println!("  => total time {} ms (target <= 50 ms)", o.total_ms());
    src.shutdown();
    dst.shutdown();
    Ok(())
}

fn case_c(scale: u64, rate: Option<u64>) -> anyhow::Result<()> {
    let size = GIB / scale;
    let ws = 64 * MIB / scale;
    let rate_text = rate.map_or("unbounded".to_string(), |r| format!("{}/s", human(r)));
    println!(
        "(c) {} RAM, running writer over {} at {rate_text}",
        human(size),
        human(ws)
    );
    let workload = WorkloadConfig {
        vcpus: 1,
        working_set: ws,
        write_rate: rate,
        pattern: Pattern::Random,
        seed: 7,
        ..Default::default()
    };
    let (src, dst) = machines(size, Some(workload), false)?;
    fill_random(&src.ram().blocks()[0])?;
    std::thread::sleep(Duration::from_millis(200));
    let o = migrate(&src, &dst)?;
    report("livemig", &o);
    println!(
        "  => downtime {} ms (target <= 20 ms), guest writes on the source: {}",
        o.info.downtime.unwrap_or(0),
        src.vcpus().map_or(0, |v| v.total_writes())
    );
    src.shutdown();
    dst.shutdown();
    Ok(())
}

/// Runs the benchmark and prints its figures.
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let scale = args.scale.max(1);
    let want = |c: &str| args.only.is_empty() || args.only.iter().any(|o| o == c);
    println!(
        "livemig bench (scale 1/{scale}, loopback TCP, {} cores)",
        num_cpus()
    );
    if want("a") {
        case_a(scale, args.repeat.max(1))?;
    }
    if want("b") {
        case_b(scale)?;
    }
    if want("c") {
        case_c(scale, Some(256 * MIB))?;
        case_c(scale, None)?;
    }
    if want("d") {
        kvm::case_d()?;
    }
    if args.only.iter().any(|o| o == "e") {
        compress::case_e(scale, args.rounds.max(1), args.link_mbit.max(1))?;
    }
    if args.only.iter().any(|o| o == "h") {
        samehost::case_h(scale, args.rounds.max(7))?;
    }
    if args.only.iter().any(|o| o == "t") {
        tls::case_t(scale, args.repeat.max(7))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
