//! A latency relay for the simulated two-host link (`livemig bench --link …,rtt=…`): this
//! kernel has no `netem`, so delay comes from userspace. It runs as a hidden subcommand
//! (`livemig bench-relay`) inside the destination's namespace, started with `ip netns exec`:
//!
//! ```text
//!  ns A: source ──tcp (veth, tbf rate)──▶ ns B: relay LISTEN ──tcp (loopback)──▶ destination TO
//!                                               each direction: a reader thread timestamps
//!                                               every chunk it reads (≤ 64 KiB); a writer
//!                                               thread writes it when rtt/2 has passed
//! ```
//!
//! Between reader and writer is a bounded queue holding about one bandwidth-delay product
//! (`--window` bytes, at least two chunks): when it is full the reader stops reading, so the
//! sender's TCP window closes as it would on a long link, instead of the relay buffering the
//! whole stream. Connections are forwarded in accept order (a QEMU destination takes the first
//! as the main stream). When one side closes, the other is shut down once the queue drains.
//! It prints `listening` on stdout once bound, then runs until killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

const CHUNK: usize = 64 * 1024;

/// Arguments of the hidden `livemig bench-relay`.
#[derive(Args, Debug)]
pub struct RelayArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Address to forward every connection to.
    #[arg(long)]
    pub to: SocketAddr,
    /// Delay of each direction, in microseconds (half the round-trip time).
    #[arg(long)]
    pub delay_us: u64,
    /// Bytes each direction may hold in flight (the bandwidth-delay product).
    #[arg(long, default_value_t = 1 << 20)]
    pub window: usize,
}

/// `livemig bench-relay`.
pub fn run(a: RelayArgs) -> anyhow::Result<ExitCode> {
    let listener =
        TcpListener::bind(a.listen).with_context(|| format!("cannot listen on {}", a.listen))?;
    println!("listening");
    std::io::stdout().flush()?;
    let delay = Duration::from_micros(a.delay_us);
    let slots = (a.window / CHUNK).max(2);
    for conn in listener.incoming() {
        let from = conn?;
        let to = TcpStream::connect(a.to)?;
        let _ = from.set_nodelay(true);
        let _ = to.set_nodelay(true);
        pipe(from.try_clone()?, to.try_clone()?, delay, slots);
        pipe(to, from, delay, slots);
    }
    Ok(ExitCode::SUCCESS)
}

/// Forwards `from` → `to`, each chunk delayed by `delay`, at most `slots` chunks in flight.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration, slots: usize) {
    let (tx, rx): (SyncSender<(Instant, Vec<u8>)>, Receiver<_>) = sync_channel(slots);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` tells the writer the stream ended.
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// A relay process, killed on drop.
pub(super) struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        super::track_child(self.0.id(), false);
    }
}

impl Relay {
    /// Starts `livemig bench-relay` through `wrapper` (`ip netns exec NS`) and waits until it
    /// listens.
    pub(super) fn start(
        wrapper: &[&str],
        listen: SocketAddr,
        to: SocketAddr,
        rtt: Duration,
        window: usize,
    ) -> anyhow::Result<Relay> {
        let exe = std::env::current_exe().context("cannot find this program")?;
        let (program, pre) = wrapper.split_first().context("no wrapper")?;
        let mut child = Command::new(program)
            .args(pre)
            .arg(exe)
            .arg("bench-relay")
            .arg(format!("--listen={listen}"))
            .arg(format!("--to={to}"))
            .arg(format!("--delay-us={}", rtt.as_micros() / 2))
            .arg(format!("--window={window}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the latency relay")?;
        super::track_child(child.id(), true);
        let out = child.stdout.take().context("relay stdout")?;
        let relay = Relay(child);
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        if line.trim() != "listening" {
            bail!("the latency relay did not start");
        }
        Ok(relay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_forwards_both_ways_in_order_after_the_delay() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = echo.accept().unwrap();
            let mut buf = vec![0u8; 4096];
            loop {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => c.write_all(&buf[..n]).unwrap(),
                }
            }
        });
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = front.local_addr().unwrap();
        std::thread::spawn(move || {
            let (from, _) = front.accept().unwrap();
            let to = TcpStream::connect(target).unwrap();
            pipe(
                from.try_clone().unwrap(),
                to.try_clone().unwrap(),
                Duration::from_millis(5),
                2,
            );
            pipe(to, from, Duration::from_millis(5), 2);
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let writer = {
            let mut c = c.try_clone().unwrap();
            let sent = sent.clone();
            std::thread::spawn(move || {
                c.write_all(&sent).unwrap();
                c.shutdown(Shutdown::Write).unwrap();
            })
        };
        let t = Instant::now();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        writer.join().unwrap();
        assert_eq!(back, sent);
        // Not a timing assertion on the machine's speed: a lower bound the relay guarantees
        // (one chunk crossed two delays before the first byte came back).
        assert!(t.elapsed() >= Duration::from_millis(10));
    }
}
