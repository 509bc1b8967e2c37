//! Feeds arbitrary bytes to `livemig analyze`'s stream walker as a whole stream: header,
//! configuration, commands, RAM (incl. XBZRLE) and block sections, the buffered device tail,
//! the vmdescription JSON and the device decoder driven by it, then renders the report as
//! text and as JSON. Any panic, hang or unbounded allocation is a bug; errors are expected.
//!
//! Seeds are real streams (`seeds/analyze/`), so the input needs no prefix byte; RAM
//! extraction (`--extract`) is left out because it writes files.

#![no_main]

use std::io::{self, Cursor};

use analyze::{analyze, AnalyzeOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = Box::new(Cursor::new(data.to_vec()));
    let mut out = io::sink();
    if let Ok(report) = analyze(input, &AnalyzeOptions::default(), &mut out) {
        let _ = serde_json::to_writer_pretty(&mut out, &report);
    }
});
