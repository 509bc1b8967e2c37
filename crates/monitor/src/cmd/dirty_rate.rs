//! `calc-dirty-rate` and `query-dirty-rate`: how fast the guest dirties memory, so a manager
//! can tell before migrating whether it will converge (rules in `migration::dirty_rate`).
//!
//! ```text
//! {"execute": "calc-dirty-rate", "arguments": {"calc-time": 1, "sample-pages"?: 512,
//!                                              "mode"?: "page-sampling"|"dirty-bitmap"|"dirty-ring"}}
//! {"execute": "query-dirty-rate"}
//!   → {"status": "measured", "start-time": S, "calc-time": 1, "sample-pages": 512,
//!      "mode": "page-sampling", "dirty-rate": MiB/s}
//! ```

use serde_json::Value;

use super::args::{bad_enum, missing, Args};
use crate::backend::CommandError;
use crate::session::Session;
use migration::dirty_rate::DirtyRateMode;

/// Arguments of `calc-dirty-rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalcDirtyRate {
    /// Seconds to measure.
    pub calc_time: i64,
    /// Pages sampled per GiB.
    pub sample_pages: Option<i64>,
    /// The mode.
    pub mode: Option<DirtyRateMode>,
}

impl CalcDirtyRate {
    /// Parses `calc-time`, `sample-pages`, `mode`.
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        let calc_time = a
            .opt_int("calc-time")?
            .ok_or_else(|| missing("calc-time"))?;
        let sample_pages = a.opt_int("sample-pages")?;
        let mode = match a.opt_str("mode")? {
            Some(m) => Some(DirtyRateMode::parse(&m).ok_or_else(|| bad_enum("mode", &m))?),
            None => None,
        };
        Ok(Self {
            calc_time,
            sample_pages,
            mode,
        })
    }

    /// Starts the measurement.
    pub fn run(&self, s: &Session) -> Result<(), CommandError> {
        s.backend
            .calc_dirty_rate(self.calc_time, self.sample_pages, self.mode)
    }
}

/// The `query-dirty-rate` reply.
pub fn query(s: &Session) -> Value {
    s.backend.query_dirty_rate().to_json()
}
