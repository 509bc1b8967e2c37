//! `help` and `help CMD`, generated from command tables.
//!
//! Each line is `NAME PARAMS -- HELP` (so commands without parameters show two spaces),
//! sorted by name as QEMU does; `info` subcommands are prefixed with `info `. The tables are
//! parameters (QEMU's `help_cmd` takes them too), so this module needs only the
//! [`HmpCommand`] type, not the [`table`](super::table) that refers to it.

use super::command::{find, HmpCommand};

fn line(prefix: &str, c: &HmpCommand) -> String {
    format!("{prefix}{} {} -- {}\n", c.name, c.params, c.help)
}

fn dump(prefix: &str, table: &[HmpCommand]) -> String {
    let mut cmds: Vec<&HmpCommand> = table.iter().collect();
    cmds.sort_by_key(|c| c.name);
    cmds.into_iter().map(|c| line(prefix, c)).collect()
}

/// The text of `help [name]` for the top-level `commands` and the `info_commands`; `name`
/// may be `info` or `info SUBCOMMAND`.
pub fn help(commands: &[HmpCommand], info_commands: &[HmpCommand], name: Option<&str>) -> String {
    let words: Vec<&str> = name.unwrap_or("").split_whitespace().collect();
    match words.as_slice() {
        [] => dump("", commands),
        ["info"] => dump("info ", info_commands),
        ["info", sub, ..] => match find(info_commands, sub) {
            Some(c) => line("info ", c),
            None => format!("unknown command: 'info {sub}'\n"),
        },
        [cmd, ..] => match find(commands, cmd) {
            Some(c) => line("", c),
            None => format!("unknown command: '{cmd}'\n"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CommandError;
    use crate::hmp::args_type::HmpArgs;
    use crate::session::Session;

    fn nothing(_: &mut Session, _: &HmpArgs, _: &mut String) -> Result<(), CommandError> {
        Ok(())
    }

    const fn cmd(name: &'static str, params: &'static str, help: &'static str) -> HmpCommand {
        HmpCommand {
            name,
            args_type: "",
            params,
            help,
            handler: nothing,
        }
    }

    static TOP: &[HmpCommand] = &[
        cmd("stop|s", "", "stop emulation"),
        cmd("migrate", "[-d] uri", "migrate to URI"),
        cmd("cont|c", "", "resume emulation"),
    ];
    static INFO: &[HmpCommand] = &[
        cmd("status", "", "show the VM status"),
        cmd("migrate", "", "show migration status"),
    ];

    #[test]
    fn help_lines() {
        let help = |name| help(TOP, INFO, name);
        assert_eq!(
            help(None),
            "cont|c  -- resume emulation\nmigrate [-d] uri -- migrate to URI\n\
             stop|s  -- stop emulation\n"
        );
        assert_eq!(help(Some("cont")), "cont|c  -- resume emulation\n");
        assert_eq!(help(Some("c")), "cont|c  -- resume emulation\n");
        assert_eq!(
            help(Some("info")),
            "info migrate  -- show migration status\ninfo status  -- show the VM status\n"
        );
        assert_eq!(
            help(Some("info status")),
            "info status  -- show the VM status\n"
        );
        assert_eq!(help(Some("nosuch")), "unknown command: 'nosuch'\n");
        assert_eq!(
            help(Some("info nosuch")),
            "unknown command: 'info nosuch'\n"
        );
    }
}
