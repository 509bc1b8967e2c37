//! Client side: [`QmpClient`] (a small synchronous QMP client used by the CLI and by
//! end-to-end tests), the operator console [`interactive`] (`livemig monitor SOCKET`) and
//! [`migrate_with_progress`] (`livemig migrate`).
//!
//! Targets are given as `unix:PATH`, `tcp:HOST:PORT` or a bare socket path.

mod interactive;
mod progress;

pub use interactive::interactive;
pub use progress::migrate_with_progress;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::backend::ErrorClass;
use crate::endpoint::{parse_endpoint, EndpointError, EndpointSpec};

/// Largest server message the client accepts.
const MAX_MESSAGE: usize = 16 << 20;
/// Default time to wait for a reply.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Client-side failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The target string is not an endpoint.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// Socket I/O failed.
    #[error("monitor connection failed")]
    Io(#[from] io::Error),
    /// The server closed the connection.
    #[error("the monitor closed the connection")]
    Closed,
    /// No reply in time.
    #[error("no reply from the monitor within {0:?}")]
    Timeout(Duration),
    /// The server sent something that is not QMP.
    #[error("unexpected message from the monitor: {0}")]
    Protocol(String),
    /// The command failed.
    #[error("{desc}")]
    Command {
        /// QMP error class.
        class: ErrorClass,
        /// Error text.
        desc: String,
    },
}

/// A connected stream to a monitor.
#[derive(Debug)]
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    /// Connects to `target` (`unix:PATH`, `tcp:HOST:PORT`, or a bare path).
    pub(crate) fn connect(target: &str) -> Result<Self, ClientError> {
        if !target.starts_with("unix:") && !target.starts_with("tcp:") {
            return Ok(Stream::Unix(UnixStream::connect(target)?));
        }
        match parse_endpoint(target)? {
            EndpointSpec::Unix { path, .. } => Ok(Stream::Unix(UnixStream::connect(path)?)),
            EndpointSpec::Tcp { host, port, .. } => {
                let addr = (host.as_str(), port)
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))
                    })?;
                Ok(Stream::Tcp(TcpStream::connect(addr)?))
            }
            EndpointSpec::Stdio => Err(ClientError::Endpoint(EndpointError {
                spec: target.into(),
                reason: "cannot connect to stdio".into(),
            })),
        }
    }

    pub(crate) fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    pub(crate) fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }

    pub(crate) fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// Sends `data` with one `sendmsg` carrying `fd` as `SCM_RIGHTS` ancillary data (the rest
/// of `data`, if the socket took only part of it, follows with plain writes).
pub fn send_with_fd(sock: &UnixStream, data: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    transport::sys::send_with_fds(sock, data, &[fd])
}

/// A synchronous QMP client.
///
/// ```no_run
/// let mut qmp = monitor::QmpClient::connect("/run/vm/qmp.sock")?;
/// let status = qmp.execute("query-status", None)?;
/// assert_eq!(status["running"], true);
/// # Ok::<(), monitor::ClientError>(())
/// ```
#[derive(Debug)]
pub struct QmpClient {
    stream: Stream,
    pending: Vec<u8>,
    events: VecDeque<Value>,
    greeting: Value,
    next_id: u64,
    reply_timeout: Duration,
}

impl QmpClient {
    /// Connects to `target` (`unix:PATH`, `tcp:HOST:PORT` or a bare path), reads the
    /// greeting and negotiates capabilities.
    pub fn connect(target: &str) -> Result<Self, ClientError> {
        let mut c = Self::connect_unnegotiated(target)?;
        c.negotiate()?;
        Ok(c)
    }

    /// Connects to a unix socket path and negotiates.
    pub fn connect_unix(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let mut c = Self::from_stream(Stream::Unix(UnixStream::connect(path)?))?;
        c.negotiate()?;
        Ok(c)
    }

    /// Connects over TCP and negotiates.
    pub fn connect_tcp(addr: impl ToSocketAddrs) -> Result<Self, ClientError> {
        let mut c = Self::from_stream(Stream::Tcp(TcpStream::connect(addr)?))?;
        c.negotiate()?;
        Ok(c)
    }

    /// Connects and reads the greeting, without negotiating.
    pub fn connect_unnegotiated(target: &str) -> Result<Self, ClientError> {
        Self::from_stream(Stream::connect(target)?)
    }

    fn from_stream(stream: Stream) -> Result<Self, ClientError> {
        let mut c = Self::with_greeting(stream, Vec::new(), Value::Null);
        let g = c.read_message(Some(Instant::now() + c.reply_timeout))?;
        match g {
            Some(v) if v.get("QMP").is_some() => c.greeting = v,
            Some(v) => return Err(ClientError::Protocol(v.to_string())),
            None => return Err(ClientError::Timeout(c.reply_timeout)),
        }
        Ok(c)
    }

    pub(crate) fn with_greeting(stream: Stream, pending: Vec<u8>, greeting: Value) -> Self {
        Self {
            stream,
            pending,
            events: VecDeque::new(),
            greeting,
            next_id: 1,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        }
    }

    /// The server's greeting object.
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Sets how long [`execute`](Self::execute) waits for a reply.
    pub fn set_reply_timeout(&mut self, t: Duration) {
        self.reply_timeout = t;
    }

    /// Runs `qmp_capabilities`.
    pub fn negotiate(&mut self) -> Result<(), ClientError> {
        self.execute("qmp_capabilities", None).map(|_| ())
    }

    /// Runs a command and returns its `return` value; an error reply becomes
    /// [`ClientError::Command`]. Events that arrive meanwhile are kept for
    /// [`next_event`](Self::next_event).
    pub fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, ClientError> {
        let (id, line) = self.request(cmd, args);
        self.stream.write_all(line.as_bytes())?;
        self.wait_reply(id)
    }

    /// Like [`execute`](Self::execute), sending `fd` with the request as `SCM_RIGHTS`
    /// (unix sockets only), e.g. for `getfd`.
    pub fn execute_with_fd(
        &mut self,
        cmd: &str,
        args: Option<Value>,
        fd: BorrowedFd<'_>,
    ) -> Result<Value, ClientError> {
        if !matches!(self.stream, Stream::Unix(_)) {
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                "descriptors can only be passed over unix sockets",
            )));
        }
        let (id, line) = self.request(cmd, args);
        if let Stream::Unix(sock) = &self.stream {
            send_with_fd(sock, line.as_bytes(), fd)?;
        }
        self.wait_reply(id)
    }

    /// Sends raw bytes (for tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        Ok(self.stream.write_all(bytes)?)
    }

    /// Reads the next message of any kind (reply or event), waiting up to `timeout`.
    pub fn next_message(&mut self, timeout: Duration) -> Result<Option<Value>, ClientError> {
        if let Some(ev) = self.events.pop_front() {
            return Ok(Some(ev));
        }
        self.read_message(Some(Instant::now() + timeout))
    }

    /// The next event, waiting up to `timeout`; `None` if none came.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Value>, ClientError> {
        if let Some(ev) = self.events.pop_front() {
            return Ok(Some(ev));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_message(Some(deadline))? {
                Some(v) if v.get("event").is_some() => return Ok(Some(v)),
                Some(v) => tracing::debug!(message = %v, "unsolicited QMP message"),
                None => return Ok(None),
            }
        }
    }

    fn request(&mut self, cmd: &str, args: Option<Value>) -> (u64, String) {
        let id = self.next_id;
        self.next_id += 1;
        let mut m = Map::new();
        m.insert("execute".into(), json!(cmd));
        if let Some(a) = args {
            m.insert("arguments".into(), a);
        }
        m.insert("id".into(), json!(id));
        let mut line = Value::Object(m).to_string();
        line.push('\n');
        (id, line)
    }

    fn wait_reply(&mut self, id: u64) -> Result<Value, ClientError> {
        let deadline = Instant::now() + self.reply_timeout;
        loop {
            let Some(mut v) = self.read_message(Some(deadline))? else {
                return Err(ClientError::Timeout(self.reply_timeout));
            };
            if v.get("event").is_some() {
                self.events.push_back(v);
                continue;
            }
            if v.get("id") != Some(&json!(id)) {
                tracing::debug!(message = %v, "QMP reply for another request");
                continue;
            }
            if let Some(r) = v.get_mut("return") {
                return Ok(r.take());
            }
            let e = v.get("error").cloned().unwrap_or(Value::Null);
            let class = e
                .get("class")
                .and_then(Value::as_str)
                .unwrap_or("GenericError");
            return Err(ClientError::Command {
                class: ErrorClass::parse(class).unwrap_or(ErrorClass::GenericError),
                desc: e
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            });
        }
    }

    /// Reads one JSON line; `None` when `deadline` passed first.
    fn read_message(&mut self, deadline: Option<Instant>) -> Result<Option<Value>, ClientError> {
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line);
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                return serde_json::from_str(text)
                    .map(Some)
                    .map_err(|_| ClientError::Protocol(text.to_string()));
            }
            if self.pending.len() > MAX_MESSAGE {
                return Err(ClientError::Protocol("message too large".into()));
            }
            let timeout = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    Some(left)
                }
                None => None,
            };
            self.stream.set_read_timeout(timeout)?;
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self
                    .pending
                    .extend_from_slice(chunk.get(..n).unwrap_or(&[])),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}
