//! Monitors: starting QMP / HMP servers for `livemig run`, and the operator clients
//! `livemig monitor` and `livemig migrate`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use monitor::{MonitorBackend, MonitorServer, Protocol, Running};

/// Starts one server per endpoint spec.
pub fn start_servers(
    qmp: &[String],
    hmp: &[String],
    backend: Arc<dyn MonitorBackend>,
) -> anyhow::Result<Vec<Running>> {
    let mut running = Vec::new();
    let specs = qmp
        .iter()
        .map(|s| (s, Protocol::Qmp))
        .chain(hmp.iter().map(|s| (s, Protocol::Hmp)));
    for (spec, protocol) in specs {
        let endpoint = monitor::parse_endpoint(spec)
            .with_context(|| format!("invalid monitor endpoint '{spec}'"))?;
        let server = MonitorServer::new(backend.clone(), protocol);
        running.push(
            server
                .start(&endpoint)
                .with_context(|| format!("cannot start the monitor on '{spec}'"))?,
        );
    }
    Ok(running)
}

/// Arguments of `livemig monitor`.
#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// Monitor socket: `unix:PATH`, `tcp:HOST:PORT`, or a path.
    pub target: String,
}

/// Arguments of `livemig migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// QMP socket of the source VM: `unix:PATH`, `tcp:HOST:PORT`, or a path.
    pub qmp: String,
    /// Destination URI, e.g. `tcp:127.0.0.1:4444`.
    pub uri: String,
    /// Print the final `query-migrate` reply as JSON.
    #[arg(long)]
    pub json: bool,
    /// Record the migration's timeline (`query-migrate` every 10 ms) to FILE as JSON lines
    /// instead of showing a progress bar.
    #[arg(long, value_name = "FILE")]
    pub timeline: Option<std::path::PathBuf>,
}

/// `livemig monitor`.
pub fn monitor(a: MonitorArgs) -> anyhow::Result<ExitCode> {
    monitor::interactive(&a.target).with_context(|| format!("monitor session on {}", a.target))?;
    Ok(ExitCode::SUCCESS)
}

/// `livemig migrate`.
pub fn migrate(a: MigrateArgs) -> anyhow::Result<ExitCode> {
    let info = match &a.timeline {
        None => monitor::migrate_with_progress(&a.qmp, &a.uri, !a.json)
            .with_context(|| format!("migrate {} via {}", a.uri, a.qmp))?,
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let mut qmp = monitor::QmpClient::connect(&a.qmp)
                .with_context(|| format!("cannot connect to {}", a.qmp))?;
            let mut out = std::io::BufWriter::new(file);
            crate::timeline::migrate_recording(&mut qmp, &a.uri, &mut out)
                .with_context(|| format!("migrate {} via {}", a.uri, a.qmp))?
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    }
    let status = info
        .get("status")
        .and_then(|s| s.as_str())
        .unwrap_or("unknown");
    if status == "completed" {
        Ok(ExitCode::SUCCESS)
    } else {
        let desc = info
            .get("error-desc")
            .and_then(|s| s.as_str())
            .unwrap_or("");
        eprintln!("livemig: migration {status} {desc}");
        Ok(ExitCode::FAILURE)
    }
}
