//! A software guest: no KVM, just vCPU *threads* that keep writing guest RAM.
//!
//! It stands in for a real guest when testing and demonstrating migration: each vCPU rewrites
//! pages of its slice of a working set at a configurable rate and pattern, so the migration sees
//! a realistic, controllable dirty rate; the data written is a deterministic function of
//! `(seed, vcpu, generation)` so the destination's RAM can be checked, and the vCPU state
//! ([`SoftCpuState`]) migrates so the destination continues the exact same write sequence.
//!
//! Page layout of a write by vCPU `v` at generation `g` (`w = word_for(seed, v, g)`):
//!
//! ```text
//! offset    0: w                (u64, little endian)
//! offset 1024: w.rotate_left(16)
//! offset 2048: w.rotate_left(32)
//! offset 3072: w.rotate_left(48)
//! (other bytes keep whatever they held)
//! ```

mod config;
mod error;
mod fill;
mod guest;
mod state;

pub use config::{Pattern, WorkloadConfig};
pub use error::Error;
pub use fill::{fill_initial, FillPattern};
pub use guest::{SoftGuest, WORD_OFFSETS};
pub use state::{splitmix64, word_for, SoftCpuState};
