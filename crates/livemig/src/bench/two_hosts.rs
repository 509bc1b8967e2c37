//! `livemig bench --link PRESET`: migration between two simulated hosts — source and
//! destination in two network namespaces joined by a veth pair shaped by `tbf` (see
//! [`crate::netns`]), with a userspace latency relay in the destination's namespace when the
//! preset has an `rtt` (see `delay`). livemig and QEMU 7.2 run alike: each side is its own
//! process (`livemig run -M none` or `qemu-system-x86_64 -M none`) started with
//! `ip netns exec`, driven over QMP, RAM in a `/dev/shm` file; both sources map the same file
//! of incompressible bytes, and every destination's file is compared with it after the run.
//! Beside them, the link's own ceiling: the same bytes sent by a plain TCP writer on a thread
//! in namespace A to a reader on a thread in namespace B (each entered with `setns`), into a
//! fresh destination file, as case (a)'s raw copy.
//!
//! Presets (see `link_spec`): `RATE[,rtt=DURATION][,mtu=BYTES]`.
//!
//! ```text
//!  ns A: src ── veth (tbf RATE both ways, MTU) ──▶ ns B: [relay, rtt/2 each way ──▶] dst
//! ```

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;

use anyhow::{bail, Context};
use guest_ram::{Backing, RamBlock};
use serde_json::json;

use super::case_a::{OURS_MULTIFD, OURS_SINGLE, QEMU_MULTIFD, QEMU_SINGLE, RAW};
use super::delay::Relay;
use super::link_spec::LinkSpec;
use super::plot::Timeline;
use super::qemu::{self, Implementation, QemuVm};
use super::table::{spread_text, Spread, Table};
use super::{fill_random, raw_tcp_copy_over, GIB};
use crate::netns::{Host, Testbed};
use crate::size::human;
use crate::timeline::Sample;

/// The running guest of the link case: one vCPU rewriting `working_set` bytes at random at
/// `rate` bytes/s.
struct Writer {
    working_set: u64,
    rate: u64,
}

impl Writer {
    /// `livemig run` options for it.
    fn args(&self) -> Vec<String> {
        let (ws, rate) = (self.working_set.to_string(), self.rate.to_string());
        ["--smp", "1", "--pattern", "random", "--working-set", &ws]
            .into_iter()
            .chain(["--write-rate", &rate])
            .map(String::from)
            .collect()
    }
}

/// Both implementations' own bandwidth limit, out of the way of the link's.
const NO_LIMIT: u64 = 100_000_000_000;

/// What every run of the case shares.
struct Setup<'a> {
    tb: &'a Testbed,
    link: &'a LinkSpec,
    /// Scratch directory: QMP sockets, the destination's RAM file.
    dir: &'a Path,
    /// The source's RAM file, and the same file mapped here (for the raw copy).
    src_ram: &'a Path,
    src_block: &'a RamBlock,
    size: u64,
}

/// What one run measured: the source's `total-time` and `downtime` (ms), its timeline.
struct RunFigures {
    total_ms: f64,
    downtime_ms: f64,
    samples: Vec<Sample>,
}

/// Where the destination listens and where its source connects: the destination itself, or a
/// latency relay in B in front of it (running while this lives).
struct Route {
    listen: SocketAddr,
    target: SocketAddr,
    relay: Option<Relay>,
}

/// The route to a destination that listens on `port` in B (the relay, if any, on `port + 1`).
fn route(tb: &Testbed, link: &LinkSpec, port: u16) -> anyhow::Result<Route> {
    let b_addr: std::net::IpAddr = tb.addr(Host::B).parse()?;
    Ok(match link.rtt {
        None => {
            let at = SocketAddr::new(b_addr, port);
            Route {
                listen: at,
                target: at,
                relay: None,
            }
        }
        Some(rtt) => {
            let listen: SocketAddr = ([127, 0, 0, 1], port).into();
            let target = SocketAddr::new(b_addr, port + 1);
            // About one bandwidth-delay product in flight each way.
            let window = (link.bits_per_sec / 8) as f64 * rtt.as_secs_f64();
            let relay = Relay::start(&tb.exec(Host::B), target, listen, rtt, window as usize)?;
            Route {
                listen,
                target,
                relay: Some(relay),
            }
        }
    })
}

/// The link's own ceiling: `src` copied by a plain TCP writer on a thread in A to a reader in
/// B (through the relay, if any), into a fresh destination file; the time in ms.
fn raw_run(setup: &Setup, port: u16) -> anyhow::Result<f64> {
    let Setup { tb, link, dir, .. } = *setup;
    let path = dir.join("raw-dst.ram");
    let backing = Backing::File {
        path: path.clone(),
        share: true,
    };
    let dst = RamBlock::new("raw", setup.size, backing)?;
    let result = (|| {
        let Route {
            listen,
            target,
            relay: _relay,
        } = route(tb, link, port)?;
        // A thread of its own enters B (for good) to make the listening socket; the socket
        // stays in B whichever thread accepts on it.
        let listener = std::thread::scope(|s| {
            s.spawn(|| -> anyhow::Result<TcpListener> {
                tb.enter(Host::B)?;
                Ok(TcpListener::bind(listen)?)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the listening thread panicked"))
        })??;
        raw_tcp_copy_over(setup.src_block, &dst, listener, move |_| {
            tb.enter(Host::A).map_err(std::io::Error::other)?;
            TcpStream::connect(target)
        })
    })();
    drop(dst);
    std::fs::remove_file(&path)?;
    Ok(result?.as_secs_f64() * 1000.0)
}

/// One migration from a source mapping `src_ram` to a fresh destination, both `which`, across
/// the testbed; `src_extra` goes to the source's command line (livemig: a writer), and
/// `converge` asks the source for 20 ms with auto-converge.
fn one_run(
    setup: &Setup,
    which: Implementation,
    (multifd, converge): (bool, bool),
    port: u16,
    src_extra: &[&str],
) -> anyhow::Result<RunFigures> {
    let Setup {
        tb,
        link,
        dir,
        src_ram,
        size,
        ..
    } = *setup;
    let dst_ram = dir.join("dst.ram");
    std::fs::File::create(&dst_ram)?.set_len(size)?;
    let result = (|| -> anyhow::Result<RunFigures> {
        let (a, b) = (tb.exec(Host::A), tb.exec(Host::B));
        let incoming = ["-incoming", "defer"];
        let mut dst = QemuVm::start_in(&b, which, dir, "dst", &dst_ram, size, &incoming)?;
        let mut src = QemuVm::start_in(&a, which, dir, "src", src_ram, size, src_extra)?;
        let params = json!({"max-bandwidth": NO_LIMIT, "multifd-channels": 2});
        dst.configure(multifd, params.clone())?;
        src.configure(multifd, params)?;
        if converge {
            src.qmp.execute(
                "migrate-set-capabilities",
                Some(json!({"capabilities": [{"capability": "auto-converge", "state": true}]})),
            )?;
            src.qmp.execute(
                "migrate-set-parameters",
                Some(json!({"downtime-limit": 20})),
            )?;
        }
        let Route {
            listen,
            target,
            relay: _relay,
        } = route(tb, link, port)?;
        dst.qmp.execute(
            "migrate-incoming",
            Some(json!({"uri": format!("tcp:{listen}")})),
        )?;
        let (info, samples) = qemu::migrate(&mut src, &mut dst, &format!("tcp:{target}"))?;
        drop((src, dst));
        if !qemu::same_contents(src_ram, &dst_ram)? {
            bail!("{which:?}: destination RAM differs from the source");
        }
        Ok(RunFigures {
            total_ms: info["total-time"].as_f64().context("no total-time")?,
            downtime_ms: info["downtime"].as_f64().context("no downtime")?,
            samples,
        })
    })();
    std::fs::remove_file(&dst_ram)?;
    result
}

/// The running guest's ways: (multifd, 20 ms + auto-converge) and their labels.
const RUNNING: [((bool, bool), &str); 3] = [
    ((false, false), "1 channel, default 300 ms limit"),
    ((false, true), "1 channel, 20 ms limit + auto-converge"),
    ((true, true), "multifd x2, 20 ms limit + auto-converge"),
];

/// The next listening port: below the kernel's ephemeral range (32768–60999 by default), so
/// that no connection of an earlier run (a relay's, in TIME_WAIT) holds the next run's port;
/// two apart (a relay listens on the second).
fn next_port(port: &mut u16) -> u16 {
    *port = if *port > 32_000 { 20_000 } else { *port + 2 };
    *port
}

/// Runs the two-host case over `link` with `rounds` alternating rounds; returns its table and
/// each way's last timeline.
pub(super) fn case_link(
    link: &LinkSpec,
    scale: u64,
    rounds: usize,
) -> anyhow::Result<(Table, Vec<Timeline>)> {
    let size = 2 * GIB / scale;
    let have_qemu = qemu::installed();
    println!(
        "(link) {} of incompressible RAM between two network namespaces over {link} \
         ({rounds} alternating rounds{})",
        human(size),
        if have_qemu {
            ""
        } else {
            "; SKIP QEMU: qemu-system-x86_64 not installed"
        }
    );
    let tb = Testbed::create("lmb")?;
    tb.set_rate(link.bits_per_sec)?;
    tb.set_mtu(link.mtu())?;
    let dir = super::scratch_dir()?;
    let src_ram = dir.path().join("src.ram");
    let src_block = RamBlock::new(
        "ram",
        size,
        Backing::File {
            path: src_ram.clone(),
            share: true,
        },
    )?;
    fill_random(&src_block)?;
    let ideal_ms = size as f64 * 8.0 / link.bits_per_sec as f64 * 1000.0;
    let floor_ms = link.floor(size).as_secs_f64() * 1000.0;
    let mut table = Table::new(
        &format!(
            "(link) {} over {link}: medians and spread over {rounds} rounds; bytes ÷ rate = \
             {ideal_ms:.0} ms, with TCP/IP/Ethernet headers {floor_ms:.0} ms",
            human(size)
        ),
        size,
    );
    let setup = Setup {
        tb: &tb,
        link,
        dir: dir.path(),
        src_ram: &src_ram,
        src_block: &src_block,
        size,
    };
    let mut port = 20_000u16;
    let mut timelines: Vec<Timeline> = Vec::new();
    let writer = Writer {
        working_set: (64 << 20) / scale,
        rate: link.bits_per_sec / 16,
    };
    // Total and downtime (ms) of the running guest's ways.
    let mut running = RUNNING.map(|_| (Vec::new(), Vec::new()));
    for round in 1..=rounds {
        let ms = raw_run(&setup, next_port(&mut port))?;
        table.record(RAW, ms);
        let mut parts = vec![format!("{RAW} {ms:.0}")];
        for multifd in [false, true] {
            for which in [Implementation::Qemu, Implementation::Livemig] {
                if which == Implementation::Qemu && !have_qemu {
                    continue;
                }
                let RunFigures {
                    total_ms: ms,
                    samples,
                    ..
                } = one_run(&setup, which, (multifd, false), next_port(&mut port), &[])?;
                let name = match (which, multifd) {
                    (Implementation::Qemu, false) => QEMU_SINGLE,
                    (Implementation::Qemu, true) => QEMU_MULTIFD,
                    (Implementation::Livemig, false) => OURS_SINGLE,
                    (Implementation::Livemig, true) => OURS_MULTIFD,
                };
                parts.push(format!("{name} {ms:.0}"));
                table.record(name, ms);
                timelines.retain(|(n, _)| n != name);
                timelines.push((name.to_string(), samples));
            }
        }
        // A running guest: livemig only (QEMU's `-M none` has no vCPU to write).
        let args = writer.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for ((way, label), figures) in RUNNING.iter().zip(running.iter_mut()) {
            let r = one_run(
                &setup,
                Implementation::Livemig,
                *way,
                next_port(&mut port),
                &args,
            )?;
            parts.push(format!(
                "livemig + writer, {label}: {:.0} (downtime {:.0})",
                r.total_ms, r.downtime_ms
            ));
            figures.0.push(r.total_ms);
            figures.1.push(r.downtime_ms);
        }
        println!("  round {round} (ms): {}", parts.join(" | "));
    }
    print!("{}", table.render());
    println!(
        "  livemig, a running vCPU rewriting {} at random at {}/s (half the link):",
        human(writer.working_set),
        human(writer.rate),
    );
    for ((_, label), (total, down)) in RUNNING.iter().zip(&running) {
        println!(
            "    {label}: downtime {} ms (target <= 20), total {} ms",
            spread_text(down),
            spread_text(total)
        );
    }
    println!(
        "  TCP/IP/Ethernet headers at MTU {}: payload at most {:.1} % of the link, so no TCP \
         sender does better than {:.3} x bytes ÷ rate (less the first burst tbf lets through, \
         10 ms of the link)",
        link.mtu(),
        link.payload_share() * 100.0,
        floor_ms / ideal_ms
    );
    for name in [RAW, QEMU_SINGLE, QEMU_MULTIFD, OURS_SINGLE, OURS_MULTIFD] {
        if let Some(t) = table.time(name) {
            let of_raw = table
                .speedup(RAW, name)
                .map_or("-".into(), |r| format!("{r:.2}"));
            let of_ideal = Spread {
                median: t.median / ideal_ms,
                min: t.min / ideal_ms,
                max: t.max / ideal_ms,
            };
            println!(
                "  => {name}: {of_ideal:.3} x bytes ÷ rate (target <= 1.05), median {of_raw} x \
                 the raw copy's time"
            );
        }
    }
    Ok((table, timelines))
}
