//! `livemig bench` case (c): a running guest — 1 GiB (÷ scale) of random RAM and one vCPU
//! rewriting a 64 MiB working set at random, at 256 MiB/s and unbounded — migrated over
//! loopback with the default parameters (300 ms downtime limit, no bandwidth limit). What a
//! user feels is the **downtime** (guest stopped on the source → running on the
//! destination); the target is ≤ 20 ms.
//!
//! With the default 300 ms limit a source switches over as soon as what is left fits in
//! 300 ms at the measured rate — the whole working set, which then takes tens of ms to send.
//! The third way is what an operator who wants ≤ 20 ms asks for: `downtime-limit 20` and
//! `auto-converge`, which throttles the writer until what is left fits.
//!
//! Each round runs the three ways, in alternating order (reversed in even rounds), each on a
//! fresh pair of VMs; the medians and [min–max] over the rounds are printed.

use std::time::Duration;

use anyhow::Context;
use migration::{Capability, ParameterUpdate};
use vmm::soft::{Pattern, WorkloadConfig};

use super::pair::{machines, migrate, Outcome};
use super::table::spread_text;
use super::{fill_random, GIB, MIB};
use crate::size::human;

/// A writer's rate (None: unbounded) and whether the source asks for 20 ms with
/// auto-converge.
#[derive(Debug, Clone, Copy)]
struct Way {
    rate: Option<u64>,
    converge: bool,
}

impl Way {
    fn label(self) -> String {
        let rate = self
            .rate
            .map_or("unbounded".to_string(), |r| format!("{}/s", human(r)));
        if self.converge {
            format!("{rate}, limit 20 ms + auto-converge")
        } else {
            rate
        }
    }
}

/// One migration of a fresh running guest, the `way` given.
fn one(scale: u64, way: Way) -> anyhow::Result<(Outcome, u64)> {
    let rate = way.rate;
    let workload = WorkloadConfig {
        vcpus: 1,
        working_set: 64 * MIB / scale,
        write_rate: rate,
        pattern: Pattern::Random,
        seed: 7,
        ..Default::default()
    };
    let (src, dst) = machines(GIB / scale, Some(workload), false)?;
    let result = (|| {
        if way.converge {
            src.set_capabilities(&[(Capability::AutoConverge, true)])?;
            let p = serde_json::json!({"downtime-limit": 20});
            let update = ParameterUpdate::from_json(p.as_object().context("a JSON object")?)?;
            src.set_parameters(&update)?;
        }
        fill_random(&src.ram().blocks()[0])?;
        std::thread::sleep(Duration::from_millis(200));
        let o = migrate(&src, &dst)?;
        let writes = src.vcpus().map_or(0, |v| v.total_writes());
        anyhow::Ok((o, writes))
    })();
    src.shutdown();
    dst.shutdown();
    result
}

/// Runs case (c) over `rounds` rounds.
pub(super) fn case_c(scale: u64, rounds: usize) -> anyhow::Result<()> {
    let writers = [
        Way {
            rate: Some(256 * MIB),
            converge: false,
        },
        Way {
            rate: None,
            converge: false,
        },
        Way {
            rate: None,
            converge: true,
        },
    ];
    println!(
        "(c) {} RAM, one vCPU rewriting {} at random, at 256 MiB/s and unbounded \
         ({rounds} rounds, alternating order)",
        human(GIB / scale),
        human(64 * MIB / scale)
    );
    // Per writer: downtime, total time, passes (ms, ms, count).
    let mut figures = vec![(Vec::new(), Vec::new(), Vec::new()); writers.len()];
    for round in 1..=rounds {
        let mut order: Vec<usize> = (0..writers.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        let mut parts = Vec::new();
        for i in order {
            let (o, writes) = one(scale, writers[i])?;
            let down = o.info.downtime.unwrap_or(0);
            figures[i].0.push(down as f64);
            figures[i].1.push(o.total_ms() as f64);
            figures[i].2.push(o.passes() as f64);
            parts.push(format!(
                "{}: downtime {down} ms, total {} ms, {} passes, {writes} guest writes",
                writers[i].label(),
                o.total_ms(),
                o.passes()
            ));
        }
        println!("  round {round}: {}", parts.join(" | "));
    }
    for (i, w) in writers.iter().enumerate() {
        let (down, total, passes) = &figures[i];
        println!(
            "  {}: downtime {} ms (target <= 20), total {} ms, passes {}",
            w.label(),
            spread_text(down),
            spread_text(total),
            spread_text(passes)
        );
    }
    Ok(())
}
