//! The result table of case (p): per strategy (pre-copy, auto-converge, postcopy) the rounds'
//! outcomes, printed with one line per metric and one column per strategy, each cell the
//! median and the spread [min–max] over the rounds where the metric exists (downtime only for
//! completed rounds, request latency only for postcopy).
//!
//! ```text
//!   metric                      pre-copy                 auto-converge      postcopy
//!   completed                   0/7                      0/7                7/7
//!   total ms                    10000 [10000–10010]      …                  4210 [4010–4530]
//! ```

use std::fmt::Write;
use std::time::Duration;

use super::table::Spread;

/// What one migration of one strategy gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct RoundResult {
    /// The migration completed (false: pre-copy did not converge within the bound and was
    /// cancelled; the guest kept running on the source).
    pub(super) completed: bool,
    /// Start to completion (or to the cancel).
    pub(super) total_ms: f64,
    /// Passes over RAM (dirty bitmap syncs).
    pub(super) passes: f64,
    /// Auto-converge: the highest vCPU throttle reached, percent.
    pub(super) throttle: Option<f64>,
    /// The engine's downtime (stop → destination told to run), completed rounds only.
    pub(super) downtime_ms: Option<f64>,
    /// The guest's own pause: its last write on the source → its first on the destination.
    pub(super) pause_ms: Option<f64>,
    /// Guest page writes per second before, during and after the migration, in thousands.
    pub(super) rate_before: f64,
    pub(super) rate_during: f64,
    pub(super) rate_after: f64,
    /// Postcopy page requests timed by the destination, and their p50 / p99 latency in µs.
    pub(super) requests: Option<f64>,
    pub(super) p50_us: Option<f64>,
    pub(super) p99_us: Option<f64>,
}

/// Thousands of writes per second.
pub(super) fn k_rate(writes: u64, over: Duration) -> f64 {
    let s = over.as_secs_f64();
    if s <= 0.0 {
        return 0.0;
    }
    writes as f64 / s / 1000.0
}

/// `median [min–max]` of `v` with `digits` decimals, or `—` when there is no value.
fn cell(v: &[f64], digits: usize) -> String {
    Spread::of(v).map_or("—".to_string(), |s| format!("{s:.digits$}"))
}

/// The metrics, in display order: name, decimals, how to read a round.
type Metric = (&'static str, usize, fn(&RoundResult) -> Option<f64>);

const METRICS: [Metric; 11] = [
    ("total ms", 0, |r| Some(r.total_ms)),
    ("passes", 0, |r| Some(r.passes)),
    ("vCPU throttle % (max)", 0, |r| r.throttle),
    ("downtime ms (engine)", 0, |r| r.downtime_ms),
    ("guest pause ms", 1, |r| r.pause_ms),
    ("writes k/s before", 0, |r| Some(r.rate_before)),
    ("writes k/s during", 0, |r| Some(r.rate_during)),
    ("writes k/s after", 0, |r| Some(r.rate_after)),
    ("requests timed", 0, |r| r.requests),
    ("request p50 µs", 0, |r| r.p50_us),
    ("request p99 µs", 0, |r| r.p99_us),
];

/// Rounds per strategy, in the order strategies were first recorded.
#[derive(Debug, Clone, Default)]
pub(super) struct PostcopyTable {
    pub(super) title: String,
    pub(super) columns: Vec<(String, Vec<RoundResult>)>,
}

impl PostcopyTable {
    pub(super) fn new(title: &str) -> Self {
        Self {
            title: title.to_string(),
            columns: Vec::new(),
        }
    }

    /// Adds one round of `strategy`.
    pub(super) fn record(&mut self, strategy: &str, r: RoundResult) {
        match self.columns.iter_mut().find(|(n, _)| n == strategy) {
            Some((_, v)) => v.push(r),
            None => self.columns.push((strategy.to_string(), vec![r])),
        }
    }

    /// The values of `metric` over the rounds of `strategy` that have it.
    pub(super) fn values(&self, strategy: &str, metric: &str) -> Vec<f64> {
        let Some((_, rounds)) = self.columns.iter().find(|(n, _)| n == strategy) else {
            return Vec::new();
        };
        let Some((_, _, read)) = METRICS.iter().find(|(n, _, _)| *n == metric) else {
            return Vec::new();
        };
        rounds.iter().filter_map(read).collect()
    }

    /// The table as text: title, header, a `completed n/N` line, then one line per metric.
    pub(super) fn render(&self) -> String {
        let mut lines: Vec<Vec<String>> = Vec::new();
        let mut header = vec!["metric".to_string()];
        header.extend(self.columns.iter().map(|(n, _)| n.clone()));
        lines.push(header);
        let mut done = vec!["completed".to_string()];
        done.extend(self.columns.iter().map(|(_, rounds)| {
            let n = rounds.iter().filter(|r| r.completed).count();
            format!("{n}/{}", rounds.len())
        }));
        lines.push(done);
        for (name, digits, read) in METRICS {
            let mut line = vec![name.to_string()];
            line.extend(self.columns.iter().map(|(_, rounds)| {
                let v: Vec<f64> = rounds.iter().filter_map(read).collect();
                cell(&v, digits)
            }));
            lines.push(line);
        }
        let cols = lines[0].len();
        let width: Vec<usize> = (0..cols)
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let _ = writeln!(out, "  {}", self.title);
        for l in &lines {
            let mut text = String::from(" ");
            for (c, s) in l.iter().enumerate() {
                let pad = width[c] - s.chars().count();
                let _ = write!(text, " {s}{}", " ".repeat(pad));
                text.push(' ');
            }
            let _ = writeln!(out, "{}", text.trim_end());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(completed: bool, total: f64, p99: Option<f64>) -> RoundResult {
        RoundResult {
            completed,
            total_ms: total,
            downtime_ms: completed.then_some(3.0),
            p99_us: p99,
            ..Default::default()
        }
    }

    #[test]
    fn rates_are_thousands_per_second() {
        assert_eq!(k_rate(5000, Duration::from_millis(500)), 10.0);
        assert_eq!(k_rate(5000, Duration::ZERO), 0.0);
    }

    #[test]
    fn metrics_only_from_rounds_that_have_them() {
        let mut t = PostcopyTable::new("x");
        t.record("pre-copy", round(false, 10_000.0, None));
        t.record("postcopy", round(true, 4000.0, Some(300.0)));
        t.record("pre-copy", round(false, 10_010.0, None));
        t.record("postcopy", round(true, 5000.0, Some(500.0)));
        assert_eq!(t.values("pre-copy", "total ms"), vec![10_000.0, 10_010.0]);
        assert!(t.values("pre-copy", "downtime ms (engine)").is_empty());
        assert_eq!(t.values("postcopy", "request p99 µs"), vec![300.0, 500.0]);
        assert!(t.values("absent", "total ms").is_empty());
        assert!(t.values("postcopy", "no such metric").is_empty());
    }

    #[test]
    fn render_has_a_column_per_strategy_and_a_line_per_metric() {
        let mut t = PostcopyTable::new("case (p)");
        t.record("pre-copy", round(false, 10_000.0, None));
        t.record("postcopy", round(true, 4000.0, Some(300.0)));
        t.record("postcopy", round(true, 5000.0, Some(500.0)));
        t.record("postcopy", round(false, 9000.0, None));
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3 + METRICS.len(), "{text}");
        assert_eq!(lines[0], "  case (p)");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{text}");
        let completed = lines[2];
        assert!(
            completed.contains("0/1") && completed.contains("2/3"),
            "{text}"
        );
        let total = lines.iter().find(|l| l.contains("total ms")).unwrap();
        assert!(total.contains("10000 [10000–10000]"), "{text}");
        assert!(total.contains("5000 [4000–9000]"), "{text}");
        let p99 = lines.iter().find(|l| l.contains("p99")).unwrap();
        assert!(p99.contains("—") && p99.contains("400 [300–500]"), "{text}");
        // Columns line up (in characters: the dash is not one byte).
        let at = |line: &str, pat: &str| line[..line.find(pat).unwrap()].chars().count();
        assert_eq!(at(lines[1], "postcopy"), at(total, "5000 ["));
        assert_eq!(at(lines[1], "pre-copy"), at(total, "10000 ["));
    }
}
