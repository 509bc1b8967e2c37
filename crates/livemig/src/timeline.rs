//! The timeline of one migration: `query-migrate` sampled while it runs, one JSON object per
//! line (`livemig migrate --timeline FILE`; the bench records the same for its runs and draws
//! them with `--plot`). Works against any QMP server, livemig's or QEMU's.
//!
//! ```text
//! {"t_ms":0.0,"status":"setup","remaining":0,"transferred":0,"mbps":0.0}
//! {"t_ms":10.2,"status":"active","remaining":2147483648,"transferred":8650752,"mbps":6920.6}
//! {"t_ms":1234.5,"status":"completed","remaining":0,"transferred":2155872256,"mbps":13976.3}
//! ```
//!
//! `t_ms` counts from the `migrate` command; `remaining` and `transferred` are
//! `ram.remaining` / `ram.transferred` in bytes, `mbps` is `ram.mbps` (the source's own
//! throughput estimate, Mbit/s). A file is operator input: [`parse`] rejects malformed lines
//! with the line number, caps the number of samples, and never panics.

use std::io::Write;
use std::time::{Duration, Instant};

use monitor::QmpClient;
use serde_json::{json, Value};

/// At most this many samples are read from a file (a day at 1 ms).
pub const MAX_SAMPLES: usize = 100_000_000;
/// How often a recorder samples.
pub const INTERVAL: Duration = Duration::from_millis(10);

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Milliseconds since the migration was started.
    pub t_ms: f64,
    /// `status` of `query-migrate`.
    pub status: String,
    /// RAM bytes still to send.
    pub remaining: u64,
    /// Bytes sent so far.
    pub transferred: u64,
    /// The source's throughput estimate in Mbit/s.
    pub mbps: f64,
}

/// A timeline file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    /// A line is not a JSON object with the fields of a sample.
    #[error("line {line}: {reason}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// More than [`MAX_SAMPLES`] lines.
    #[error("more than {MAX_SAMPLES} samples")]
    TooLong,
}

impl Sample {
    /// The sample of a `query-migrate` reply taken `t` after the start.
    pub fn from_query(t: Duration, info: &Value) -> Sample {
        let ram = &info["ram"];
        Sample {
            t_ms: t.as_secs_f64() * 1000.0,
            status: info["status"].as_str().unwrap_or("none").to_string(),
            remaining: ram["remaining"].as_u64().unwrap_or(0),
            transferred: ram["transferred"].as_u64().unwrap_or(0),
            mbps: ram["mbps"].as_f64().unwrap_or(0.0),
        }
    }

    /// The sample as one JSON line (no newline).
    pub fn to_line(&self) -> String {
        json!({
            "t_ms": self.t_ms,
            "status": self.status,
            "remaining": self.remaining,
            "transferred": self.transferred,
            "mbps": self.mbps,
        })
        .to_string()
    }

    fn from_line(line: &str) -> Result<Sample, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let num = |k: &str| -> Result<f64, String> {
            v.get(k)
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("'{k}' is missing or not a non-negative number"))
        };
        let int = |k: &str| -> Result<u64, String> {
            v.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("'{k}' is missing or not a non-negative integer"))
        };
        Ok(Sample {
            t_ms: num("t_ms")?,
            status: v
                .get("status")
                .and_then(Value::as_str)
                .ok_or("'status' is missing or not a string")?
                .chars()
                .take(32)
                .collect(),
            remaining: int("remaining")?,
            transferred: int("transferred")?,
            mbps: num("mbps")?,
        })
    }
}

/// Reads a timeline (blank lines are skipped).
pub fn parse(text: &str) -> Result<Vec<Sample>, TimelineError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if out.len() == MAX_SAMPLES {
            return Err(TimelineError::TooLong);
        }
        let s = Sample::from_line(line).map_err(|reason| TimelineError::BadLine {
            line: i + 1,
            reason,
        })?;
        out.push(s);
    }
    Ok(out)
}

/// Polls `query-migrate` on `qmp` every [`INTERVAL`] until the migration started at `start`
/// ends (completed, failed, cancelled, or `none`), handing each sample to `each`; returns the
/// last reply.
pub fn record(
    qmp: &mut QmpClient,
    start: Instant,
    mut each: impl FnMut(&Sample) -> std::io::Result<()>,
) -> Result<Value, RecordError> {
    loop {
        let info = qmp.execute("query-migrate", None)?;
        let s = Sample::from_query(start.elapsed(), &info);
        each(&s)?;
        match s.status.as_str() {
            "completed" | "failed" | "cancelled" | "none" => return Ok(info),
            _ => std::thread::sleep(INTERVAL),
        }
    }
}

/// Why [`record`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The monitor failed.
    #[error("query-migrate failed")]
    Qmp(#[from] monitor::ClientError),
    /// The sample could not be written.
    #[error("cannot write the timeline")]
    Write(#[from] std::io::Error),
}

/// `migrate` to `uri` through `qmp`, writing the timeline to `out`; the final reply.
pub fn migrate_recording(
    qmp: &mut QmpClient,
    uri: &str,
    out: &mut impl Write,
) -> Result<Value, RecordError> {
    qmp.execute("migrate", Some(json!({ "uri": uri })))?;
    let start = Instant::now();
    let info = record(qmp, start, |s| writeln!(out, "{}", s.to_line()))?;
    out.flush()?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_reply_becomes_a_sample_and_a_line_round_trips() {
        let info = json!({"status": "active", "ram": {"remaining": 5, "transferred": 7,
                          "mbps": 12.5, "total": 12}});
        let s = Sample::from_query(Duration::from_millis(30), &info);
        assert_eq!(s.status, "active");
        assert_eq!((s.remaining, s.transferred), (5, 7));
        assert_eq!(s.mbps, 12.5);
        assert_eq!(s.t_ms, 30.0);
        let text = format!("{}\n\n{}\n", s.to_line(), s.to_line());
        assert_eq!(parse(&text).unwrap(), vec![s.clone(), s]);
        // A reply without RAM statistics (setup) is a sample of zeros.
        let s = Sample::from_query(Duration::ZERO, &json!({"status": "setup"}));
        assert_eq!((s.remaining, s.transferred, s.mbps), (0, 0, 0.0));
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        let good = r#"{"t_ms":1,"status":"active","remaining":1,"transferred":2,"mbps":3}"#;
        for bad in [
            "not json",
            "[]",
            r#"{"t_ms":1}"#,
            r#"{"t_ms":-1,"status":"active","remaining":1,"transferred":2,"mbps":3}"#,
            r#"{"t_ms":1,"status":7,"remaining":1,"transferred":2,"mbps":3}"#,
            r#"{"t_ms":1,"status":"a","remaining":-1,"transferred":2,"mbps":3}"#,
            r#"{"t_ms":1,"status":"a","remaining":1.5,"transferred":2,"mbps":3}"#,
            r#"{"t_ms":1,"status":"a","remaining":1,"transferred":2,"mbps":"x"}"#,
            r#"{"t_ms":1e999,"status":"a","remaining":1,"transferred":2,"mbps":3}"#,
        ] {
            let text = format!("{good}\n{bad}\n");
            match parse(&text) {
                Err(TimelineError::BadLine { line: 2, .. }) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
        // An overlong status is cut, not kept whole.
        let long = format!(
            r#"{{"t_ms":1,"status":"{}","remaining":1,"transferred":2,"mbps":3}}"#,
            "x".repeat(10_000)
        );
        assert_eq!(parse(&long).unwrap()[0].status.len(), 32);
    }
}
