//! Accepting the source: on a socket, anyone can connect first. A connection that does not
//! start with the stream's magic within [`SOURCE_HELLO_TIMEOUT`] (a port scanner, a stray
//! client, an attacker holding the port) is dropped and the destination keeps listening for
//! the real source, instead of failing or blocking the migration until `migrate_cancel`.
//!
//! ```text
//! loop: accept ─ read 4 bytes (≤ timeout) ─ "QEVM"? ─yes─▶ main channel (the 4 bytes put back)
//!                                             └─no / silent─▶ drop it, log, accept the next one
//! ```

use std::io::{Cursor, Read};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::Duration;

use savevm::record::QEMU_VM_FILE_MAGIC;
use transport::{ChannelReader, ChannelWriter, Listener};

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
) -> Result<MainChannel, MigrationError> {
    loop {
        let channel = listener.accept_next()?;
        cancel.register(channel.shutdown_handle());
        cancel.check()?;
        let bidirectional = channel.is_bidirectional();
        let description = channel.description().to_string();
        let handle = channel.shutdown_handle();
        let (reader, writer) = channel.into_split();
        if listener.socket_address().is_none() {
            let reader = Box::new(reader);
            return Ok(MainChannel {
                reader,
                writer,
                bidirectional,
                fds: Vec::new(),
            });
        }
        let (magic, fds, reader) = first_bytes(reader, timeout, || handle.shutdown())?;
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

/// What a new connection sent first: the magic (`None` if it sent fewer than 4 bytes in time),
/// the descriptors that came with it, and the reader to go on with.
type Hello = (Option<[u8; 4]>, Vec<OwnedFd>, ChannelReader);

/// Reads 4 bytes within `timeout`, with the descriptors that came with them on a unix socket
/// (a source handing its RAM over attaches them to its first bytes); past the timeout,
/// `interrupt` unblocks the read and the result is `None` (as for a peer that closed early).
fn first_bytes(
    mut reader: ChannelReader,
    timeout: Duration,
    interrupt: impl FnOnce(),
) -> Result<Hello, MigrationError> {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::Builder::new()
        .name("incoming-hello".into())
        .spawn(move || {
            let mut magic = [0u8; 4];
            let mut fds = Vec::new();
            let mut got = 0;
            while got < magic.len() {
                match reader.read_with_fds(&mut magic[got..], &mut fds) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            let _ = tx.send(());
            ((got == magic.len()).then_some(magic), fds, reader)
        })
        .map_err(MigrationError::Spawn)?;
    if rx.recv_timeout(timeout).is_err() {
        interrupt();
    }
    t.join().map_err(|_| MigrationError::ThreadPanicked)
}
