//! The human monitor (HMP): a line-oriented text interface that is a thin translation onto
//! the same [`Command`](crate::cmd::Command)s as QMP, driven by a command [`table`].
//!
//! ```text
//!  livemig 0.1.0 monitor - type 'help' for more information\r\n
//!  (qemu) info status\r\n                      ← client
//!  VM status: running\r\n                      ← output, then the prompt again
//!  (qemu)
//! ```
//!
//! A line is split into a command name (up to a blank or `/`) and arguments parsed with the
//! command's `args_type` ([`args_type`]). Parse errors print the parser's text and
//! `Try "help CMD" for more information`; command errors print `Error: <desc>`; unknown
//! names print `unknown command: '<name>'`. Output lines end in `\r\n` on the wire. The
//! monitor does not echo input.

pub mod args_type;
pub mod command;
pub mod help;
pub mod info;
mod object;
pub mod set_param;
pub mod size;
pub mod table;

use std::io;
use std::sync::Arc;

use crate::conn::{Input, LineError, SharedWriter};
use crate::session::Session;
use command::{find, HmpCommand};
use table::{COMMANDS, INFO_COMMANDS};

/// The prompt written after every command.
pub const PROMPT: &str = "(qemu) ";

/// The first line a client sees.
pub fn banner() -> String {
    format!(
        "livemig {} monitor - type 'help' for more information",
        env!("CARGO_PKG_VERSION")
    )
}

/// Converts `\n` line ends to the wire's `\r\n`.
pub fn to_wire_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 16);
    let mut prev = '\0';
    for ch in s.chars() {
        if ch == '\n' && prev != '\r' {
            out.push('\r');
        }
        out.push(ch);
        prev = ch;
    }
    out
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// Splits the command name off `line` (QEMU's `get_command_name`); `None` for a blank line.
fn split_name(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_start_matches(is_space);
    if line.is_empty() {
        return None;
    }
    let end = line
        .find(|c: char| c == '/' || is_space(c))
        .unwrap_or(line.len());
    Some(line.split_at(end))
}

/// Runs one HMP command line and returns its output (with `\n` line ends).
pub fn run_line(s: &mut Session, line: &str) -> String {
    let Some((name, rest)) = split_name(line) else {
        return String::new();
    };
    let Some(mut cmd) = find(COMMANDS, name) else {
        return format!("unknown command: '{name}'\n");
    };
    let mut full_name = name.to_string();
    let mut rest = rest;
    if cmd.name == "info" {
        if let Some((sub, sub_rest)) = split_name(rest) {
            match find(INFO_COMMANDS, sub) {
                Some(c) => cmd = c,
                None => return format!("unknown command: 'info {sub}'\n"),
            }
            full_name = format!("info {sub}");
            rest = sub_rest;
        }
    }
    run_command(s, cmd, &full_name, rest)
}

fn run_command(s: &mut Session, cmd: &HmpCommand, full_name: &str, rest: &str) -> String {
    let short = full_name.rsplit(' ').next().unwrap_or(full_name);
    let parsed = args_type::parse_spec(cmd.args_type)
        .map_err(|e| args_type::ArgsError(format!("{short}: {e}")))
        .and_then(|specs| args_type::parse_args(short, &specs, rest));
    let args = match parsed {
        Ok(a) => a,
        Err(e) => return format!("{e}\nTry \"help {full_name}\" for more information\n"),
    };
    let mut out = String::new();
    if let Err(e) = (cmd.handler)(s, &args, &mut out) {
        out.push_str(&format!("Error: {}\n", e.desc));
    }
    out
}

/// Serves one HMP connection: banner, then prompt / line / output until the client leaves
/// or `quit`.
pub fn serve(session: &mut Session, mut input: Input, writer: Arc<SharedWriter>) -> io::Result<()> {
    writer.write_raw(&format!("{}\r\n{PROMPT}", banner()))?;
    let result = loop {
        let line = match input.read_line() {
            Ok(Some(l)) => l,
            Ok(None) => break Ok(()),
            Err(LineError::TooLong) => {
                let _ = writer.write_raw("Error: input line too long\r\n");
                break Ok(());
            }
            Err(LineError::Io(e)) => break Err(e),
        };
        session.activity.command_started();
        let out = to_wire_text(&run_line(session, &line));
        if session.quit_requested {
            let _ = writer.write_raw(&out);
            session.backend.quit();
            break Ok(());
        }
        if let Err(e) = writer.write_raw(&format!("{out}{PROMPT}")) {
            break Err(e);
        }
        session.activity.command_finished();
    };
    writer.close();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_text_and_names() {
        assert_eq!(to_wire_text("a\nb\r\n"), "a\r\nb\r\n");
        assert_eq!(split_name("  info  status "), Some(("info", "  status ")));
        assert_eq!(split_name("x/10x 0"), Some(("x", "/10x 0")));
        assert_eq!(split_name(" \t "), None);
    }
}
