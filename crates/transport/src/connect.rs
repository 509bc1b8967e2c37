//! The outgoing side (`migrate URI`): opening a [`Channel`] to the destination.
//!
//! | URI | what happens |
//! | --- | --- |
//! | `tcp:HOST:PORT` | resolve, then connect to each address in turn with a [`CONNECT_TIMEOUT`] each; an empty host means the local host; `TCP_NODELAY` is set |
//! | `unix:PATH` | connect |
//! | `fd:NAME` | take `NAME` from the monitor's `getfd` table (never parsed as a number) |
//! | `exec:CMD` | `/bin/sh -c CMD`, stream on its stdin, stdout to `/dev/null` |
//! | `file:PATH,offset=N` | create (mode 0600) or open `PATH` write-only, truncate it to `N` bytes (bytes before `N` are kept, later ones dropped), write from `N` |
//!
//! `TCP_NODELAY`: callers write the stream in large batches (32 KiB, like QEMU's
//! `IO_BUF_SIZE`), so Nagle's algorithm gains nothing for the bulk data but would delay the
//! final short writes (the end of the stream, return-path replies) by up to a delayed-ACK
//! period. Socket buffer sizes are left to the kernel's autotuning.
//!
//! The connect itself cannot be cancelled with a [`ShutdownHandle`](crate::ShutdownHandle)
//! (the handle only exists once the channel does); it is bounded by the timeout instead.

use std::fs::OpenOptions;
use std::io::{self, Seek, SeekFrom};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::exec::{self, ChildSlot, Direction};
use crate::fds::FdSource;
use crate::shutdown::Cancel;
use crate::{Channel, MigrationUri, TransportError};

/// Time allowed for each TCP connection attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the outgoing migration channel for `uri`. `fds` is the `getfd` table of the
/// monitor that issued `migrate` (used by `fd:` only).
pub fn connect(uri: &MigrationUri, fds: &dyn FdSource) -> Result<Channel, TransportError> {
    let desc = uri.to_string();
    let setup = |source| TransportError::Setup {
        uri: desc.clone(),
        source,
    };
    let cancel = Cancel::new().map_err(setup)?;
    match uri {
        MigrationUri::Tcp { host, port } => {
            let stream = connect_tcp(&desc, host, *port)?;
            socket_channel(desc.clone(), cancel, stream.into())
        }
        MigrationUri::Unix(path) => {
            let stream = UnixStream::connect(path).map_err(|source| TransportError::Connect {
                uri: desc.clone(),
                source,
            })?;
            socket_channel(desc.clone(), cancel, stream.into())
        }
        MigrationUri::Fd(name) => {
            let fd = fds
                .take_fd(name)
                .ok_or_else(|| TransportError::FdNotFound {
                    uri: desc.clone(),
                    name: name.clone(),
                })?;
            fd_channel(desc.clone(), cancel, fd)
        }
        MigrationUri::Exec(cmd) => exec_channel(desc.clone(), cancel, cmd, Direction::ToChild),
        MigrationUri::File { path, offset } => {
            let fd = create_file_at(path, *offset).map_err(|source| TransportError::Open {
                uri: desc.clone(),
                source,
            })?;
            let ep = Endpoint::owned(fd, cancel.clone()).map_err(setup)?;
            Ok(Channel::new(desc.clone(), cancel, None, Some(ep), None))
        }
    }
}

fn connect_tcp(desc: &str, host: &str, port: u16) -> Result<TcpStream, TransportError> {
    let host = if host.is_empty() { "localhost" } else { host };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|source| TransportError::Resolve {
            uri: desc.to_owned(),
            source,
        })?
        .collect();
    let mut last_err = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    if addrs.is_empty() {
        return Err(TransportError::Resolve {
            uri: desc.to_owned(),
            source: last_err,
        });
    }
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream
                    .set_nodelay(true)
                    .map_err(|source| TransportError::Setup {
                        uri: desc.to_owned(),
                        source,
                    })?;
                return Ok(stream);
            }
            Err(e) => last_err = e,
        }
    }
    Err(TransportError::Connect {
        uri: desc.to_owned(),
        source: last_err,
    })
}

/// A channel over a connected socket we own (both halves share it).
pub(crate) fn socket_channel(
    desc: String,
    cancel: Arc<Cancel>,
    fd: OwnedFd,
) -> Result<Channel, TransportError> {
    let ep = Endpoint::owned(fd, cancel.clone()).map_err(|source| TransportError::Setup {
        uri: desc.clone(),
        source,
    })?;
    Ok(Channel::new(desc, cancel, Some(ep.clone()), Some(ep), None))
}

/// A channel over a descriptor passed in by someone else (`fd:`).
pub(crate) fn fd_channel(
    desc: String,
    cancel: Arc<Cancel>,
    fd: OwnedFd,
) -> Result<Channel, TransportError> {
    let ep = Endpoint::foreign(fd, cancel.clone()).map_err(|source| TransportError::Setup {
        uri: desc.clone(),
        source,
    })?;
    Ok(Channel::new(desc, cancel, Some(ep.clone()), Some(ep), None))
}

/// A channel to (`ToChild`) or from (`FromChild`) `/bin/sh -c cmd`.
pub(crate) fn exec_channel(
    desc: String,
    cancel: Arc<Cancel>,
    cmd: &str,
    direction: Direction,
) -> Result<Channel, TransportError> {
    let mut child = exec::spawn(cmd, direction).map_err(|source| TransportError::Spawn {
        uri: desc.clone(),
        source,
    })?;
    let pipe: Option<OwnedFd> = match direction {
        Direction::ToChild => child.stdin.take().map(OwnedFd::from),
        Direction::FromChild => child.stdout.take().map(OwnedFd::from),
    };
    // From here on the slot owns the child: any error below kills and reaps it.
    let slot = Arc::new(
        ChildSlot::new(child).map_err(|source| TransportError::Spawn {
            uri: desc.clone(),
            source,
        })?,
    );
    let pipe = pipe.ok_or_else(|| TransportError::Spawn {
        uri: desc.clone(),
        source: io::Error::other("the command's pipe was not created"),
    })?;
    let ep = Endpoint::owned(pipe, cancel.clone()).map_err(|source| TransportError::Setup {
        uri: desc.clone(),
        source,
    })?;
    let (reader, writer) = match direction {
        Direction::ToChild => (None, Some(ep)),
        Direction::FromChild => (Some(ep), None),
    };
    Ok(Channel::new(desc, cancel, reader, writer, Some(slot)))
}

/// Opens `path` for writing the stream at `offset` (see the module table).
fn create_file_at(path: &Path, offset: u64) -> io::Result<OwnedFd> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        // Truncation happens at `offset` below, keeping any header before it.
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    file.set_len(offset)?;
    file.seek(SeekFrom::Start(offset))?;
    Ok(file.into())
}

/// Opens `path` for reading the stream from `offset`.
pub(crate) fn open_file_at(path: &Path, offset: u64) -> io::Result<OwnedFd> {
    let mut file = OpenOptions::new().read(true).open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    Ok(file.into())
}
