//! The incoming side (`migrate-incoming URI`, `-incoming URI`): a [`Listener`] that yields
//! the destination's [`Channel`].
//!
//! | URI | at `listen` | at `accept` |
//! | --- | --- | --- |
//! | `tcp:HOST:PORT` | bind + listen (`tcp::PORT`: all addresses, IPv6 dual-stack, falling back to IPv4); port 0 picks an ephemeral port, shown by [`Listener::local_description`] | wait for a connection |
//! | `unix:PATH` | remove a stale socket, bind with mode 0600, listen; the socket file is removed when the listener is dropped | wait for a connection |
//! | `fd:N` / `fd:NAME` | take descriptor number `N`, or `NAME` from the `getfd` table | return it |
//! | `exec:CMD` | start `/bin/sh -c CMD` (stdin `/dev/null`) | return its stdout |
//! | `file:PATH,offset=N` | open `PATH` read-only at `N` | return it |
//!
//! As in QEMU, problems with `fd:`, `exec:` and `file:` are reported by `listen` (i.e. by
//! `migrate-incoming`), not later. Socket listeners can [`accept_next`](Listener::accept_next)
//! further channels (multifd); the others carry a single stream.
//! A pending accept is interrupted by [`Listener::shutdown_handle`].

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::connect::{exec_channel, fd_channel, open_file_at, socket_channel};
use crate::endpoint::Endpoint;
use crate::exec::Direction;
use crate::fds::{claim_numbered_fd, is_numeric, FdSource};
use crate::shutdown::{deadline_after, Cancel, ShutdownHandle};
use crate::sys::Interest;
use crate::unix_bind::bind_private;
use crate::{Channel, MigrationUri, TransportError};

/// Address of a listening socket, as reported by `query-migrate` (`socket-address`) and
/// `info migrate` (`socket address: [` … `]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketAddress {
    /// A TCP address.
    Inet(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

impl SocketAddress {
    /// The QMP `SocketAddress` object, in QEMU's member order, e.g.
    /// `{"port": "41811", "ipv4": true, "host": "127.0.0.1", "type": "inet"}` or
    /// `{"path": "/tmp/s", "type": "unix"}`. The port is a string, as in QEMU.
    pub fn to_qmp(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        match self {
            SocketAddress::Inet(addr) => {
                map.insert("port".into(), addr.port().to_string().into());
                let family = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
                map.insert(family.into(), true.into());
                map.insert("host".into(), addr.ip().to_string().into());
                map.insert("type".into(), "inet".into());
            }
            SocketAddress::Unix(path) => {
                map.insert("path".into(), path.display().to_string().into());
                map.insert("type".into(), "unix".into());
            }
        }
        serde_json::Value::Object(map)
    }
}

impl std::fmt::Display for SocketAddress {
    /// The `info migrate` form: `tcp:127.0.0.1:41811`, `tcp:[::1]:41811`, `unix:/tmp/s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketAddress::Inet(SocketAddr::V4(a)) => write!(f, "tcp:{}:{}", a.ip(), a.port()),
            SocketAddress::Inet(SocketAddr::V6(a)) => write!(f, "tcp:[{}]:{}", a.ip(), a.port()),
            SocketAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

enum Kind {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        /// Path, device and inode of a socket file we created, removed on drop if it is
        /// still ours.
        cleanup: Option<(PathBuf, u64, u64)>,
    },
    /// `exec:`, `fd:`, `file:`: the channel, handed out once.
    Single(Mutex<Option<Channel>>),
}

/// A destination waiting for its migration channel.
pub struct Listener {
    kind: Kind,
    description: String,
    cancel: Arc<Cancel>,
}

/// Opens the incoming side for `uri`. `fds` is the `getfd` table of the monitor that issued
/// `migrate-incoming` (used by named `fd:` URIs only).
pub fn listen(uri: &MigrationUri, fds: &dyn FdSource) -> Result<Listener, TransportError> {
    let desc = uri.to_string();
    let listen_err = |source| TransportError::Listen {
        uri: desc.clone(),
        source,
    };
    match uri {
        MigrationUri::Tcp { host, port } => {
            let listener = bind_tcp(&desc, host, *port)?;
            Listener::from_tcp(listener)
        }
        MigrationUri::Unix(path) => {
            let listener = bind_private(path).map_err(listen_err)?;
            let meta = std::fs::symlink_metadata(path).map_err(listen_err)?;
            let mut l = Listener::from_unix(listener)?;
            if let Kind::Unix { cleanup, .. } = &mut l.kind {
                *cleanup = Some((path.clone(), meta.dev(), meta.ino()));
            }
            Ok(l)
        }
        MigrationUri::Fd(name) => {
            let cancel = new_cancel(&desc)?;
            let fd = if is_numeric(name) {
                claim_numbered_fd(name).map_err(|source| TransportError::BadFdNumber {
                    uri: desc.clone(),
                    source,
                })?
            } else {
                fds.take_fd(name)
                    .ok_or_else(|| TransportError::FdNotFound {
                        uri: desc.clone(),
                        name: name.clone(),
                    })?
            };
            let channel = fd_channel(desc.clone(), cancel, fd)?;
            Ok(Listener::single(desc, channel))
        }
        MigrationUri::Exec(cmd) => {
            let cancel = new_cancel(&desc)?;
            let channel = exec_channel(desc.clone(), cancel, cmd, Direction::FromChild)?;
            Ok(Listener::single(desc, channel))
        }
        MigrationUri::File { path, offset } => {
            let cancel = new_cancel(&desc)?;
            let fd = open_file_at(path, *offset).map_err(|source| TransportError::Open {
                uri: desc.clone(),
                source,
            })?;
            let ep =
                Endpoint::owned(fd, cancel.clone()).map_err(|source| TransportError::Setup {
                    uri: desc.clone(),
                    source,
                })?;
            let channel = Channel::new(desc.clone(), cancel, Some(ep), None, None);
            Ok(Listener::single(desc, channel))
        }
    }
}

fn new_cancel(desc: &str) -> Result<Arc<Cancel>, TransportError> {
    Cancel::new().map_err(|source| TransportError::Setup {
        uri: desc.to_owned(),
        source,
    })
}

fn bind_tcp(desc: &str, host: &str, port: u16) -> Result<TcpListener, TransportError> {
    let listen_err = |source| TransportError::Listen {
        uri: desc.to_owned(),
        source,
    };
    if host.is_empty() {
        // Any address: IPv6 dual-stack where available, else IPv4.
        return TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
            .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
            .map_err(listen_err);
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|source| TransportError::Resolve {
            uri: desc.to_owned(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(TransportError::Resolve {
            uri: desc.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "the host has no address"),
        });
    }
    TcpListener::bind(&addrs[..]).map_err(listen_err)
}

impl Listener {
    /// Wraps an already-bound TCP listener (tests bind port 0 themselves).
    pub fn from_tcp(listener: TcpListener) -> Result<Listener, TransportError> {
        let addr = listener.local_addr();
        let description = match &addr {
            Ok(a) => SocketAddress::Inet(*a).to_string(),
            Err(_) => "tcp:?".to_owned(),
        };
        let setup = |source| TransportError::Setup {
            uri: description.clone(),
            source,
        };
        addr.map_err(setup)?;
        listener.set_nonblocking(true).map_err(setup)?;
        let cancel = Cancel::new().map_err(setup)?;
        Ok(Listener {
            kind: Kind::Tcp(listener),
            description,
            cancel,
        })
    }

    /// Wraps an already-bound unix listener. Its socket file is not removed on drop.
    pub fn from_unix(listener: UnixListener) -> Result<Listener, TransportError> {
        let description = match listener.local_addr() {
            Ok(a) => match a.as_pathname() {
                Some(p) => SocketAddress::Unix(p.to_owned()).to_string(),
                None => "unix:".to_owned(),
            },
            Err(_) => "unix:?".to_owned(),
        };
        let setup = |source| TransportError::Setup {
            uri: description.clone(),
            source,
        };
        listener.set_nonblocking(true).map_err(setup)?;
        let cancel = Cancel::new().map_err(setup)?;
        Ok(Listener {
            kind: Kind::Unix {
                listener,
                cleanup: None,
            },
            description,
            cancel,
        })
    }

    fn single(description: String, channel: Channel) -> Listener {
        // The listener's own cancel state only guards the hand-out; the channel has its own.
        let cancel = channel.writer.shutdown_handle();
        Listener {
            kind: Kind::Single(Mutex::new(Some(channel))),
            description,
            cancel: cancel.cancel_state(),
        }
    }

    /// Where the destination listens: for sockets the actual bound address
    /// (`tcp:127.0.0.1:41811` when port 0 was requested, `unix:/path`), otherwise the URI.
    pub fn local_description(&self) -> String {
        self.description.clone()
    }

    /// The bound socket address (`None` for `exec:`, `fd:`, `file:`), for `query-migrate`'s
    /// `socket-address`.
    pub fn socket_address(&self) -> Option<SocketAddress> {
        match &self.kind {
            Kind::Tcp(l) => l.local_addr().ok().map(SocketAddress::Inet),
            Kind::Unix { listener, .. } => listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| SocketAddress::Unix(p.to_owned()))),
            Kind::Single(_) => None,
        }
    }

    /// A handle that makes a pending or later accept fail with
    /// [`TransportError::Cancelled`]. For `exec:`, `fd:` and `file:` listeners it is also
    /// the handle of the channel they will hand out.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(self.cancel.clone())
    }

    /// Waits for the migration channel.
    pub fn accept(self) -> Result<Channel, TransportError> {
        self.accept_next()
    }

    /// Waits for a channel, keeping the listener for more (multifd channels on sockets).
    /// Single-stream listeners fail with [`TransportError::SingleChannel`] the second time.
    pub fn accept_next(&self) -> Result<Channel, TransportError> {
        loop {
            if let Some(ch) = self.accept_until(None)? {
                return Ok(ch);
            }
        }
    }

    /// Like [`accept_next`](Self::accept_next), but gives up with `Ok(None)` after
    /// `timeout`; the listener stays usable.
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Option<Channel>, TransportError> {
        self.accept_until(deadline_after(timeout))
    }

    fn accept_until(&self, deadline: Option<Instant>) -> Result<Option<Channel>, TransportError> {
        let uri = || self.description.clone();
        if self.cancel.is_set() {
            return Err(TransportError::Cancelled { uri: uri() });
        }
        match &self.kind {
            Kind::Single(slot) => {
                let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                slot.take()
                    .map(Some)
                    .ok_or(TransportError::SingleChannel { uri: uri() })
            }
            Kind::Tcp(l) => self.accept_socket(l, deadline, || {
                // NODELAY for the same reason as on the connecting side (return path).
                l.accept()
                    .and_then(|(s, _)| s.set_nodelay(true).map(|()| s.into()))
            }),
            Kind::Unix { listener, .. } => self.accept_socket(listener, deadline, || {
                listener.accept().map(|(s, _)| s.into())
            }),
        }
    }

    fn accept_socket(
        &self,
        listener: &dyn AsRawFd,
        deadline: Option<Instant>,
        accept: impl Fn() -> io::Result<std::os::fd::OwnedFd>,
    ) -> Result<Option<Channel>, TransportError> {
        let uri = || self.description.clone();
        loop {
            match accept() {
                Ok(fd) => {
                    let cancel = new_cancel(&self.description)?;
                    return socket_channel(uri(), cancel, fd).map(Some);
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted
                        || e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                Err(source) => return Err(TransportError::Accept { uri: uri(), source }),
            }
            match self.cancel.wait(listener, Interest::Read, deadline) {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(_) if self.cancel.is_set() => {
                    return Err(TransportError::Cancelled { uri: uri() })
                }
                Err(source) => return Err(TransportError::Accept { uri: uri(), source }),
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Kind::Unix {
            cleanup: Some((path, dev, ino)),
            ..
        } = &self.kind
        {
            // Only remove the socket file if it is still the one we created.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if meta.dev() == *dev && meta.ino() == *ino {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("description", &self.description)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_address_forms_match_qemu() {
        let v4 = SocketAddress::Inet("127.0.0.1:41811".parse().unwrap());
        assert_eq!(v4.to_string(), "tcp:127.0.0.1:41811");
        assert_eq!(
            v4.to_qmp().to_string(),
            r#"{"port":"41811","ipv4":true,"host":"127.0.0.1","type":"inet"}"#
        );
        let v6 = SocketAddress::Inet("[::1]:4444".parse().unwrap());
        assert_eq!(v6.to_string(), "tcp:[::1]:4444");
        assert_eq!(
            v6.to_qmp().to_string(),
            r#"{"port":"4444","ipv6":true,"host":"::1","type":"inet"}"#
        );
        let unix = SocketAddress::Unix("/tmp/s".into());
        assert_eq!(unix.to_string(), "unix:/tmp/s");
        assert_eq!(
            unix.to_qmp().to_string(),
            r#"{"path":"/tmp/s","type":"unix"}"#
        );
    }
}
