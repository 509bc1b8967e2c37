//! `help` and `help CMD`, generated from the command tables.
//!
//! Each line is `NAME PARAMS -- HELP` (so commands without parameters show two spaces),
//! sorted by name as QEMU does; `info` subcommands are prefixed with `info `.

use super::table::{find, HmpCommand, COMMANDS, INFO_COMMANDS};

fn line(prefix: &str, c: &HmpCommand) -> String {
    format!("{prefix}{} {} -- {}\n", c.name, c.params, c.help)
}

fn dump(prefix: &str, table: &[HmpCommand]) -> String {
    let mut cmds: Vec<&HmpCommand> = table.iter().collect();
    cmds.sort_by_key(|c| c.name);
    cmds.into_iter().map(|c| line(prefix, c)).collect()
}

/// The text of `help [name]`; `name` may be `info` or `info SUBCOMMAND`.
pub fn help(name: Option<&str>) -> String {
    let words: Vec<&str> = name.unwrap_or("").split_whitespace().collect();
    match words.as_slice() {
        [] => dump("", COMMANDS),
        ["info"] => dump("info ", INFO_COMMANDS),
        ["info", sub, ..] => match find(INFO_COMMANDS, sub) {
            Some(c) => line("info ", c),
            None => format!("unknown command: 'info {sub}'\n"),
        },
        [cmd, ..] => match find(COMMANDS, cmd) {
            Some(c) => line("", c),
            None => format!("unknown command: '{cmd}'\n"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lines() {
        let all = help(None);
        assert_eq!(all.lines().count(), COMMANDS.len());
        assert!(all.contains("\nmigrate [-d] [-b] [-i] [-r] uri -- migrate to URI"));
        assert!(all.contains("\nstop|s  -- stop emulation\n"));
        let names: Vec<&str> = all.lines().map(|l| l.split(' ').next().unwrap()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(help(Some("cont")), "cont|c  -- resume emulation\n");
        assert_eq!(help(Some("c")), "cont|c  -- resume emulation\n");
        assert!(help(Some("info")).starts_with("info migrate  -- show migration status\n"));
        assert_eq!(
            help(Some("info status")),
            "info status  -- show the current VM status (running|paused)\n"
        );
        assert_eq!(help(Some("nosuch")), "unknown command: 'nosuch'\n");
        assert_eq!(
            help(Some("info nosuch")),
            "unknown command: 'info nosuch'\n"
        );
    }
}
