//! QEMU-compatible management monitors for livemig: QMP (JSON) and HMP (text).
//!
//! The monitor owns neither the VM nor the migration: every command ends in a call of the
//! [`MonitorBackend`] trait, which the VMM implements. The layering follows mini-redis:
//!
//! ```text
//!  socket ─▶ conn (bytes + SCM_RIGHTS fds) ─▶ framing ─┬─ qmp: JSON values ─▶ request ─┐
//!                                                      └─ hmp: lines ─▶ args_type ─────┤
//!                                                                                      ▼
//!                                   cmd::Command (one module per command) ─▶ MonitorBackend
//! ```
//!
//! | module | what |
//! | --- | --- |
//! | [`backend`] | the [`MonitorBackend`] trait, [`CommandError`], [`ErrorClass`] |
//! | [`cmd`] | the [`Command`] enum and one module per command |
//! | [`qmp`] | greeting, negotiation, dispatch, events |
//! | [`hmp`] | the command table, the `args_type` parser, `info` texts, `help` |
//! | [`server`] | [`MonitorServer`] on unix/TCP listeners and stdio |
//! | [`clients`] | per-listener client limit, eviction of the longest idle, negotiation timeout |
//! | [`endpoint`] | `unix:PATH,server=on` style specs |
//! | [`client`] | [`QmpClient`], the operator console and `migrate` with a progress bar |
//! | [`fds`] | the per-connection `getfd` table |
//!
//! Wire compatibility: the QMP greeting claims QEMU 7.2.22 (`package` names livemig's own
//! version) so that version-checking clients such as `qemu.qmp` work; replies and errors
//! use QEMU's member names and texts; HMP prints `info migrate` and friends exactly as
//! QEMU 7.2 does.

#![deny(missing_docs)]
// System calls go through `transport::sys`, the one home of their `unsafe`.
#![forbid(unsafe_code)]

pub mod backend;
pub mod client;
pub mod clients;
pub mod cmd;
pub mod conn;
pub mod endpoint;
pub mod fds;
pub mod fdsets;
pub mod hmp;
pub mod qmp;
pub mod server;
pub mod session;

pub use backend::{CommandError, ErrorClass, MigrateOptions, MonitorBackend};
pub use client::{interactive, migrate_with_progress, send_with_fd, ClientError, QmpClient};
pub use clients::ClientLimits;
pub use cmd::Command;
pub use endpoint::{parse_endpoint, EndpointError, EndpointSpec};
pub use fds::FdTable;
pub use server::{bind_tcp, bind_unix, MonitorServer, Protocol, Running, ServerHandle};
pub use session::Session;
