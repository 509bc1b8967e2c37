//! TLS channels end to end over loopback: data both ways at once over one session (stream +
//! return path), multifd-shaped vectored writes through a full socket, a clean end with
//! `close_notify`, truncation detected, and each bad-credential case failing with an error
//! that names its cause. Credentials are generated per test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::thread;

use testkit::tls::{Leaf, TestCa};
use transport::tls::{
    self, AuthzSimple, ClientTls, CredsEndpoint, ServerTls, TlsCreds, X509Options,
};
use transport::{connect, Channel, Listener, NoFds, TransportError};

/// The error and its sources, `: `-separated (what the monitor shows).
fn report_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn creds(dir: &Path, endpoint: CredsEndpoint) -> TlsCreds {
    TlsCreds::load(X509Options {
        id: "tls0".into(),
        dir: dir.to_path_buf(),
        endpoint,
        verify_peer: true,
    })
    .unwrap()
}

struct Setup {
    _tmp: tempfile::TempDir,
    server: TlsCreds,
    client: TlsCreds,
}

/// A CA, a server certificate for localhost/127.0.0.1 and (optionally) a client certificate.
fn setup(server_leaf: Leaf, client_leaf: Option<Leaf>) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("livemig test CA");
    ca.write_server_dir(&tmp.path().join("server"), &server_leaf);
    ca.write_client_dir(&tmp.path().join("client"), client_leaf.as_ref());
    Setup {
        server: creds(&tmp.path().join("server"), CredsEndpoint::Server),
        client: creds(&tmp.path().join("client"), CredsEndpoint::Client),
        _tmp: tmp,
    }
}

fn listener() -> (Listener, transport::MigrationUri) {
    let l = Listener::from_tcp(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let uri = l.local_description().parse().unwrap();
    (l, uri)
}

/// Handshakes on both ends; returns (client result, server result).
fn pair(
    client_tls: ClientTls,
    server_tls: ServerTls,
) -> (
    Result<Channel, TransportError>,
    Result<Channel, TransportError>,
) {
    let (l, uri) = listener();
    let server = thread::spawn(move || tls::server(l.accept().unwrap(), &server_tls));
    let client = tls::client(connect(&uri, &NoFds).unwrap(), &client_tls);
    (client, server.join().unwrap())
}

/// A client and a server channel, both with certificates for `localhost`, handshaken.
fn connected() -> (Channel, Channel) {
    let s = setup(Leaf::localhost("server"), Some(Leaf::localhost("client")));
    let (c, d) = pair(
        ClientTls::new(&s.client, "localhost").unwrap(),
        ServerTls::new(&s.server, None).unwrap(),
    );
    (c.unwrap(), d.unwrap())
}

fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn stream_and_return_path_share_one_session() {
    let (c, d) = connected();
    assert!(c.is_tls() && d.is_tls() && c.is_bidirectional());
    let data = payload(16 << 20);
    let expected = data.clone();
    let (mut d_reader, mut d_writer) = d.into_split();
    // The destination answers on the return path while the stream is still flowing.
    let dest = thread::spawn(move || {
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 1 << 20];
        let mut replies = 0;
        loop {
            let n = d_reader.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            if got.len() > (replies + 1) << 20 {
                d_writer.write_all(b"PONG").unwrap();
                replies += 1;
            }
        }
        d_writer.write_all(b"SHUT").unwrap();
        d_writer.finish().unwrap();
        (got, replies)
    });
    let (mut rp, mut w) = c.into_split();
    let rp_thread = thread::spawn(move || {
        let mut all = Vec::new();
        rp.read_to_end(&mut all).unwrap();
        all
    });
    for part in data.chunks(100_000) {
        w.write_all(part).unwrap();
    }
    w.finish().unwrap();
    let (got, replies) = dest.join().unwrap();
    assert!(got == expected, "stream corrupted");
    let rp_bytes = rp_thread.join().unwrap();
    assert_eq!(rp_bytes.len(), replies * 4 + 4);
    assert!(rp_bytes.ends_with(b"SHUT"));
    assert!(replies > 4);
}

#[test]
fn captured_bytes_hold_no_plaintext() {
    let s = setup(Leaf::localhost("server"), None);
    let (l, uri) = listener();
    // A relay between client and server records what crosses the wire.
    let relay = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_port = relay.local_addr().unwrap().port();
    let target = match &uri {
        transport::MigrationUri::Tcp { port, .. } => *port,
        _ => unreachable!(),
    };
    let recorder = thread::spawn(move || {
        let (mut inbound, _) = relay.accept().unwrap();
        let mut outbound = TcpStream::connect(("127.0.0.1", target)).unwrap();
        let mut back_in = inbound.try_clone().unwrap();
        let mut back_out = outbound.try_clone().unwrap();
        let back = thread::spawn(move || std::io::copy(&mut back_out, &mut back_in));
        let mut seen = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let n = inbound.read(&mut buf).unwrap_or(0);
            if n == 0 {
                let _ = outbound.shutdown(std::net::Shutdown::Write);
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            outbound.write_all(&buf[..n]).unwrap();
        }
        let _ = back.join();
        seen
    });
    let server_tls = ServerTls::new(
        &TlsCreds::load(X509Options {
            verify_peer: false,
            ..s.server.options().clone()
        })
        .unwrap(),
        None,
    )
    .unwrap();
    let server = thread::spawn(move || {
        let mut ch = tls::server(l.accept().unwrap(), &server_tls).unwrap();
        let mut all = Vec::new();
        ch.reader.read_to_end(&mut all).unwrap();
        ch.finish().unwrap();
        all
    });
    let relay_uri = format!("tcp:127.0.0.1:{relay_port}").parse().unwrap();
    let mut c = tls::client(
        connect(&relay_uri, &NoFds).unwrap(),
        &ClientTls::new(&s.client, "127.0.0.1").unwrap(),
    )
    .unwrap();
    let mut secret = b"QEVM".to_vec();
    secret.extend(std::iter::repeat_n(b"GUESTPAGE-0123456789".as_slice(), 4096).flatten());
    c.writer.write_all(&secret).unwrap();
    c.finish().unwrap();
    assert_eq!(server.join().unwrap(), secret);
    let wire = recorder.join().unwrap();
    assert!(wire.len() > secret.len());
    assert!(
        !wire.windows(4).any(|w| w == b"QEVM"),
        "QEVM magic in clear"
    );
    assert!(
        !wire.windows(9).any(|w| w == b"GUESTPAGE"),
        "payload in clear"
    );
}

fn client_err(c: Result<Channel, TransportError>) -> String {
    report_chain(&c.expect_err("the client handshake must fail"))
}

#[test]
fn hostname_mismatch_is_named() {
    let s = setup(Leaf::localhost("server"), Some(Leaf::localhost("c")));
    let (c, _) = pair(
        ClientTls::new(&s.client, "migration.example.com").unwrap(),
        ServerTls::new(&s.server, None).unwrap(),
    );
    let e = client_err(c);
    assert!(e.contains("not valid for the expected hostname"), "{e}");
}

#[test]
fn unknown_ca_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ca one");
    let other = TestCa::new("ca two");
    ca.write_server_dir(&tmp.path().join("s"), &Leaf::localhost("server"));
    other.write_client_dir(&tmp.path().join("c"), None);
    let server = TlsCreds::load(X509Options {
        id: "s".into(),
        dir: tmp.path().join("s"),
        endpoint: CredsEndpoint::Server,
        verify_peer: false,
    })
    .unwrap();
    let client = creds(&tmp.path().join("c"), CredsEndpoint::Client);
    let (c, d) = pair(
        ClientTls::new(&client, "localhost").unwrap(),
        ServerTls::new(&server, None).unwrap(),
    );
    let e = client_err(c);
    assert!(e.contains("unknown CA"), "{e}");
    assert!(d.is_err());
}

#[test]
fn expired_certificate_is_named() {
    let mut leaf = Leaf::localhost("server");
    leaf.expired = true;
    let s = setup(leaf, Some(Leaf::localhost("c")));
    let (c, _) = pair(
        ClientTls::new(&s.client, "localhost").unwrap(),
        ServerTls::new(&s.server, None).unwrap(),
    );
    let e = client_err(c);
    assert!(e.contains("expired"), "{e}");
}

#[test]
fn client_without_certificate_is_refused_with_the_cause() {
    let s = setup(Leaf::localhost("server"), None);
    let (c, d) = pair(
        ClientTls::new(&s.client, "localhost").unwrap(),
        ServerTls::new(&s.server, None).unwrap(),
    );
    let d = report_chain(&d.expect_err("the server verifies peers"));
    assert!(d.contains("presented no certificate"), "{d}");
    // TLS 1.3: the client finished its handshake before the server refused it; the refusal
    // shows on its first write or read.
    let e = match c {
        Err(e) => report_chain(&e),
        Ok(mut c) => {
            let chunk = vec![0u8; 1 << 20];
            let mut err = None;
            for _ in 0..64 {
                if let Err(e) = c.writer.write_all(&chunk) {
                    err = Some(e);
                    break;
                }
            }
            let err = err.or_else(|| c.reader.read(&mut [0u8; 16]).err());
            err.map(|e| report_chain(&e)).unwrap_or_default()
        }
    };
    assert!(e.contains("requires a client certificate"), "{e}");
}

#[test]
fn plain_text_peers_are_named() {
    let s = setup(Leaf::localhost("server"), Some(Leaf::localhost("c")));
    // A TLS client talking to a plain-text destination that drops what is not a stream.
    let (l, uri) = listener();
    let plain = thread::spawn(move || {
        let mut ch = l.accept().unwrap();
        let mut magic = [0u8; 4];
        ch.reader.read_exact(&mut magic).unwrap();
        drop(ch);
    });
    let e = client_err(tls::client(
        connect(&uri, &NoFds).unwrap(),
        &ClientTls::new(&s.client, "localhost").unwrap(),
    ));
    plain.join().unwrap();
    assert!(e.contains("does it use TLS"), "{e}");
    // A plain-text source talking to a TLS destination.
    let (l, uri) = listener();
    let server_tls = ServerTls::new(&s.server, None).unwrap();
    let server = thread::spawn(move || tls::server(l.accept().unwrap(), &server_tls));
    let mut ch = connect(&uri, &NoFds).unwrap();
    ch.writer.write_all(b"QEVM\0\0\0\x03plain stream").unwrap();
    let d = report_chain(&server.join().unwrap().expect_err("not TLS"));
    assert!(d.contains("does not speak TLS"), "{d}");
}

#[test]
fn truncation_is_not_an_end_of_stream() {
    let s = setup(Leaf::localhost("server"), Some(Leaf::localhost("c")));
    let (c, d) = pair(
        ClientTls::new(&s.client, "localhost").unwrap(),
        ServerTls::new(&s.server, None).unwrap(),
    );
    let (mut c, d) = (c.unwrap(), d.unwrap());
    c.writer.write_all(b"partial").unwrap();
    // Drop without finish(): the socket closes without close_notify.
    drop(c);
    let (mut r, _w) = d.into_split();
    let mut got = Vec::new();
    let e = r.read_to_end(&mut got).expect_err("a truncated stream");
    assert_eq!(got, b"partial");
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(report_chain(&e).contains("without close_notify"));
}

#[test]
fn authz_checks_the_client_dn_exactly() {
    let client_leaf = Leaf::localhost("source.example");
    let s = setup(Leaf::localhost("server"), Some(client_leaf.clone()));
    let allow = AuthzSimple {
        id: "auth0".into(),
        identity: client_leaf.dn(),
    };
    let (c, d) = pair(
        ClientTls::new(&s.client, "localhost").unwrap(),
        ServerTls::new(&s.server, Some(allow)).unwrap(),
    );
    assert!(c.is_ok() && d.is_ok());
    let deny = AuthzSimple {
        id: "auth0".into(),
        identity: "O=livemig tests,CN=someone else".into(),
    };
    let (c, d) = pair(
        ClientTls::new(&s.client, "localhost").unwrap(),
        ServerTls::new(&s.server, Some(deny)).unwrap(),
    );
    let d = report_chain(&d.expect_err("denied"));
    assert!(d.contains("not admitted by tls-authz"), "{d}");
    // TLS 1.3: the source learns of the refusal on its first write or read.
    let e = match c {
        Err(e) => report_chain(&e),
        Ok(mut c) => {
            let chunk = vec![0u8; 1 << 20];
            let err = (0..64).find_map(|_| c.writer.write_all(&chunk).err());
            let err = err.or_else(|| c.reader.read(&mut [0u8; 16]).err());
            err.map(|e| report_chain(&e)).unwrap_or_default()
        }
    };
    assert!(e.contains("denied access"), "{e}");
    // The DN as printed for the check.
    let der = std::fs::read_to_string(s._tmp.path().join("client/client-cert.pem")).unwrap();
    let der = rustls_pem_der(&der);
    assert_eq!(
        tls::subject_dn(&der).unwrap(),
        "O=livemig tests,CN=source.example"
    );
}

/// The DER bytes of the first PEM block.
fn rustls_pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64_decode(&body)
}

fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn credentials_for_the_wrong_endpoint_or_missing_files_are_refused() {
    let s = setup(Leaf::localhost("server"), None);
    let e = ClientTls::new(&s.server, "localhost")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "Expected TLS credentials for a client endpoint");
    let e = ServerTls::new(&s.client, None).unwrap_err().to_string();
    assert_eq!(e, "Expected TLS credentials for a server endpoint");
    let tmp = tempfile::tempdir().unwrap();
    let e = TlsCreds::load(X509Options {
        id: "x".into(),
        dir: tmp.path().to_path_buf(),
        endpoint: CredsEndpoint::Server,
        verify_peer: true,
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("server-cert.pem"), "{e}");
    std::fs::write(tmp.path().join("ca-cert.pem"), "not a pem").unwrap();
    let e = TlsCreds::load(X509Options {
        id: "x".into(),
        dir: tmp.path().to_path_buf(),
        endpoint: CredsEndpoint::Client,
        verify_peer: true,
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("ca-cert.pem"), "{e}");
}

/// The writer's records go to the socket straight from rustls's buffers; when the socket is
/// full (the reader sleeps first) the writer waits for it without holding the session, and
/// vectored writes shaped like multifd packets (a header, then 128 pages) arrive intact.
#[test]
fn vectored_writes_survive_a_full_socket() {
    let (c, d) = connected();
    let data = payload(24 << 20);
    let expected = data.clone();
    let (mut d_reader, _d_writer) = d.into_split();
    let dest = thread::spawn(move || {
        // Let the sender fill the socket buffers and block on them first.
        thread::sleep(std::time::Duration::from_millis(300));
        let mut got = Vec::new();
        let mut page = vec![0u8; 4096];
        loop {
            let n = d_reader.read(&mut page).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&page[..n]);
        }
        got
    });
    let (_rp, mut w) = c.into_split();
    for packet in data.chunks(16 + 128 * 4096) {
        let (head, pages) = packet.split_at(16.min(packet.len()));
        let mut slices: Vec<std::io::IoSlice<'_>> = std::iter::once(head)
            .chain(pages.chunks(4096))
            .map(std::io::IoSlice::new)
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = w.write_vectored(rest).unwrap();
            assert!(n > 0);
            std::io::IoSlice::advance_slices(&mut rest, n);
        }
    }
    w.finish().unwrap();
    let got = dest.join().unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "stream corrupted");
}
