//! What one HMP command is ([`HmpCommand`]) and how a name finds it ([`find`]).
//!
//! The command [`table`](super::table) is built from these entries and `help`
//! ([`help`](super::help)) formats any slice of them, so both depend on this module and not
//! on each other.

use super::args_type::HmpArgs;
use crate::backend::CommandError;
use crate::session::Session;

/// A handler: parsed arguments in, text appended to `out`, or an error printed as
/// `Error: <desc>`.
pub type Handler = fn(&mut Session, &HmpArgs, &mut String) -> Result<(), CommandError>;

/// One HMP command.
#[derive(Debug)]
pub struct HmpCommand {
    /// Name, with aliases after `|`.
    pub name: &'static str,
    /// Argument specs (the `args_type` mini-language).
    pub args_type: &'static str,
    /// Synopsis of the parameters for `help`.
    pub params: &'static str,
    /// One-line help.
    pub help: &'static str,
    /// What runs.
    pub handler: Handler,
}

impl HmpCommand {
    /// True if `name` is this command's name or one of its aliases.
    pub fn matches(&self, name: &str) -> bool {
        self.name.split('|').any(|n| n == name)
    }
}

/// Finds a command by name or alias.
pub fn find<'a>(table: &'a [HmpCommand], name: &str) -> Option<&'a HmpCommand> {
    table.iter().find(|c| c.matches(name))
}
