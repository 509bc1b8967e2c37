//! `livemig bench` case (e): multifd compression over a shaped 1 Gbit/s link. The same
//! text-like RAM (data pages compress about 3:1; one page in four is zero) is migrated with
//! `multifd-compression` none, zlib and zstd (level 1, 2 channels), and uncompressed with
//! `zero-copy-send` (MSG_ZEROCOPY, which spares the source a copy per page), by livemig (two VMs in this
//! process) and by QEMU 7.2 (`-M none`, two processes, RAM in a file holding livemig's bytes),
//! through [`ShapedLink`], both with the return path on (so a source completes once its
//! destination has loaded everything). The runs alternate round by round; each reports the source's
//! `total-time` and the CPU time used: QEMU's two processes, and this process for livemig
//! (which includes the relay — its share is printed from the QEMU runs, where it is alone).
//! Every run's destination RAM is compared with the source's.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use migration::{Capability, ParameterUpdate};
use serde_json::{json, Value};
use vmm::machine::{Machine, MachineConfig};
use vmm::soft::FillPattern;

use savevm::multifd::MULTIFD_PAGES;
use savevm::multifd_codec::{decompress_packet, Compression, Compressor, Decompressor};

use super::link::ShapedLink;
use super::pair::migrate_via;
use super::qemu::{self, QemuVm};
use crate::size::human;

/// The runs of each round: the name printed, `multifd-compression`, and whether the source
/// sends with `zero-copy-send` (MSG_ZEROCOPY; QEMU allows it only uncompressed).
const METHODS: [(&str, &str, bool); 4] = [
    ("none", "none", false),
    ("zero-copy", "none", true),
    ("zlib", "zlib", false),
    ("zstd", "zstd", false),
];
/// Both sides' own limit, out of the way of the link's.
const NO_LIMIT: u64 = 100_000_000_000;

fn params(method: &str) -> Value {
    json!({
        "multifd-channels": 2,
        "multifd-compression": method,
        "multifd-zlib-level": 1,
        "multifd-zstd-level": 1,
        "max-bandwidth": NO_LIMIT,
    })
}

/// CPU seconds (user + system) used so far by process `pid` ("self" for this one).
fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) in clock ticks of 1/100 s; `after` starts at field 3.
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// One measured run.
#[derive(Clone, Copy)]
struct Run {
    ms: f64,
    cpu: f64,
}

/// Seconds this thread has run on a CPU (`/proc/thread-self/schedstat`, nanoseconds).
fn thread_cpu_seconds() -> anyhow::Result<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let ns: u64 = s
        .split_whitespace()
        .next()
        .context("empty schedstat")?
        .parse()?;
    Ok(ns as f64 / 1e9)
}

/// Single-thread throughput of each codec on this machine over `bytes` (in 128-page packets,
/// one stream, as one channel would), in MB of pages per second of this thread's CPU time
/// (the cores are shared, so wall time would measure the neighbours): compress, decompress;
/// and the ratio.
fn codec_speed(bytes: &[u8], method: Compression) -> anyhow::Result<(f64, f64, f64)> {
    let mut c = Compressor::new(method)?.context("no codec")?;
    let mut d = Decompressor::new(method)?.context("no codec")?;
    let mut packets = Vec::new();
    let t = thread_cpu_seconds()?;
    for chunk in bytes.chunks(MULTIFD_PAGES * 4096) {
        let pages: Vec<&[u8]> = chunk.chunks(4096).collect();
        let mut out = Vec::new();
        c.compress(&pages, &mut out)?;
        packets.push(out);
    }
    let ct = thread_cpu_seconds()? - t;
    let mut page_buf = vec![0u8; MULTIFD_PAGES * 4096];
    let t = thread_cpu_seconds()?;
    for (chunk, packet) in bytes.chunks(MULTIFD_PAGES * 4096).zip(&packets) {
        let mut pages: Vec<&mut [u8]> = page_buf[..chunk.len()].chunks_mut(4096).collect();
        decompress_packet(&mut d, packet, &mut pages)?;
    }
    let dt = thread_cpu_seconds()? - t;
    let wire: usize = packets.iter().map(Vec::len).sum();
    let mb = bytes.len() as f64 / 1e6;
    Ok((mb / ct, mb / dt, bytes.len() as f64 / wire as f64))
}

/// The best speed-up over uncompressed this machine allows for `data` bytes of data pages:
/// the link needs `data / ratio / rate` seconds, and all cores together need `data / c` for
/// compressing plus `data / d` for decompressing (relay, copies and TCP not counted).
fn ceiling(data: f64, rate: f64, (c, d, ratio): (f64, f64, f64)) -> String {
    let cores = super::num_cpus() as f64;
    let cpu = data / 1e6 * (1.0 / c + 1.0 / d) / cores;
    let wire = data / ratio / rate;
    format!(
        "bound on {cores} cores: CPU {cpu:.2} s, link {wire:.2} s, best speed-up {:.2}x",
        (data / rate) / cpu.max(wire)
    )
}

fn configure(m: &Machine, method: &str, zero_copy: bool) -> anyhow::Result<()> {
    m.migration().set_capabilities(&[
        (Capability::Multifd, true),
        (Capability::ZeroCopySend, zero_copy),
    ])?;
    let Value::Object(p) = params(method) else {
        bail!("migration parameters are not a JSON object");
    };
    let update = ParameterUpdate::from_json(&p)?;
    m.migration().set_parameters(&update, None)?;
    Ok(())
}

fn livemig_run(
    src: &Arc<Machine>,
    cfg: &MachineConfig,
    (name, method, zero_copy): (&str, &str, bool),
    rate: u64,
) -> anyhow::Result<(Run, u64)> {
    let dst = Machine::new(MachineConfig {
        incoming: true,
        ..cfg.clone()
    })?;
    configure(src, method, zero_copy)?;
    configure(&dst, method, false)?;
    let cpu0 = cpu_seconds("self")?;
    let o = migrate_via(src, &dst, |uri| {
        let target = uri.strip_prefix("tcp:").context("not a tcp URI")?.parse()?;
        let link = ShapedLink::start(target, rate)?;
        Ok((link.uri(), link))
    })?;
    let cpu = cpu_seconds("self")? - cpu0;
    if src.ram().blocks()[0].digest() != dst.ram().blocks()[0].digest() {
        bail!("livemig {name}: destination RAM differs from the source");
    }
    dst.shutdown();
    drop(dst);
    // The next round migrates the same source again.
    src.cont()?;
    src.stop()?;
    Ok((
        Run {
            ms: o.total_ms() as f64,
            cpu,
        },
        o.transferred(),
    ))
}

fn qemu_run(
    dir: &Path,
    src_ram: &Path,
    size: u64,
    (name, method, zero_copy): (&str, &str, bool),
    rate: u64,
) -> anyhow::Result<(Run, f64)> {
    let dst_ram = dir.join("qemu-dst.ram");
    std::fs::File::create(&dst_ram)?.set_len(size)?;
    let mut dst = QemuVm::start(dir, "dst", &dst_ram, size, &["-incoming", "defer"])?;
    let mut src = QemuVm::start(dir, "src", src_ram, size, &[])?;
    dst.configure(true, params(method))?;
    src.configure(true, params(method))?;
    if zero_copy {
        src.qmp.execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "zero-copy-send", "state": true}]})),
        )?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    dst.qmp.execute(
        "migrate-incoming",
        Some(json!({"uri": format!("tcp:127.0.0.1:{port}")})),
    )?;
    let link = ShapedLink::start(([127, 0, 0, 1], port).into(), rate)?;
    let cpu_of = |q: &QemuVm| cpu_seconds(&q.process.pid().to_string());
    let (cpu0, link0) = (cpu_of(&src)? + cpu_of(&dst)?, cpu_seconds("self")?);
    let (info, _) =
        qemu::migrate(&mut src, &mut dst, &link.uri()).with_context(|| format!("QEMU {name}"))?;
    let cpu = cpu_of(&src)? + cpu_of(&dst)? - cpu0;
    let link_cpu = cpu_seconds("self")? - link0;
    drop(src);
    drop(dst);
    if !qemu::same_contents(src_ram, &dst_ram)? {
        bail!("QEMU {name}: destination RAM differs from the source");
    }
    let ms = info["total-time"].as_f64().context("no total-time")?;
    Ok((Run { ms, cpu }, link_cpu))
}

fn summary(runs: &[Run]) -> String {
    let mut ms: Vec<f64> = runs.iter().map(|r| r.ms).collect();
    let mut cpu: Vec<f64> = runs.iter().map(|r| r.cpu).collect();
    ms.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    format!(
        "total {:.0} ms [{:.0}–{:.0}], CPU {:.2} s [{:.2}–{:.2}]",
        ms[ms.len() / 2],
        ms[0],
        ms[ms.len() - 1],
        cpu[cpu.len() / 2],
        cpu[0],
        cpu[cpu.len() - 1]
    )
}

fn median_ms(runs: &[Run]) -> f64 {
    let mut ms: Vec<f64> = runs.iter().map(|r| r.ms).collect();
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// Runs case (e) over a link of `mbit` Mbit/s.
pub(super) fn case_e(scale: u64, rounds: usize, mbit: u64) -> anyhow::Result<()> {
    let size = 2 * super::GIB / scale;
    let rate = mbit * 1_000_000 / 8;
    println!(
        "(e) {} of text-like RAM (data pages ~3:1, 1/4 zero), guest paused, 2 multifd channels, \
         level 1, over a {mbit} Mbit/s relay ({rounds} rounds, alternating)",
        human(size),
    );
    let cfg = MachineConfig {
        memory: size,
        fill: size,
        fill_pattern: FillPattern::Text,
        start_paused: true,
        ..Default::default()
    };
    let src = Machine::new(cfg.clone())?;
    let dir = super::scratch_dir()?;
    let src_ram = dir.path().join("qemu-src.ram");
    {
        let block = &src.ram().blocks()[0];
        let mut bytes = vec![0u8; size as usize];
        block.read_range(0, &mut bytes)?;
        std::fs::write(&src_ram, &bytes)?;
        // The data pages only (zero pages never reach a codec): 64 MiB of them.
        let data: Vec<u8> = bytes
            .chunks(4096)
            .filter(|p| p.iter().any(|&b| b != 0))
            .take(16384)
            .flatten()
            .copied()
            .collect();
        let data_bytes = bytes
            .chunks(4096)
            .filter(|p| p.iter().any(|&b| b != 0))
            .count() as f64
            * 4096.0;
        for (name, method) in [
            ("zlib", Compression::Zlib(1)),
            ("zstd", Compression::Zstd(1)),
        ] {
            let (c, d, ratio) = codec_speed(&data, method)?;
            println!(
                "  {name}-1, one thread, per CPU-second: compress {c:.0} MB/s, decompress {d:.0} \
                 MB/s, ratio {ratio:.2}:1 on the data pages; {}",
                ceiling(data_bytes, rate as f64, (c, d, ratio))
            );
        }
    }
    let have_qemu = qemu::installed();
    if !have_qemu {
        println!("  SKIP QEMU: qemu-system-x86_64 not installed");
    }
    let mut ours: Vec<Vec<Run>> = vec![Vec::new(); METHODS.len()];
    let mut theirs: Vec<Vec<Run>> = vec![Vec::new(); METHODS.len()];
    let mut link_cpu = Vec::new();
    for round in 1..=rounds {
        for (i, &method) in METHODS.iter().enumerate() {
            let name = method.0;
            let (r, sent) = livemig_run(&src, &cfg, method, rate)?;
            print!(
                "  round {round} {name:>9}: livemig {:.0} ms {:.2} s CPU {} sent",
                r.ms,
                r.cpu,
                human(sent)
            );
            ours[i].push(r);
            if have_qemu {
                let (q, l) = qemu_run(dir.path(), &src_ram, size, method, rate)?;
                print!("; QEMU 7.2 {:.0} ms {:.2} s CPU", q.ms, q.cpu);
                theirs[i].push(q);
                link_cpu.push(l);
            }
            println!();
        }
    }
    for (i, (name, ..)) in METHODS.iter().enumerate() {
        println!("  => {name:>9} livemig:  {}", summary(&ours[i]));
        if have_qemu {
            println!("  => {name:>9} QEMU 7.2: {}", summary(&theirs[i]));
        }
    }
    let none = median_ms(&ours[0]);
    println!(
        "  => livemig speed-up over uncompressed (median times): zero-copy {:.2}x, zlib {:.2}x, \
         zstd {:.2}x (target zstd >= 2.5x)",
        none / median_ms(&ours[1]),
        none / median_ms(&ours[2]),
        none / median_ms(&ours[3])
    );
    if have_qemu {
        println!(
            "  => livemig zstd vs QEMU 7.2 zstd (median times): {:.2}x faster; relay CPU per \
             QEMU run (included in livemig's CPU): median {:.2} s",
            median_ms(&theirs[3]) / median_ms(&ours[3]),
            {
                link_cpu.sort_by(f64::total_cmp);
                link_cpu[link_cpu.len() / 2]
            }
        );
    }
    src.shutdown();
    Ok(())
}
