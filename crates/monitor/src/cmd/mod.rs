//! The monitor's commands: one [`Command`] enum, one module per command (or per pair of
//! set/query commands).
//!
//! QMP requests are parsed into a [`Command`] with [`Command::parse`] (QEMU's argument
//! checking texts, see [`args`]); HMP handlers build the same values directly. Running a
//! command ([`Command::run`]) calls the [`MonitorBackend`](crate::MonitorBackend) and yields
//! the QMP `return` value.
//!
//! ```text
//!  QMP {"execute": NAME, "arguments": {...}} ──Command::parse──┐
//!                                                             ├──▶ Command ──run──▶ backend
//!  HMP "migrate -d tcp:..." ──args_type parser──▶ handler ────┘
//! ```

pub mod args;
pub mod capabilities;
pub mod dirty_rate;
pub mod fd;
pub mod human;
pub mod incoming;
pub mod introspect;
pub mod migrate;
pub mod migrate_cancel;
pub mod migrate_continue;
pub mod object_add;
pub mod object_del;
pub mod parameters;
pub mod postcopy;
pub mod query_migrate;
pub mod quit;
pub mod run_state;
pub mod schema;
pub mod yank;

use serde_json::{Map, Value};

use crate::backend::CommandError;
use crate::session::Session;
use args::Args;

/// One parsed monitor command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `qmp_capabilities` after negotiation (always an error then).
    QmpCapabilities(introspect::QmpCapabilities),
    /// `migrate`.
    Migrate(migrate::Migrate),
    /// `migrate-incoming`.
    MigrateIncoming(incoming::MigrateIncoming),
    /// `migrate_cancel`.
    MigrateCancel,
    /// `migrate-continue`.
    MigrateContinue(migrate_continue::MigrateContinue),
    /// `migrate-start-postcopy`.
    MigrateStartPostcopy,
    /// `migrate-pause` (post-copy recovery: always refused).
    MigratePause,
    /// `migrate-recover` (post-copy only: always refused).
    MigrateRecover(postcopy::MigrateRecover),
    /// `query-migrate`.
    QueryMigrate,
    /// `migrate-set-capabilities`.
    SetCapabilities(capabilities::SetCapabilities),
    /// `query-migrate-capabilities`.
    QueryCapabilities,
    /// `migrate-set-parameters`.
    SetParameters(parameters::SetParameters),
    /// `query-migrate-parameters`.
    QueryParameters,
    /// `query-status`.
    QueryStatus,
    /// `stop`.
    Stop,
    /// `cont`.
    Cont,
    /// `quit`.
    Quit,
    /// `getfd`.
    GetFd(fd::GetFd),
    /// `closefd`.
    CloseFd(fd::CloseFd),
    /// `add-fd`.
    AddFd(fd::AddFd),
    /// `remove-fd`.
    RemoveFd(fd::RemoveFd),
    /// `query-fdsets`.
    QueryFdsets,
    /// `human-monitor-command`.
    HumanMonitorCommand(human::HumanMonitorCommand),
    /// `query-commands`.
    QueryCommands,
    /// `query-version`.
    QueryVersion,
    /// `query-uuid`.
    QueryUuid,
    /// `query-qmp-schema`.
    QueryQmpSchema,
    /// `calc-dirty-rate`.
    CalcDirtyRate(dirty_rate::CalcDirtyRate),
    /// `query-dirty-rate`.
    QueryDirtyRate,
    /// `yank`.
    Yank(yank::Yank),
    /// `query-yank`.
    QueryYank,
    /// `object-add`.
    ObjectAdd(object_add::ObjectAdd),
    /// `object-del`.
    ObjectDel(object_del::ObjectDel),
}

type Parser = fn(&mut Args) -> Result<Command, CommandError>;

/// Every QMP command: its name and its argument parser.
pub const COMMANDS: &[(&str, Parser)] = &[
    ("qmp_capabilities", |a| {
        introspect::QmpCapabilities::parse(a).map(Command::QmpCapabilities)
    }),
    ("migrate", |a| {
        migrate::Migrate::parse(a).map(Command::Migrate)
    }),
    ("migrate-incoming", |a| {
        incoming::MigrateIncoming::parse(a).map(Command::MigrateIncoming)
    }),
    ("migrate_cancel", |_| Ok(Command::MigrateCancel)),
    ("migrate-continue", |a| {
        migrate_continue::MigrateContinue::parse(a).map(Command::MigrateContinue)
    }),
    ("migrate-start-postcopy", |_| {
        Ok(Command::MigrateStartPostcopy)
    }),
    ("migrate-pause", |_| Ok(Command::MigratePause)),
    ("migrate-recover", |a| {
        postcopy::MigrateRecover::parse(a).map(Command::MigrateRecover)
    }),
    ("query-migrate", |_| Ok(Command::QueryMigrate)),
    ("migrate-set-capabilities", |a| {
        capabilities::SetCapabilities::parse(a).map(Command::SetCapabilities)
    }),
    ("query-migrate-capabilities", |_| {
        Ok(Command::QueryCapabilities)
    }),
    ("migrate-set-parameters", |a| {
        parameters::SetParameters::parse(a).map(Command::SetParameters)
    }),
    ("query-migrate-parameters", |_| Ok(Command::QueryParameters)),
    ("query-status", |_| Ok(Command::QueryStatus)),
    ("stop", |_| Ok(Command::Stop)),
    ("cont", |_| Ok(Command::Cont)),
    ("quit", |_| Ok(Command::Quit)),
    ("getfd", |a| fd::GetFd::parse(a).map(Command::GetFd)),
    ("closefd", |a| fd::CloseFd::parse(a).map(Command::CloseFd)),
    ("add-fd", |a| fd::AddFd::parse(a).map(Command::AddFd)),
    ("remove-fd", |a| {
        fd::RemoveFd::parse(a).map(Command::RemoveFd)
    }),
    ("query-fdsets", |_| Ok(Command::QueryFdsets)),
    ("human-monitor-command", |a| {
        human::HumanMonitorCommand::parse(a).map(Command::HumanMonitorCommand)
    }),
    ("query-commands", |_| Ok(Command::QueryCommands)),
    ("query-version", |_| Ok(Command::QueryVersion)),
    ("query-uuid", |_| Ok(Command::QueryUuid)),
    ("query-qmp-schema", |_| Ok(Command::QueryQmpSchema)),
    ("calc-dirty-rate", |a| {
        dirty_rate::CalcDirtyRate::parse(a).map(Command::CalcDirtyRate)
    }),
    ("query-dirty-rate", |_| Ok(Command::QueryDirtyRate)),
    ("yank", |a| yank::Yank::parse(a).map(Command::Yank)),
    ("query-yank", |_| Ok(Command::QueryYank)),
    ("object-add", |a| {
        object_add::ObjectAdd::parse(a).map(Command::ObjectAdd)
    }),
    ("object-del", |a| {
        object_del::ObjectDel::parse(a).map(Command::ObjectDel)
    }),
];

impl Command {
    /// Parses QMP `execute` + `arguments`.
    ///
    /// Unknown names fail with class `CommandNotFound` ("The command NAME has not been
    /// found"); argument errors use QEMU's framework texts.
    pub fn parse(name: &str, arguments: Option<Map<String, Value>>) -> Result<Self, CommandError> {
        let (_, parser) = COMMANDS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            CommandError::not_found(format!("The command {name} has not been found"))
        })?;
        let mut args = Args::new(arguments);
        let cmd = parser(&mut args)?;
        args.finish()?;
        Ok(cmd)
    }

    /// Runs the command and returns the QMP `return` value.
    pub fn run(self, s: &mut Session) -> Result<Value, CommandError> {
        let empty = || Value::Object(Map::new());
        match self {
            Command::QmpCapabilities(c) => c.run(),
            Command::Migrate(c) => c.run(s).map(|()| empty()),
            Command::MigrateIncoming(c) => c.run(s).map(|()| empty()),
            Command::MigrateCancel => {
                migrate_cancel::run(s);
                Ok(empty())
            }
            Command::MigrateContinue(c) => c.run(s).map(|()| empty()),
            Command::MigrateStartPostcopy => postcopy::start(s).map(|()| empty()),
            Command::MigratePause => postcopy::pause(s).map(|()| empty()),
            Command::MigrateRecover(c) => c.run(s).map(|()| empty()),
            Command::QueryMigrate => Ok(query_migrate::run(s)),
            Command::SetCapabilities(c) => c.run(s).map(|()| empty()),
            Command::QueryCapabilities => Ok(capabilities::query(s)),
            Command::SetParameters(c) => c.run(s).map(|()| empty()),
            Command::QueryParameters => Ok(parameters::query(s)),
            Command::QueryStatus => Ok(run_state::query_status(s)),
            Command::Stop => run_state::stop(s).map(|()| empty()),
            Command::Cont => run_state::cont(s).map(|()| empty()),
            Command::Quit => {
                quit::run(s);
                Ok(empty())
            }
            Command::GetFd(c) => c.run(s).map(|()| empty()),
            Command::CloseFd(c) => c.run(s).map(|()| empty()),
            Command::AddFd(c) => c.run(s),
            Command::RemoveFd(c) => c.run(s).map(|()| empty()),
            Command::QueryFdsets => Ok(s.backend.fdsets().query()),
            Command::HumanMonitorCommand(c) => Ok(Value::String(c.run(s))),
            Command::QueryCommands => Ok(introspect::query_commands()),
            Command::QueryVersion => Ok(introspect::query_version()),
            Command::QueryUuid => Ok(introspect::query_uuid(s)),
            Command::QueryQmpSchema => Ok(schema::query()),
            Command::CalcDirtyRate(c) => c.run(s).map(|()| empty()),
            Command::QueryDirtyRate => Ok(dirty_rate::query(s)),
            Command::Yank(c) => c.run(s).map(|()| empty()),
            Command::QueryYank => Ok(yank::query(s)),
            Command::ObjectAdd(c) => c.run(s).map(|()| empty()),
            Command::ObjectDel(c) => c.run(s).map(|()| empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_command_class() {
        let e = Command::parse("nosuch", None).unwrap_err();
        assert_eq!(e.class, crate::ErrorClass::CommandNotFound);
        assert_eq!(e.desc, "The command nosuch has not been found");
    }

    #[test]
    fn commands_without_arguments_refuse_members() {
        let e = Command::parse("query-migrate", json!({"x": 1}).as_object().cloned());
        assert_eq!(e.unwrap_err().desc, "Parameter 'x' is unexpected");
        assert_eq!(Command::parse("stop", None), Ok(Command::Stop));
    }
}
