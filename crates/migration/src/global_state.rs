//! The `globalstate` device (QEMU's migration/global_state.c): the source's run state at
//! switchover, so the destination knows whether to start the guest.
//!
//! ```text
//! FULL "globalstate" v1 : be32 size (strlen + 1)  100 bytes NUL-padded run state name
//! ```

use std::sync::{Arc, Mutex};

use savevm::vmstate::{FieldKind, Value, VmStateDescription, VmStateValue};

use crate::error::MigrationError;
use crate::handler::DeviceState;

const NAME_LEN: usize = 100;

/// Shared cell holding the run state stored at switchover / received from the source.
#[derive(Debug, Clone, Default)]
pub struct GlobalState {
    cell: Arc<Mutex<Option<String>>>,
}

impl GlobalState {
    /// An empty global state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the run state to send (called right before the guest is stopped).
    pub fn store(&self, runstate: &str) {
        *self.lock() = Some(runstate.to_string());
    }

    /// The stored or received run state.
    pub fn get(&self) -> Option<String> {
        self.lock().clone()
    }

    /// Forgets the state (before a new migration).
    pub fn clear(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.cell.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DeviceState for GlobalState {
    fn description(&self) -> VmStateDescription {
        VmStateDescription::new("globalstate", 1)
            .minimum_version(1)
            .field("size", FieldKind::U32)
            .field("runstate", FieldKind::Buffer(NAME_LEN))
    }

    fn save(&self) -> VmStateValue {
        let name = self.get().unwrap_or_else(|| "running".into());
        let mut buf = vec![0u8; NAME_LEN];
        let n = name.len().min(NAME_LEN - 1);
        buf[..n].copy_from_slice(&name.as_bytes()[..n]);
        VmStateValue::new()
            .with("size", Value::Uint(n as u64 + 1))
            .with("runstate", Value::Bytes(buf))
    }

    fn load(&mut self, value: &VmStateValue, _version: u32) -> Result<(), MigrationError> {
        let err = |reason: String| MigrationError::DeviceLoad {
            idstr: "globalstate".into(),
            reason,
        };
        let bytes = value
            .get_bytes("runstate")
            .map_err(|e| err(e.to_string()))?;
        let size = value.get_u32("size").map_err(|e| err(e.to_string()))? as usize;
        if size == 0 || size > NAME_LEN {
            return Err(err(format!("invalid run state length {size}")));
        }
        let raw = &bytes[..size.min(bytes.len())];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let name = std::str::from_utf8(&raw[..end]).map_err(|e| err(e.to_string()))?;
        self.store(name);
        Ok(())
    }
}
