//! `livemig bench` case (p): a guest whose working set is rewritten faster than the link
//! carries it — two software vCPUs writing unbounded over all of its 256 MiB (÷ scale) of RAM
//! (first filled with incompressible bytes),
//! the link limited to [`LINK`] with `max-bandwidth` — migrated three ways, in alternating
//! rounds over loopback TCP (two VMs in this process, each with its own threads):
//!
//! * **pre-copy**: plain; bounded — after [`BOUND`] it "did not converge" and is cancelled, the
//!   guest keeps running on the source;
//! * **auto-converge**: pre-copy throttling the vCPUs (QEMU's default steps), same bound;
//! * **postcopy**: `postcopy-ram`, `migrate-start-postcopy` once the first pass is over
//!   (second dirty sync), the rest at the same link speed (`max-postcopy-bandwidth`).
//!
//! Measured per round: total time, the engine's downtime and the guest's own pause (its last
//! page write on the source → its first on the destination, sampled every [`SAMPLE`]), the
//! guest's write rate in the second before the migration, during it (both sides' writes over
//! the migration's time) and in the second after it (on whichever side then runs), and for
//! postcopy the destination's page-request latency (`x-postcopy-latency`: fault read → page
//! placed). Each round creates fresh VMs; the table ([`postcopy_table`](super::postcopy_table))
//! shows medians and spreads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use migration::{Capability, MigrationStatus, ParameterUpdate};
use serde_json::json;
use vmm::machine::Machine;
use vmm::soft::{Pattern, WorkloadConfig};

use super::pair::machines;
use super::postcopy_table::{k_rate, PostcopyTable, RoundResult};
use super::{fill_random, MIB};
use crate::size::human;

/// Link speed (`max-bandwidth`, and `max-postcopy-bandwidth` for postcopy).
const LINK: u64 = 128 * MIB;
/// Pre-copy and auto-converge give up after this long.
const BOUND: Duration = Duration::from_secs(10);
/// Window of the write rate before and after a migration.
const WINDOW: Duration = Duration::from_secs(1);
/// How often the guest's write counters are sampled during a migration.
const SAMPLE: Duration = Duration::from_micros(200);
/// How long to wait for the destination's guest to write after the source completed.
const FIRST_WRITE_WAIT: Duration = Duration::from_secs(10);

const PRECOPY: &str = "pre-copy";
const AUTO: &str = "auto-converge";
const POSTCOPY: &str = "postcopy";

/// The strategies in the order each round runs them.
const STRATEGIES: [&str; 3] = [PRECOPY, AUTO, POSTCOPY];

fn writes(m: &Machine) -> u64 {
    m.vcpus().map_or(0, |v| v.total_writes())
}

fn configure(m: &Machine, strategy: &str) -> anyhow::Result<()> {
    m.set_capabilities(&[
        (Capability::AutoConverge, strategy == AUTO),
        (Capability::PostcopyRam, strategy == POSTCOPY),
    ])?;
    let p = json!({"max-bandwidth": LINK, "max-postcopy-bandwidth": LINK});
    let update = ParameterUpdate::from_json(p.as_object().context("a JSON object")?)?;
    m.set_parameters(&update)?;
    Ok(())
}

/// What the watch loop saw of a migration.
struct Watch {
    end: Instant,
    completed: bool,
    /// Dirty syncs last seen while it ran (a cancelled migration shows no statistics).
    passes: u64,
    /// The highest vCPU throttle seen (auto-converge), percent.
    throttle: u64,
    /// The source's last write seen, the destination's first.
    last_src_write: Instant,
    first_dst_write: Option<Instant>,
}

/// Follows the migration started at `start` until it ends: switches to postcopy after the
/// first pass, cancels pre-copy after [`BOUND`], and notes when each side's guest wrote.
fn watch(src: &Machine, dst: &Machine, strategy: &str, start: Instant) -> anyhow::Result<Watch> {
    let mut last_src = writes(src);
    let mut w = Watch {
        end: start,
        completed: false,
        passes: 0,
        throttle: 0,
        last_src_write: start,
        first_dst_write: None,
    };
    let mut switched = false;
    let mut cancelled = false;
    loop {
        let now = Instant::now();
        let s = writes(src);
        if s != last_src {
            last_src = s;
            w.last_src_write = now;
        }
        if w.first_dst_write.is_none() && writes(dst) > 0 {
            w.first_dst_write = Some(now);
        }
        let status = src.migration().status();
        if !status.is_running() {
            w.end = now;
            match status {
                MigrationStatus::Completed => w.completed = true,
                MigrationStatus::Cancelled if cancelled => {}
                other => bail!(
                    "{strategy}: migration ended in {other}: {:?}",
                    src.migration().info().error_desc
                ),
            }
            break;
        }
        let info = src.migration().info();
        if let Some(r) = info.ram {
            w.passes = r.dirty_sync_count;
        }
        w.throttle = w.throttle.max(info.cpu_throttle_percentage.unwrap_or(0));
        if strategy == POSTCOPY && !switched && w.passes >= 2 {
            src.migration().start_postcopy()?;
            switched = true;
        }
        if strategy != POSTCOPY && !cancelled && now - start > BOUND {
            src.migrate_cancel();
            cancelled = true;
        }
        std::thread::sleep(SAMPLE);
    }
    // In pre-copy the destination starts its guest after the source has completed.
    while w.completed && w.first_dst_write.is_none() && w.end.elapsed() < FIRST_WRITE_WAIT {
        if writes(dst) > 0 {
            w.first_dst_write = Some(Instant::now());
        }
        std::thread::sleep(SAMPLE);
    }
    Ok(w)
}

/// One migration of a fresh guest of `size` bytes with `strategy`.
fn one_round(size: u64, strategy: &str) -> anyhow::Result<RoundResult> {
    let workload = WorkloadConfig {
        vcpus: 2,
        working_set: size,
        write_rate: None,
        pattern: Pattern::Random,
        seed: 7,
        ..Default::default()
    };
    let (src, dst) = machines(size, Some(workload), false)?;
    // Every page populated with incompressible bytes: no first-touch fault disturbs the rate
    // measured before, and every page crosses the link as a full page.
    fill_random(&src.ram().blocks()[0])?;
    let r = run_round(&src, &dst, strategy);
    src.shutdown();
    dst.shutdown();
    r
}

fn run_round(
    src: &Arc<Machine>,
    dst: &Arc<Machine>,
    strategy: &str,
) -> anyhow::Result<RoundResult> {
    configure(src, strategy)?;
    configure(dst, strategy)?;
    // Let the guest settle, then measure its rate undisturbed.
    std::thread::sleep(Duration::from_millis(300));
    let w0 = writes(src);
    std::thread::sleep(WINDOW);
    let rate_before = k_rate(writes(src) - w0, WINDOW);
    dst.migrate_incoming("tcp:127.0.0.1:0", &transport::NoFds)?;
    let uri = dst
        .incoming_uri()
        .context("destination did not report its address")?;
    let src_w0 = writes(src);
    let start = Instant::now();
    src.migrate(&uri, &transport::NoFds, None)?;
    let w = watch(src, dst, strategy, start)?;
    let during = w.end - start;
    let (src_w1, dst_w1) = (writes(src), writes(dst));
    let rate_during = k_rate((src_w1 - src_w0) + dst_w1, during);
    let runs_on = if w.completed {
        dst.wait(true);
        if let Some(Err(e)) = dst.incoming_result() {
            bail!("{strategy}: destination failed: {e}");
        }
        dst
    } else {
        src
    };
    let a0 = writes(runs_on);
    std::thread::sleep(WINDOW);
    let rate_after = k_rate(writes(runs_on) - a0, WINDOW);
    let info = src.migration().info();
    let latency = dst.migration().info().x_postcopy_latency;
    Ok(RoundResult {
        completed: w.completed,
        total_ms: info
            .total_time
            .map_or(during.as_secs_f64() * 1000.0, |t| t as f64),
        passes: info
            .ram
            .as_ref()
            .map_or(0, |r| r.dirty_sync_count)
            .max(w.passes) as f64,
        throttle: (strategy == AUTO).then_some(w.throttle as f64),
        downtime_ms: if w.completed {
            info.downtime.map(|d| d as f64)
        } else {
            None
        },
        pause_ms: w
            .first_dst_write
            .filter(|_| w.completed)
            .map(|f| f.saturating_duration_since(w.last_src_write).as_secs_f64() * 1000.0),
        rate_before,
        rate_during,
        rate_after,
        requests: latency.map(|l| l.count as f64),
        p50_us: latency.map(|l| l.p50_us as f64),
        p99_us: latency.map(|l| l.p99_us as f64),
    })
}

/// Runs case (p): `rounds` rounds of the three strategies in turn; prints the table.
pub(super) fn case_p(scale: u64, rounds: usize) -> anyhow::Result<()> {
    let size = 256 * MIB / scale;
    let title = format!(
        "(p) {} RAM, 2 vCPUs writing unbounded over all of it, link {}/s, pre-copy bound {} s, \
         {rounds} rounds: median [min–max]",
        human(size),
        human(LINK),
        BOUND.as_secs()
    );
    println!("{title}");
    let mut table = PostcopyTable::new(&title);
    for round in 1..=rounds {
        for strategy in STRATEGIES {
            let r = one_round(size, strategy)?;
            println!(
                "  round {round} {strategy}: {} in {:.0} ms ({} passes, throttle {:?} %), \
                 downtime {:?} ms, pause {:?} ms, writes k/s {:.0} / {:.0} / {:.0}, \
                 p50/p99 {:?}/{:?} µs",
                if r.completed {
                    "completed"
                } else {
                    "did not converge"
                },
                r.total_ms,
                r.passes,
                r.throttle,
                r.downtime_ms,
                r.pause_ms.map(|p| (p * 10.0).round() / 10.0),
                r.rate_before,
                r.rate_during,
                r.rate_after,
                r.p50_us,
                r.p99_us,
            );
            table.record(strategy, r);
        }
    }
    print!("{}", table.render());
    let p99 = table.values(POSTCOPY, "request p99 µs");
    let down = table.values(POSTCOPY, "downtime ms (engine)");
    if let (Some(p), Some(d)) = (
        super::table::Spread::of(&p99),
        super::table::Spread::of(&down),
    ) {
        println!(
            "  => postcopy downtime {:.0} ms (target <= 20 ms), request p99 {:.0} µs (target <= 1000 µs)",
            d.median, p.median
        );
    }
    Ok(())
}
