//! The result table of a bench case that compares ways of moving the same bytes: one row per
//! way (raw copy, QEMU, livemig, …), each a list of per-round times; printed as the median and
//! the spread (min–max) of the time and of the throughput, plus ratios of medians.
//!
//! ```text
//!   way           rounds  time ms: median [min–max]   MiB/s: median [min–max]
//!   raw TCP copy       7  412 [398–470]               4971 [4357–5146]
//! ```
//!
//! Throughput is computed per round (bytes ÷ that round's time), so its spread is that of the
//! rounds, not of the medians. The median of an even number of rounds is the mean of the two
//! middle ones.

use std::fmt::Write;

const MIB: f64 = (1u64 << 20) as f64;

/// The median and the extremes of some samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Spread {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

impl Spread {
    /// The spread of `samples`; None when there are none (or one is NaN).
    pub(super) fn of(samples: &[f64]) -> Option<Spread> {
        if samples.is_empty() || samples.iter().any(|s| s.is_nan()) {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

impl std::fmt::Display for Spread {
    /// `median [min–max]`, with the precision asked for (none: whole numbers).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = f.precision().unwrap_or(0);
        write!(f, "{:.d$} [{:.d$}–{:.d$}]", self.median, self.min, self.max)
    }
}

/// `median [min–max]` of `samples` in whole numbers, or `-` when there are none.
pub(super) fn spread_text(samples: &[f64]) -> String {
    Spread::of(samples).map_or("-".into(), |s| s.to_string())
}

/// One way of moving the bytes and its per-round times.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) name: String,
    pub(super) ms: Vec<f64>,
}

/// The rows of one case, all moving `bytes` bytes.
#[derive(Debug, Clone)]
pub(super) struct Table {
    pub(super) title: String,
    pub(super) bytes: u64,
    pub(super) rows: Vec<Row>,
}

impl Table {
    /// An empty table titled `title` for runs that each move `bytes`.
    pub(super) fn new(title: &str, bytes: u64) -> Table {
        Table {
            title: title.to_string(),
            bytes,
            rows: Vec::new(),
        }
    }

    /// Adds one round's time of the way `name` (a new row the first time).
    pub(super) fn record(&mut self, name: &str, ms: f64) {
        match self.rows.iter_mut().find(|r| r.name == name) {
            Some(r) => r.ms.push(ms),
            None => self.rows.push(Row {
                name: name.to_string(),
                ms: vec![ms],
            }),
        }
    }

    /// The spread of the times of `name`.
    pub(super) fn time(&self, name: &str) -> Option<Spread> {
        Spread::of(&self.rows.iter().find(|r| r.name == name)?.ms)
    }

    /// The spread of the per-round throughputs of `name`, in MiB/s.
    pub(super) fn throughput(&self, name: &str) -> Option<Spread> {
        let row = self.rows.iter().find(|r| r.name == name)?;
        let mibs: Vec<f64> = row
            .ms
            .iter()
            .map(|ms| self.bytes as f64 / MIB / (ms.max(f64::MIN_POSITIVE) / 1000.0))
            .collect();
        Spread::of(&mibs)
    }

    /// `median time of slow ÷ median time of fast`: how many times faster `fast` is
    /// (equivalently: throughput of `fast` ÷ throughput of `slow`). None if either is missing.
    pub(super) fn speedup(&self, fast: &str, slow: &str) -> Option<f64> {
        let (f, s) = (self.time(fast)?.median, self.time(slow)?.median);
        (f > 0.0).then(|| s / f)
    }

    /// Of `names`, the one with the shortest median time (None if none has a time).
    pub(super) fn fastest<'a>(&self, names: &[&'a str]) -> Option<&'a str> {
        names
            .iter()
            .filter_map(|n| Some((*n, self.time(n)?.median)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(n, _)| n)
    }

    /// The table as text: a title line, a header, one line per row, each line indented.
    pub(super) fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|r| r.name.chars().count())
            .max()
            .unwrap_or(0)
            .max(3);
        let mut out = String::new();
        let _ = writeln!(out, "  {}", self.title);
        let _ = writeln!(
            out,
            "  {:<width$}  {:>6}  {:<26}  MiB/s: median [min–max]",
            "way", "rounds", "time ms: median [min–max]"
        );
        for r in &self.rows {
            let (Some(t), Some(m)) = (self.time(&r.name), self.throughput(&r.name)) else {
                continue;
            };
            let (time, rate) = (t.to_string(), m.to_string());
            let _ = writeln!(
                out,
                "  {:<width$}  {:>6}  {time:<26}  {rate}",
                r.name,
                r.ms.len()
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_counts() {
        let s = Spread::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!(
            s,
            Spread {
                median: 3.0,
                min: 1.0,
                max: 5.0
            }
        );
        let s = Spread::of(&[4.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!(s.median, 3.0);
        assert_eq!((s.min, s.max), (1.0, 10.0));
        assert_eq!(Spread::of(&[7.0]).unwrap().median, 7.0);
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn throughput_is_per_round_and_speedup_is_of_medians() {
        let mut t = Table::new("x", 1 << 30);
        for ms in [1000.0, 500.0, 2000.0] {
            t.record("raw", ms);
        }
        for ms in [4000.0, 1000.0, 2000.0] {
            t.record("slow", ms);
        }
        let m = t.throughput("raw").unwrap();
        assert_eq!((m.median, m.min, m.max), (1024.0, 512.0, 2048.0));
        assert_eq!(t.speedup("raw", "slow"), Some(2.0));
        assert_eq!(t.speedup("slow", "raw"), Some(0.5));
        assert_eq!(t.speedup("raw", "absent"), None);
        assert!(t.time("absent").is_none());
        assert_eq!(t.fastest(&["slow", "absent", "raw"]), Some("raw"));
        assert_eq!(t.fastest(&["absent"]), None);
    }

    #[test]
    fn render_has_a_line_per_row_with_median_and_spread() {
        let mut t = Table::new("case (a): 1.0 GiB", 1 << 30);
        t.record("raw TCP copy", 500.0);
        t.record("livemig, multifd x2", 1000.0);
        t.record("raw TCP copy", 250.0);
        t.record("raw TCP copy", 1000.0);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], "  case (a): 1.0 GiB");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{text}");
        assert!(lines[1].contains("median [min–max]"), "{text}");
        assert!(lines[2].starts_with("  raw TCP copy "), "{text}");
        assert!(lines[2].contains(" 3 "), "three rounds: {text}");
        assert!(lines[2].contains("500 [250–1000]"), "{text}");
        assert!(lines[2].contains("2048 [1024–4096]"), "{text}");
        assert!(lines[3].contains("1000 [1000–1000]"), "{text}");
        assert!(lines[3].contains("1024 [1024–1024]"), "{text}");
        // Columns line up (counted in characters: the dash is not one byte).
        let at = |line: &str, pat: &str| line[..line.find(pat).unwrap()].chars().count();
        assert_eq!(at(lines[1], "time ms"), at(lines[2], "500 ["));
        assert_eq!(at(lines[1], "time ms"), at(lines[3], "1000 ["));
        assert_eq!(at(lines[1], "MiB/s"), at(lines[2], "2048 ["));
    }
}
