//! The engine of `livemig analyze FILE`: parse a whole QEMU 7.2 migration stream and report
//! on it.
//!
//! Compared with QEMU's `scripts/analyze-migration.py` this reader
//! * works on a non-seekable stream (stdin, a pipe): it reads strictly sequentially and
//!   buffers only the device-state part at the end (see [`stream`]);
//! * understands commands, configuration subsections (capabilities, uuid, page bits),
//!   `x-ignore-shared` block lists, XBZRLE pages, and `block` migration sections;
//! * decodes device sections with the stream's own vmdescription JSON, checking that each
//!   decode ends exactly at the section footer ([`devices`]);
//! * treats the stream and the JSON as hostile: typed errors with offsets, capped sizes,
//!   no panics;
//! * runs in bounded memory on streams of any length: past the [`Limits`] records are
//!   summarised instead of listed (see [`limits`]).
//!
//! ```no_run
//! use analyze::{analyze, AnalyzeOptions};
//!
//! let file = std::fs::File::open("vm.mig").unwrap();
//! let opts = AnalyzeOptions::default();
//! let report = analyze(Box::new(file), &opts, &mut std::io::stdout()).unwrap();
//! println!("{} sections", report.section_count());
//! ```

#![deny(missing_docs)]

use std::io::{Read, Write};
use std::path::PathBuf;

mod block;
pub mod devices;
mod error;
pub mod extract;
pub mod limits;
mod pages;
mod ram;
pub mod report;
mod source;
pub mod stream;
mod tail;
pub mod text;

pub use error::AnalyzeError;
pub use limits::Limits;
pub use report::Report;

/// What to print and whether to extract RAM.
#[derive(Debug, Clone, Default)]
pub struct AnalyzeOptions {
    /// Print the [`Report`] as pretty JSON instead of the text summary.
    pub json: bool,
    /// Print only the stream's vmdescription JSON (pretty). Takes precedence over `json`.
    pub desc: bool,
    /// Write each RAM block's final content to `DIR/<idstr>`.
    pub extract_dir: Option<PathBuf>,
    /// How much is kept in detail.
    pub limits: Limits,
}

/// Parses the whole stream from `input`, writes the requested output to `out` and returns
/// the report.
pub fn analyze(
    input: Box<dyn Read + Send>,
    opts: &AnalyzeOptions,
    out: &mut dyn Write,
) -> Result<Report, AnalyzeError> {
    let walked = stream::walk(input, opts.extract_dir.as_deref(), &opts.limits)?;
    let report = walked.report;
    if opts.desc {
        let raw = walked.vmdesc.ok_or(AnalyzeError::NoVmdesc)?;
        match serde_json::from_slice::<serde_json::Value>(&raw) {
            Ok(v) => serde_json::to_writer_pretty(&mut *out, &v)
                .map_err(|e| AnalyzeError::Output(e.into()))?,
            // Not JSON after all: show it as it is.
            Err(_) => out.write_all(&raw).map_err(AnalyzeError::Output)?,
        }
        writeln!(out).map_err(AnalyzeError::Output)?;
    } else if opts.json {
        serde_json::to_writer_pretty(&mut *out, &report)
            .map_err(|e| AnalyzeError::Output(e.into()))?;
        writeln!(out).map_err(AnalyzeError::Output)?;
    } else {
        text::render(&report, out).map_err(AnalyzeError::Output)?;
    }
    out.flush().map_err(AnalyzeError::Output)?;
    Ok(report)
}
