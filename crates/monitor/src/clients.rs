//! The clients of one listener and the rules that keep management able to connect.
//!
//! QEMU serves any number of monitor clients and never closes an idle one. livemig caps the
//! clients per listener (a thread each) — and a cap alone would let a few idle or stuck
//! connections lock management out. So, as a connection-limited server such as sshd
//! (`LoginGraceTime`, `MaxStartups`) or a pooled database does:
//!
//! 1. **Negotiation timeout.** A QMP client that has not completed `qmp_capabilities`
//!    [`ClientLimits::negotiation_timeout`] after connecting is closed. A well-behaved
//!    client negotiates right after the greeting, so it never notices. HMP has no
//!    negotiation: an HMP connection counts as negotiated at once.
//! 2. **Eviction instead of refusal.** When [`ClientLimits::max_clients`] are connected,
//!    a newcomer is still served and one present client is closed instead: a
//!    not-yet-negotiated one if any (oldest first), otherwise the one whose last complete
//!    command is oldest. A client running a command is never evicted; only when every
//!    client is busy is the newcomer refused.
//!
//! A negotiated client that only listens for events is never closed for being quiet; it is
//! closed only when the cap forces an eviction and it is the longest idle. No per-peer
//! limit is applied: unix sockets are created 0600, so every peer is the same user, and a
//! per-address TCP limit would not protect a loopback-only monitor either; eviction covers
//! both.
//!
//! ```text
//!  accept ─▶ admit: full? ─ no ─▶ serve
//!                      └─ yes ─▶ victim(): unnegotiated oldest ▸ negotiated idle longest ▸ none (refuse)
//!  every accept-loop tick ─▶ sweep(): unnegotiated for > negotiation_timeout ─▶ close
//! ```

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::session::Activity;

/// Clients served at once per listener by default; a newcomer beyond it evicts the
/// longest idle client.
pub const MAX_CLIENTS: usize = 64;

/// Limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Clients served at once; a newcomer beyond it evicts one (see the module doc).
    pub max_clients: usize,
    /// A QMP client that has not negotiated after this long is closed.
    pub negotiation_timeout: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_clients: MAX_CLIENTS,
            negotiation_timeout: Duration::from_secs(30),
        }
    }
}

/// What the eviction choice looks at for one client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Whether `qmp_capabilities` completed (always for HMP).
    pub negotiated: bool,
    /// Whether a command is running.
    pub busy: bool,
    /// Time since the last complete command (or since connecting).
    pub idle: Duration,
}

/// Index of the client to evict, `None` when every client is busy.
pub fn victim(clients: &[Candidate]) -> Option<usize> {
    clients
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.busy)
        .max_by_key(|(_, c)| (!c.negotiated, c.idle))
        .map(|(i, _)| i)
}

struct Entry {
    id: u64,
    activity: Arc<Activity>,
    kick: Box<dyn Fn() + Send>,
    kicked: bool,
    peer: String,
}

/// The clients of one listener, shared by the accept loop and the client threads.
#[derive(Default)]
pub(crate) struct ClientTable {
    entries: Mutex<(u64, Vec<Entry>)>,
}

impl ClientTable {
    fn lock(&self) -> MutexGuard<'_, (u64, Vec<Entry>)> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new client, evicting one when the table is full. Returns the id to
    /// [`remove`](Self::remove) when the client leaves, or `None` when it must be refused.
    pub fn admit(
        &self,
        limits: &ClientLimits,
        activity: Arc<Activity>,
        kick: Box<dyn Fn() + Send>,
        peer: String,
    ) -> Option<u64> {
        let mut guard = self.lock();
        let (next, entries) = &mut *guard;
        let live: Vec<usize> = (0..entries.len()).filter(|&i| !entries[i].kicked).collect();
        if live.len() >= limits.max_clients {
            let candidates: Vec<Candidate> = live
                .iter()
                .map(|&i| Candidate {
                    negotiated: entries[i].activity.negotiated(),
                    busy: entries[i].activity.busy(),
                    idle: entries[i].activity.idle(),
                })
                .collect();
            let v = &mut entries[live[victim(&candidates)?]];
            tracing::warn!(peer = %v.peer, idle = ?v.activity.idle(),
                "monitor client limit reached; closing the longest idle client");
            v.kicked = true;
            (v.kick)();
        }
        *next += 1;
        entries.push(Entry {
            id: *next,
            activity,
            kick,
            kicked: false,
            peer,
        });
        Some(*next)
    }

    /// Forgets a client whose thread ended.
    pub fn remove(&self, id: u64) {
        self.lock().1.retain(|e| e.id != id);
    }

    /// Closes clients that did not negotiate in time.
    pub fn sweep(&self, limits: &ClientLimits) {
        for e in self.lock().1.iter_mut() {
            if !e.kicked
                && !e.activity.negotiated()
                && e.activity.age() >= limits.negotiation_timeout
            {
                tracing::info!(peer = %e.peer, "monitor client did not negotiate in time; closing it");
                e.kicked = true;
                (e.kick)();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(negotiated: bool, busy: bool, idle_s: u64) -> Candidate {
        Candidate {
            negotiated,
            busy,
            idle: Duration::from_secs(idle_s),
        }
    }

    #[test]
    fn unnegotiated_first_then_longest_idle_never_busy() {
        assert_eq!(victim(&[c(true, false, 90), c(false, false, 1)]), Some(1));
        assert_eq!(
            victim(&[c(true, false, 5), c(true, false, 90), c(true, false, 7)]),
            Some(1)
        );
        assert_eq!(victim(&[c(false, true, 90), c(true, false, 1)]), Some(1));
        assert_eq!(victim(&[c(true, true, 1), c(false, true, 9)]), None);
        assert_eq!(victim(&[]), None);
    }

    #[test]
    fn full_table_evicts_and_sweep_closes_the_unnegotiated() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let kicks = Arc::new(AtomicUsize::new(0));
        let kick = |k: &Arc<AtomicUsize>| -> Box<dyn Fn() + Send> {
            let k = k.clone();
            Box::new(move || {
                k.fetch_add(1, Ordering::SeqCst);
            })
        };
        let limits = ClientLimits {
            max_clients: 1,
            negotiation_timeout: Duration::ZERO,
        };
        let table = ClientTable::default();
        let a = Arc::new(Activity::new());
        a.set_negotiated();
        let id = table.admit(&limits, a, kick(&kicks), "a".into()).unwrap();
        table.sweep(&limits);
        assert_eq!(kicks.load(Ordering::SeqCst), 0, "negotiated clients stay");
        let b = Arc::new(Activity::new());
        b.command_started();
        table.admit(&limits, b, kick(&kicks), "b".into()).unwrap();
        assert_eq!(kicks.load(Ordering::SeqCst), 1, "a was evicted");
        table.remove(id);
        let c = Arc::new(Activity::new());
        assert!(table.admit(&limits, c, kick(&kicks), "c".into()).is_none());
    }
}
