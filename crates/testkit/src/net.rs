//! Addresses for tests. Prefer handing a server an already-bound listener
//! ([`bound_tcp_listener`], a [`TempSocket`] path bound by the test): a port or path chosen
//! and then freed can be taken by a parallel test before the server binds it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// A Unix socket path in a fresh temporary directory, removed (with the directory) on drop.
/// The path is short enough for `sun_path` (108 bytes) when `TMPDIR` is.
#[derive(Debug)]
pub struct TempSocket {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TempSocket {
    /// `<new temp dir>/<name>`; nothing is created at the path itself.
    pub fn new(name: &str) -> std::io::Result<TempSocket> {
        let dir = tempfile::Builder::new().prefix("livemig-").tempdir()?;
        Ok(TempSocket {
            path: dir.path().join(name),
            _dir: dir,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A `unix:` migration URI for the path.
    pub fn uri(&self) -> String {
        format!("unix:{}", self.path.display())
    }
}

/// A listener on a free loopback port, and the port.
pub fn bound_tcp_listener() -> std::io::Result<(TcpListener, u16)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    Ok((l, port))
}

/// A loopback port that was free a moment ago, for programs that must bind it themselves
/// (QEMU, a child process). Racy by nature: use [`bound_tcp_listener`] when you can.
pub fn free_tcp_port() -> u16 {
    bound_tcp_listener().expect("bind a loopback TCP port").1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_socket_binds_and_cleans_up() {
        let s = TempSocket::new("mig.sock").unwrap();
        assert!(s.uri().starts_with("unix:") && s.uri().ends_with("/mig.sock"));
        let l = std::os::unix::net::UnixListener::bind(s.path()).unwrap();
        let dir = s.path().parent().unwrap().to_path_buf();
        drop(l);
        drop(s);
        assert!(!dir.exists());
    }

    #[test]
    fn ports_are_bindable() {
        let (l, port) = bound_tcp_listener().unwrap();
        assert_ne!(port, 0);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        drop(l);
        let p = free_tcp_port();
        assert!(TcpListener::bind(("127.0.0.1", p)).is_ok());
    }
}
