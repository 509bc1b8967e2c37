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

/// Every run state QEMU 7.2 knows (`RunState` in qapi/run-state.json): what a source may send.
const QEMU_RUN_STATES: &[&str] = &[
    "debug",
    "inmigrate",
    "internal-error",
    "io-error",
    "paused",
    "postmigrate",
    "prelaunch",
    "finish-migrate",
    "restore-vm",
    "running",
    "save-vm",
    "shutdown",
    "suspended",
    "watchdog",
    "guest-panicked",
    "colo",
];

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
        // QEMU refuses a name that fills the whole buffer (no terminating NUL).
        let end = bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| err("unterminated run state".into()))?;
        let name = std::str::from_utf8(&bytes[..end]).map_err(|e| err(e.to_string()))?;
        if !QEMU_RUN_STATES.contains(&name) {
            return Err(err(format!(
                "invalid parameter value '{name}' for runstate"
            )));
        }
        self.store(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(name: &[u8], size: u64) -> VmStateValue {
        let mut buf = vec![0u8; NAME_LEN];
        buf[..name.len()].copy_from_slice(name);
        VmStateValue::new()
            .with("size", Value::Uint(size))
            .with("runstate", Value::Bytes(buf))
    }

    #[test]
    fn loads_what_qemu_sends_and_refuses_what_qemu_refuses() {
        let mut g = GlobalState::new();
        g.load(&value(b"running", 8), 1).unwrap();
        assert_eq!(g.get().as_deref(), Some("running"));
        g.load(&value(b"suspended", 10), 1).unwrap();
        let e = g.load(&value(b"bogus", 6), 1).unwrap_err();
        assert!(
            e.to_string().contains("invalid parameter value 'bogus'"),
            "{e}"
        );
        let e = g.load(&value(&[b'a'; NAME_LEN], 100), 1).unwrap_err();
        assert!(e.to_string().contains("unterminated"), "{e}");
        assert!(g.load(&value(b"running", 0), 1).is_err());
        assert!(g.load(&value(b"running", 101), 1).is_err());
        assert_eq!(
            g.get().as_deref(),
            Some("suspended"),
            "refused states change nothing"
        );
    }
}
