//! `livemig bench --link PRESET`: migration between two simulated hosts — source and
//! destination in two network namespaces joined by a veth pair shaped by `tbf` (see
//! [`crate::netns`]), with a userspace latency relay in the destination's namespace when the
//! preset has an `rtt` (see `delay`). livemig and QEMU 7.2 run alike: each side is its own
//! process (`livemig run -M none` or `qemu-system-x86_64 -M none`) started with
//! `ip netns exec`, driven over QMP, RAM in a `/dev/shm` file; both sources map the same file
//! of incompressible bytes, and every destination's file is compared with it after the run.
//!
//! Presets: `RATE[,rtt=DURATION]`, RATE `100mbit`, `1gbit`, `10gbit` (any `<n>mbit` or
//! `<n>gbit`), DURATION `<n>ms` or `<n>us`.
//!
//! ```text
//!  ns A: src ── veth (tbf RATE both ways) ──▶ ns B: [relay, rtt/2 each way ──▶] dst
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use guest_ram::{Backing, RamBlock};
use serde_json::json;

use super::case_a::{OURS_MULTIFD, OURS_SINGLE, QEMU_MULTIFD, QEMU_SINGLE};
use super::delay::Relay;
use super::plot::Timeline;
use super::qemu::{self, Implementation, QemuVm};
use super::table::{spread_text, Table};
use super::{fill_random, GIB};
use crate::netns::{Host, Testbed};
use crate::size::human;
use crate::timeline::Sample;

/// A link preset, parsed once from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpec {
    /// Rate in bits per second, each direction.
    pub bits_per_sec: u64,
    /// Round-trip time added by the relay (None: the veth's own, microseconds).
    pub rtt: Option<Duration>,
}

impl std::str::FromStr for LinkSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<LinkSpec, String> {
        let mut parts = s.split(',');
        let rate = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let (digits, unit) = if let Some(d) = rate.strip_suffix("gbit") {
            (d, 1_000_000_000u64)
        } else if let Some(d) = rate.strip_suffix("mbit") {
            (d, 1_000_000u64)
        } else {
            return Err(format!(
                "link rate '{rate}' must be <n>mbit or <n>gbit (e.g. 1gbit, 100mbit)"
            ));
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("link rate '{rate}': '{digits}' is not a whole number"))?;
        let bits_per_sec = n
            .checked_mul(unit)
            .filter(|&b| b > 0 && b <= 100_000_000_000)
            .ok_or_else(|| format!("link rate '{rate}' must be above 0 and at most 100gbit"))?;
        let mut rtt = None;
        for p in parts {
            let Some(v) = p.trim().strip_prefix("rtt=") else {
                return Err(format!("unknown link option '{p}' (expected rtt=<n>ms)"));
            };
            let (digits, micros) = if let Some(d) = v.strip_suffix("ms") {
                (d, 1000)
            } else if let Some(d) = v.strip_suffix("us") {
                (d, 1)
            } else {
                return Err(format!("rtt '{v}' must be <n>ms or <n>us"));
            };
            let n: u64 = digits
                .parse()
                .map_err(|_| format!("rtt '{v}': '{digits}' is not a whole number"))?;
            if n == 0 || n.checked_mul(micros).is_none_or(|us| us > 10_000_000) {
                return Err(format!("rtt '{v}' must be above 0 and at most 10 s"));
            }
            rtt = Some(Duration::from_micros(n * micros));
        }
        Ok(LinkSpec { bits_per_sec, rtt })
    }
}

impl std::fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} Mbit/s", self.bits_per_sec / 1_000_000)?;
        if let Some(rtt) = self.rtt {
            write!(f, ", rtt {} ms", rtt.as_secs_f64() * 1000.0)?;
        }
        Ok(())
    }
}

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
    /// The source's RAM file.
    src_ram: &'a Path,
    size: u64,
}

/// What one run measured: the source's `total-time` and `downtime` (ms), its timeline.
struct RunFigures {
    total_ms: f64,
    downtime_ms: f64,
    samples: Vec<Sample>,
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
        let b_addr: std::net::IpAddr = tb.addr(Host::B).parse()?;
        let (listen, _relay, target): (SocketAddr, Option<Relay>, SocketAddr) = match link.rtt {
            None => {
                let at = SocketAddr::new(b_addr, port);
                (at, None, at)
            }
            Some(rtt) => {
                let dst_at: SocketAddr = ([127, 0, 0, 1], port).into();
                let relay_at = SocketAddr::new(b_addr, port + 1);
                // About one bandwidth-delay product in flight each way.
                let window = (link.bits_per_sec / 8) as f64 * rtt.as_secs_f64();
                let relay = Relay::start(&b, relay_at, dst_at, rtt, window as usize)?;
                (dst_at, Some(relay), relay_at)
            }
        };
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
    let dir = super::scratch_dir()?;
    let src_ram = dir.path().join("src.ram");
    {
        let block = RamBlock::new(
            "ram",
            size,
            Backing::File {
                path: src_ram.clone(),
                share: true,
            },
        )?;
        fill_random(&block)?;
    }
    let ideal_ms = size as f64 * 8.0 / link.bits_per_sec as f64 * 1000.0;
    let mut table = Table::new(
        &format!(
            "(link) {} over {link}: medians and spread over {rounds} rounds; bytes ÷ rate = \
             {ideal_ms:.0} ms",
            human(size)
        ),
        size,
    );
    let setup = Setup {
        tb: &tb,
        link,
        dir: dir.path(),
        src_ram: &src_ram,
        size,
    };
    // Listening ports below the kernel's ephemeral range (32768–60999 by default), so that no
    // connection of an earlier run (a relay's, in TIME_WAIT) holds the next run's port.
    let mut port = 20_000u16;
    let mut timelines: Vec<Timeline> = Vec::new();
    let writer = Writer {
        working_set: (64 << 20) / scale,
        rate: link.bits_per_sec / 16,
    };
    // Total and downtime (ms) of the running guest's runs: default limit, 20 ms + converge.
    let mut running = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for round in 1..=rounds {
        let mut parts = Vec::new();
        for multifd in [false, true] {
            for which in [Implementation::Qemu, Implementation::Livemig] {
                if which == Implementation::Qemu && !have_qemu {
                    continue;
                }
                port = if port > 32_000 { 20_000 } else { port + 2 };
                let RunFigures {
                    total_ms: ms,
                    samples,
                    ..
                } = one_run(&setup, which, (multifd, false), port, &[])?;
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
        // A running guest: livemig only (QEMU's `-M none` has no vCPU to write); with the
        // default 300 ms limit, and with 20 ms + auto-converge.
        let args = writer.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for (converge, figures) in [false, true].into_iter().zip(running.iter_mut()) {
            port = if port > 32_000 { 20_000 } else { port + 2 };
            let r = one_run(
                &setup,
                Implementation::Livemig,
                (false, converge),
                port,
                &args,
            )?;
            parts.push(format!(
                "livemig + writer{} {:.0} (downtime {:.0})",
                if converge {
                    ", 20 ms + auto-converge"
                } else {
                    ""
                },
                r.total_ms,
                r.downtime_ms
            ));
            figures.0.push(r.total_ms);
            figures.1.push(r.downtime_ms);
        }
        println!("  round {round} (ms): {}", parts.join(" | "));
    }
    print!("{}", table.render());
    println!(
        "  livemig, 1 channel, a running vCPU rewriting {} at random at {}/s (half the link):",
        human(writer.working_set),
        human(writer.rate),
    );
    for (way, (total, down)) in ["default 300 ms limit", "20 ms limit + auto-converge"]
        .iter()
        .zip(&running)
    {
        println!(
            "    {way}: downtime {} ms (target <= 20), total {} ms",
            spread_text(down),
            spread_text(total)
        );
    }
    for name in [OURS_SINGLE, OURS_MULTIFD] {
        if let Some(t) = table.time(name) {
            println!(
                "  => {name}: median {:.2} x bytes ÷ rate (target <= 1.05)",
                t.median / ideal_ms
            );
        }
    }
    Ok((table, timelines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_hostile_ones_are_refused() {
        let l: LinkSpec = "1gbit".parse().unwrap();
        assert_eq!(
            l,
            LinkSpec {
                bits_per_sec: 1_000_000_000,
                rtt: None
            }
        );
        let l: LinkSpec = "100mbit,rtt=20ms".parse().unwrap();
        assert_eq!(l.bits_per_sec, 100_000_000);
        assert_eq!(l.rtt, Some(Duration::from_millis(20)));
        assert_eq!(
            "10GBIT".parse::<LinkSpec>().unwrap().bits_per_sec,
            10_000_000_000
        );
        assert_eq!(
            "1gbit,rtt=500us".parse::<LinkSpec>().unwrap().rtt,
            Some(Duration::from_micros(500))
        );
        for bad in [
            "",
            "1",
            "gbit",
            "0gbit",
            "-1gbit",
            "1.5gbit",
            "99999999999999999999gbit",
            "18446744073gbit",
            "101gbit",
            "1gbit,rtt=",
            "1gbit,rtt=0ms",
            "1gbit,rtt=20",
            "1gbit,rtt=18446744073709551615ms",
            "1gbit,loss=1%",
        ] {
            assert!(bad.parse::<LinkSpec>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn presets_display_rate_and_rtt() {
        let l: LinkSpec = "100mbit,rtt=20ms".parse().unwrap();
        assert_eq!(l.to_string(), "100 Mbit/s, rtt 20 ms");
    }
}
