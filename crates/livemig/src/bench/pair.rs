//! The machinery every bench case shares: a source/destination pair of VMs in this process
//! and one migration between them over loopback TCP, timed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use migration::{MigrationInfo, MigrationStatus};
use vmm::machine::{Machine, MachineConfig};
use vmm::soft::WorkloadConfig;

use crate::timeline::{self, Sample};

/// A finished migration: the source's `query-migrate`, the wall-clock time, and the
/// timeline (`query-migrate` sampled every [`timeline::INTERVAL`]).
pub(super) struct Outcome {
    pub(super) info: MigrationInfo,
    pub(super) wall: Duration,
    pub(super) timeline: Vec<Sample>,
}

impl Outcome {
    pub(super) fn total_ms(&self) -> u64 {
        self.info.total_time.unwrap_or(0)
    }
    pub(super) fn passes(&self) -> u64 {
        self.info.ram.as_ref().map_or(0, |r| r.dirty_sync_count)
    }
    pub(super) fn transferred(&self) -> u64 {
        self.info.ram.as_ref().map_or(0, |r| r.transferred)
    }
}

/// Migrates `src` into `dst` over loopback TCP and waits until both sides are done.
pub(super) fn migrate(src: &Arc<Machine>, dst: &Arc<Machine>) -> anyhow::Result<Outcome> {
    migrate_via(src, dst, |uri| Ok((uri.to_string(), ())))
}

/// Like [`migrate`], with the source sent to the URI `route` makes of the destination's (a
/// relay); what `route` returns besides is kept until the migration is over.
pub(super) fn migrate_via<G>(
    src: &Arc<Machine>,
    dst: &Arc<Machine>,
    route: impl FnOnce(&str) -> anyhow::Result<(String, G)>,
) -> anyhow::Result<Outcome> {
    migrate_listening(src, dst, "tcp:127.0.0.1:0", route)
}

/// Like [`migrate_via`], with the destination listening on `listen` (e.g. `unix:PATH`).
pub(super) fn migrate_listening<G>(
    src: &Arc<Machine>,
    dst: &Arc<Machine>,
    listen: &str,
    route: impl FnOnce(&str) -> anyhow::Result<(String, G)>,
) -> anyhow::Result<Outcome> {
    dst.migrate_incoming(listen, &transport::NoFds)?;
    let direct = dst
        .incoming_uri()
        .context("destination did not report its address")?;
    let (uri, _route) = route(&direct)?;
    let t = Instant::now();
    src.migrate(&uri, &transport::NoFds, None)?;
    let mut samples = Vec::new();
    let mut next_sample = t;
    loop {
        if Instant::now() >= next_sample {
            let info = src.migration().info().to_json();
            samples.push(Sample::from_query(t.elapsed(), &info));
            next_sample += timeline::INTERVAL;
        }
        let s = src.migration().status();
        if !s.is_running() {
            if s != MigrationStatus::Completed {
                bail!(
                    "migration ended in {s}: {:?}",
                    src.migration().info().error_desc
                );
            }
            break;
        }
        // Fine enough for migrations that take a few milliseconds (same-host handover).
        std::thread::sleep(Duration::from_micros(200));
    }
    let wall = t.elapsed();
    dst.wait(true);
    if let Some(Err(e)) = dst.incoming_result() {
        bail!("destination failed: {e}");
    }
    let info = src.migration().info();
    samples.push(Sample::from_query(wall, &info.to_json()));
    Ok(Outcome {
        info,
        wall,
        timeline: samples,
    })
}

pub(super) fn machines(
    memory: u64,
    workload: Option<WorkloadConfig>,
    paused: bool,
) -> anyhow::Result<(Arc<Machine>, Arc<Machine>)> {
    machine_pair(MachineConfig {
        memory,
        workload,
        start_paused: paused,
        ..Default::default()
    })
}

/// A source built from `cfg` and a destination with the same configuration, waiting for it.
pub(super) fn machine_pair(cfg: MachineConfig) -> anyhow::Result<(Arc<Machine>, Arc<Machine>)> {
    let src = Machine::new(cfg.clone())?;
    let dst = Machine::new(MachineConfig {
        incoming: true,
        ..cfg
    })?;
    Ok((src, dst))
}
