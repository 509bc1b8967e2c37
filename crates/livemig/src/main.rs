//! The `livemig` command-line tool: run a VM (source or destination of a migration), drive a
//! demo migration, analyze stream files, talk to monitors, and benchmark.

mod backend;
mod bench;
mod cmd_analyze;
mod cmd_demo;
mod cmd_monitor;
mod cmd_run;
mod netns;
mod size;
mod timeline;

use clap::{Parser, Subcommand};

/// Live migration of virtual machines, wire-compatible with QEMU 7.2.
#[derive(Parser, Debug)]
#[command(name = "livemig", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a VM: the source of a migration, or with --incoming its destination.
    Run(Box<cmd_run::RunArgs>),
    /// Start a source and a destination process on loopback, live-migrate a running guest and
    /// print the statistics.
    Demo(cmd_demo::DemoArgs),
    /// Parse a migration stream file (QEMU's or livemig's) and report on it.
    Analyze(cmd_analyze::AnalyzeArgs),
    /// Open an interactive session on a QMP or HMP monitor socket.
    Monitor(cmd_monitor::MonitorArgs),
    /// Migrate a VM through its QMP socket, showing a progress bar.
    Migrate(cmd_monitor::MigrateArgs),
    /// Measure migration speed and downtime, with a raw TCP copy as the baseline.
    Bench(bench::BenchArgs),
    /// The latency relay of `bench --link …,rtt=…` (run by the bench in a network namespace).
    #[command(hide = true)]
    BenchRelay(bench::delay::RelayArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LIVEMIG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cmd_run::run(*a),
        Command::Demo(a) => cmd_demo::run(a),
        Command::Analyze(a) => cmd_analyze::run(a),
        Command::Monitor(a) => cmd_monitor::monitor(a),
        Command::Migrate(a) => cmd_monitor::migrate(a),
        Command::Bench(a) => bench::run(a),
        Command::BenchRelay(a) => bench::delay::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("livemig: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
