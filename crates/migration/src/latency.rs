//! A fixed-size latency histogram ([`LatencyHistogram`]) for postcopy page requests: the
//! destination records, per request, the time from reading the fault to placing the page
//! (UFFDIO_COPY / UFFDIO_ZEROPAGE waking the faulting thread). Memory stays constant however
//! many requests a migration makes; quantiles are read from the buckets.
//!
//! Buckets are log-linear over microseconds: values 0–15 µs each have their own bucket, then
//! every power of two `[2^e, 2^(e+1))` (e = 4…31) is split in 8 equal buckets, so a quantile is
//! off by at most 1/8 of its value. Values of 2^32 µs (71 minutes) and more share the last
//! bucket.
//!
//! ```text
//! index:  0 … 15 | 16 … 23      | 24 … 31      | … | 232 … 239
//! µs:     0 … 15 | 16,18,…,30   | 32,36,…,60   | … | 2^31 …
//! ```
//!
//! A quantile is reported as the upper end of its bucket (a bound: "p99 ≤ x").

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Exact buckets below this many microseconds.
const LINEAR: u64 = 16;
/// Sub-buckets per power of two (2^SUB_BITS).
const SUB_BITS: u32 = 3;
/// Highest power of two with its own buckets.
const MAX_EXP: u32 = 31;
/// Number of buckets.
const BUCKETS: usize = LINEAR as usize + ((MAX_EXP - 3) as usize) * (1 << SUB_BITS);

/// Bucket of a value in microseconds.
fn bucket(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let e = 63 - us.leading_zeros();
    if e > MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = (us >> (e - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    LINEAR as usize + ((e - 4) as usize) * (1 << SUB_BITS) + sub as usize
}

/// The largest value (µs) that falls in bucket `i`.
fn upper(i: usize) -> u64 {
    if i < LINEAR as usize {
        return i as u64;
    }
    let k = i - LINEAR as usize;
    let e = (k >> SUB_BITS) as u32 + 4;
    let sub = (k & ((1 << SUB_BITS) - 1)) as u64;
    let width = 1u64 << (e - SUB_BITS);
    (1u64 << e) + (sub + 1) * width - 1
}

/// Latencies of one migration, updated with relaxed atomics from any thread.
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    max_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("summary", &self.summary())
            .finish()
    }
}

/// What `query-migrate` shows of a histogram (livemig's `x-postcopy-latency`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LatencySummary {
    /// Latencies recorded.
    pub count: u64,
    /// Median, µs (upper end of its bucket).
    pub p50_us: u64,
    /// 99th percentile, µs (upper end of its bucket).
    pub p99_us: u64,
    /// Largest latency, µs (exact).
    pub max_us: u64,
}

impl LatencyHistogram {
    /// Records one latency.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Latencies recorded so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The `q` quantile (0 < q ≤ 1) in µs, as the upper end of its bucket (never above the
    /// largest value seen); None before the first record.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        // The rank of the quantile, 1-based: the smallest value with at least q of the samples
        // at or below it.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                // The last bucket has no upper end but the largest value.
                let up = if i == BUCKETS - 1 { u64::MAX } else { upper(i) };
                return Some(up.min(self.max_us.load(Ordering::Relaxed)));
            }
        }
        Some(self.max_us.load(Ordering::Relaxed))
    }

    /// Count, p50, p99 and max; None before the first record.
    pub fn summary(&self) -> Option<LatencySummary> {
        Some(LatencySummary {
            p50_us: self.quantile_us(0.5)?,
            p99_us: self.quantile_us(0.99)?,
            count: self.count(),
            max_us: self.max_us.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(15), 15);
        assert_eq!(bucket(16), 16);
        assert_eq!(bucket(17), 16);
        assert_eq!(bucket(18), 17);
        assert_eq!(bucket(31), 23);
        assert_eq!(bucket(32), 24);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket(1 << 32), BUCKETS - 1);
        assert_eq!(bucket((1 << 32) - 1), BUCKETS - 1);
        // Each bucket's upper end falls in it, and the next value in the next bucket.
        for i in 0..BUCKETS - 1 {
            assert_eq!(bucket(upper(i)), i, "bucket {i}");
            assert_eq!(bucket(upper(i) + 1), i + 1, "bucket {i}");
        }
        // Relative width at most 1/8 above the linear part.
        for us in [100u64, 1000, 12_345, 999_999] {
            let up = upper(bucket(us));
            assert!(up >= us && (up - us) * 8 <= us, "{us} -> {up}");
        }
    }

    #[test]
    fn quantiles_of_known_samples() {
        let h = LatencyHistogram::default();
        assert_eq!(h.summary(), None);
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary().unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(s.max_us, 100);
        // 50 lies in [48, 51]; 99 in [96, 103], capped by the max 100.
        assert_eq!(s.p50_us, 51);
        assert_eq!(s.p99_us, 100);
        h.record(Duration::from_secs(1 << 40));
        assert_eq!(h.quantile_us(1.0), Some((1u64 << 40) * 1_000_000));
    }

    #[test]
    fn one_sample_is_every_quantile() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(700));
        assert_eq!(h.quantile_us(0.01), Some(700));
        assert_eq!(h.quantile_us(0.99), Some(700));
    }
}
