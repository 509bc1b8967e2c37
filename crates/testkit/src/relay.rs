//! [`FaultRelay`]: a TCP relay between a migration source and its destination that stops the
//! stream at a chosen point, so a test can kill a process, cancel or cut the link exactly in
//! one phase of a migration.
//!
//! ```text
//! source ──▶ relay (listen 127.0.0.1:0) ──▶ destination         every connection (main, multifd)
//!        ◀──                            ◀──                      both directions
//!
//! Trigger::Bytes(n)        hold once n bytes of the main stream went through
//! Trigger::Stream(p)       hold just before pattern p of the main stream (e.g. a section header)
//! Trigger::Reply(p)        hold the destination's replies just before p (e.g. SHUT on the return path)
//! Trigger::Manual          forward until FaultRelay::hold()
//! ```
//!
//! When held, nothing moves in either direction (bytes already in the kernel's buffers still
//! arrive, as on a real link). Then [`FaultRelay::release`] lets the stream go on (after a
//! kill, the survivor sees the close), and [`FaultRelay::cut`] closes every connection on both
//! sides at once, like a link that went away.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::Duration;

/// Where the relay stops the stream.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// After this many bytes of the main stream (source → destination).
    Bytes(u64),
    /// Just before the first occurrence of this pattern in the main stream.
    Stream(Vec<u8>),
    /// Just before the first occurrence of this pattern in the destination's replies.
    Reply(Vec<u8>),
    /// Only when [`FaultRelay::hold`] is called.
    Manual,
}

#[derive(Default)]
struct State {
    held: bool,
    triggered: bool,
    cut: bool,
    /// Bytes of the main stream forwarded.
    forwarded: u64,
    /// For [`FaultRelay::cut`]; a socket closes when its two pumps are done with it.
    sockets: Vec<Weak<TcpStream>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks while held; false once cut.
    fn pass(&self) -> bool {
        let mut st = self.lock();
        while st.held && !st.cut {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        !st.cut
    }

    fn hold(&self) {
        let mut st = self.lock();
        st.held = true;
        st.triggered = true;
        self.changed.notify_all();
    }
}

/// The relay; see the module doc.
pub struct FaultRelay {
    addr: String,
    shared: Arc<Shared>,
}

impl FaultRelay {
    /// Starts a relay to `target` (`HOST:PORT`) that stops at `trigger`.
    pub fn start(target: &str, trigger: Trigger) -> FaultRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().expect("relay address").to_string();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let (s, target) = (shared.clone(), target.to_string());
        thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(down) = conn else { break };
                let Ok(up) = TcpStream::connect(&target) else {
                    break;
                };
                let main = n == 0;
                connect_pair(&s, down, up, main.then(|| trigger.clone()));
            }
        });
        FaultRelay { addr, shared }
    }

    /// `tcp:HOST:PORT` to give the source.
    pub fn uri(&self) -> String {
        format!("tcp:{}", self.addr)
    }

    /// Whether the trigger fired (or [`hold`](Self::hold) was called).
    pub fn triggered(&self) -> bool {
        self.shared.lock().triggered
    }

    /// Waits up to `timeout` for the trigger; true if it fired.
    pub fn wait_triggered(&self, timeout: Duration) -> bool {
        crate::wait_until(timeout, || self.triggered())
    }

    /// Bytes of the main stream forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.shared.lock().forwarded
    }

    /// Stops forwarding now.
    pub fn hold(&self) {
        self.shared.hold();
    }

    /// Forwards again.
    pub fn release(&self) {
        let mut st = self.shared.lock();
        st.held = false;
        self.shared.changed.notify_all();
    }

    /// Closes every connection on both sides.
    pub fn cut(&self) {
        let mut st = self.shared.lock();
        st.cut = true;
        for s in st.sockets.iter().filter_map(Weak::upgrade) {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.shared.changed.notify_all();
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.cut();
    }
}

fn connect_pair(s: &Arc<Shared>, down: TcpStream, up: TcpStream, trigger: Option<Trigger>) {
    let (down, up) = (Arc::new(down), Arc::new(up));
    {
        let mut st = s.lock();
        st.sockets.push(Arc::downgrade(&down));
        st.sockets.push(Arc::downgrade(&up));
        if st.cut {
            let _ = down.shutdown(Shutdown::Both);
            let _ = up.shutdown(Shutdown::Both);
        }
    }
    let (forward, reply) = match trigger {
        Some(Trigger::Reply(p)) => (None, Some(p)),
        Some(t) => (Some(t), None),
        None => (None, None),
    };
    let main = forward.is_some() || reply.is_some();
    let (s1, from, to) = (s.clone(), down.clone(), up.clone());
    thread::spawn(move || pump(&s1, from, to, forward, main));
    let (s2, from, to) = (s.clone(), up, down);
    let reply = reply.map(Trigger::Stream);
    thread::spawn(move || pump(&s2, from, to, reply, false));
}

/// Copies `from` to `to` until EOF, an error or a cut, stopping at `trigger`.
fn pump(
    s: &Shared,
    from: Arc<TcpStream>,
    to: Arc<TcpStream>,
    trigger: Option<Trigger>,
    main: bool,
) {
    let (mut reader, mut writer) = (&*from, &*to);
    let mut trigger = trigger;
    let mut buf = vec![0u8; 16 << 10];
    // The end of the previous chunk, so a pattern split across reads is still found.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        if !s.pass() {
            break;
        }
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // A hold that came while this read waited applies to what it read.
        if !s.pass() {
            break;
        }
        let chunk = &buf[..n];
        let split = match &trigger {
            Some(Trigger::Bytes(limit)) => {
                let done = s.lock().forwarded;
                (done + n as u64 >= *limit).then(|| limit.saturating_sub(done) as usize)
            }
            Some(Trigger::Stream(p)) => {
                let mut hay = tail.clone();
                hay.extend_from_slice(chunk);
                let found = hay.windows(p.len()).position(|w| w == p.as_slice());
                if found.is_none() {
                    let keep = p.len().saturating_sub(1).min(hay.len());
                    tail = hay[hay.len() - keep..].to_vec();
                }
                found.map(|at| at.saturating_sub(tail.len()))
            }
            _ => None,
        };
        let (first, rest) = match split {
            Some(at) => chunk.split_at(at.min(n)),
            None => (chunk, &chunk[..0]),
        };
        if writer.write_all(first).is_err() {
            return gone(&from, &to);
        }
        if main {
            s.lock().forwarded += first.len() as u64;
        }
        if split.is_some() {
            trigger = None;
            s.hold();
            if !s.pass() {
                break;
            }
            if writer.write_all(rest).is_err() {
                return gone(&from, &to);
            }
            if main {
                s.lock().forwarded += rest.len() as u64;
            }
        }
    }
    // Propagate the close (after a hold, only once released), like a peer's FIN.
    s.pass();
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// The receiving peer is gone (killed): the sender learns it as it would from the peer's
/// kernel. Shutting the receiving side down ends the other pump, which drops its handles; the
/// sender's socket then closes with unread data, which makes the kernel send a reset, so the
/// sender's next write fails.
fn gone(_from: &TcpStream, to: &TcpStream) {
    let _ = to.shutdown(Shutdown::Both);
}
