//! `human-monitor-command`: run one HMP command line and return its output as a string.
//!
//! The output uses HMP's `\r\n` line ends, as QEMU's does. The HMP command runs on the same
//! session (same descriptor table), but cannot suspend it: `migrate` without `-d` prints
//! "terminal does not allow synchronous migration, continuing detached" like QEMU.

use super::args::Args;
use crate::backend::CommandError;
use crate::session::Session;

/// Arguments of `human-monitor-command`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanMonitorCommand {
    /// The HMP command line.
    pub command_line: String,
    /// Accepted for compatibility; livemig has no per-CPU HMP commands.
    pub cpu_index: Option<i64>,
}

impl HumanMonitorCommand {
    /// Parses `command-line` and `cpu-index`.
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        let command_line = a.req_str("command-line")?;
        let cpu_index = a.opt_int("cpu-index")?;
        Ok(Self {
            command_line,
            cpu_index,
        })
    }

    /// Runs the line and returns what HMP printed.
    pub fn run(&self, s: &mut Session) -> String {
        let saved = s.can_suspend;
        s.can_suspend = false;
        let out = crate::hmp::run_line(s, &self.command_line);
        s.can_suspend = saved;
        crate::hmp::to_wire_text(&out)
    }
}
