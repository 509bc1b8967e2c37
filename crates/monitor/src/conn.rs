//! Connection plumbing shared by QMP and HMP: reading bytes together with `SCM_RIGHTS`
//! descriptors ([`RecvFds`], over [`transport::sys::recv_with_fds`]), buffering input ([`Input`]) and writing whole lines under a
//! lock ([`SharedWriter`]) so that asynchronous events never land inside a reply.
//!
//! ```text
//!  socket ──recvmsg──▶ Input.buf ──lines / JSON values──▶ session
//!            └─ SCM_RIGHTS fds ──▶ FdTable (getfd)
//!  replies (client thread) ─┐
//!                            ├──▶ SharedWriter (one Mutex, one write_all per line) ──▶ socket
//!  events (pump thread)   ──┘
//! ```

use std::io::{self, Read, Write};
use std::mem;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::fds::FdTable;

/// Largest request line / JSON value accepted from a client.
pub const MAX_INPUT: usize = 1 << 20;

/// A byte source that may carry descriptors.
pub trait RecvFds: Send {
    /// Reads into `buf`; descriptors that came with the bytes are appended to `fds`.
    fn recv(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize>;
}

/// A plain reader (TCP, stdin): never carries descriptors.
#[derive(Debug)]
pub struct Plain<R>(pub R);

impl<R: Read + Send> RecvFds for Plain<R> {
    fn recv(&mut self, buf: &mut [u8], _fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl RecvFds for UnixStream {
    fn recv(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        transport::sys::recv_with_fds(self.as_fd(), buf, fds)
    }
}

/// Buffered input of one connection.
pub struct Input {
    src: Box<dyn RecvFds>,
    /// Bytes read and not consumed yet.
    pub buf: Vec<u8>,
    fds: Arc<FdTable>,
    /// How much of `buf` [`read_line`](Self::read_line) already searched for a newline, so
    /// a line arriving a byte per read costs linear, not quadratic, time.
    scanned: usize,
}

/// Why no line could be read.
#[derive(Debug)]
pub enum LineError {
    /// The line exceeds [`MAX_INPUT`].
    TooLong,
    /// Reading failed.
    Io(io::Error),
}

impl Input {
    /// Wraps a source; received descriptors go to `fds`.
    pub fn new(src: Box<dyn RecvFds>, fds: Arc<FdTable>) -> Self {
        Self {
            src,
            buf: Vec::new(),
            fds,
            scanned: 0,
        }
    }

    /// Reads once; returns the number of new bytes (0 at end of input).
    pub fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let mut fds = Vec::new();
        let n = loop {
            match self.src.recv(&mut chunk, &mut fds) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        if !fds.is_empty() {
            tracing::debug!(count = fds.len(), "received descriptors");
            self.fds.push_received(fds);
        }
        self.buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        Ok(n)
    }

    /// The next line without its `\n` / `\r\n`; `None` at end of input. A last line without
    /// a newline is returned too.
    pub fn read_line(&mut self) -> Result<Option<String>, LineError> {
        loop {
            let from = self.scanned.min(self.buf.len());
            let newline = self
                .buf
                .get(from..)
                .and_then(|r| r.iter().position(|&b| b == b'\n'));
            self.scanned = self.buf.len();
            if let Some(i) = newline.map(|i| from + i) {
                self.scanned = 0;
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if self.buf.len() > MAX_INPUT {
                return Err(LineError::TooLong);
            }
            if self.fill().map_err(LineError::Io)? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                self.scanned = 0;
                let line = mem::take(&mut self.buf);
                return Ok(Some(String::from_utf8_lossy(&line).trim_end().to_string()));
            }
        }
    }
}

/// Serializes like QEMU: compact, with `", "` and `": "` separators and QEMU's string
/// escaping — QMP and the migration stream's VMDESCRIPTION come from the same QEMU JSON writer,
/// so they share one implementation.
pub fn to_qmp_string(v: &serde_json::Value) -> String {
    savevm::vmdesc::to_qemu_json(v)
}

/// The write side of a connection, shared by the client thread and the event pump.
pub struct SharedWriter {
    out: Mutex<Box<dyn Write + Send>>,
    closed: AtomicBool,
    shutdown_sent: Mutex<bool>,
    shutdown_cv: Condvar,
}

impl SharedWriter {
    /// Wraps the write half of a connection.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Mutex::new(out),
            closed: AtomicBool::new(false),
            shutdown_sent: Mutex::new(false),
            shutdown_cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Box<dyn Write + Send>> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `text` in one piece; a failure marks the connection closed.
    pub fn write_raw(&self, text: &str) -> io::Result<()> {
        if self.is_closed() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection closed",
            ));
        }
        let mut out = self.lock();
        let r = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        if r.is_err() {
            self.close();
        }
        r
    }

    /// Writes one JSON object as a QMP line (QEMU's `", "` / `": "` separators + `\r\n`).
    pub fn write_json(&self, v: &serde_json::Value) -> io::Result<()> {
        let mut line = to_qmp_string(v);
        line.push_str("\r\n");
        self.write_raw(&line)
    }

    /// Marks the connection closed (the event pump stops).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.note_shutdown_sent(); // nobody will write it any more: do not make quit wait
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Records that a `SHUTDOWN` event was written (or never will be).
    pub fn note_shutdown_sent(&self) {
        *self.shutdown_sent.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.shutdown_cv.notify_all();
    }

    /// Waits up to `timeout` until [`note_shutdown_sent`](Self::note_shutdown_sent).
    pub fn wait_shutdown_sent(&self, timeout: Duration) {
        let guard = self.shutdown_sent.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .shutdown_cv
            .wait_timeout_while(guard, timeout, |sent| !*sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_cap() {
        let data = b"info status\r\nhelp\nlast".to_vec();
        let mut input = Input::new(
            Box::new(Plain(io::Cursor::new(data))),
            Arc::new(FdTable::new()),
        );
        assert_eq!(input.read_line().unwrap().as_deref(), Some("info status"));
        assert_eq!(input.read_line().unwrap().as_deref(), Some("help"));
        assert_eq!(input.read_line().unwrap().as_deref(), Some("last"));
        assert!(input.read_line().unwrap().is_none());
        let big = vec![b'a'; MAX_INPUT + 10];
        let mut input = Input::new(
            Box::new(Plain(io::Cursor::new(big))),
            Arc::new(FdTable::new()),
        );
        assert!(matches!(input.read_line(), Err(LineError::TooLong)));
    }

    /// A reader that returns one byte per read, like a client sending a byte at a time.
    struct Dribble(io::Cursor<Vec<u8>>);

    impl Read for Dribble {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn a_line_sent_a_byte_at_a_time_is_scanned_once() {
        // Found by the hmp fuzz target: each one-byte read searched the whole buffer again
        // for a newline, so a 1 MiB line sent byte by byte took minutes.
        let mut data = b"a\n".to_vec();
        data.resize(MAX_INPUT + 10, b' ');
        let mut input = Input::new(
            Box::new(Plain(Dribble(io::Cursor::new(data)))),
            Arc::new(FdTable::new()),
        );
        let start = std::time::Instant::now();
        assert_eq!(input.read_line().unwrap().as_deref(), Some("a"));
        assert!(matches!(input.read_line(), Err(LineError::TooLong)));
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "took {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn lines_split_across_reads() {
        let mut input = Input::new(
            Box::new(Plain(Dribble(io::Cursor::new(b"info\r\nst\nx".to_vec())))),
            Arc::new(FdTable::new()),
        );
        assert_eq!(input.read_line().unwrap().as_deref(), Some("info"));
        assert_eq!(input.read_line().unwrap().as_deref(), Some("st"));
        assert_eq!(input.read_line().unwrap().as_deref(), Some("x"));
        assert!(input.read_line().unwrap().is_none());
    }

    #[test]
    fn recvmsg_collects_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let (p, _q) = UnixStream::pair().unwrap();
        transport::sys::send_with_fds(&a, b"hi", &[p.as_fd()]).unwrap();
        let table = Arc::new(FdTable::new());
        let mut input = Input::new(Box::new(b), table.clone());
        assert_eq!(input.fill().unwrap(), 2);
        assert_eq!(input.buf, b"hi");
        assert_eq!(table.unclaimed(), 1);
    }
}
