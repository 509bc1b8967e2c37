//! The livemig migration engine.
//!
//! | module | what |
//! | --- | --- |
//! | [`status`], [`capabilities`], [`params`], [`info`], [`events`] | the management vocabulary shared with the monitors |
//! | [`state`] | [`MigrationState`]: status, parameters, capabilities, statistics of one VM |
//! | [`handler`], [`registry`] | live handlers and device states, registered like QEMU's SaveStateEntry list |
//! | [`ram`] | the `ram` live handler (QEMU's RAM record format) |
//! | [`outgoing`] | the migration thread: setup → iterate → complete |
//! | [`incoming`] | loading a stream on the destination |
//! | [`convergence`] | rate limiting and the switchover decision (pure functions) |
//! | [`global_state`], [`verify`] | the `globalstate` and `ram-verify` device sections |
//! | [`vm`] | what the engine needs from the VMM |

#![forbid(unsafe_code)]

pub mod block;
pub mod capabilities;
pub mod convergence;
mod error;
pub mod events;
pub mod global_state;
pub mod handler;
pub mod incoming;
pub mod info;
pub mod outgoing;
pub mod params;
pub mod ram;
pub mod registry;
pub mod state;
pub mod status;
pub mod verify;
pub mod vm;

pub use capabilities::{Capabilities, Capability, CapabilityError};
pub use error::{error_report, MigrationError};
pub use events::{Event, EventBus, TimedEvent};
pub use global_state::GlobalState;
pub use handler::{DeviceState, LiveHandler};
pub use info::{DiskStats, MigrationInfo, RamStats, XbzrleCacheStats};
pub use params::{MigrationParameters, ParamError, ParamKind};
pub use registry::Registry;
pub use state::MigrationState;
pub use status::{MigrationStatus, RunState};
pub use vm::VmControl;
