//! Fault injection: two `livemig run` processes migrate through a [`FaultRelay`] that stops the
//! stream in one phase; then a process is killed, the migration cancelled or the link cut. The
//! outcome must be a guest running on exactly one side (the source, unless the destination
//! proved it has everything), RAM and disks verified wherever it runs, and a source that can
//! migrate again.
//!
//! `cargo test` runs the matrix phases × actions once with the default settings plus a few
//! variants (multifd, XBZRLE, block migration, no return path). `LIVEMIG_SOAK=N` repeats every
//! variant N times and prints the outcome table (`cargo test --release --test faults -- --nocapture`).

mod cases;
#[path = "../common/mod.rs"]
mod common;
mod environment;
#[path = "../../src/netns.rs"]
mod netns;

use cases::{run_case, Action, Outcome, Phase, Variant, ACTIONS, PHASES};

fn soak_rounds() -> usize {
    std::env::var("LIVEMIG_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The phases and actions a variant other than the default runs in a quick `cargo test`.
const QUICK_PHASES: &[Phase] = &[Phase::FirstPass, Phase::DeviceState, Phase::AfterEof];
const QUICK_ACTIONS: &[Action] = &[Action::KillDst, Action::Cut];

/// Runs `variant` through the phases × actions (all of them for the default settings or with
/// `LIVEMIG_SOAK`), asserting each outcome, and prints the outcome table with trial counts.
fn matrix(variant: Variant, rounds: usize) {
    let all = rounds > 0 || variant == Variant::default();
    let (phases, actions) = if all {
        (PHASES, ACTIONS)
    } else {
        (QUICK_PHASES, QUICK_ACTIONS)
    };
    let mut table: Vec<(Phase, Action, Outcome, usize)> = Vec::new();
    for _ in 0..rounds.max(1) {
        for &phase in phases {
            for &action in actions {
                let outcome = run_case(variant, phase, action);
                match table
                    .iter_mut()
                    .find(|(p, a, o, _)| *p == phase && *a == action && *o == outcome)
                {
                    Some(row) => row.3 += 1,
                    None => table.push((phase, action, outcome, 1)),
                }
            }
        }
    }
    eprintln!("outcome table for {variant:?}:");
    for (p, a, o, n) in &table {
        eprintln!(
            "  {:<12} {:<8} {:<40} x{n}",
            format!("{p:?}"),
            format!("{a:?}"),
            o.to_string()
        );
    }
}

#[test]
fn every_phase_every_action_default_settings() {
    matrix(Variant::default(), soak_rounds());
}

#[test]
fn every_phase_every_action_multifd() {
    matrix(
        Variant {
            multifd: true,
            ..Variant::default()
        },
        soak_rounds(),
    );
}

#[test]
fn every_phase_every_action_xbzrle() {
    matrix(
        Variant {
            xbzrle: true,
            ..Variant::default()
        },
        soak_rounds(),
    );
}

#[test]
fn every_phase_every_action_block_migration() {
    matrix(
        Variant {
            block: true,
            ..Variant::default()
        },
        soak_rounds(),
    );
}

#[test]
fn every_phase_every_action_without_return_path() {
    matrix(
        Variant {
            return_path: false,
            ..Variant::default()
        },
        soak_rounds(),
    );
}
