//! Feeds arbitrary bytes to the human monitor.
//!
//! Byte 0 selects what is fuzzed:
//! * even: a whole HMP connection (`hmp::serve`) against the mock backend of the monitor's
//!   tests, reading the rest of the input in pieces of `(byte 0 >> 1) & 0x3f` bytes (0 = all
//!   at once), padded with blanks past the 1 MiB line cap when bit 7 is set: line framing,
//!   command table lookup, `info` subcommands, the `args_type` parser of each command and
//!   the handlers;
//! * odd: the `args_type` mini-language itself: the rest up to the first newline is an
//!   `args_type` string, the remainder a command line parsed against it.
//!
//! Synchronous `migrate` is off (as inside `human-monitor-command`), so no input waits.
//! Any panic, hang or unbounded allocation is a bug; error texts are expected.

#![no_main]

mod common;
#[path = "../../crates/monitor/tests/common/mock.rs"]
mod mock;

use std::io;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use monitor::conn::{Input, Plain, SharedWriter, MAX_INPUT};
use monitor::hmp::{self, args_type};
use monitor::Session;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let mut session = Session::new(Arc::new(mock::MockBackend::new()));
        session.can_suspend = false;
        let huge = common::padded(input, mode & 0x80 != 0, MAX_INPUT);
        let reader = common::Chunked::new(&huge, usize::from((mode >> 1) & 0x3f));
        let input = Input::new(Box::new(Plain(reader)), session.fds.clone());
        let writer = Arc::new(SharedWriter::new(Box::new(io::sink())));
        let _ = hmp::serve(&mut session, input, writer);
    } else {
        let text = String::from_utf8_lossy(input);
        let (spec, line) = text.split_once('\n').unwrap_or((&text, ""));
        if let Ok(specs) = args_type::parse_spec(spec) {
            let _ = args_type::parse_args("cmd", &specs, line);
        }
    }
});
