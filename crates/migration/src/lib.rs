//! The livemig migration engine.
//!
//! | module | what |
//! | --- | --- |
//! | [`status`], [`capabilities`], [`params`], [`info`], [`events`] | the management vocabulary shared with the monitors |
//! | [`state`] | [`MigrationState`]: status, operator settings, last error of one VM |
//! | [`settings`], [`runtime`], [`counters`], [`cancel`] | one migration: its fixed settings, statistics, cancel token |
//! | [`session`], [`handle`] | what the migration thread lends the handlers, and what it returns when it ends |
//! | [`handler`], [`registry`] | live handlers and device states, registered like QEMU's SaveStateEntry list |
//! | [`ram`], [`block`] | the `ram` and `block` live handlers (QEMU's record formats) |
//! | [`outgoing`] | the source: [`outgoing::start`] → setup → pre-copy → switchover |
//! | [`incoming`] | the destination: [`incoming::start`] → accept → load → start the guest |
//! | [`convergence`] | rate limiting and the switchover decision (pure functions) |
//! | [`global_state`], [`verify`] | the `globalstate` and `ram-verify` device sections |
//! | [`tls`] | the VM's TLS objects that `tls-creds` / `tls-authz` name |
//! | [`vm`] | what the engine needs from the VMM |

#![forbid(unsafe_code)]

pub mod block;
pub mod cancel;
pub mod capabilities;
pub mod convergence;
pub mod counters;
pub mod dirty_rate;
mod error;
pub mod events;
pub mod global_state;
pub mod handle;
pub mod handler;
pub mod incoming;
pub mod info;
pub mod latency;
pub mod outgoing;
pub mod params;
pub mod pause;
pub mod postcopy;
pub mod ram;
pub mod registry;
mod report;
pub mod runtime;
pub mod session;
pub mod settings;
pub mod state;
pub mod status;
pub mod tls;
pub mod uuid;
pub mod verify;
pub mod vm;

pub use capabilities::{Capabilities, Capability, CapabilityError};
pub use error::MigrationError;
pub use events::{Event, EventBus, TimedEvent};
pub use global_state::GlobalState;
pub use handle::{Finished, MigrationHandle, Rejected};
pub use handler::{DeviceState, LiveHandler};
pub use info::{DiskStats, MigrationInfo, RamStats, XbzrleCacheStats};
pub use params::{
    MigrationParameters, MultifdCompression, ParamError, ParamKind, ParamLimits, ParameterUpdate,
};
pub use pause::ContinueError;
pub use registry::Registry;
pub use report::error_report;
pub use runtime::Runtime;
pub use session::{IncomingSession, OutgoingSession};
pub use settings::Settings;
pub use state::MigrationState;
pub use status::{MigrationStatus, RunState};
pub use tls::TlsObjects;
pub use vm::{VmControl, VmError};
