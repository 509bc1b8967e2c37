//! [`MonitorServer`]: serving QMP or HMP on listeners, single connections and stdio.
//!
//! Servers take already-bound listeners ([`bind_unix`], [`bind_tcp`], or the caller's own),
//! so tests bind port 0 or a temporary path. Each client gets its own thread and
//! [`Session`]; a QMP client additionally gets an event thread after negotiation. The accept
//! loop polls a stop flag so [`ServerHandle::shutdown`] ends it promptly. Each listener
//! serves at most [`ClientLimits::max_clients`] clients; a newcomer beyond that evicts the
//! longest idle client and QMP clients that never negotiate are closed — the rules are in
//! [`crate::clients`].
//!
//! ```text
//!  accept thread ──▶ client thread (Session, Input, SharedWriter) ──▶ qmp::serve / hmp::serve
//!                          └─▶ qmp-events thread (after qmp_capabilities)
//! ```

use std::fs;
use std::io::{self, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use transport::sys::{poll, Interest, PollFd};

use crate::backend::MonitorBackend;
use crate::clients::{ClientLimits, ClientTable};
use crate::conn::{Input, Plain, RecvFds, SharedWriter};
use crate::endpoint::EndpointSpec;
use crate::session::{Activity, Session};

/// Which protocol a monitor speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// JSON QMP.
    Qmp,
    /// Text HMP.
    Hmp,
}

pub use crate::clients::MAX_CLIENTS;
/// A client that does not read its replies for this long is disconnected.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const ACCEPT_POLL: Duration = Duration::from_millis(200);

/// Serves monitor connections for one backend.
#[derive(Clone)]
pub struct MonitorServer {
    backend: Arc<dyn MonitorBackend>,
    protocol: Protocol,
    limits: ClientLimits,
}

impl std::fmt::Debug for MonitorServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorServer")
            .field("protocol", &self.protocol)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A running accept loop.
#[derive(Debug)]
pub struct ServerHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    description: String,
    remove_on_shutdown: Option<PathBuf>,
}

impl ServerHandle {
    /// Where the server listens, as an endpoint spec (`unix:/path`, `tcp:127.0.0.1:4444`).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Stops accepting new clients (connected ones are served to the end) and removes the
    /// socket file if this crate created it.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = self.remove_on_shutdown.take() {
            let _ = fs::remove_file(p);
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Binds a unix socket readable and writable by the owner only (0600). A stale socket file
/// at `path` is replaced; any other existing file is an error.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Binds a TCP listener on `host:port` (port 0 = any free port).
pub fn bind_tcp(host: &str, port: u16) -> io::Result<TcpListener> {
    TcpListener::bind((host, port))
}

/// Waits until `fd` is readable or `timeout` elapsed; true when readable.
fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut p = [PollFd::new(&fd, Interest::Read)];
    matches!(poll(&mut p, Some(timeout)), Ok(n) if n > 0)
}

/// What the accept loop needs from a listener.
trait Accept: AsFd + Send + 'static {
    fn accept_one(&self) -> io::Result<Connection>;
}

/// One accepted connection, split for serving.
pub(crate) struct Connection {
    reader: Box<dyn RecvFds>,
    writer: Box<dyn Write + Send>,
    closer: Option<Box<dyn FnOnce() + Send>>,
    /// Closes the connection from another thread (eviction, negotiation timeout).
    kick: Option<Box<dyn Fn() + Send>>,
    peer_fd: Option<OwnedFd>,
    peer: String,
    activity: Arc<Activity>,
}

impl Connection {
    fn unix(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let reader = stream.try_clone()?;
        let closer = stream.try_clone()?;
        let kicker = stream.try_clone()?;
        let peer_fd = Some(OwnedFd::from(stream.try_clone()?));
        Ok(Self {
            peer_fd,
            reader: Box::new(reader),
            writer: Box::new(stream),
            closer: Some(Box::new(move || {
                let _ = closer.shutdown(Shutdown::Both);
            })),
            kick: Some(Box::new(move || {
                let _ = kicker.shutdown(Shutdown::Both);
            })),
            peer: "unix".into(),
            activity: Arc::new(Activity::new()),
        })
    }

    fn tcp(stream: TcpStream) -> io::Result<Self> {
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let _ = stream.set_nodelay(true);
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let reader = stream.try_clone()?;
        let closer = stream.try_clone()?;
        let kicker = stream.try_clone()?;
        let peer_fd = Some(OwnedFd::from(stream.try_clone()?));
        Ok(Self {
            peer_fd,
            reader: Box::new(Plain(reader)),
            writer: Box::new(stream),
            closer: Some(Box::new(move || {
                let _ = closer.shutdown(Shutdown::Both);
            })),
            kick: Some(Box::new(move || {
                let _ = kicker.shutdown(Shutdown::Both);
            })),
            peer,
            activity: Arc::new(Activity::new()),
        })
    }
}

impl Accept for UnixListener {
    fn accept_one(&self) -> io::Result<Connection> {
        Connection::unix(self.accept()?.0)
    }
}

impl Accept for TcpListener {
    fn accept_one(&self) -> io::Result<Connection> {
        Connection::tcp(self.accept()?.0)
    }
}

impl MonitorServer {
    /// A server of `protocol` for `backend`.
    pub fn new(backend: Arc<dyn MonitorBackend>, protocol: Protocol) -> Self {
        Self {
            backend,
            protocol,
            limits: ClientLimits::default(),
        }
    }

    /// The same server with other client limits for its listeners.
    pub fn with_limits(mut self, limits: ClientLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The client limits of its listeners.
    pub fn limits(&self) -> ClientLimits {
        self.limits
    }

    /// The protocol served.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Serves every client of a bound unix listener on its own thread.
    pub fn serve_unix(&self, listener: UnixListener) -> io::Result<ServerHandle> {
        let description = match listener.local_addr()?.as_pathname() {
            Some(p) => format!("unix:{}", p.display()),
            None => "unix:".to_string(),
        };
        self.spawn_accept(listener, description)
    }

    /// Serves every client of a bound TCP listener on its own thread.
    pub fn serve_tcp(&self, listener: TcpListener) -> io::Result<ServerHandle> {
        let a = listener.local_addr()?;
        let description = match a {
            std::net::SocketAddr::V4(v4) => format!("tcp:{}:{}", v4.ip(), v4.port()),
            std::net::SocketAddr::V6(v6) => format!("tcp:[{}]:{}", v6.ip(), v6.port()),
        };
        self.spawn_accept(listener, description)
    }

    fn spawn_accept<L: Accept>(
        &self,
        listener: L,
        description: String,
    ) -> io::Result<ServerHandle> {
        let stop = Arc::new(AtomicBool::new(false));
        let server = self.clone();
        let stop2 = stop.clone();
        let clients = Arc::new(ClientTable::default());
        let limits = self.limits;
        let thread = thread::Builder::new()
            .name("monitor-accept".into())
            .spawn(move || {
                while !stop2.load(Ordering::SeqCst) {
                    clients.sweep(&limits);
                    if !poll_readable(listener.as_fd(), ACCEPT_POLL) {
                        continue;
                    }
                    let mut conn = match listener.accept_one() {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "monitor accept failed");
                            thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    };
                    if server.protocol == Protocol::Hmp {
                        // Before admission, so the negotiation sweep never sees it otherwise.
                        conn.activity.set_negotiated();
                    }
                    let kick = conn.kick.take().unwrap_or_else(|| Box::new(|| ()));
                    let admitted =
                        clients.admit(&limits, conn.activity.clone(), kick, conn.peer.clone());
                    let Some(id) = admitted else {
                        tracing::warn!("every monitor client is busy; refusing a new one");
                        continue;
                    };
                    let table = clients.clone();
                    let s = server.clone();
                    let spawned =
                        thread::Builder::new()
                            .name("monitor-client".into())
                            .spawn(move || {
                                s.serve_connection(conn);
                                table.remove(id);
                            });
                    if let Err(e) = spawned {
                        clients.remove(id);
                        tracing::warn!(error = %e, "cannot start a monitor client thread");
                    }
                }
            })?;
        Ok(ServerHandle {
            stop,
            thread: Some(thread),
            description,
            remove_on_shutdown: None,
        })
    }

    /// Serves one already-connected unix stream on a new thread.
    pub fn serve_unix_stream(&self, stream: UnixStream) -> io::Result<JoinHandle<()>> {
        self.spawn_one(Connection::unix(stream)?)
    }

    /// Serves one already-connected TCP stream on a new thread.
    pub fn serve_tcp_stream(&self, stream: TcpStream) -> io::Result<JoinHandle<()>> {
        self.spawn_one(Connection::tcp(stream)?)
    }

    /// Serves standard input / output on a new thread (ends at end of input).
    pub fn serve_stdio(&self) -> io::Result<JoinHandle<()>> {
        self.serve_io(io::stdin(), io::stdout())
    }

    /// Serves any byte stream pair (no descriptor passing) on a new thread; the thread ends
    /// at end of input.
    pub fn serve_io<R, W>(&self, reader: R, writer: W) -> io::Result<JoinHandle<()>>
    where
        R: io::Read + Send + 'static,
        W: Write + Send + 'static,
    {
        self.spawn_one(Connection {
            reader: Box::new(Plain(reader)),
            writer: Box::new(writer),
            closer: None,
            kick: None,
            peer_fd: None,
            peer: "stream".into(),
            activity: Arc::new(Activity::new()),
        })
    }

    fn spawn_one(&self, conn: Connection) -> io::Result<JoinHandle<()>> {
        let s = self.clone();
        thread::Builder::new()
            .name("monitor-client".into())
            .spawn(move || s.serve_connection(conn))
    }

    /// Serves a connection on the calling thread until it ends.
    pub(crate) fn serve_connection(&self, mut conn: Connection) {
        tracing::debug!(peer = %conn.peer, protocol = ?self.protocol, "monitor client connected");
        let mut session = Session::new(self.backend.clone());
        session.peer = conn.peer_fd.take();
        session.activity = conn.activity.clone();
        if self.protocol == Protocol::Hmp {
            session.activity.set_negotiated(); // HMP has no negotiation
        }
        let input = Input::new(conn.reader, session.fds.clone());
        let writer = Arc::new(SharedWriter::new(conn.writer));
        let r = match self.protocol {
            Protocol::Qmp => crate::qmp::serve(&mut session, input, writer.clone()),
            Protocol::Hmp => crate::hmp::serve(&mut session, input, writer.clone()),
        };
        writer.close();
        if let Some(close) = conn.closer.take() {
            close();
        }
        match r {
            Ok(()) => tracing::debug!(peer = %conn.peer, "monitor client left"),
            Err(e) => tracing::debug!(peer = %conn.peer, error = %e, "monitor connection ended"),
        }
    }

    /// Starts the monitor an endpoint spec describes: servers bind (unix sockets 0600) and
    /// accept in the background — after the first client when `wait` is on; clients connect
    /// and serve that one connection; `stdio` serves standard input/output.
    pub fn start(&self, spec: &EndpointSpec) -> io::Result<Running> {
        match spec {
            EndpointSpec::Stdio => Ok(Running::Connection(self.serve_stdio()?)),
            EndpointSpec::Unix {
                path,
                server: true,
                wait,
            } => {
                let listener = bind_unix(path)?;
                if *wait {
                    let (stream, _) = listener.accept()?;
                    self.serve_unix_stream(stream)?;
                }
                let mut handle = self.serve_unix(listener)?;
                handle.remove_on_shutdown = Some(path.clone());
                Ok(Running::Server(handle))
            }
            EndpointSpec::Unix {
                path,
                server: false,
                ..
            } => Ok(Running::Connection(
                self.serve_unix_stream(UnixStream::connect(path)?)?,
            )),
            EndpointSpec::Tcp {
                host,
                port,
                server: true,
                wait,
            } => {
                let listener = bind_tcp(host, *port)?;
                if *wait {
                    let (stream, _) = listener.accept()?;
                    self.serve_tcp_stream(stream)?;
                }
                Ok(Running::Server(self.serve_tcp(listener)?))
            }
            EndpointSpec::Tcp {
                host,
                port,
                server: false,
                ..
            } => {
                let addr = (host.as_str(), *port)
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))
                    })?;
                Ok(Running::Connection(
                    self.serve_tcp_stream(TcpStream::connect(addr)?)?,
                ))
            }
        }
    }
}

/// What [`MonitorServer::start`] started.
#[derive(Debug)]
pub enum Running {
    /// An accept loop.
    Server(ServerHandle),
    /// A single connection (client mode or stdio).
    Connection(JoinHandle<()>),
}
