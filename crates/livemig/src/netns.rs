//! Two simulated hosts on one machine: two network namespaces joined by a veth pair, used by
//! `livemig bench --link` and by the fault tests (a link that goes down). Needs root and
//! iproute2 (`ip`, `tc`); [`Testbed::create`] says which is missing.
//!
//! ```text
//!  namespace A (source)                      namespace B (destination)
//!  va<N> 10.77.<k>.1/24  ◀──── veth ────▶  vb<N> 10.77.<k>.2/24
//!        root qdisc tbf (rate)                    root qdisc tbf (rate)
//! ```
//!
//! Rate comes from a `tbf` qdisc on each end (this kernel has no `netem`, `fq` or `cake`);
//! a cut link is `ip link set DEV down`. Processes run inside with `ip netns exec NS …`.
//! The namespaces (and with them the veth pair) are deleted when the [`Testbed`] drops; every
//! live one is also listed in a process-wide registry so that a Ctrl-C handler can delete them
//! with [`delete_all`] before the process exits.
//!
//! Threads of this process can move into a namespace too ([`Testbed::enter`], `setns(2)`):
//! the sockets they create from then on live there, whichever thread uses them later (the
//! bench's raw TCP copy between the two hosts).
//!
//! This file is shared (`#[path]`) by the binary and the fault tests: it uses only std and
//! libc, and each user leaves some of it unused.

#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Namespaces alive in this process, for [`delete_all`].
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Makes names unique within the process (several testbeds may exist in one test binary).
static NEXT: AtomicU32 = AtomicU32::new(0);

/// What went wrong setting a testbed up.
#[derive(Debug)]
pub enum NetnsError {
    /// Not running as root.
    NotRoot,
    /// A tool is not installed.
    Missing(&'static str),
    /// A command failed.
    Command {
        /// The command line.
        cmd: String,
        /// What it printed on stderr, or how it failed to start.
        detail: String,
    },
}

impl std::fmt::Display for NetnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetnsError::NotRoot => f.write_str(
                "network namespaces need root (run as root, e.g. with sudo); the two-host \
                 simulation is not available",
            ),
            NetnsError::Missing(tool) => write!(
                f,
                "`{tool}` is not installed (Debian: apt-get install iproute2); the two-host \
                 simulation is not available"
            ),
            NetnsError::Command { cmd, detail } => write!(f, "`{cmd}` failed: {detail}"),
        }
    }
}

impl std::error::Error for NetnsError {}

fn run(cmd: &str, args: &[&str]) -> Result<(), NetnsError> {
    let line = || format!("{cmd} {}", args.join(" "));
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| NetnsError::Command {
            cmd: line(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Command {
            cmd: line(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn have(tool: &'static str) -> Result<(), NetnsError> {
    match Command::new(tool).arg("-V").output() {
        Ok(_) => Ok(()),
        Err(_) => Err(NetnsError::Missing(tool)),
    }
}

/// One of the two simulated hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// Namespace A, the source's.
    A,
    /// Namespace B, the destination's.
    B,
}

/// Two network namespaces joined by a veth pair; deleted on drop.
#[derive(Debug)]
pub struct Testbed {
    ns: [String; 2],
    dev: [String; 2],
    addr: [String; 2],
}

impl Testbed {
    /// Creates the namespaces (names start with `tag`), the veth pair, addresses, and brings
    /// every link (and each namespace's loopback) up.
    pub fn create(tag: &str) -> Result<Testbed, NetnsError> {
        if !is_root() {
            return Err(NetnsError::NotRoot);
        }
        have("ip")?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{n}", std::process::id() % 100_000);
        let subnet = 77 + (std::process::id() % 100 + n) % 150;
        let t = Testbed {
            ns: [format!("{tag}A{id}"), format!("{tag}B{id}")],
            dev: [format!("va{id}"), format!("vb{id}")],
            addr: [format!("10.{subnet}.0.1"), format!("10.{subnet}.0.2")],
        };
        for ns in &t.ns {
            run("ip", &["netns", "add", ns])?;
            LIVE.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(ns.clone());
        }
        let [a, b] = &t.ns;
        let [va, vb] = &t.dev;
        run(
            "ip",
            &[
                "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b,
            ],
        )?;
        for (i, ns) in t.ns.iter().enumerate() {
            let cidr = format!("{}/24", t.addr[i]);
            run("ip", &["-n", ns, "addr", "add", &cidr, "dev", &t.dev[i]])?;
            run("ip", &["-n", ns, "link", "set", &t.dev[i], "up"])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(t)
    }

    fn i(host: Host) -> usize {
        match host {
            Host::A => 0,
            Host::B => 1,
        }
    }

    /// The namespace's name.
    pub fn namespace(&self, host: Host) -> &str {
        &self.ns[Self::i(host)]
    }

    /// The host's address on the veth link.
    pub fn addr(&self, host: Host) -> &str {
        &self.addr[Self::i(host)]
    }

    /// The command prefix that runs a program on `host`: `ip netns exec NS`.
    pub fn exec(&self, host: Host) -> [&str; 4] {
        ["ip", "netns", "exec", self.namespace(host)]
    }

    /// Limits both directions to `bits_per_sec` with a `tbf` qdisc on each end (replacing any
    /// earlier one). The bucket holds 10 ms of traffic (at least 64 KiB), so a 10 Gbit/s link
    /// is not limited by the kernel's timer.
    pub fn set_rate(&self, bits_per_sec: u64) -> Result<(), NetnsError> {
        have("tc")?;
        let rate = format!("{bits_per_sec}bit");
        let burst = (bits_per_sec / 8 / 100).max(64 * 1024).to_string();
        for (ns, dev) in self.ns.iter().zip(&self.dev) {
            run(
                "tc",
                &[
                    "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate,
                    "burst", &burst, "latency", "100ms",
                ],
            )?;
        }
        Ok(())
    }

    /// The `tc qdisc show` of `host`'s end of the link.
    pub fn qdisc(&self, host: Host) -> Result<String, NetnsError> {
        let i = Self::i(host);
        let out = Command::new("tc")
            .args(["-n", &self.ns[i], "qdisc", "show", "dev", &self.dev[i]])
            .output()
            .map_err(|e| NetnsError::Command {
                cmd: "tc qdisc show".into(),
                detail: e.to_string(),
            })?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sets the MTU of both ends of the link (the kernel refuses what a veth cannot take).
    pub fn set_mtu(&self, mtu: u32) -> Result<(), NetnsError> {
        let mtu = mtu.to_string();
        for (ns, dev) in self.ns.iter().zip(&self.dev) {
            run("ip", &["-n", ns, "link", "set", "dev", dev, "mtu", &mtu])?;
        }
        Ok(())
    }

    /// Moves the calling thread into `host`'s network namespace, for good: sockets it creates
    /// from then on are `host`'s. Call it on a thread of its own that ends with its task, never
    /// on one that other code expects to stay where it was.
    pub fn enter(&self, host: Host) -> Result<(), NetnsError> {
        let path = std::path::Path::new("/run/netns").join(self.namespace(host));
        let failed = |e: std::io::Error| NetnsError::Command {
            cmd: format!("setns({}, CLONE_NEWNET)", path.display()),
            detail: e.to_string(),
        };
        let ns = std::fs::File::open(&path).map_err(failed)?;
        // SAFETY: `ns` is an open descriptor of a network namespace for the whole call, which
        // only reads it; entering a network namespace changes the calling thread alone (it is
        // allowed in a multi-threaded process) and touches no memory of this program.
        let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        if r != 0 {
            return Err(failed(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Takes `host`'s end of the link down (no FIN, no RST: packets just stop) or back up.
    pub fn set_link(&self, host: Host, up: bool) -> Result<(), NetnsError> {
        let i = Self::i(host);
        let state = if up { "up" } else { "down" };
        run(
            "ip",
            &["-n", &self.ns[i], "link", "set", &self.dev[i], state],
        )
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = run("ip", &["netns", "del", ns]);
            LIVE.lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|n| n != ns);
        }
    }
}

/// Deletes every namespace a live [`Testbed`] of this process holds (for a signal handler
/// about to exit, where no destructor runs).
pub fn delete_all() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|p| p.into_inner()));
    for ns in live {
        let _ = run("ip", &["netns", "del", &ns]);
    }
}

/// Whether a namespace of that name exists.
pub fn exists(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}

fn is_root() -> bool {
    // The effective uid of this process, from procfs (std has no safe geteuid).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`delete_all`] deletes every testbed of the process: the tests take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn testbed() -> Option<Testbed> {
        match Testbed::create("lmT") {
            Ok(t) => Some(t),
            Err(e @ (NetnsError::NotRoot | NetnsError::Missing(_))) => {
                testkit::print_skip(&format!("two-host testbed: {e}"));
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_testbed_has_two_namespaces_joined_and_deletes_them_on_drop() {
        let _turn = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = testbed() else { return };
        let (a, b) = (
            t.namespace(Host::A).to_string(),
            t.namespace(Host::B).to_string(),
        );
        assert!(exists(&a) && exists(&b));
        assert_ne!(t.addr(Host::A), t.addr(Host::B));
        // B's address is reachable from A, over the veth.
        let out = Command::new("ip")
            .args(["-n", &a, "route", "get", t.addr(Host::B)])
            .output()
            .unwrap();
        let route = String::from_utf8_lossy(&out.stdout);
        assert!(route.contains("dev va"), "{route}");
        t.set_rate(1_000_000_000).unwrap();
        let q = t.qdisc(Host::A).unwrap();
        assert!(q.contains("tbf") && q.contains("1Gbit"), "{q}");
        t.set_link(Host::A, false).unwrap();
        t.set_link(Host::A, true).unwrap();
        drop(t);
        assert!(!exists(&a) && !exists(&b));
    }

    #[test]
    fn threads_that_entered_the_two_hosts_talk_over_the_link() {
        let _turn = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = testbed() else { return };
        t.set_mtu(9000).unwrap();
        let b: std::net::SocketAddr = format!("{}:20000", t.addr(Host::B)).parse().unwrap();
        // This thread is in neither namespace: B's address is not one of its own.
        assert!(std::net::TcpListener::bind(b).is_err());
        let listener = std::thread::scope(|s| {
            s.spawn(|| {
                t.enter(Host::B).unwrap();
                std::net::TcpListener::bind(b).unwrap()
            })
            .join()
            .unwrap()
        });
        let sent = std::thread::scope(|s| {
            let sender = s.spawn(|| {
                t.enter(Host::A).unwrap();
                let mut c = std::net::TcpStream::connect(b).unwrap();
                std::io::Write::write_all(&mut c, &[7u8; 100_000]).unwrap();
                c.local_addr().unwrap()
            });
            let (mut conn, from) = listener.accept().unwrap();
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut conn, &mut got).unwrap();
            assert_eq!(got, vec![7u8; 100_000]);
            assert_eq!(from, sender.join().unwrap());
            from
        });
        assert_eq!(sent.ip().to_string(), t.addr(Host::A), "it came from A");
        let out = Command::new("ip")
            .args(["-n", t.namespace(Host::A), "link", "show"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("mtu 9000"));
        // The kernel refuses an MTU the veth cannot take.
        assert!(t.set_mtu(70_000).is_err());
    }

    #[test]
    fn delete_all_removes_the_namespaces_of_live_testbeds() {
        let _turn = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = testbed() else { return };
        let a = t.namespace(Host::A).to_string();
        delete_all();
        assert!(!exists(&a));
        // Dropping afterwards is harmless.
        drop(t);
    }
}
