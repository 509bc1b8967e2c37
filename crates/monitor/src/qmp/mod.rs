//! The QMP server side: greeting, capabilities negotiation, request dispatch, replies and
//! asynchronous events (spec §6.1).
//!
//! ```text
//!  server: {"QMP": {"version": {...}, "capabilities": ["oob"]}}
//!  client: {"execute": "qmp_capabilities"}          ─┐ before this, every other command
//!  server: {"return": {}}                            ─┘ gets CommandNotFound
//!  client: {"execute": "query-status", "id": 1}
//!  server: {"timestamp": {...}, "event": "STOP"}     ← events may come between replies
//!  server: {"return": {"status": "running", ...}, "id": 1}
//! ```
//!
//! Out-of-band execution (`qmp_capabilities` with `enable: ["oob"]`, then `exec-oob` for the
//! commands QEMU allows: `migrate-pause`, `migrate-recover`, `yank`) follows QEMU's request
//! rules. livemig's QMP commands never block their connection (a migration runs on its own
//! thread), so an out-of-band command runs at once, as the next request, without a queue.
//!
//! Every server message is one JSON object followed by `\r\n`, written with a single
//! `write_all` under the connection's writer lock. Requests are a stream of JSON values
//! ([`stream`]), validated by [`request`] and run as [`Command`]s.

pub mod request;
pub mod stream;

use std::io;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::backend::CommandError;
use crate::cmd::{introspect, Command};
pub use crate::conn::to_qmp_string;
use crate::conn::{Input, SharedWriter, MAX_INPUT};
use crate::session::Session;
use stream::{JsonSplitter, SplitError};

/// How long `quit` waits for the `SHUTDOWN` event to reach its own client before asking
/// the backend to exit.
const QUIT_EVENT_WAIT: Duration = Duration::from_secs(1);
/// How often an idle event pump checks whether its connection closed.
const PUMP_POLL: Duration = Duration::from_millis(200);

/// The greeting sent on connect.
pub fn greeting() -> Value {
    json!({ "QMP": { "version": introspect::version_json(), "capabilities": ["oob"] } })
}

/// A success reply.
pub fn reply_ok(value: Value, id: Option<Value>) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("return".into(), value);
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    Value::Object(m)
}

/// An error reply.
pub fn reply_err(e: &CommandError, id: Option<Value>) -> Value {
    let mut m = serde_json::Map::new();
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    m.insert("error".into(), e.to_qmp());
    Value::Object(m)
}

/// QEMU-like text for a JSON syntax error.
fn parse_error_text(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let msg = match msg.find(" at line ") {
        Some(i) => &msg[..i],
        None => &msg,
    };
    let msg = msg
        .strip_prefix("expected ")
        .map(|m| format!("expecting {m}"));
    format!(
        "JSON parse error, {}",
        msg.as_deref().unwrap_or("invalid JSON")
    )
}

/// Serves one QMP connection until the client leaves, the input is unusable, or `quit`.
pub fn serve(session: &mut Session, mut input: Input, writer: Arc<SharedWriter>) -> io::Result<()> {
    writer.write_json(&greeting())?;
    let mut splitter = JsonSplitter::new();
    let mut negotiated = false;
    let result = loop {
        while let Some(item) = splitter.next_value() {
            let bytes = match item {
                Ok(b) => b,
                Err(SplitError::TooDeep) => {
                    let e = CommandError::generic("JSON parse error, nesting too deep");
                    let _ = writer.write_json(&reply_err(&e, None));
                    writer.close();
                    return Ok(());
                }
            };
            session.activity.command_started();
            handle(session, &writer, &bytes, &mut negotiated)?;
            session.activity.command_finished();
            if session.quit_requested {
                writer.wait_shutdown_sent(QUIT_EVENT_WAIT);
                session.backend.quit();
                writer.close();
                return Ok(());
            }
        }
        if splitter.pending() > MAX_INPUT {
            let e = CommandError::generic(format!(
                "JSON parse error, request larger than {MAX_INPUT} bytes"
            ));
            let _ = writer.write_json(&reply_err(&e, None));
            break Ok(());
        }
        match input.fill() {
            Ok(0) => break Ok(()),
            Ok(_) => {
                splitter.push(&input.buf);
                input.buf.clear();
            }
            Err(e) => break Err(e),
        }
    };
    writer.close();
    result
}

fn handle(
    session: &mut Session,
    writer: &Arc<SharedWriter>,
    bytes: &[u8],
    negotiated: &mut bool,
) -> io::Result<()> {
    let was_negotiated = *negotiated;
    let reply = respond(session, bytes, negotiated);
    if *negotiated && !was_negotiated {
        start_event_pump(session, writer.clone());
    }
    writer.write_json(&reply)
}

/// The reply to one complete JSON value from the client (the bytes of one value of the
/// [`stream::JsonSplitter`]): parse, validate, and — once `negotiated` — run the command.
///
/// A successful `qmp_capabilities` sets `negotiated`; the caller then starts forwarding
/// events. `quit` only marks the session ([`Session::quit_requested`]). This is the whole
/// request path of [`serve`] without the socket, so tests and fuzzers can drive it on bytes.
pub fn respond(session: &mut Session, bytes: &[u8], negotiated: &mut bool) -> Value {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            let err = CommandError::generic(parse_error_text(&e));
            return reply_err(&err, None);
        }
    };
    let req = match request::parse(value, session.oob) {
        Ok(r) => r,
        Err(rej) => return reply_err(&rej.error, rej.id),
    };
    tracing::debug!(command = %req.name, "qmp");
    if *negotiated {
        match Command::parse(&req.name, req.arguments).and_then(|c| c.run(session)) {
            Ok(v) => reply_ok(v, req.id),
            Err(e) => reply_err(&e, req.id),
        }
    } else if req.name == "qmp_capabilities" {
        let r = Command::parse(&req.name, req.arguments).and_then(|c| match c {
            Command::QmpCapabilities(c) => c.negotiate(),
            _ => Ok(false),
        });
        match r {
            Ok(oob) => {
                *negotiated = true;
                session.oob = oob;
                session.activity.set_negotiated();
                reply_ok(json!({}), req.id)
            }
            Err(e) => reply_err(&e, req.id),
        }
    } else {
        let e =
            CommandError::not_found("Expecting capabilities negotiation with 'qmp_capabilities'");
        reply_err(&e, req.id)
    }
}

/// Forwards backend events to this connection until it closes.
fn start_event_pump(session: &Session, writer: Arc<SharedWriter>) {
    let rx = session.backend.events().subscribe();
    let spawned = thread::Builder::new()
        .name("qmp-events".into())
        .spawn(move || loop {
            match rx.recv_timeout(PUMP_POLL) {
                Ok(ev) => {
                    if writer.write_json(&ev.to_qmp()).is_err() {
                        break;
                    }
                    if matches!(ev.event, migration::Event::Shutdown { .. }) {
                        writer.note_shutdown_sent();
                    }
                }
                Err(RecvTimeoutError::Timeout) if !writer.is_closed() => {}
                Err(_) => break,
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the QMP event thread; events are not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_separators_and_order() {
        let v = reply_ok(
            json!({"status": "running", "list": [1, 2]}),
            Some(json!("abc")),
        );
        assert_eq!(
            to_qmp_string(&v),
            r#"{"return": {"status": "running", "list": [1, 2]}, "id": "abc"}"#
        );
        let g = to_qmp_string(&greeting());
        assert!(g.starts_with(r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "livemig "#));
        assert!(g.ends_with(r#""capabilities": ["oob"]}}"#));
    }

    #[test]
    fn parse_error_texts() {
        let e = serde_json::from_slice::<Value>(br#"{"execute": }"#).unwrap_err();
        assert_eq!(parse_error_text(&e), "JSON parse error, expecting value");
    }
}
