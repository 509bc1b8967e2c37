//! Accepting the source: on a socket, anyone can connect first. A connection that does not
//! start with the stream's magic within [`SOURCE_HELLO_TIMEOUT`] (a port scanner, a stray
//! client, an attacker holding the port) is dropped and the destination keeps listening for
//! the real source, instead of failing or blocking the migration until `migrate_cancel`.
//!
//! ```text
//! loop: accept ─ [TLS handshake, authz] ─ read 4 bytes ─ "QEVM"? ─yes─▶ main channel
//!                 (handshake + 4 bytes ≤ timeout)           │          (the 4 bytes put back)
//!                                 failed / no / silent ─────┴─▶ drop it, log why, accept the next
//! ```
//!
//! With `tls-creds`, a peer whose handshake fails (no certificate, wrong CA, denied by
//! `tls-authz`, plain text) is dropped the same way and the reason logged: the source sees
//! the refusal itself (a TLS alert, or a closed connection) and fails. A peer that completes
//! the handshake is the source (it proved itself with a certificate of our CA when
//! `verify-peer` is on) and is taken as the main channel without waiting for its first
//! bytes: a source may run its multifd handshakes before it writes the stream's header, and
//! those need this destination to answer them (the loader still checks the magic).

use std::io::{Cursor, Read};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::Duration;

use savevm::record::QEMU_VM_FILE_MAGIC;
use transport::tls::ServerTls;
use transport::{Channel, ChannelReader, ChannelWriter, Listener, TransportError};

use crate::cancel::CancelToken;
use crate::error::MigrationError;

/// How long a new connection may take to send the stream's first 4 bytes.
pub const SOURCE_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The source's main channel: its reader (magic included), its writer (the return path), and
/// whether it has a reverse direction.
pub(super) struct MainChannel {
    pub reader: Box<dyn Read + Send>,
    pub writer: ChannelWriter,
    pub bidirectional: bool,
    /// Descriptors that came with the first bytes (`x-local-handover`), on a unix socket.
    pub fds: Vec<OwnedFd>,
}

/// Accepts connections until one starts with the stream magic. Listeners that are not sockets
/// (`exec:`, `fd:` pipes, `file:`) have one channel and take it as it is.
pub(super) fn accept_source(
    listener: &Listener,
    cancel: &CancelToken,
    timeout: Duration,
    tls: Option<&ServerTls>,
) -> Result<MainChannel, MigrationError> {
    loop {
        let channel = listener.accept_next()?;
        cancel.register(channel.shutdown_handle());
        cancel.check()?;
        let bidirectional = channel.is_bidirectional();
        let description = channel.description().to_string();
        let handle = channel.shutdown_handle();
        if listener.socket_address().is_none() {
            // exec:, file:, a pipe fd: one channel; TLS needs a socket.
            let channel = match tls {
                Some(tls) => transport::tls::server(channel, tls)?,
                None => channel,
            };
            let (reader, writer) = channel.into_split();
            let reader = Box::new(reader);
            return Ok(MainChannel {
                reader,
                writer,
                bidirectional,
                fds: Vec::new(),
            });
        }
        let (magic, fds, reader, writer) =
            match first_bytes(channel, tls.cloned(), timeout, || handle.shutdown())? {
                Ok((None, fds, reader, writer)) if tls.is_some() && !handle.is_shutdown() => {
                    return Ok(MainChannel {
                        reader: Box::new(reader),
                        writer,
                        bidirectional,
                        fds,
                    })
                }
                Ok(got) => got,
                Err(e) => {
                    tracing::warn!(
                        peer = %description,
                        "dropped a connection: {}",
                        crate::error_report(&e)
                    );
                    cancel.check()?;
                    continue;
                }
            };
        match magic {
            Some(m) if u32::from_be_bytes(m) == QEMU_VM_FILE_MAGIC => {
                return Ok(MainChannel {
                    reader: Box::new(Cursor::new(m).chain(reader)),
                    writer,
                    bidirectional,
                    fds,
                })
            }
            Some(m) => tracing::warn!(
                peer = %description,
                "dropped a connection that is not a migration stream (starts with {m:02x?})"
            ),
            None => tracing::warn!(
                peer = %description,
                ?timeout,
                "dropped a connection that sent nothing"
            ),
        }
        cancel.check()?;
    }
}

/// The first 4 bytes (`None`: the peer closed or stayed silent; always `None` over TLS,
/// where the handshake identified the source), the descriptors that came with them on a unix
/// socket (a source handing its RAM over attaches them to its first bytes), and the channel's
/// halves.
type Hello = (Option<[u8; 4]>, Vec<OwnedFd>, ChannelReader, ChannelWriter);

/// Runs the TLS handshake (with `tls`) and reads 4 bytes, all within `timeout`; past it,
/// `interrupt` unblocks the channel and the result is `None` (as for a peer that closed
/// early). A failed handshake is the inner error.
fn first_bytes(
    channel: Channel,
    tls: Option<ServerTls>,
    timeout: Duration,
    interrupt: impl FnOnce(),
) -> Result<Result<Hello, TransportError>, MigrationError> {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::Builder::new()
        .name("incoming-hello".into())
        .spawn(move || {
            let channel = match &tls {
                Some(tls) => transport::tls::server(channel, tls),
                None => Ok(channel),
            };
            let result = channel.map(|channel| {
                let (mut reader, writer) = channel.into_split();
                if tls.is_some() {
                    return (None, Vec::new(), reader, writer);
                }
                let mut magic = [0u8; 4];
                let mut fds = Vec::new();
                let mut got = 0;
                while got < magic.len() {
                    match reader.read_with_fds(&mut magic[got..], &mut fds) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
                ((got == magic.len()).then_some(magic), fds, reader, writer)
            });
            let _ = tx.send(());
            result
        })
        .map_err(MigrationError::Spawn)?;
    if rx.recv_timeout(timeout).is_err() {
        interrupt();
    }
    t.join().map_err(|_| MigrationError::ThreadPanicked)
}
