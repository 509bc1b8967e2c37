//! `livemig monitor SOCKET`: an operator console for an HMP or QMP monitor.
//!
//! The protocol is detected from the first line the server sends: a JSON `{"QMP": ...}`
//! greeting means QMP, anything else is an HMP banner.
//!
//! * HMP: lines typed are sent as they are; the server's output is printed, and its
//!   `(qemu) ` prompt is replaced by the local line editor's.
//! * QMP: capabilities are negotiated automatically; a line starting with `{` is sent as a
//!   QMP command (`{"execute": ...}`), any other line runs as an HMP command through
//!   `human-monitor-command`. Replies are printed as JSON, events as they are received.

use std::io::{self, BufRead, Read, Write};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{ClientError, QmpClient, Stream};
use crate::hmp::PROMPT;

/// How long to wait for the server's first line.
const GREETING_TIMEOUT: Duration = Duration::from_secs(5);

/// A source of input lines: `rustyline` on a terminal, plain stdin otherwise.
trait LineSource {
    /// The next line, or `None` at end of input.
    fn read_line(&mut self, prompt: &str) -> io::Result<Option<String>>;
}

/// Plain standard input; when it is not a terminal (a script), each line is echoed after
/// the prompt so the output reads as a transcript.
struct PlainStdin {
    echo: bool,
}

impl LineSource for PlainStdin {
    fn read_line(&mut self, prompt: &str) -> io::Result<Option<String>> {
        print!("{prompt}");
        io::stdout().flush()?;
        let mut line = String::new();
        if io::stdin().lock().read_line(&mut line)? == 0 {
            if self.echo {
                println!();
            }
            return Ok(None);
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if self.echo {
            println!("{line}");
        }
        Ok(Some(line))
    }
}

#[cfg(feature = "line-editing")]
struct Editor(rustyline::DefaultEditor);

#[cfg(feature = "line-editing")]
impl LineSource for Editor {
    fn read_line(&mut self, prompt: &str) -> io::Result<Option<String>> {
        use rustyline::error::ReadlineError;
        loop {
            match self.0.readline(prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = self.0.add_history_entry(line.as_str());
                    }
                    return Ok(Some(line));
                }
                Err(ReadlineError::Interrupted) => continue,
                Err(ReadlineError::Eof) => return Ok(None),
                Err(ReadlineError::Io(e)) => return Err(e),
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
    }
}

fn line_source() -> Box<dyn LineSource> {
    use std::io::IsTerminal;
    let tty = io::stdin().is_terminal();
    #[cfg(feature = "line-editing")]
    if tty {
        if let Ok(ed) = rustyline::DefaultEditor::new() {
            return Box::new(Editor(ed));
        }
    }
    Box::new(PlainStdin { echo: !tty })
}

/// Connects to the monitor at `target` (`unix:PATH`, `tcp:HOST:PORT` or a path) and runs
/// the console until end of input or until the server closes the connection.
pub fn interactive(target: &str) -> Result<(), ClientError> {
    let mut stream = Stream::connect(target)?;
    let (first, rest) = read_first_line(&mut stream)?;
    let mut input = line_source();
    match serde_json::from_str::<Value>(first.trim()) {
        Ok(greeting) if greeting.get("QMP").is_some() => {
            let client = QmpClient::with_greeting(stream, rest, greeting);
            qmp_console(client, input.as_mut())
        }
        _ => hmp_console(stream, &first, rest, input.as_mut()),
    }
}

fn read_first_line(stream: &mut Stream) -> Result<(String, Vec<u8>), ClientError> {
    let deadline = Instant::now() + GREETING_TIMEOUT;
    let mut buf = Vec::new();
    loop {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let rest = buf.split_off(i + 1);
            return Ok((String::from_utf8_lossy(&buf).trim_end().to_string(), rest));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout(GREETING_TIMEOUT));
        }
        stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ClientError::Closed),
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// What the HMP reader thread reports.
enum HmpOutput {
    Prompt,
    Closed,
}

/// Length of the longest suffix of `s` that is a proper prefix of the prompt.
fn partial_prompt_len(s: &str) -> usize {
    (1..PROMPT.len())
        .rev()
        .find(|&n| s.ends_with(&PROMPT[..n]))
        .unwrap_or(0)
}

fn hmp_console(
    stream: Stream,
    banner: &str,
    rest: Vec<u8>,
    input: &mut dyn LineSource,
) -> Result<(), ClientError> {
    println!("{banner}");
    stream.set_read_timeout(None)?;
    let mut reader = stream.try_clone()?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut pending = String::from_utf8_lossy(&rest).into_owned();
        let mut chunk = [0u8; 8192];
        loop {
            if pending.ends_with(PROMPT) {
                pending.truncate(pending.len() - PROMPT.len());
                print!("{}", pending.replace("\r\n", "\n"));
                let _ = io::stdout().flush();
                pending.clear();
                if tx.send(HmpOutput::Prompt).is_err() {
                    return;
                }
            } else {
                let keep = partial_prompt_len(&pending);
                let shown = pending.len() - keep;
                print!("{}", pending[..shown].replace("\r\n", "\n"));
                let _ = io::stdout().flush();
                pending.drain(..shown);
            }
            match reader.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    print!("{}", pending.replace("\r\n", "\n"));
                    let _ = tx.send(HmpOutput::Closed);
                    return;
                }
                Ok(n) => pending.push_str(&String::from_utf8_lossy(chunk.get(..n).unwrap_or(&[]))),
            }
        }
    });
    let mut writer = stream;
    loop {
        match rx.recv() {
            Ok(HmpOutput::Prompt) => {}
            Ok(HmpOutput::Closed) | Err(_) => return Ok(()),
        }
        let Some(line) = input.read_line(PROMPT)? else {
            writer.shutdown();
            return Ok(());
        };
        writer.write_all(format!("{line}\n").as_bytes())?;
    }
}

fn print_event(ev: &Value) {
    println!("{}", crate::qmp::to_qmp_string(ev));
}

fn qmp_console(mut client: QmpClient, input: &mut dyn LineSource) -> Result<(), ClientError> {
    println!("{}", crate::qmp::to_qmp_string(client.greeting()));
    client.negotiate()?;
    println!("QMP capabilities negotiated; type HMP commands or {{\"execute\": ...}} JSON.");
    loop {
        while let Some(ev) = client.next_event(Duration::ZERO)? {
            print_event(&ev);
        }
        let Some(line) = input.read_line("(QMP) ")? else {
            return Ok(());
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let result = if line.starts_with('{') {
            match serde_json::from_str::<Value>(line) {
                Ok(v) => {
                    let name = v.get("execute").and_then(Value::as_str).unwrap_or_default();
                    client
                        .execute(name, v.get("arguments").cloned())
                        .map(|r| serde_json::to_string_pretty(&r).unwrap_or_default() + "\n")
                }
                Err(e) => {
                    println!("invalid JSON: {e}");
                    continue;
                }
            }
        } else {
            client
                .execute(
                    "human-monitor-command",
                    Some(json!({ "command-line": line })),
                )
                .map(|r| r.as_str().unwrap_or_default().replace("\r\n", "\n"))
        };
        match result {
            Ok(text) => print!("{text}"),
            Err(ClientError::Command { desc, .. }) => println!("Error: {desc}"),
            Err(ClientError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_prompts() {
        assert_eq!(partial_prompt_len("abc(qe"), 3);
        assert_eq!(partial_prompt_len("abc"), 0);
        assert_eq!(partial_prompt_len("abc(qemu)"), 6);
    }
}
