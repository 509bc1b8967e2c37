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
//! | `conn` | the rustls state machine (and its queue of encrypted records) | never: only across a `sendmsg` that cannot block |
//! | `send` | the right to send what rustls queued (the "flush duty"; keeps records in order) | yes, by the one sending |
//! | `inbuf` | ciphertext read but not yet given to rustls (reader side only) | yes, by the reader |
//!
//! ```text
//! writer: lock send ─ lock conn ─ encrypt (rustls queues records) ─┐
//!         ┌─────────────────────────────────────────────────────────┘
//!         └ queued? ─no── unlock send, then conn   (the flush duty ends)
//!                   └yes─ one non-blocking sendmsg of the queued records, straight from
//!                         rustls's buffers ─ sent ─▶ queued? …
//!                                          └ socket full ─ unlock conn, wait until
//!                                            writable, lock conn ─▶ queued? …
//! reader: lock conn ─ plaintext? ─yes─ return it
//!                               └no─ unlock; read the socket (up to READ_BUF); lock conn;
//!                                    decrypt until a record's plaintext is ready
//!         rustls queued something (an alert, a key update)? ─ try_lock send:
//!               got it ─ send it ourselves │ busy ─ the sender holds the flush duty and
//!                                          │        checks the queue under `conn` before it
//!                                          │        lets `send` go, so nothing is left behind
//! ```
//!
//! Lock order is `send` before `conn`; the reader only *tries* `send` while holding `conn`, so
//! there is no deadlock.
//!
//! Costs per byte, which is what TLS throughput is on a host whose cores are all busy: the
//! writer's plaintext is copied once by rustls as it encrypts in place, and the records go to
//! the kernel from rustls's own buffers (`writev` of up to 64 records, about 1 MiB, per
//! system call), with no copy in between; the reader takes up to [`READ_BUF`] bytes per
//! system call and feeds rustls from that buffer. Encryption and sending of one channel do
//! not overlap: on this 2-core host every core is already busy with another channel's
//! sender or receiver, so a second thread per channel would only add switches.
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

/// Size of the buffer ciphertext is read into: up to 16 full TLS records per system call.
const READ_BUF: usize = 256 * 1024;

/// Most plaintext rustls takes per write call: 64 full records, as many as one `write_tls`
/// hands to one `sendmsg`.
const SEND_LIMIT: usize = 1024 * 1024;

struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// A TLS session over a socket; see the module documentation.
pub(crate) struct TlsSession {
    ep: Arc<Endpoint>,
    conn: Mutex<Connection>,
    send: Mutex<()>,
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
            send: Mutex::new(()),
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
            let duty = lock(&self.send);
            let c = lock(&self.conn);
            if c.wants_write() {
                self.send_queued(c, duty)
                    .map_err(|e| handshake_error(self.classify_io(e, true)))?;
                continue;
            }
            if !c.is_handshaking() {
                return Ok(());
            }
            drop(c);
            drop(duty);
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

    /// Gives rustls more ciphertext: what is left in `inbuf`, else one socket read; decrypts
    /// until a record's plaintext is ready, rustls has something to send, or `inbuf` is used
    /// up. `Ok(false)`: the socket reached its end (rustls has been told).
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
        let processed = loop {
            let InBuf { buf, start, end } = &mut *inb;
            let mut pending = &buf[*start..*end];
            let before = pending.len();
            c.read_tls(&mut pending)?;
            let taken = before - pending.len();
            *start += taken;
            match c.process_new_packets() {
                Ok(state)
                    if taken > 0
                        && *start < *end
                        && state.plaintext_bytes_to_read() == 0
                        && !state.peer_has_closed()
                        && !c.wants_write() => {}
                r => break r,
            }
        };
        if c.wants_write() {
            // An alert, a key update: send it now, or leave it to the current sender.
            match self.send.try_lock() {
                Ok(duty) => {
                    let sent = self.send_queued(c, duty);
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
        let duty = lock(&self.send);
        let mut c = lock(&self.conn);
        let n = io::Write::write_vectored(&mut c.writer(), bufs)?;
        self.send_queued(c, duty)
            .map_err(|e| self.classify_io(e, false))?;
        if n == 0 {
            // Only possible if rustls's send buffer was full; it is empty now.
            let duty = lock(&self.send);
            let mut c = lock(&self.conn);
            let n = io::Write::write_vectored(&mut c.writer(), bufs)?;
            self.send_queued(c, duty)
                .map_err(|e| self.classify_io(e, false))?;
            return Ok(n);
        }
        Ok(n)
    }

    /// Sends `close_notify`: the peer reads a clean end of stream.
    pub(crate) fn close_notify(&self) -> io::Result<()> {
        let duty = lock(&self.send);
        let mut c = lock(&self.conn);
        c.send_close_notify();
        self.send_queued(c, duty)
            .map_err(|e| self.classify_io(e, false))
    }

    /// Holding the flush duty (`send`): hands what rustls queued to the socket, straight from
    /// rustls's buffers, until nothing is left; waits for the socket without holding `conn`.
    /// Releases `send` while `conn` is still held.
    fn send_queued<'a>(
        &'a self,
        mut c: MutexGuard<'a, Connection>,
        duty: MutexGuard<'a, ()>,
    ) -> io::Result<()> {
        loop {
            if !c.wants_write() {
                drop(duty);
                drop(c);
                return Ok(());
            }
            match c.write_tls(&mut SendNow(&self.ep)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(c);
                    self.ep.wait_writable()?;
                    c = lock(&self.conn);
                }
                Err(e) => return Err(e),
            }
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

/// The socket as rustls's `write_tls` target: one `sendmsg` of the records it offers (up to
/// 64), `WouldBlock` instead of waiting when the socket buffer is full.
struct SendNow<'a>(&'a Endpoint);

impl io::Write for SendNow<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self.0.try_write_vectored(bufs)? {
            Some(0) => Err(io::ErrorKind::WriteZero.into()),
            Some(n) => Ok(n),
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
