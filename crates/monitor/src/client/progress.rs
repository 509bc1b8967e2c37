//! `livemig migrate`: start a migration over QMP and follow it with a progress bar.
//!
//! The bar shows RAM bytes sent out of the guest size (total − remaining), the throughput,
//! the pass number (`dirty-sync-count`, which restarts the count of remaining pages), the
//! remaining bytes and the expected downtime, refreshed from `query-migrate`.

use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::{ClientError, QmpClient};

/// How often `query-migrate` is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

fn u(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Starts `migrate uri` on the QMP monitor at `qmp` (`unix:PATH`, `tcp:HOST:PORT` or a
/// path), then polls `query-migrate` until the status is `completed`, `failed` or
/// `cancelled`, showing progress on stderr when `show_progress` (and stderr is a
/// terminal). Returns the final `query-migrate` reply whatever the outcome; a `migrate`
/// that is refused outright is an error.
pub fn migrate_with_progress(
    qmp: &str,
    uri: &str,
    show_progress: bool,
) -> Result<Value, ClientError> {
    let mut client = QmpClient::connect(qmp)?;
    client.execute("migrate", Some(json!({ "uri": uri })))?;
    let bar = if show_progress {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {msg}",
    );
    if let Ok(style) = style {
        bar.set_style(style.progress_chars("=> "));
    }
    loop {
        let info = client.execute("query-migrate", None)?;
        let status = info
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("none")
            .to_string();
        if let Some(ram) = info.get("ram") {
            let total = u(ram, "total");
            let remaining = u(ram, "remaining");
            bar.set_length(total);
            bar.set_position(total.saturating_sub(remaining));
            let mbps = ram.get("mbps").and_then(Value::as_f64).unwrap_or(0.0);
            let mut msg = format!(
                "{status} · pass {} · {mbps:.0} Mbit/s · {} left",
                u(ram, "dirty-sync-count"),
                HumanBytes(remaining)
            );
            if let Some(d) = info.get("expected-downtime").and_then(Value::as_u64) {
                msg.push_str(&format!(" · expected downtime {d} ms"));
            }
            bar.set_message(msg);
        } else {
            bar.set_message(status.clone());
        }
        bar.tick();
        match status.as_str() {
            "completed" | "failed" | "cancelled" => {
                bar.finish_and_clear();
                return Ok(info);
            }
            // `none` right after `migrate` would mean the backend never started it.
            "none" => {
                bar.finish_and_clear();
                return Ok(info);
            }
            _ => std::thread::sleep(POLL_INTERVAL),
        }
    }
}
