//! Migrations over TLS in one process: the main channel, the return path and every multifd
//! channel encrypted (checked on a relay that records the wire), RAM identical; each bad
//! credential fails the source with a message naming the cause while its guest keeps running.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;

use guest_ram::GuestRam;
use migration::{Capability, MigrationStatus, RunState, TlsObjects, VmControl};
use testkit::tls::{Leaf, TestCa};
use testkit::{ram_vm as side, RamVm as Vm};
use transport::tls::{AuthzSimple, CredsEndpoint, TlsCreds, X509Options};

const MIB: u64 = 1 << 20;

/// Recognisable guest pages: "GUESTPAGE <n>" repeated.
fn fill(ram: &GuestRam, bytes: u64) {
    let b = &ram.blocks()[0];
    for p in 0..bytes / 4096 {
        let text = format!("GUESTPAGE {p:08} ");
        let page: Vec<u8> = text.bytes().cycle().take(4096).collect();
        b.write_page(p, &page).unwrap();
    }
}

fn x509(id: &str, dir: &Path, endpoint: CredsEndpoint) -> TlsCreds {
    TlsCreds::load(X509Options {
        id: id.into(),
        dir: dir.to_path_buf(),
        endpoint,
        verify_peer: true,
    })
    .unwrap()
}

/// Credentials for both ends; `tweak` may change the client's before they are written.
struct Pki {
    tmp: tempfile::TempDir,
    ca: TestCa,
}

impl Pki {
    fn new(ca: &str) -> Pki {
        Pki {
            tmp: tempfile::tempdir().unwrap(),
            ca: TestCa::new(ca),
        }
    }

    fn server(&self, leaf: &Leaf) -> TlsObjects {
        let dir = tempfile::tempdir_in(self.tmp.path()).unwrap().keep();
        self.ca.write_server_dir(&dir, leaf);
        TlsObjects {
            creds: vec![x509("tls0", &dir, CredsEndpoint::Server)],
            authz: Vec::new(),
        }
    }

    fn client(&self, leaf: Option<&Leaf>) -> TlsObjects {
        let dir = tempfile::tempdir_in(self.tmp.path()).unwrap().keep();
        self.ca.write_client_dir(&dir, leaf);
        TlsObjects {
            creds: vec![x509("tls0", &dir, CredsEndpoint::Client)],
            authz: Vec::new(),
        }
    }
}

fn tls_pair(size: u64, multifd: bool) -> (Vm, Vm, Pki) {
    let pki = Pki::new("livemig test CA");
    let src = side(size, true);
    let dst = side(size, false);
    src.set_tls(pki.client(Some(&Leaf::localhost("source"))));
    dst.set_tls(pki.server(&Leaf::localhost("destination")));
    for s in [&src, &dst] {
        s.set_params(serde_json::json!({"tls-creds": "tls0", "multifd-channels": 3}));
        s.enable(&[Capability::RamVerify]);
        if multifd {
            s.enable(&[Capability::Multifd]);
        }
    }
    (src, dst, pki)
}

/// A TCP relay to `target` recording the source → destination bytes.
fn relay(target: &str) -> (String, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("tcp:{}", l.local_addr().unwrap());
    let target = target.trim_start_matches("tcp:").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    thread::spawn(move || {
        for inbound in l.incoming() {
            let Ok(mut inbound) = inbound else { return };
            let mut outbound = TcpStream::connect(&target).unwrap();
            let (mut back_in, mut back_out) =
                (inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
            thread::spawn(move || {
                let _ = std::io::copy(&mut back_out, &mut back_in);
                let _ = back_in.shutdown(std::net::Shutdown::Write);
            });
            let record = record.clone();
            thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = inbound.read(&mut buf).unwrap_or(0);
                    if n == 0 || outbound.write_all(&buf[..n]).is_err() {
                        let _ = outbound.shutdown(std::net::Shutdown::Write);
                        return;
                    }
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (uri, seen)
}

fn migrate_over_tls(multifd: bool) {
    let (src, dst, _pki) = tls_pair(32 * MIB, multifd);
    fill(&src.ram, 16 * MIB);
    let uri = dst.listen("tcp:127.0.0.1:0");
    let (relay_uri, wire) = relay(&uri);
    // The relay's address is what the source connects to; the certificate names 127.0.0.1.
    src.migrate(&relay_uri).unwrap();
    let status = src.wait_final();
    if status != MigrationStatus::Completed {
        let _ = src.finish();
        dst.wait_final();
        panic!(
            "source: {:?}; destination: {:?}",
            src.state.info().error_desc,
            dst.state.info().error_desc
        );
    }
    src.finish().unwrap();
    dst.finish().expect("destination load");
    assert_eq!(src.ram.blocks()[0].digest(), dst.ram.blocks()[0].digest());
    assert_eq!(dst.vm.run_state(), RunState::Running);
    let wire = wire.lock().unwrap();
    assert!(wire.len() as u64 > 16 * MIB, "{} bytes seen", wire.len());
    assert!(
        !wire.windows(4).any(|w| w == b"QEVM"),
        "QEVM magic in clear"
    );
    assert!(
        !wire.windows(10).any(|w| w == b"GUESTPAGE "),
        "a guest page in clear"
    );
}

#[test]
fn precopy_with_return_path_over_tls() {
    migrate_over_tls(false);
}

#[test]
fn multifd_over_tls() {
    migrate_over_tls(true);
}

/// Runs a migration that must fail; returns the source's error text after checking the
/// source guest still runs.
fn failing(src: &Vm, dst: &Vm, uri: &str) -> String {
    src.migrate(uri).unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Failed);
    let _ = src.finish();
    assert_eq!(src.vm.run_state(), RunState::Running);
    dst.cancel();
    let _ = dst.finish();
    src.state.info().error_desc.unwrap_or_default()
}

#[test]
fn hostname_mismatch_fails_the_source() {
    let (src, dst, _pki) = tls_pair(4 * MIB, false);
    src.set_params(serde_json::json!({"tls-hostname": "other.example.com"}));
    let uri = dst.listen("tcp:127.0.0.1:0");
    let e = failing(&src, &dst, &uri);
    assert!(e.contains("not valid for the expected hostname"), "{e}");
}

#[test]
fn unknown_ca_fails_the_source() {
    let (src, dst, _pki) = tls_pair(4 * MIB, false);
    let other = Pki::new("another CA");
    src.set_tls(other.client(Some(&Leaf::localhost("source"))));
    let uri = dst.listen("tcp:127.0.0.1:0");
    let e = failing(&src, &dst, &uri);
    assert!(e.contains("unknown CA"), "{e}");
}

#[test]
fn expired_destination_certificate_fails_the_source() {
    let (src, dst, pki) = tls_pair(4 * MIB, false);
    let mut leaf = Leaf::localhost("destination");
    leaf.expired = true;
    dst.set_tls(pki.server(&leaf));
    let uri = dst.listen("tcp:127.0.0.1:0");
    let e = failing(&src, &dst, &uri);
    assert!(e.contains("expired"), "{e}");
}

#[test]
fn client_without_certificate_fails_the_source() {
    let (src, dst, pki) = tls_pair(4 * MIB, false);
    fill(&src.ram, 4 * MIB);
    src.set_tls(pki.client(None));
    let uri = dst.listen("tcp:127.0.0.1:0");
    let e = failing(&src, &dst, &uri);
    assert!(e.contains("requires a client certificate"), "{e}");
}

#[test]
fn plain_text_destination_fails_the_source() {
    let (src, dst, _pki) = tls_pair(4 * MIB, false);
    dst.set_params(serde_json::json!({"tls-creds": ""}));
    let uri = dst.listen("tcp:127.0.0.1:0");
    let e = failing(&src, &dst, &uri);
    assert!(e.contains("does it use TLS"), "{e}");
}

#[test]
fn plain_text_source_is_refused_by_a_tls_destination() {
    let (src, dst, _pki) = tls_pair(4 * MIB, false);
    fill(&src.ram, 4 * MIB);
    src.set_params(serde_json::json!({"tls-creds": ""}));
    let uri = dst.listen("tcp:127.0.0.1:0");
    failing(&src, &dst, &uri);
    // The destination dropped the plain-text connection and never loaded anything.
    assert_ne!(dst.vm.run_state(), RunState::Running);
}

#[test]
fn authz_admits_only_the_named_dn() {
    let (src, dst, pki) = tls_pair(4 * MIB, false);
    let mut objects = pki.server(&Leaf::localhost("destination"));
    objects.authz.push(AuthzSimple {
        id: "auth0".into(),
        identity: "O=livemig tests,CN=somebody else".into(),
    });
    dst.set_tls(objects.clone());
    dst.set_params(serde_json::json!({"tls-authz": "auth0"}));
    let uri = dst.listen("tcp:127.0.0.1:0");
    let e = failing(&src, &dst, &uri);
    assert!(e.contains("denied access"), "{e}");
    // The right DN gets in (a fresh destination: an incoming migration is one-shot).
    let dst = side(4 * MIB, false);
    objects.authz[0].identity = Leaf::localhost("source").dn();
    dst.set_tls(objects);
    dst.set_params(serde_json::json!({"tls-creds": "tls0", "tls-authz": "auth0"}));
    let uri = dst.listen("tcp:127.0.0.1:0");
    src.migrate(&uri).unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Completed);
    src.finish().unwrap();
    dst.finish().unwrap();
}

#[test]
fn unknown_authz_or_wrong_endpoint_is_refused_up_front() {
    let (src, dst, pki) = tls_pair(4 * MIB, false);
    dst.set_params(serde_json::json!({"tls-authz": "nobody"}));
    let listener = transport::listen(&"tcp:127.0.0.1:0".parse().unwrap(), &transport::NoFds);
    drop(listener);
    // Server credentials on the source: QEMU's text.
    src.set_tls(pki.server(&Leaf::localhost("x")));
    let uri = "tcp:127.0.0.1:9";
    src.migrate(uri).unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Failed);
    let _ = src.finish();
    let e = src.state.info().error_desc.unwrap_or_default();
    assert!(
        e.contains("Expected TLS credentials for a client endpoint"),
        "{e}"
    );
    assert_eq!(src.vm.run_state(), RunState::Running);
}

/// Postcopy recovery with `tls-creds`: the source's new connection runs its own handshake and
/// the whole recovery (RECV_BITMAP naming the block, the bitmap, the pages) goes over TLS.
#[test]
fn postcopy_recovery_over_tls() {
    let (src, dst, _pki) = tls_pair(16 * MIB, false);
    fill(&src.ram, 16 * MIB);
    for s in [&src, &dst] {
        s.enable(&[Capability::PostcopyRam]);
    }
    src.set_params(serde_json::json!({
        "max-bandwidth": 8 * MIB,
        "max-postcopy-bandwidth": MIB,
    }));
    let uri = dst.listen("tcp:127.0.0.1:0");
    src.migrate(&uri).unwrap();
    testkit::wait_for(std::time::Duration::from_secs(60), "some pre-copy", || {
        src.state
            .info()
            .ram
            .is_some_and(|r| r.transferred > 2 * MIB)
    });
    src.state.start_postcopy().unwrap();
    testkit::wait_for(std::time::Duration::from_secs(60), "postcopy", || {
        src.state.info().ram.is_some_and(|r| r.postcopy_bytes > MIB)
    });
    src.state.migrate_pause().unwrap();
    for s in [&src, &dst] {
        testkit::wait_for(std::time::Duration::from_secs(60), "paused", || {
            s.state.status() == MigrationStatus::PostcopyPaused
        });
    }
    // The resumed background phase at full speed (read when it restarts).
    src.set_params(serde_json::json!({"max-postcopy-bandwidth": 0}));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("tcp:{}", l.local_addr().unwrap());
    dst.state
        .recover_postcopy(transport::Listener::from_tcp(l).unwrap())
        .unwrap();
    let (relay_uri, wire) = relay(&target);
    src.state
        .resume_postcopy(relay_uri.parse().unwrap())
        .unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Completed);
    src.finish().unwrap();
    dst.finish().expect("destination load, ram-verify");
    assert_eq!(src.ram.blocks()[0].digest(), dst.ram.blocks()[0].digest());
    assert_eq!(dst.vm.run_state(), RunState::Running);
    let wire = wire.lock().unwrap();
    assert!(wire.len() > 4096, "the recovery went through the relay");
    assert!(
        !wire.windows(6).any(|w| w == b"pc.ram"),
        "RECV_BITMAP in clear text"
    );
    assert!(!wire.windows(10).any(|w| w == b"GUESTPAGE "));
}
