//! `livemig bench`: migration speed and downtime over loopback TCP, measured in one run next to
//! a raw TCP copy of the same bytes (the ceiling for a single stream).
//!
//! Cases (sizes scale with `--scale`, default 1):
//! * (a) 2 GiB of incompressible RAM, guest paused — livemig beside QEMU 7.2 on the identical
//!   bytes and beside the raw copy, single channel and multifd (see `case_a`; targets: ≥ 0.9 of
//!   the raw copy, ≥ 1.6× faster than QEMU's best);
//! * (b) 4 GiB of never-touched RAM — total time (target ≤ 50 ms);
//! * (c) 1 GiB with a running 64 MiB working-set writer — downtime (target ≤ 20 ms), at a
//!   bounded write rate and at an unbounded one, over `--repeat` rounds (see `running`);
//! * (d) the identical running guest (the payload on KVM, 2 vCPUs) in QEMU 7.2 microvm and in
//!   `livemig run --machine microvm`, migrated QEMU → QEMU, livemig → livemig and both cross
//!   ways, over `--repeat` rounds (see `kvm`);
//! * (e) text-like RAM over a shaped 1 Gbit/s link, multifd-compression none / zlib / zstd
//!   and zero-copy-send,
//!   livemig beside QEMU 7.2 (see `compress`; not in the default set, it takes minutes).
//! * (link) with `--link PRESET`: two simulated hosts (network namespaces, `tbf`, a latency
//!   relay), livemig and QEMU 7.2 each as two processes (see `two_hosts`);
//! * (h) same-host migration of running 1, 4 and 16 GiB guests (and a KVM guest) by memfd
//!   handover and by a shared file, beside a loopback copy and QEMU 7.2 with x-ignore-shared
//!   (see `samehost`; not in the default set);
//! * (t) what TLS costs: plain vs TLS, single channel and multifd, alternating rounds, livemig
//!   beside QEMU 7.2 with the same certificates (see `tls`; not in the default set).
//! * (p) a guest rewriting its RAM faster than a limited link: pre-copy (bounded, does not
//!   converge), auto-converge and postcopy side by side — total time, downtime, the guest's
//!   write rate before / during / after, page-request latency (see `postcopy`; not in the
//!   default set).
//!
//! livemig's source and destination are two VMs in this process connected by a real loopback
//! TCP socket; each side has its own threads, as in a two-process migration. Cases comparing
//! several ways print one [`table::Table`] (medians and min–max spread over the rounds).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use guest_ram::RamBlock;

use crate::size::human;
use pair::{machines, migrate, Outcome};

mod case_a;
mod compress;
pub mod delay;
mod kvm;
mod kvm_guest;
mod link;
mod link_spec;
mod pair;
mod plot;
mod postcopy;
mod postcopy_table;
mod qemu;
mod running;
mod samehost;
mod table;
mod tls;
mod tls_qemu;
mod two_hosts;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Arguments of `livemig bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Divide every RAM size by this factor (for quick runs on small machines).
    #[arg(long, default_value_t = 1)]
    pub scale: u64,
    /// Only run the named cases (a, b, c, d, e, h, p, t); a to d when absent.
    #[arg(long)]
    pub only: Vec<String>,
    /// Rounds of cases (a), (c) and (d), each running every way in turn; medians and spread are
    /// reported (the host's noise varies a lot).
    #[arg(long, default_value_t = 7)]
    pub repeat: usize,
    /// Rounds of case (e), each running every method on both implementations in turn.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Link speed of case (e) in Mbit/s (the relay's pace).
    #[arg(long, default_value_t = 1000)]
    pub link_mbit: u64,
    /// Migrate between two simulated hosts (network namespaces, needs root and iproute2)
    /// over this link instead of running the loopback cases: `1gbit`, `10gbit`,
    /// `100mbit,rtt=20ms`, `1gbit,mtu=9000` (any `<n>mbit`/`<n>gbit`, optional `rtt=<n>ms`
    /// and `mtu=<576..=65535>`, 1500 by default).
    #[arg(long)]
    pub link: Option<link_spec::LinkSpec>,
    /// Draw SVG charts of case (a) and of `--link` into this directory (remaining bytes and
    /// throughput over time for each way, a bar chart of the table).
    #[arg(long, value_name = "DIR")]
    pub plot: Option<std::path::PathBuf>,
    /// With `--plot`: draw these timeline files (from `livemig migrate --timeline`) on the
    /// same axes, named by their file names, instead of running any case.
    #[arg(long, value_name = "FILE", requires = "plot")]
    pub draw: Vec<std::path::PathBuf>,
}

/// Scratch directories of this run, removed by the Ctrl-C handler (no destructor runs then).
static SCRATCH: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A scratch directory for RAM files: in `/dev/shm` where possible (guest RAM lives in memory,
/// not on disk), removed when dropped or on Ctrl-C.
pub(super) fn scratch_dir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir())?;
    SCRATCH
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(dir.path().to_path_buf());
    Ok(dir)
}

/// Child processes (QEMU, `livemig run`, relays) alive now, killed by the Ctrl-C handler.
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Lists (`alive`) or unlists a child process for the Ctrl-C handler.
pub(super) fn track_child(pid: u32, alive: bool) {
    let mut c = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
    if alive {
        c.push(pid);
    } else {
        c.retain(|&p| p != pid);
    }
}

/// On Ctrl-C (or SIGTERM): kill the child processes, delete the namespaces and scratch files
/// of this run, then exit (no destructor runs).
fn cleanup_on_interrupt() {
    let r = ctrlc::set_handler(|| {
        eprintln!("livemig bench: interrupted; removing namespaces and scratch files");
        for pid in CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        crate::netns::delete_all();
        for dir in SCRATCH.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
        std::process::exit(130);
    });
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot install the Ctrl-C handler");
    }
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
    raw_tcp_copy_over(
        src,
        dst,
        TcpListener::bind("127.0.0.1:0")?,
        TcpStream::connect,
    )
}

/// Copies a whole RAM block to another with plain write/read calls: the reader accepts on
/// `listener`, the writer connects with `connect` (given the listener's address) on a thread
/// of its own, which it may move elsewhere first (another network namespace). Timed from
/// before the connection to the last byte read.
fn raw_tcp_copy_over(
    src: &RamBlock,
    dst: &RamBlock,
    listener: TcpListener,
    connect: impl FnOnce(SocketAddr) -> std::io::Result<TcpStream> + Send,
) -> anyhow::Result<Duration> {
    let addr = listener.local_addr()?;
    let len = src.len() as usize;
    // No guest runs on either block while the copy runs.
    let from: &[u8] = (**src.memory()).as_ref();
    let t = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let sender = s.spawn(move || -> std::io::Result<()> {
            let mut c = connect(addr)?;
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

/// Runs the benchmark and prints its figures.
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let scale = args.scale.max(1);
    cleanup_on_interrupt();
    let plot = |case: &str, (table, timelines): (table::Table, Vec<plot::Timeline>)| {
        if let Some(dir) = &args.plot {
            for p in plot::write(dir, case, &table, &timelines)? {
                println!("  chart: {}", p.display());
            }
        }
        anyhow::Ok(())
    };
    if let (Some(dir), false) = (&args.plot, args.draw.is_empty()) {
        let mut timelines = Vec::new();
        for f in &args.draw {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            let samples = crate::timeline::parse(&text)
                .with_context(|| format!("{} is not a timeline", f.display()))?;
            let name = f.file_name().map_or_else(
                || f.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            timelines.push((name, samples));
        }
        for p in plot::write_timelines(dir, "timeline", "recorded migrations", &timelines)? {
            println!("chart: {}", p.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(link) = &args.link {
        plot(
            "link",
            two_hosts::case_link(link, scale, args.repeat.max(1))?,
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let want = |c: &str| args.only.is_empty() || args.only.iter().any(|o| o == c);
    println!(
        "livemig bench (scale 1/{scale}, loopback TCP, {} cores)",
        num_cpus()
    );
    if want("a") {
        plot("a", case_a::case_a(scale, args.repeat.max(1))?)?;
    }
    if want("b") {
        case_b(scale)?;
    }
    if want("c") {
        running::case_c(scale, args.repeat.max(1))?;
    }
    if want("d") {
        kvm::case_d(args.repeat.max(1))?.map_or(Ok(()), |r| plot("d", r))?;
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
    if args.only.iter().any(|o| o == "p") {
        postcopy::case_p(scale, args.repeat.max(1))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
