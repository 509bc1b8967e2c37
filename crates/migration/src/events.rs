//! Asynchronous events (QMP `MIGRATION`, `MIGRATION_PASS`, `STOP`, `RESUME`, `SHUTDOWN`) and a
//! small broadcast bus that monitors subscribe to.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::status::MigrationStatus;

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Migration status changed.
    Migration {
        /// The new status.
        status: MigrationStatus,
    },
    /// A dirty-bitmap sync (pass) began.
    MigrationPass {
        /// Pass number (= dirty-sync-count).
        pass: u64,
    },
    /// vCPUs stopped.
    Stop,
    /// vCPUs resumed.
    Resume,
    /// The process is shutting down.
    Shutdown {
        /// True when the guest asked for it.
        guest: bool,
        /// Reason string, e.g. `host-qmp-quit`.
        reason: String,
    },
}

impl Event {
    /// The QMP event name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Migration { .. } => "MIGRATION",
            Event::MigrationPass { .. } => "MIGRATION_PASS",
            Event::Stop => "STOP",
            Event::Resume => "RESUME",
            Event::Shutdown { .. } => "SHUTDOWN",
        }
    }

    /// The QMP `data` member, if the event has one.
    pub fn data(&self) -> Option<Value> {
        match self {
            Event::Migration { status } => Some(json!({ "status": status.as_str() })),
            Event::MigrationPass { pass } => Some(json!({ "pass": pass })),
            Event::Shutdown { guest, reason } => Some(json!({ "guest": guest, "reason": reason })),
            Event::Stop | Event::Resume => None,
        }
    }
}

/// An event with the host time it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedEvent {
    /// The event.
    pub event: Event,
    /// When it was emitted.
    pub timestamp: SystemTime,
}

impl TimedEvent {
    /// The QMP wire object `{"timestamp": {...}, "event": NAME, "data": {...}}`.
    pub fn to_qmp(&self) -> Value {
        let d = self
            .timestamp
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut v = json!({
            "timestamp": { "seconds": d.as_secs(), "microseconds": d.subsec_micros() },
            "event": self.event.name(),
        });
        if let (Some(data), Some(obj)) = (self.event.data(), v.as_object_mut()) {
            obj.insert("data".into(), data);
        }
        v
    }
}

/// Broadcasts events to every live subscriber.
#[derive(Debug, Default)]
pub struct EventBus {
    subscribers: Mutex<Vec<Sender<TimedEvent>>>,
}

impl EventBus {
    /// Creates a bus with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// A receiver of every event emitted from now on.
    pub fn subscribe(&self) -> Receiver<TimedEvent> {
        let (tx, rx) = channel();
        self.lock().push(tx);
        rx
    }

    /// Sends `event` to all subscribers, dropping those that went away.
    pub fn emit(&self, event: Event) {
        let ev = TimedEvent {
            event,
            timestamp: SystemTime::now(),
        };
        tracing::debug!(event = ev.event.name(), "event");
        self.lock().retain(|s| s.send(ev.clone()).is_ok());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Sender<TimedEvent>>> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_and_wire_form() {
        let bus = EventBus::new();
        let a = bus.subscribe();
        let b = bus.subscribe();
        drop(b);
        bus.emit(Event::Migration {
            status: MigrationStatus::Setup,
        });
        let ev = a.recv().unwrap();
        let v = ev.to_qmp();
        assert_eq!(v["event"], "MIGRATION");
        assert_eq!(v["data"]["status"], "setup");
        assert!(v["timestamp"]["seconds"].as_u64().unwrap() > 0);
        bus.emit(Event::Stop);
        assert!(a.recv().unwrap().to_qmp().get("data").is_none());
    }
}
