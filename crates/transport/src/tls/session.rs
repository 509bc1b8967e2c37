//! [`TlsSession`]: one rustls connection over one socket [`Endpoint`], shared by the two
//! halves of a [`Channel`](crate::Channel) so that the migration stream and the return path
//! (which QEMU carries on the main socket, in the other direction) both run over it.
//!
//! A rustls connection is a single state machine, and a TLS stream cannot be duplicated the
//! way a socket can (`try_clone`): both directions share the record layer state. The halves
//! therefore share the session behind locks, but never hold the state machine's lock while
//! blocked on the socket, so a reader waiting for the peer never stalls the writer:
//!
//! | lock | guards | held while blocked on the socket? |
//! | --- | --- | --- |
//! | `conn` | the rustls state machine | never |
//! | `out` | the ciphertext about to be sent, and the right to send it (keeps records in order) | yes, by the one sending |
//! | `inbuf` | ciphertext read but not yet given to rustls (reader side only) | yes, by the reader |
//!
//! ```text
//! writer: lock out ─ lock conn ─ encrypt into out ─ unlock conn ─ send out ─┐
//!         ┌──────────────────────────────────────────────────────────────────┘
//!         └ lock conn ─ more queued? ─yes─ move it to out, unlock conn, send again
//!                                   └no── unlock out, then conn   (the "flush duty" ends)
//! reader: lock conn ─ plaintext? ─yes─ return it
//!                               └no─ unlock; read the socket; lock conn; decrypt
//!         rustls queued something (an alert, a key update)? ─ try_lock out:
//!               got it ─ send it ourselves │ busy ─ the sender holds the flush duty and
//!                                          │        checks the queue under `conn` before it
//!                                          │        lets `out` go, so nothing is left behind
//! ```
//!
//! Lock order is `out` before `conn`; the reader only *tries* `out` while holding `conn`, so
//! there is no deadlock.
//!
//! End of stream: `Ok(0)` only after the peer's `close_notify`. A peer that closes the TCP
//! connection without it gives an [`io::ErrorKind::UnexpectedEof`] error carrying
//! [`TlsError::Truncated`], which a caller may accept only where its own protocol proves the
//! data complete (QEMU 7.2 never sends `close_notify`).
//!
//! A write that fails because the peer reset the connection first looks for a TLS alert the
//! peer may have sent before closing (in TLS 1.3 a server refuses a client certificate only
//! after the client finished its handshake), so the error says why.

use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use rustls::Connection;

use super::{describe, TlsError};
use crate::endpoint::Endpoint;

/// Size of the buffer ciphertext is read into (a little more than one full TLS record).
const READ_BUF: usize = 18 * 1024;

/// Most ciphertext rustls may queue for sending (one write call's worth).
const SEND_LIMIT: usize = 256 * 1024;

struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// A TLS session over a socket; see the module documentation.
pub(crate) struct TlsSession {
    ep: Arc<Endpoint>,
    conn: Mutex<Connection>,
    out: Mutex<Vec<u8>>,
    inbuf: Mutex<InBuf>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn tls_io(kind: io::ErrorKind, e: TlsError) -> io::Error {
    io::Error::new(kind, e)
}

impl TlsSession {
    /// Wraps `conn` (not yet handshaken) over `ep`.
    pub(crate) fn new(ep: Arc<Endpoint>, mut conn: Connection) -> TlsSession {
        conn.set_buffer_limit(Some(SEND_LIMIT));
        TlsSession {
            ep,
            conn: Mutex::new(conn),
            out: Mutex::new(Vec::new()),
            inbuf: Mutex::new(InBuf {
                buf: vec![0; READ_BUF],
                start: 0,
                end: 0,
            }),
        }
    }

    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.ep
    }

    /// Runs the handshake to its end. Interrupted by the channel's shutdown handle.
    pub(crate) fn handshake(&self) -> Result<(), TlsError> {
        loop {
            let out = lock(&self.out);
            let c = lock(&self.conn);
            if c.wants_write() {
                self.send_queued(c, out)
                    .map_err(|e| handshake_error(self.classify_io(e, true)))?;
                continue;
            }
            if !c.is_handshaking() {
                return Ok(());
            }
            drop(c);
            drop(out);
            match self.fill() {
                Ok(true) => {}
                Ok(false) => return Err(TlsError::ClosedDuringHandshake),
                Err(e) => return Err(handshake_error(self.classify_io(e, true))),
            }
        }
    }

    /// The peer's end-entity certificate (DER), if it presented one.
    pub(crate) fn peer_certificate(&self) -> Option<Vec<u8>> {
        let c = lock(&self.conn);
        c.peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| cert.as_ref().to_vec())
    }

    /// Reads plaintext; see the module documentation for the end of the stream.
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            {
                let mut c = lock(&self.conn);
                match io::Read::read(&mut c.reader(), buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(tls_io(io::ErrorKind::UnexpectedEof, TlsError::Truncated))
                    }
                    Err(e) => return Err(e),
                }
            }
            self.fill()?;
        }
    }

    /// Gives rustls more ciphertext: what is left in `inbuf`, else one socket read.
    /// `Ok(false)`: the socket reached its end (rustls has been told).
    fn fill(&self) -> io::Result<bool> {
        let mut inb = lock(&self.inbuf);
        let mut eof = false;
        if inb.start == inb.end {
            let n = self.ep.read(&mut inb.buf)?;
            inb.start = 0;
            inb.end = n;
            eof = n == 0;
        }
        let mut c = lock(&self.conn);
        let InBuf { buf, start, end } = &mut *inb;
        let mut pending = &buf[*start..*end];
        let before = pending.len();
        c.read_tls(&mut pending)?;
        *start += before - pending.len();
        let processed = c.process_new_packets();
        if c.wants_write() {
            // An alert, a key update: send it now, or leave it to the current sender.
            match self.out.try_lock() {
                Ok(out) => {
                    let sent = self.send_queued(c, out);
                    if processed.is_ok() {
                        sent?;
                    }
                }
                Err(TryLockError::Poisoned(p)) => {
                    let sent = self.send_queued(c, p.into_inner());
                    if processed.is_ok() {
                        sent?;
                    }
                }
                Err(TryLockError::WouldBlock) => {}
            }
        }
        processed.map_err(|e| tls_io(io::ErrorKind::InvalidData, describe(e)))?;
        Ok(!eof)
    }

    /// Encrypts and sends `buf` (or a prefix of it).
    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// Encrypts and sends a prefix of `bufs`, at most [`SEND_LIMIT`] bytes.
    pub(crate) fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        let out = lock(&self.out);
        let mut c = lock(&self.conn);
        let n = io::Write::write_vectored(&mut c.writer(), bufs)?;
        self.send_queued(c, out)
            .map_err(|e| self.classify_io(e, false))?;
        if n == 0 {
            // Only possible if rustls's send buffer was full; it is empty now.
            let out = lock(&self.out);
            let mut c = lock(&self.conn);
            let n = io::Write::write_vectored(&mut c.writer(), bufs)?;
            self.send_queued(c, out)
                .map_err(|e| self.classify_io(e, false))?;
            return Ok(n);
        }
        Ok(n)
    }

    /// Sends `close_notify`: the peer reads a clean end of stream.
    pub(crate) fn close_notify(&self) -> io::Result<()> {
        let out = lock(&self.out);
        let mut c = lock(&self.conn);
        c.send_close_notify();
        self.send_queued(c, out)
            .map_err(|e| self.classify_io(e, false))
    }

    /// Holding the flush duty (`out`): moves everything rustls queued into `out` and sends
    /// it, until rustls has nothing left; releases `out` while `conn` is still held.
    fn send_queued<'a>(
        &'a self,
        mut c: MutexGuard<'a, Connection>,
        mut out: MutexGuard<'a, Vec<u8>>,
    ) -> io::Result<()> {
        loop {
            out.clear();
            while c.wants_write() {
                c.write_tls(&mut *out)?;
            }
            if out.is_empty() {
                drop(out);
                drop(c);
                return Ok(());
            }
            drop(c);
            let mut sent = 0;
            while sent < out.len() {
                let n = self.ep.write(&out[sent..])?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                sent += n;
            }
            c = lock(&self.conn);
        }
    }

    /// Turns a socket error into a TLS error naming the cause when the peer left an alert
    /// behind (see the module documentation); other errors are kept.
    fn classify_io(&self, e: io::Error, handshake: bool) -> io::Error {
        let interesting = matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::InvalidData
        );
        if !interesting || crate::is_shutdown_error(&e) {
            return e;
        }
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<TlsError>()) {
            if !handshake || !matches!(tls, TlsError::Truncated) {
                return e;
            }
        }
        match self.peer_alert() {
            Some(alert) => tls_io(io::ErrorKind::PermissionDenied, alert),
            None => e,
        }
    }

    /// Reads what the peer sent before it went away, without blocking, looking for an alert.
    fn peer_alert(&self) -> Option<TlsError> {
        let Ok(mut inb) = self.inbuf.try_lock() else {
            return None;
        };
        for _ in 0..16 {
            if inb.start == inb.end {
                let n = self.ep.try_read(&mut inb.buf).ok().flatten()?;
                if n == 0 {
                    return None;
                }
                inb.start = 0;
                inb.end = n;
            }
            let mut c = lock(&self.conn);
            let InBuf { buf, start, end } = &mut *inb;
            let mut pending = &buf[*start..*end];
            let before = pending.len();
            if c.read_tls(&mut pending).is_err() {
                return None;
            }
            *start += before - pending.len();
            if let Err(err) = c.process_new_packets() {
                return Some(describe(err));
            }
            // Drop plaintext in the way (the stream already failed).
            let mut sink = [0u8; 4096];
            while matches!(io::Read::read(&mut c.reader(), &mut sink), Ok(n) if n > 0) {}
        }
        None
    }
}

/// A handshake that the peer cut short by resetting the connection or closing it is named
/// as such (a plain-text peer drops our hello).
fn handshake_error(e: io::Error) -> TlsError {
    match TlsError::from_io(e) {
        TlsError::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ) =>
        {
            TlsError::ClosedDuringHandshake
        }
        other => other,
    }
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession").finish_non_exhaustive()
    }
}
