//! `calc-dirty-rate` / `query-dirty-rate` vocabulary (QEMU 5.2+, 7.2's semantics): the request
//! and its checks with QEMU's texts, the measurement state, and the rate formulas. The VMM
//! measures (it owns guest RAM and dirty tracking); this module only decides and computes,
//! so it is tested without a guest.
//!
//! | mode | how | rate (MiB/s) |
//! | --- | --- | --- |
//! | `page-sampling` (default) | hash `sample-pages` random pages per GiB of every block of at least 128 MiB, wait `calc-time`, hash again | dirty samples × block MiB × 1000 / (samples × ms) |
//! | `dirty-bitmap` | the VMM's dirty log over `calc-time` | dirty MiB × 1000 / ms |
//! | `dirty-ring` | KVM's dirty ring, which livemig does not use | refused with QEMU's text |
//!
//! ```text
//!  unstarted ──calc-dirty-rate──▶ measuring ──calc-time later──▶ measured ──calc-dirty-rate──▶ measuring
//! ```

use serde_json::{json, Value};

/// Shortest and longest `calc-time` in seconds.
pub const CALC_TIME_RANGE: (i64, i64) = (1, 60);
/// Fewest and most `sample-pages` per GiB.
pub const SAMPLE_PAGES_RANGE: (i64, i64) = (128, 16384);
/// `sample-pages` when not given.
pub const DEFAULT_SAMPLE_PAGES: u64 = 512;
/// Blocks smaller than this are not sampled (QEMU's `MIN_RAMBLOCK_SIZE`).
pub const MIN_SAMPLED_BLOCK: u64 = 128 << 20;

/// How the rate is measured (QEMU's `DirtyRateMeasureMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirtyRateMode {
    /// Hash random pages before and after.
    #[default]
    PageSampling,
    /// KVM's dirty ring.
    DirtyRing,
    /// The dirty log.
    DirtyBitmap,
}

impl DirtyRateMode {
    /// Every mode, in QEMU's order.
    pub const ALL: [DirtyRateMode; 3] = [Self::PageSampling, Self::DirtyRing, Self::DirtyBitmap];

    /// The QAPI name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PageSampling => "page-sampling",
            Self::DirtyRing => "dirty-ring",
            Self::DirtyBitmap => "dirty-bitmap",
        }
    }

    /// Parses a QAPI name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// A `calc-dirty-rate` request, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyRateRequest {
    /// Seconds to measure.
    pub calc_time: u64,
    /// Pages sampled per GiB (page-sampling).
    pub sample_pages: u64,
    /// The mode.
    pub mode: DirtyRateMode,
}

/// Why `calc-dirty-rate` was refused (QEMU's texts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirtyRateError {
    /// A measurement runs.
    #[error("the dirty rate is already being measured.")]
    Busy,
    /// `calc-time` out of range.
    #[error("calc-time is out of range[1, 60].")]
    CalcTime,
    /// `sample-pages` with another mode.
    #[error("either sample-pages or dirty-ring can be specified.")]
    SamplePagesWithMode,
    /// `sample-pages` out of range.
    #[error("sample-pages is out of range[128, 16384].")]
    SamplePages,
    /// The mode cannot be used on this VM.
    #[error("mode {0} is not enabled, use other method instead.")]
    ModeNotEnabled(&'static str),
    /// The VMM could not measure (e.g. its dirty log is in use by a migration).
    #[error("cannot measure the dirty rate: {0}")]
    Unavailable(String),
}

impl DirtyRateRequest {
    /// Checks the arguments in QEMU's order; `dirty_ring` tells whether the VM uses KVM's
    /// dirty ring (QEMU allows `dirty-ring` only then, and `dirty-bitmap` only otherwise).
    pub fn check(
        calc_time: i64,
        sample_pages: Option<i64>,
        mode: Option<DirtyRateMode>,
        dirty_ring: bool,
    ) -> Result<Self, DirtyRateError> {
        if !(CALC_TIME_RANGE.0..=CALC_TIME_RANGE.1).contains(&calc_time) {
            return Err(DirtyRateError::CalcTime);
        }
        let mode = mode.unwrap_or_default();
        if sample_pages.is_some() && mode != DirtyRateMode::PageSampling {
            return Err(DirtyRateError::SamplePagesWithMode);
        }
        let sample_pages = match sample_pages {
            Some(n) if (SAMPLE_PAGES_RANGE.0..=SAMPLE_PAGES_RANGE.1).contains(&n) => n as u64,
            Some(_) => return Err(DirtyRateError::SamplePages),
            None => DEFAULT_SAMPLE_PAGES,
        };
        let ring = mode == DirtyRateMode::DirtyRing;
        if (ring && !dirty_ring) || (mode == DirtyRateMode::DirtyBitmap && dirty_ring) {
            return Err(DirtyRateError::ModeNotEnabled(mode.as_str()));
        }
        Ok(Self {
            calc_time: calc_time as u64,
            sample_pages,
            mode,
        })
    }
}

/// State of the last measurement (QEMU's `DirtyRateStatus` + `DirtyStat`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirtyRateState {
    /// `None` before any request; `Some(false)` while measuring, `Some(true)` when measured.
    pub measured: Option<bool>,
    /// When the measurement started (seconds of the host's monotonic clock).
    pub start_time: u64,
    /// The request.
    pub request: Option<DirtyRateRequest>,
    /// The result in MiB/s.
    pub dirty_rate: Option<u64>,
}

impl DirtyRateState {
    /// The `query-dirty-rate` reply.
    pub fn to_json(&self) -> Value {
        let status = match self.measured {
            None => "unstarted",
            Some(false) => "measuring",
            Some(true) => "measured",
        };
        let r = self.request;
        let mut v = json!({
            "status": status,
            "start-time": self.start_time,
            "calc-time": r.map_or(0, |r| r.calc_time),
            "sample-pages": r.map_or(0, |r| r.sample_pages),
            "mode": r.map_or(DirtyRateMode::default(), |r| r.mode).as_str(),
        });
        if let (Some(true), Some(rate)) = (self.measured, self.dirty_rate) {
            v["dirty-rate"] = json!(rate);
        }
        v
    }
}

/// Page sampling: `dirty` of `samples` sampled pages changed over `ms` in blocks totalling
/// `block_mib` MiB.
pub fn sampled_rate(dirty: u64, samples: u64, block_mib: u64, ms: u64) -> u64 {
    let den = u128::from(samples) * u128::from(ms.max(1));
    if den == 0 {
        return 0;
    }
    let rate = u128::from(dirty) * u128::from(block_mib) * 1000 / den;
    u64::try_from(rate).unwrap_or(u64::MAX)
}

/// Dirty log: `pages` pages of `page_size` bytes dirtied over `ms`.
pub fn logged_rate(pages: u64, page_size: u64, ms: u64) -> u64 {
    let mib = (u128::from(pages) * u128::from(page_size)) >> 20;
    u64::try_from(mib * 1000 / u128::from(ms.max(1))).unwrap_or(u64::MAX)
}

/// How many pages of a block of `len` bytes page sampling looks at (`sample_pages` per GiB);
/// 0 for blocks under [`MIN_SAMPLED_BLOCK`].
pub fn samples_for_block(len: u64, sample_pages: u64) -> u64 {
    if len < MIN_SAMPLED_BLOCK {
        return 0;
    }
    ((u128::from(len) * u128::from(sample_pages)) >> 30) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use DirtyRateMode as M;

    fn err(t: i64, pages: Option<i64>, mode: Option<M>, ring: bool) -> String {
        DirtyRateRequest::check(t, pages, mode, ring)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn requests_are_checked_with_qemus_texts_in_its_order() {
        assert_eq!(
            err(0, Some(1), None, false),
            "calc-time is out of range[1, 60]."
        );
        assert_eq!(
            err(61, None, None, false),
            "calc-time is out of range[1, 60]."
        );
        assert_eq!(
            err(1, Some(1), Some(M::DirtyBitmap), false),
            "either sample-pages or dirty-ring can be specified."
        );
        assert_eq!(
            err(1, Some(127), None, false),
            "sample-pages is out of range[128, 16384]."
        );
        assert_eq!(
            err(1, None, Some(M::DirtyRing), false),
            "mode dirty-ring is not enabled, use other method instead."
        );
        assert_eq!(
            err(1, None, Some(M::DirtyBitmap), true),
            "mode dirty-bitmap is not enabled, use other method instead."
        );
        let r = DirtyRateRequest::check(2, None, None, false).unwrap();
        assert_eq!(
            (r.calc_time, r.sample_pages, r.mode),
            (2, 512, M::PageSampling)
        );
    }

    #[test]
    fn formulas() {
        // Half of the samples dirty in 1 GiB over 1 s: 512 MiB/s.
        assert_eq!(sampled_rate(256, 512, 1024, 1000), 512);
        assert_eq!(sampled_rate(0, 0, 0, 0), 0);
        assert_eq!(logged_rate(25_600, 4096, 1000), 100);
        assert_eq!(samples_for_block(64 << 20, 512), 0);
        assert_eq!(samples_for_block(256 << 20, 512), 128);
    }

    #[test]
    fn query_reply() {
        let mut s = DirtyRateState::default();
        assert_eq!(
            s.to_json(),
            json!({"status": "unstarted", "start-time": 0, "calc-time": 0,
                   "sample-pages": 0, "mode": "page-sampling"})
        );
        s.measured = Some(true);
        s.dirty_rate = Some(7);
        s.request = DirtyRateRequest::check(1, None, Some(M::DirtyBitmap), false).ok();
        let v = s.to_json();
        assert_eq!(
            (v["dirty-rate"].clone(), v["mode"].clone()),
            (json!(7), json!("dirty-bitmap"))
        );
    }
}
