//! The `timer` device (QEMU's softmmu/cpu-timers.c `vmstate_timers`): the guest clock offsets.
//! QEMU's `-M none` machine sends it and expects it, so the `none` machine carries it too.
//!
//! ```text
//! FULL "timer" v2 (min 1) : be64 cpu_ticks_offset   8 unused bytes   be64 cpu_clock_offset (v2+)
//!   [subsection "timer/icount": be64 qemu_icount_bias  be64 qemu_icount]   (icount mode only)
//! ```
//!
//! livemig has no virtual clock of its own: it keeps what it received and sends it back, so a
//! guest clock survives a round trip through livemig unchanged.

use std::sync::{Arc, Mutex};

use migration::{DeviceState, MigrationError};
use savevm::vmstate::{FieldKind, Value, VmStateDescription, VmStateValue};

/// Clock offsets as QEMU keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerState {
    /// `cpu_ticks_offset`.
    pub cpu_ticks_offset: i64,
    /// `cpu_clock_offset`.
    pub cpu_clock_offset: i64,
}

/// The `timer` device.
#[derive(Debug, Clone, Default)]
pub struct Timer {
    state: Arc<Mutex<TimerState>>,
}

impl Timer {
    /// Current offsets.
    pub fn state(&self) -> TimerState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DeviceState for Timer {
    fn description(&self) -> VmStateDescription {
        VmStateDescription::new("timer", 2)
            .minimum_version(1)
            .field("cpu_ticks_offset", FieldKind::I64)
            .field("unused", FieldKind::Unused(8))
            .field_since("cpu_clock_offset", FieldKind::I64, 2)
            .subsection(
                VmStateDescription::new("timer/icount", 1)
                    .field("qemu_icount_bias", FieldKind::I64)
                    .field("qemu_icount", FieldKind::I64),
            )
    }

    fn save(&self) -> VmStateValue {
        let s = self.state();
        VmStateValue::new()
            .with("cpu_ticks_offset", Value::Int(s.cpu_ticks_offset))
            .with("cpu_clock_offset", Value::Int(s.cpu_clock_offset))
    }

    fn load(&mut self, v: &VmStateValue, _version: u32) -> Result<(), MigrationError> {
        let err = |e: savevm::Error| MigrationError::DeviceLoad {
            idstr: "timer".into(),
            reason: e.to_string(),
        };
        let cpu_ticks_offset = v.get_i64("cpu_ticks_offset").map_err(err)?;
        // Version 1 streams have no clock offset.
        let cpu_clock_offset = match v.get("cpu_clock_offset") {
            Some(_) => v.get_i64("cpu_clock_offset").map_err(err)?,
            None => 0,
        };
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = TimerState {
            cpu_ticks_offset,
            cpu_clock_offset,
        };
        Ok(())
    }
}
