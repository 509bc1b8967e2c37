//! Feeds arbitrary bytes to the QMP server's request path: the JSON value splitter (values
//! split across reads, several per read, garbage, deep nesting), request validation,
//! argument parsing of every command and dispatch against the mock backend of the monitor's
//! tests, then QEMU-style serialization of each reply.
//!
//! Input: byte 0 chooses the read size (low 6 bits, 0 = all at once), whether the rest is
//! padded with blanks past the 1 MiB request cap (bit 6: huge input) and whether the session
//! starts negotiated (bit 7); the rest is what the client sends. The loop is `qmp::serve`'s
//! without the socket and the event thread. Any panic, hang or unbounded allocation is a bug;
//! error replies are expected.

#![no_main]

mod common;
#[path = "../../crates/monitor/tests/common/mock.rs"]
mod mock;

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use monitor::conn::MAX_INPUT;
use monitor::qmp::stream::JsonSplitter;
use monitor::qmp::{respond, to_qmp_string};
use monitor::Session;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let mut session = Session::new(Arc::new(mock::MockBackend::new()));
    let mut negotiated = mode & 0x80 != 0;
    let huge = common::padded(input, mode & 0x40 != 0, MAX_INPUT);
    let mut reader = common::Chunked::new(&huge, usize::from(mode & 0x3f));
    let mut splitter = JsonSplitter::new();
    while let Some(piece) = reader.next_chunk() {
        splitter.push(piece);
        while let Some(item) = splitter.next_value() {
            let Ok(bytes) = item else {
                return; // nesting too deep: the server replies and closes
            };
            let reply = respond(&mut session, &bytes, &mut negotiated);
            let line = to_qmp_string(&reply);
            assert!(!line.contains('\n'), "a reply spans lines: {line}");
            if session.quit_requested {
                return;
            }
        }
        if splitter.pending() > MAX_INPUT {
            return;
        }
    }
});
