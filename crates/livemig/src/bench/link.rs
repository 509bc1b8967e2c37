//! A shaped link for benchmarks: a loopback TCP relay that forwards every connection to one
//! target and paces the forward direction of all of them together to `rate` bytes/s (a
//! 1 Gbit/s link is 125 MB/s). Both QEMU and livemig migrate through it unchanged, so neither
//! side's own rate limiting decides the result, and a compressed stream profits from the
//! link exactly by the bytes it saves.
//!
//! ```text
//! source ──tcp──▶ relay (accept order kept) ──tcp──▶ destination
//!                  forward: one shared pacer (virtual clock), 64 KiB reads
//!                  backward (return path): not paced
//! ```
//!
//! Connections are forwarded in accept order (a QEMU 7.2 destination takes the first one as
//! the main stream).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The pacer: each chunk reserves the time it takes at `rate` after the previous one.
struct Pacer {
    rate: f64,
    next_free: Mutex<Instant>,
}

impl Pacer {
    fn take(&self, bytes: usize) {
        let due = {
            let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // An idle link does not bank more than 1 ms of credit.
            let start = (*next).max(now - Duration::from_millis(1));
            *next = start + Duration::from_secs_f64(bytes as f64 / self.rate);
            *next
        };
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

/// A running relay; it stops accepting when dropped (open connections end with their peers).
pub(super) struct ShapedLink {
    addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl ShapedLink {
    /// Listens on a loopback port and forwards to `target` at `rate` bytes/s.
    pub(super) fn start(target: SocketAddr, rate: u64) -> std::io::Result<ShapedLink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let pacer = Arc::new(Pacer {
            rate: rate as f64,
            next_free: Mutex::new(Instant::now()),
        });
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("bench-link".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    let Ok(from) = conn else { continue };
                    let Ok(to) = TcpStream::connect(target) else {
                        continue;
                    };
                    let _ = relay(from, to, pacer.clone());
                }
            })?;
        Ok(ShapedLink { addr, stop })
    }

    /// The `tcp:` URI to migrate to.
    pub(super) fn uri(&self) -> String {
        format!("tcp:{}", self.addr)
    }
}

impl Drop for ShapedLink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn relay(from: TcpStream, to: TcpStream, pacer: Arc<Pacer>) -> std::io::Result<()> {
    let _ = from.set_nodelay(true);
    let _ = to.set_nodelay(true);
    let (from2, to2) = (from.try_clone()?, to.try_clone()?);
    std::thread::Builder::new()
        .name("bench-link-fwd".into())
        .spawn(move || pump(from, to, Some(&pacer)))?;
    std::thread::Builder::new()
        .name("bench-link-back".into())
        .spawn(move || pump(to2, from2, None))?;
    Ok(())
}

fn pump(mut from: TcpStream, mut to: TcpStream, pacer: Option<&Pacer>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(p) = pacer {
            p.take(n);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
