//! `livemig analyze FILE`: report on a migration stream file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

/// Arguments of `livemig analyze`.
#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    /// Stream file (`-` for standard input).
    pub file: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the stream's VMDESCRIPTION JSON.
    #[arg(long)]
    pub desc: bool,
    /// Write each RAM block's final content to `DIR/IDSTR`.
    #[arg(long, value_name = "DIR")]
    pub extract: Option<PathBuf>,
    /// Section records listed one by one; further ones are summarised per idstr (memory
    /// stays bounded on endless input).
    #[arg(long, value_name = "N", default_value_t = analyze::Limits::default().sections)]
    pub max_sections: usize,
}

/// Runs the analysis.
pub fn run(a: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let input: Box<dyn std::io::Read + Send> = if a.file == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(&a.file).with_context(|| format!("cannot open {}", a.file))?)
    };
    let opts = analyze::AnalyzeOptions {
        json: a.json,
        desc: a.desc,
        extract_dir: a.extract,
        limits: analyze::Limits {
            sections: a.max_sections,
            ..Default::default()
        },
    };
    let mut out = std::io::stdout().lock();
    analyze::analyze(input, &opts, &mut out)
        .with_context(|| format!("cannot analyze {}", a.file))?;
    Ok(ExitCode::SUCCESS)
}
