//! The HMP command table, in the spirit of QEMU's `hmp-commands.hx` and
//! `hmp-commands-info.hx`: one entry per command with its `args_type` (see
//! [`args_type`](super::args_type)), the parameter synopsis and help text shown by `help`,
//! and a handler that translates the parsed arguments onto the shared
//! [`Command`](crate::cmd::Command) implementations.
//!
//! Names may carry aliases after `|` (`stop|s`). `info` takes its subcommand from
//! [`INFO_COMMANDS`].

use std::thread;
use std::time::Duration;

use migration::MigrationStatus;

use super::args_type::HmpArgs;
pub use super::command::{find, Handler, HmpCommand};
use super::object::{hmp_object_add, hmp_object_del};
use super::{help, info, set_param};
use crate::backend::{CommandError, MigrateOptions};
use crate::cmd::args::bad_enum;
use crate::cmd::{
    capabilities, fd, incoming, migrate, migrate_continue, parameters, quit, run_state,
};
use crate::session::Session;

/// How often a synchronous HMP `migrate` polls the migration status.
pub const SYNC_MIGRATE_POLL: Duration = Duration::from_millis(100);

const fn c(
    name: &'static str,
    args_type: &'static str,
    params: &'static str,
    help: &'static str,
    handler: Handler,
) -> HmpCommand {
    HmpCommand {
        name,
        args_type,
        params,
        help,
        handler,
    }
}

/// The top-level commands.
pub static COMMANDS: &[HmpCommand] = &[
    c("help|?", "name:S?", "[cmd]", "show the help", hmp_help),
    c(
        "info",
        "item:s?",
        "[subcommand]",
        "show various information about the system state",
        hmp_info_help,
    ),
    c(
        "migrate",
        "detach:-d,blk:-b,inc:-i,resume:-r,uri:s",
        "[-d] [-b] [-i] [-r] uri",
        "migrate to URI (-d: do not wait for completion; -b: with full copy of the disks; \
         -i: incremental disk copy; -r: resume a paused post-copy migration)",
        hmp_migrate,
    ),
    c(
        "migrate_cancel",
        "",
        "",
        "cancel the current VM migration",
        hmp_migrate_cancel,
    ),
    c(
        "migrate_start_postcopy",
        "",
        "",
        "Followup to a migration command to switch the migration to postcopy mode. The \
         postcopy-ram capability must be set on both source and destination before the \
         original migration command .",
        hmp_migrate_start_postcopy,
    ),
    c(
        "migrate_continue",
        "state:s",
        "state",
        "Continue migration from the given paused state",
        hmp_migrate_continue,
    ),
    c(
        "migrate_incoming",
        "uri:s",
        "uri",
        "continue an incoming migration from an -incoming defer",
        hmp_migrate_incoming,
    ),
    c(
        "migrate_recover",
        "uri:s",
        "uri",
        "Continue a paused incoming postcopy migration",
        hmp_migrate_recover,
    ),
    c(
        "migrate_pause",
        "",
        "",
        "Pause an ongoing migration (postcopy-only)",
        hmp_migrate_pause,
    ),
    c(
        "migrate_set_capability",
        "capability:s,state:b",
        "capability state",
        "enable or disable a migration capability",
        hmp_set_capability,
    ),
    c(
        "migrate_set_parameter",
        "parameter:s,value:s",
        "parameter value",
        "set a migration parameter",
        hmp_set_parameter,
    ),
    c("stop|s", "", "", "stop emulation", hmp_stop),
    c("cont|c", "", "", "resume emulation", hmp_cont),
    c("quit|q", "", "", "quit the emulator", hmp_quit),
    c(
        "getfd",
        "fdname:s",
        "getfd name",
        "receive a file descriptor via SCM rights and assign it a name",
        hmp_getfd,
    ),
    c(
        "closefd",
        "fdname:s",
        "closefd name",
        "close a file descriptor previously passed via SCM rights",
        hmp_closefd,
    ),
    c(
        "object_add",
        "object:S",
        "[qom-type=]type,id=str[,prop=value][,...]",
        "create QOM object",
        hmp_object_add,
    ),
    c(
        "object_del",
        "id:s",
        "id",
        "destroy QOM object",
        hmp_object_del,
    ),
];

/// The `info` subcommands.
pub static INFO_COMMANDS: &[HmpCommand] = &[
    c("migrate", "", "", "show migration status", info_migrate),
    c(
        "migrate_capabilities",
        "",
        "",
        "show current migration capabilities",
        info_migrate_capabilities,
    ),
    c(
        "migrate_parameters",
        "",
        "",
        "show current migration parameters",
        info_migrate_parameters,
    ),
    c(
        "status",
        "",
        "",
        "show the current VM status (running|paused)",
        info_status,
    ),
];

fn hmp_help(_: &mut Session, a: &HmpArgs, out: &mut String) -> Result<(), CommandError> {
    out.push_str(&help::help(COMMANDS, INFO_COMMANDS, a.str("name")));
    Ok(())
}

fn hmp_info_help(_: &mut Session, _: &HmpArgs, out: &mut String) -> Result<(), CommandError> {
    out.push_str(&help::help(COMMANDS, INFO_COMMANDS, Some("info")));
    Ok(())
}

fn hmp_migrate(s: &mut Session, a: &HmpArgs, out: &mut String) -> Result<(), CommandError> {
    let opts = MigrateOptions {
        detach: a.flag("detach"),
        blk: a.flag("blk"),
        inc: a.flag("inc"),
        resume: a.flag("resume"),
    };
    let m = migrate::Migrate {
        uri: a.str("uri").unwrap_or_default().to_string(),
        opts,
    };
    m.run(s)?;
    if opts.detach {
        return Ok(());
    }
    if !s.can_suspend {
        out.push_str("terminal does not allow synchronous migration, continuing detached\n");
        return Ok(());
    }
    wait_for_migration(s)
}

/// Polls `query-migrate` until the migration left its transient states; a failure with an
/// error text becomes this command's error. Stops waiting (the migration goes on) when the
/// client hangs up.
fn wait_for_migration(s: &Session) -> Result<(), CommandError> {
    loop {
        if s.peer_gone() {
            tracing::debug!("HMP client left during a synchronous migrate; not waiting");
            return Ok(());
        }
        let info = s.backend.query_migrate();
        match info.status {
            Some(
                MigrationStatus::Setup
                | MigrationStatus::Active
                | MigrationStatus::Device
                | MigrationStatus::Cancelling,
            ) => thread::sleep(SYNC_MIGRATE_POLL),
            Some(MigrationStatus::Failed) => {
                return match info.error_desc {
                    Some(desc) => Err(CommandError::generic(desc)),
                    None => Ok(()),
                }
            }
            _ => return Ok(()),
        }
    }
}

fn hmp_migrate_cancel(s: &mut Session, _: &HmpArgs, _: &mut String) -> Result<(), CommandError> {
    crate::cmd::migrate_cancel::run(s);
    Ok(())
}

fn hmp_migrate_start_postcopy(
    s: &mut Session,
    _: &HmpArgs,
    _: &mut String,
) -> Result<(), CommandError> {
    crate::cmd::postcopy::start(s)
}

fn hmp_migrate_continue(s: &mut Session, a: &HmpArgs, _: &mut String) -> Result<(), CommandError> {
    let name = a.str("state").unwrap_or_default();
    let state = name.parse().map_err(|_| bad_enum("state", name))?;
    migrate_continue::MigrateContinue { state }.run(s)
}

fn hmp_migrate_incoming(s: &mut Session, a: &HmpArgs, _: &mut String) -> Result<(), CommandError> {
    incoming::MigrateIncoming {
        uri: a.str("uri").unwrap_or_default().to_string(),
    }
    .run(s)
}

fn hmp_migrate_recover(s: &mut Session, a: &HmpArgs, _: &mut String) -> Result<(), CommandError> {
    crate::cmd::postcopy::MigrateRecover {
        uri: a.str("uri").unwrap_or_default().to_string(),
    }
    .run(s)
}

fn hmp_migrate_pause(s: &mut Session, _: &HmpArgs, _: &mut String) -> Result<(), CommandError> {
    crate::cmd::postcopy::pause(s)
}

fn hmp_set_capability(s: &mut Session, a: &HmpArgs, _: &mut String) -> Result<(), CommandError> {
    let cap = set_param::capability(a.str("capability").unwrap_or_default())?;
    let state = a.bool("state").unwrap_or(false);
    capabilities::SetCapabilities {
        changes: vec![(cap, state)],
    }
    .run(s)
}

fn hmp_set_parameter(s: &mut Session, a: &HmpArgs, _: &mut String) -> Result<(), CommandError> {
    let update = set_param::parameter_update(
        a.str("parameter").unwrap_or_default(),
        a.str("value").unwrap_or_default(),
    )?;
    parameters::SetParameters { update }.run(s)
}

fn hmp_stop(s: &mut Session, _: &HmpArgs, _: &mut String) -> Result<(), CommandError> {
    run_state::stop(s)
}

fn hmp_cont(s: &mut Session, _: &HmpArgs, _: &mut String) -> Result<(), CommandError> {
    run_state::cont(s)
}

fn hmp_quit(s: &mut Session, _: &HmpArgs, _: &mut String) -> Result<(), CommandError> {
    quit::run(s);
    Ok(())
}

fn hmp_getfd(s: &mut Session, a: &HmpArgs, _: &mut String) -> Result<(), CommandError> {
    fd::GetFd {
        fdname: a.str("fdname").unwrap_or_default().to_string(),
    }
    .run(s)
}

fn hmp_closefd(s: &mut Session, a: &HmpArgs, _: &mut String) -> Result<(), CommandError> {
    fd::CloseFd {
        fdname: a.str("fdname").unwrap_or_default().to_string(),
    }
    .run(s)
}

fn info_migrate(s: &mut Session, _: &HmpArgs, out: &mut String) -> Result<(), CommandError> {
    out.push_str(&info::migrate(&s.backend.query_migrate()));
    Ok(())
}

fn info_migrate_capabilities(
    s: &mut Session,
    _: &HmpArgs,
    out: &mut String,
) -> Result<(), CommandError> {
    out.push_str(&info::migrate_capabilities(&s.backend.capabilities()));
    Ok(())
}

fn info_migrate_parameters(
    s: &mut Session,
    _: &HmpArgs,
    out: &mut String,
) -> Result<(), CommandError> {
    out.push_str(&info::migrate_parameters(&s.backend.parameters()));
    Ok(())
}

fn info_status(s: &mut Session, _: &HmpArgs, out: &mut String) -> Result<(), CommandError> {
    out.push_str(&info::status(s.backend.run_state()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hmp::args_type::parse_spec;

    #[test]
    fn every_args_type_parses_and_names_are_unique() {
        for table in [COMMANDS, INFO_COMMANDS] {
            let mut names = Vec::new();
            for cmd in table {
                parse_spec(cmd.args_type).unwrap();
                for n in cmd.name.split('|') {
                    assert!(!names.contains(&n), "duplicate {n}");
                    names.push(n);
                }
            }
        }
        assert!(find(COMMANDS, "s").is_some_and(|c| c.name == "stop|s"));
        assert!(find(COMMANDS, "nosuch").is_none());
    }

    #[test]
    fn help_texts_of_the_table() {
        let help = |name| help::help(COMMANDS, INFO_COMMANDS, name);
        let all = help(None);
        assert_eq!(all.lines().count(), COMMANDS.len());
        assert!(all.contains("\nmigrate [-d] [-b] [-i] [-r] uri -- migrate to URI"));
        assert!(all.contains("\nstop|s  -- stop emulation\n"));
        assert_eq!(help(Some("cont")), "cont|c  -- resume emulation\n");
        assert_eq!(help(Some("c")), "cont|c  -- resume emulation\n");
        assert!(help(Some("info")).starts_with("info migrate  -- show migration status\n"));
        assert_eq!(
            help(Some("info status")),
            "info status  -- show the current VM status (running|paused)\n"
        );
    }
}
