//! End-to-end behaviour of every transport: streams arrive intact, errors name the URI,
//! and `ShutdownHandle` interrupts blocked I/O.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use transport::{
    connect, is_shutdown_error, listen, Channel, FdSource, Listener, MigrationUri, NoFds,
    SocketAddress, TransportError,
};

/// Generous bound for a thread that must finish; only reached if the code under test hangs.
const HANG: Duration = Duration::from_secs(60);

/// A `getfd` table for tests.
#[derive(Default)]
struct TestFds(Mutex<HashMap<String, OwnedFd>>);

impl TestFds {
    fn with(name: &str, fd: impl Into<OwnedFd>) -> TestFds {
        let fds = TestFds::default();
        fds.0.lock().unwrap().insert(name.to_owned(), fd.into());
        fds
    }
}

impl FdSource for TestFds {
    fn take_fd(&self, name: &str) -> Option<OwnedFd> {
        self.0.lock().unwrap().remove(name)
    }
}

/// 8 MiB of xorshift bytes (not compressible, not periodic at any buffer size used here).
fn payload() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(8 << 20);
    while out.len() < 8 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn uri(s: &str) -> MigrationUri {
    s.parse().unwrap()
}

/// Runs `f` on a thread and returns its result, failing the test if it never returns.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("{what} did not return"))
}

/// Writes `data` through the source in 32 KiB writes and finishes it on a thread; reads
/// the destination to the end; returns what arrived and the source's finish result.
fn transfer(
    source: Channel,
    mut dest: Channel,
    data: Arc<Vec<u8>>,
) -> (Vec<u8>, Result<(), TransportError>) {
    let writer = thread::spawn(move || {
        let mut source = source;
        for chunk in data.chunks(32 << 10) {
            source.writer.write_all(chunk)?;
        }
        Ok::<_, io::Error>(source.finish())
    });
    let mut got = Vec::new();
    dest.reader
        .read_to_end(&mut got)
        .expect("destination reads");
    let finished = writer.join().unwrap().expect("source writes");
    dest.finish().expect("destination finishes");
    (got, finished)
}

fn assert_roundtrip(source: Channel, dest: Channel) {
    let data = Arc::new(payload());
    let (got, finished) = within("transfer", {
        let data = data.clone();
        move || transfer(source, dest, data)
    });
    finished.expect("source finishes");
    assert_eq!(got.len(), data.len());
    assert!(got == *data, "stream corrupted");
}

#[test]
fn tcp_roundtrip_on_ephemeral_port() {
    let listener = listen(&uri("tcp:127.0.0.1:0"), &NoFds).unwrap();
    let desc = listener.local_description();
    assert!(desc.starts_with("tcp:127.0.0.1:"), "{desc}");
    assert_ne!(desc, "tcp:127.0.0.1:0", "the actual port is reported");
    let source = connect(&uri(&desc), &NoFds).unwrap();
    let dest = listener.accept().unwrap();
    assert!(source.is_bidirectional() && dest.is_bidirectional());
    assert_eq!(dest.description(), desc);
    assert_roundtrip(source, dest);
}

/// What a sender on a slow link still waits for: bytes the peer has not read count as
/// unsent until it reads them; a file is not a socket and cannot tell.
#[test]
fn unsent_bytes_count_what_the_peer_has_not_received() {
    for listen_at in ["tcp:127.0.0.1:0", "unix:"] {
        let dir = tempfile::tempdir().unwrap();
        let at = if listen_at == "unix:" {
            format!("unix:{}", dir.path().join("s").display())
        } else {
            listen_at.to_string()
        };
        let listener = listen(&uri(&at), &NoFds).unwrap();
        let mut source = connect(&uri(&listener.local_description()), &NoFds).unwrap();
        let mut dest = listener.accept().unwrap();
        assert_eq!(source.writer.unsent_bytes(), Some(0), "{at}");
        // A probe reads the same from elsewhere, and does not keep the socket open.
        let probe = source.writer.unsent_probe();
        source.writer.write_all(&[7u8; 50_000]).unwrap();
        assert!(source.writer.unsent_bytes().unwrap() > 0, "{at}");
        assert!(probe.unsent_bytes().unwrap() > 0, "{at}");
        let mut got = vec![0u8; 50_000];
        dest.reader.read_exact(&mut got).unwrap();
        // TCP counts bytes until they are acknowledged, which follows the read at once here.
        let drained = (0..1000).any(|_| {
            thread::sleep(Duration::from_millis(2));
            source.writer.unsent_bytes() == Some(0)
        });
        assert!(drained, "{at}: {:?} left", source.writer.unsent_bytes());
        assert_eq!(probe.unsent_bytes(), Some(0), "{at}");
        drop(source);
        assert_eq!(probe.unsent_bytes(), None, "{at}: the socket is closed");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = connect(
        &uri(&format!("file:{}", dir.path().join("f").display())),
        &NoFds,
    );
    assert_eq!(file.unwrap().writer.unsent_bytes(), None);
}

#[test]
fn tcp_listener_from_bound_socket_reports_address() {
    let bound = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = bound.local_addr().unwrap().port();
    let listener = Listener::from_tcp(bound).unwrap();
    assert_eq!(
        listener.local_description(),
        format!("tcp:127.0.0.1:{port}")
    );
    let addr = listener.socket_address().unwrap();
    assert_eq!(
        addr.to_qmp().to_string(),
        format!(r#"{{"port":"{port}","ipv4":true,"host":"127.0.0.1","type":"inet"}}"#)
    );
}

#[test]
fn tcp_ipv6_loopback_roundtrip() {
    let Ok(bound) = TcpListener::bind("[::1]:0") else {
        testkit::print_skip("no IPv6 loopback");
        return;
    };
    let listener = Listener::from_tcp(bound).unwrap();
    let desc = listener.local_description();
    assert!(desc.starts_with("tcp:[::1]:"), "{desc}");
    let source = connect(&uri(&desc), &NoFds).unwrap();
    let dest = listener.accept().unwrap();
    assert_roundtrip(source, dest);
}

#[test]
fn unix_roundtrip_private_socket_removed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mig.sock");
    // A stale socket from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let u = uri(&format!("unix:{}", path.display()));
    let listener = listen(&u, &NoFds).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(listener.local_description(), u.to_string());
    assert_eq!(
        listener.socket_address(),
        Some(SocketAddress::Unix(path.clone()))
    );
    let source = connect(&u, &NoFds).unwrap();
    let dest = listener.accept_next().unwrap();
    assert_roundtrip(source, dest);
    drop(listener);
    assert!(!path.exists(), "socket file removed with the listener");
}

#[test]
fn unix_listen_refuses_to_replace_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, b"keep me").unwrap();
    let u = uri(&format!("unix:{}", path.display()));
    let err = listen(&u, &NoFds).unwrap_err();
    assert!(matches!(err, TransportError::Listen { .. }), "{err:?}");
    assert_eq!(err.uri(), u.to_string());
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[test]
fn unix_listener_from_bound_socket_accepts_several_channels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let listener =
        Listener::from_unix(std::os::unix::net::UnixListener::bind(&path).unwrap()).unwrap();
    let u = uri(&listener.local_description());
    for i in 0u8..3 {
        let mut source = connect(&u, &NoFds).unwrap();
        let mut dest = listener.accept_next().unwrap();
        source.writer.write_all(&[i]).unwrap();
        source.finish().unwrap();
        let mut got = Vec::new();
        dest.reader.read_to_end(&mut got).unwrap();
        assert_eq!(got, [i]);
    }
    drop(listener);
    assert!(
        path.exists(),
        "a socket the caller bound is left to the caller"
    );
}

#[test]
fn exec_roundtrip_through_cat() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stream.bin");
    let data = Arc::new(payload());
    let out = uri(&format!("exec:cat > '{}'", file.display()));
    let mut source = connect(&out, &NoFds).unwrap();
    assert!(!source.is_bidirectional());
    let written = within("exec source", {
        let data = data.clone();
        move || {
            for chunk in data.chunks(32 << 10) {
                source.writer.write_all(chunk).unwrap();
            }
            source.finish()
        }
    });
    written.unwrap();
    // finish() returned: the command has finished writing the file.
    assert!(
        std::fs::read(&file).unwrap() == *data,
        "file written by cat"
    );

    let inc = uri(&format!("exec:cat '{}'", file.display()));
    let listener = listen(&inc, &NoFds).unwrap();
    assert_eq!(listener.socket_address(), None);
    let mut dest = listener.accept().unwrap();
    let got = within("exec destination", move || {
        let mut got = Vec::new();
        dest.reader.read_to_end(&mut got).unwrap();
        dest.finish().unwrap();
        got
    });
    assert!(got == *data, "stream read from cat");
}

#[test]
fn exec_failure_is_reported_by_finish() {
    let out = uri("exec:cat > /dev/null; exit 3");
    let mut source = connect(&out, &NoFds).unwrap();
    source.writer.write_all(b"some stream").unwrap();
    let err = within("finish", move || source.finish()).unwrap_err();
    match &err {
        TransportError::CommandFailed { uri, status } => {
            assert_eq!(uri, "exec:cat > /dev/null; exit 3");
            assert_eq!(status.code(), Some(3));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("exec:cat > /dev/null; exit 3"));

    let mut dest = listen(&uri("exec:printf abc; exit 1"), &NoFds)
        .unwrap()
        .accept()
        .unwrap();
    let mut got = Vec::new();
    dest.reader.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"abc");
    let err = dest.finish().unwrap_err();
    assert!(
        matches!(err, TransportError::CommandFailed { .. }),
        "{err:?}"
    );
}

#[test]
fn exec_unused_direction_is_unsupported() {
    let mut source = connect(&uri("exec:cat > /dev/null"), &NoFds).unwrap();
    let err = source.reader.read(&mut [0u8; 4]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    source.finish().unwrap();
}

#[test]
fn file_roundtrip_without_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.mig");
    std::fs::write(&path, vec![7u8; 10 << 20]).unwrap(); // longer old contents are dropped
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let u = uri(&format!("file:{}", path.display()));
    let source = connect(&u, &NoFds).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640, "an existing file keeps its mode");
    let data = Arc::new(payload());
    let (got, finished) = {
        let data2 = data.clone();
        let writer = thread::spawn(move || {
            let mut source = source;
            source.writer.write_all(&data2).unwrap();
            source.finish()
        });
        let finished = writer.join().unwrap();
        let mut dest = listen(&u, &NoFds).unwrap().accept().unwrap();
        let mut got = Vec::new();
        dest.reader.read_to_end(&mut got).unwrap();
        (got, finished)
    };
    finished.unwrap();
    assert!(got == *data);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), data.len() as u64);
}

#[test]
fn file_with_offset_keeps_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.mig");
    let header = vec![0xabu8; 4096];
    let mut old = header.clone();
    old.extend_from_slice(&[1u8; 100_000]);
    std::fs::write(&path, &old).unwrap();
    let u = uri(&format!("file:{},offset=4K", path.display()));
    let mut source = connect(&u, &NoFds).unwrap();
    source.writer.write_all(b"stream after the header").unwrap();
    source.finish().unwrap();
    let contents = std::fs::read(&path).unwrap();
    assert_eq!(&contents[..4096], &header[..]);
    assert_eq!(&contents[4096..], b"stream after the header");

    let mut dest = listen(&u, &NoFds).unwrap().accept().unwrap();
    let mut got = Vec::new();
    dest.reader.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"stream after the header");
    assert_eq!(
        dest.writer.write(b"x").unwrap_err().kind(),
        io::ErrorKind::Unsupported
    );
}

#[test]
fn file_created_owner_only_and_missing_file_error_names_uri() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.mig");
    let u = uri(&format!("file:{}", path.display()));
    connect(&u, &NoFds).unwrap().finish().unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "no access for group/others");

    let missing = uri(&format!("file:{}", dir.path().join("absent").display()));
    let err = listen(&missing, &NoFds).unwrap_err();
    assert!(matches!(err, TransportError::Open { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("could not open {missing}"));
}

#[test]
fn fd_socketpair_roundtrip_named_on_both_sides() {
    let (a, b) = UnixStream::pair().unwrap();
    let source = connect(&uri("fd:mig"), &TestFds::with("mig", a)).unwrap();
    let dest = listen(&uri("fd:mig"), &TestFds::with("mig", b))
        .unwrap()
        .accept()
        .unwrap();
    assert!(source.is_bidirectional());
    assert_roundtrip(source, dest);
}

#[test]
fn fd_pipe_roundtrip_and_numeric_incoming_fd() {
    let (r, w) = io::pipe().unwrap();
    let source = connect(&uri("fd:out"), &TestFds::with("out", w)).unwrap();
    assert!(!source.is_bidirectional());
    // Incoming fd:N takes descriptor number N, which this process owns.
    let n = OwnedFd::from(r).into_raw_fd();
    let dest = listen(&uri(&format!("fd:{n}")), &NoFds)
        .unwrap()
        .accept()
        .unwrap();
    assert_roundtrip(source, dest);
}

#[test]
fn fd_errors() {
    // Outgoing: a numeric name is a name, never a descriptor number.
    let (a, _b) = UnixStream::pair().unwrap();
    let err = connect(&uri("fd:3"), &TestFds::with("mig", a)).unwrap_err();
    assert!(matches!(&err, TransportError::FdNotFound { name, .. } if name == "3"));
    assert_eq!(
        err.to_string(),
        "file descriptor named '3' has not been found"
    );

    let err = connect(&uri("fd:x"), &NoFds).unwrap_err();
    assert_eq!(
        err.to_string(),
        "file descriptor named 'x' has not been found"
    );
    assert_eq!(err.uri(), "fd:x");

    let err = listen(&uri("fd:nope"), &NoFds).unwrap_err();
    assert!(matches!(err, TransportError::FdNotFound { .. }), "{err:?}");

    for bad in ["fd:3x", "fd:99999999999", "fd:1000000"] {
        let err = listen(&uri(bad), &NoFds).unwrap_err();
        assert!(
            matches!(err, TransportError::BadFdNumber { .. }),
            "{bad}: {err:?}"
        );
        assert_eq!(err.uri(), bad);
    }
}

#[test]
fn single_stream_listener_hands_out_one_channel() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").unwrap();
    let listener = listen(&uri(&format!("file:{}", path.display())), &NoFds).unwrap();
    let _ch = listener.accept_next().unwrap();
    let err = listener.accept_next().unwrap_err();
    assert!(
        matches!(err, TransportError::SingleChannel { .. }),
        "{err:?}"
    );
}

#[test]
fn connect_to_closed_port_names_the_uri() {
    let (_refusing, port) = transport::test_support::refusing_tcp_port().unwrap();
    let u = uri(&format!("tcp:127.0.0.1:{port}"));
    let err = connect(&u, &NoFds).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("could not connect to tcp:127.0.0.1:{port}")
    );
    match err {
        TransportError::Connect { source, .. } => {
            assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused)
        }
        other => panic!("unexpected {other:?}"),
    }

    let dir = tempfile::tempdir().unwrap();
    let u = uri(&format!("unix:{}", dir.path().join("none").display()));
    let err = connect(&u, &NoFds).unwrap_err();
    assert!(matches!(err, TransportError::Connect { .. }), "{err:?}");
    assert_eq!(err.uri(), u.to_string());
}

#[test]
fn unknown_scheme_is_a_typed_error() {
    let err = "foo:bar".parse::<MigrationUri>().unwrap_err();
    assert_eq!(err.uri, "foo:bar");
    assert_eq!(err.reason, transport::UriErrorReason::UnknownScheme);
}

/// Scheduler state letter of one of our threads (`S` = sleeping in a system call).
fn thread_state(tid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits until thread `tid` sleeps with `progress` no longer moving, i.e. it is blocked.
fn wait_until_blocked(tid: i32, progress: &AtomicU64) {
    loop {
        let before = progress.load(Ordering::SeqCst);
        if thread_state(tid) == Some('S') && progress.load(Ordering::SeqCst) == before {
            thread::sleep(Duration::from_millis(20));
            if thread_state(tid) == Some('S') && progress.load(Ordering::SeqCst) == before {
                return;
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Starts a thread writing to `channel` until an error; returns (tid, progress, result).
fn blocked_writer(
    mut channel: Channel,
) -> (i32, Arc<AtomicU64>, mpsc::Receiver<(io::Error, Channel)>) {
    let progress = Arc::new(AtomicU64::new(0));
    let (tid_tx, tid_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    let p = progress.clone();
    thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let _ = tid_tx.send(unsafe { libc::gettid() });
        let buf = vec![0x5au8; 256 << 10];
        loop {
            match channel.writer.write(&buf) {
                Ok(n) => {
                    p.fetch_add(n as u64, Ordering::SeqCst);
                }
                Err(e) => {
                    let _ = tx.send((e, channel));
                    return;
                }
            }
        }
    });
    (tid_rx.recv().unwrap(), progress, rx)
}

fn assert_shutdown_unblocks_writer(source: Channel) {
    let handle = source.shutdown_handle();
    let (tid, progress, rx) = blocked_writer(source);
    wait_until_blocked(tid, &progress);
    assert!(progress.load(Ordering::SeqCst) > 0);
    handle.shutdown();
    let (err, mut channel) = rx.recv_timeout(HANG).expect("writer unblocked");
    assert!(is_shutdown_error(&err), "{err:?}");
    // Later I/O fails the same way, and finish reports the cancellation.
    assert!(is_shutdown_error(&channel.writer.write(b"x").unwrap_err()));
    let err = within("finish", move || channel.finish()).unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
}

#[test]
fn shutdown_unblocks_writer_on_full_tcp_socket() {
    let listener = Listener::from_tcp(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let source = connect(&uri(&listener.local_description()), &NoFds).unwrap();
    let mut dest = listener.accept().unwrap(); // never reads until the end
    assert_shutdown_unblocks_writer(source);
    // The peer sees the stream end (after whatever was buffered).
    let mut sink = Vec::new();
    let _ = dest.reader.read_to_end(&mut sink);
}

#[test]
fn shutdown_unblocks_writer_on_full_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let u = uri(&format!("unix:{}", dir.path().join("s").display()));
    let listener = listen(&u, &NoFds).unwrap();
    let source = connect(&u, &NoFds).unwrap();
    let _dest = listener.accept().unwrap();
    assert_shutdown_unblocks_writer(source);
}

#[test]
fn shutdown_unblocks_writer_on_exec_command_not_reading() {
    let source = connect(&uri("exec:sleep 1000"), &NoFds).unwrap();
    // finish() inside returns only if the command was killed.
    assert_shutdown_unblocks_writer(source);
}

#[test]
fn shutdown_unblocks_writer_on_full_foreign_pipe() {
    let (_r, w) = io::pipe().unwrap();
    let source = connect(&uri("fd:p"), &TestFds::with("p", w)).unwrap();
    assert_shutdown_unblocks_writer(source);
}

fn assert_shutdown_unblocks_reader(mut channel: Channel) {
    let handle = channel.shutdown_handle();
    let progress = AtomicU64::new(0);
    let (tid_tx, tid_rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let _ = tid_tx.send(unsafe { libc::gettid() });
        channel.reader.read(&mut [0u8; 4096])
    });
    wait_until_blocked(tid_rx.recv().unwrap(), &progress);
    handle.shutdown();
    let res = within("reader", move || reader.join().unwrap());
    let err = res.expect_err("read fails after shutdown");
    assert!(is_shutdown_error(&err), "{err:?}");
}

#[test]
fn shutdown_unblocks_reader_on_empty_sockets() {
    let listener = Listener::from_tcp(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let _source = connect(&uri(&listener.local_description()), &NoFds).unwrap();
    assert_shutdown_unblocks_reader(listener.accept().unwrap());

    let (a, _b) = UnixStream::pair().unwrap();
    let dest = listen(&uri("fd:in"), &TestFds::with("in", a))
        .unwrap()
        .accept()
        .unwrap();
    assert_shutdown_unblocks_reader(dest);
}

#[test]
fn shutdown_unblocks_reader_on_exec_and_foreign_pipe() {
    let dest = listen(&uri("exec:sleep 1000"), &NoFds)
        .unwrap()
        .accept()
        .unwrap();
    assert_shutdown_unblocks_reader(dest);

    let (r, _w) = io::pipe().unwrap();
    let dest = listen(&uri("fd:r"), &TestFds::with("r", r))
        .unwrap()
        .accept()
        .unwrap();
    assert_shutdown_unblocks_reader(dest);
}

#[test]
fn shutdown_makes_file_io_fail() {
    let dir = tempfile::tempdir().unwrap();
    let u = uri(&format!("file:{}", dir.path().join("f").display()));
    let mut source = connect(&u, &NoFds).unwrap();
    source.writer.write_all(b"abc").unwrap();
    source.shutdown_handle().shutdown();
    assert!(is_shutdown_error(&source.writer.write(b"d").unwrap_err()));
    assert!(source.finish().unwrap_err().is_cancelled());
}

#[test]
fn shutdown_handle_outliving_channel_keeps_nothing_open() {
    let listener = Listener::from_tcp(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let source = connect(&uri(&listener.local_description()), &NoFds).unwrap();
    let mut dest = listener.accept().unwrap();
    let handle = source.shutdown_handle();
    drop(source);
    // The peer sees EOF although the handle is alive; shutting down later is harmless.
    let mut got = Vec::new();
    within("eof", move || {
        dest.reader.read_to_end(&mut got).map(|_| got)
    })
    .unwrap()
    .is_empty()
    .then_some(())
    .expect("no data");
    handle.shutdown();
    assert!(handle.is_shutdown());
}

#[test]
fn dropping_an_exec_channel_stops_the_command() {
    let source = connect(&uri("exec:sleep 1000"), &NoFds).unwrap();
    within("drop", move || drop(source));
}

#[test]
fn return_path_on_sockets() {
    let listener = Listener::from_tcp(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let source = connect(&uri(&listener.local_description()), &NoFds).unwrap();
    let dest = listener.accept().unwrap();
    let (mut src_rp, mut src_w) = source.into_split();
    let (mut dst_r, mut dst_rp) = dest.into_split();
    src_w.write_all(b"stream").unwrap();
    src_w.finish().unwrap();
    let mut got = Vec::new();
    dst_r.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"stream");
    dst_rp.write_all(b"SHUT").unwrap();
    dst_rp.finish().unwrap();
    let mut reply = Vec::new();
    src_rp.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"SHUT");
}

#[test]
fn listener_shutdown_cancels_pending_accept() {
    let listener = Listener::from_tcp(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let handle = listener.shutdown_handle();
    let desc = listener.local_description();
    let (tid_tx, tid_rx) = mpsc::channel();
    let acceptor = thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let _ = tid_tx.send(unsafe { libc::gettid() });
        listener.accept()
    });
    wait_until_blocked(tid_rx.recv().unwrap(), &AtomicU64::new(0));
    handle.shutdown();
    let err = within("accept", move || acceptor.join().unwrap()).unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert_eq!(err.uri(), desc);
}

#[test]
fn accept_timeout_returns_none_and_listener_stays_usable() {
    let listener = Listener::from_tcp(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    assert!(listener
        .accept_timeout(Duration::from_millis(10))
        .unwrap()
        .is_none());
    let _source = connect(&uri(&listener.local_description()), &NoFds).unwrap();
    assert!(listener.accept_timeout(HANG).unwrap().is_some());
}

#[test]
fn unix_path_too_long_is_a_listen_error() {
    let long = format!("/tmp/{}", "x".repeat(200));
    let u = uri(&format!("unix:{long}"));
    let err = listen(&u, &NoFds).unwrap_err();
    assert!(matches!(err, TransportError::Listen { .. }), "{err:?}");
    assert!(!Path::new(&long).exists());
}

#[test]
fn shutdown_interrupts_finish_waiting_for_exec_command() {
    let mut source = connect(&uri("exec:cat > /dev/null; sleep 1000"), &NoFds).unwrap();
    source.writer.write_all(b"stream").unwrap();
    let handle = source.shutdown_handle();
    let (tid_tx, tid_rx) = mpsc::channel();
    let finisher = thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let _ = tid_tx.send(unsafe { libc::gettid() });
        source.finish()
    });
    wait_until_blocked(tid_rx.recv().unwrap(), &AtomicU64::new(0));
    handle.shutdown();
    let err = within("finish", move || finisher.join().unwrap()).unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
}
