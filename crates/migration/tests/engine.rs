//! End-to-end tests of the engine in one process: a source registry migrates over a real
//! transport into a destination registry, with a thread writing guest RAM meanwhile.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use migration::incoming;
use migration::{
    Capability, GlobalState, IncomingSession, MigrationError, MigrationStatus, Registry, RunState,
    VmControl,
};
use testkit::{ram_vm as side, RamVm as Vm};

mod common;
use common::guest::{fill, writer_counted};

const MIB: u64 = 1 << 20;

fn enable_verify(s: &Vm) {
    s.enable(&[Capability::RamVerify, Capability::Events]);
}

#[test]
fn live_migration_over_tcp_with_running_writer_and_verify() {
    let src = side(64 * MIB, true);
    let dst = side(64 * MIB, false);
    fill(&src.ram, 32 * MIB, 1);
    enable_verify(&src);
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let w = writer_counted(
        src.ram.clone(),
        &src.vm,
        stop.clone(),
        8 * MIB,
        writes.clone(),
    );
    // The guest is writing before the migration starts (a loaded host may not schedule the
    // writer before a short migration ends).
    testkit::wait_for(Duration::from_secs(30), "the writer's first stores", || {
        writes.load(Ordering::SeqCst) >= 64
    });
    let uri = dst.listen("tcp:127.0.0.1:0");
    src.migrate(&uri).unwrap();
    assert_eq!(
        src.wait_final(),
        MigrationStatus::Completed,
        "{:?}",
        src.state.info()
    );
    src.finish().unwrap();
    dst.finish().expect("destination load");
    stop.store(true, Ordering::SeqCst);
    w.join().expect("writer");
    assert_eq!(src.vm.run_state(), RunState::Postmigrate);
    assert_eq!(dst.vm.run_state(), RunState::Running);
    assert_eq!(dst.state.status(), MigrationStatus::Completed);
    assert_eq!(src.ram.blocks()[0].digest(), dst.ram.blocks()[0].digest());
    let info = src.state.info();
    let ram = info.ram.unwrap();
    assert!(
        ram.normal > 0 && ram.duplicate > 0 && ram.dirty_sync_count >= 2,
        "{ram:?}"
    );
    assert!(info.downtime.is_some());
}

/// A guest that writes nothing (paused) gains nothing from syncing the dirty log again and
/// again below the switchover threshold: after a sync that found nothing new the source sends
/// what is dirty before syncing again. Counted, not timed: the setup's pass, at most one sync
/// below the threshold, one when the bitmap is empty and one at switchover (QEMU 7.2 syncs on
/// every decision below the threshold: about ten passes for this guest).
#[test]
fn a_paused_guest_is_not_synced_on_every_decision() {
    let src = side(64 * MIB, false);
    let dst = side(64 * MIB, false);
    fill(&src.ram, 64 * MIB, 5);
    let uri = dst.listen("tcp:127.0.0.1:0");
    src.migrate(&uri).unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Completed);
    src.finish().unwrap();
    dst.finish().expect("destination load");
    assert_eq!(src.ram.blocks()[0].digest(), dst.ram.blocks()[0].digest());
    let ram = src.state.info().ram.unwrap();
    assert!(
        (1..=4).contains(&ram.dirty_sync_count),
        "{} syncs: {ram:?}",
        ram.dirty_sync_count
    );
}

#[test]
fn save_to_file_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.mig");
    let src = side(16 * MIB, false);
    fill(&src.ram, 16 * MIB, 2);
    enable_verify(&src);
    let uri = format!("file:{}", path.display());
    src.migrate(&uri).unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Completed);
    src.finish().unwrap();
    let dst = side(16 * MIB, false);
    dst.listen(&uri);
    dst.finish().unwrap();
    assert_eq!(src.ram.blocks()[0].digest(), dst.ram.blocks()[0].digest());
    // The source was paused: the destination adopts that run state.
    assert_eq!(dst.vm.run_state(), RunState::Paused);
}

#[test]
fn ram_size_mismatch_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.mig");
    let src = side(16 * MIB, false);
    let uri = format!("file:{}", path.display());
    src.migrate(&uri).unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Completed);
    src.finish().unwrap();
    let dst = side(32 * MIB, false);
    dst.listen(&uri);
    let err = dst.finish().unwrap_err();
    assert!(matches!(err, MigrationError::RamBlockSize { .. }), "{err}");
    assert_eq!(dst.state.status(), MigrationStatus::Failed);
    assert!(dst
        .state
        .info()
        .error_desc
        .unwrap()
        .contains("Length mismatch: pc.ram"));
}

#[test]
fn unreachable_destination_fails_and_source_keeps_running() {
    let src = side(8 * MIB, true);
    // A port nobody listens on.
    let (_refusing, port) = transport::test_support::refusing_tcp_port().unwrap();
    src.migrate(&format!("tcp:127.0.0.1:{port}")).unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Failed);
    assert!(src.finish().is_err());
    let info = src.state.info();
    assert!(info
        .error_desc
        .unwrap()
        .contains(&format!("tcp:127.0.0.1:{port}")));
    assert_eq!(src.vm.run_state(), RunState::Running);
    assert!(src.has_registry(), "registry handed back");
}

#[test]
fn cancel_mid_migration_then_retry_succeeds() {
    let src = side(64 * MIB, true);
    fill(&src.ram, 64 * MIB, 3);
    enable_verify(&src);
    src.set_params(serde_json::json!({"max-bandwidth": 20 * MIB}));
    let dst1 = side(64 * MIB, false);
    let uri1 = dst1.listen("tcp:127.0.0.1:0");
    src.migrate(&uri1).unwrap();
    testkit::wait_for(Duration::from_secs(10), "status active", || {
        src.state.status() == MigrationStatus::Active
    });
    thread::sleep(Duration::from_millis(300));
    src.cancel();
    let status = src.wait_final();
    assert_eq!(status, MigrationStatus::Cancelled, "{:?}", src.state.info());
    assert!(matches!(src.finish(), Err(MigrationError::Cancelled)));
    assert_eq!(src.vm.run_state(), RunState::Running);
    assert!(dst1.finish().is_err(), "destination saw a truncated stream");

    // Retry to a fresh destination, unlimited bandwidth.
    src.set_params(serde_json::json!({"max-bandwidth": 0}));
    let dst2 = side(64 * MIB, false);
    let uri2 = dst2.listen("tcp:127.0.0.1:0");
    src.migrate(&uri2).unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Completed);
    src.finish().unwrap();
    dst2.finish().unwrap();
    assert_eq!(src.ram.blocks()[0].digest(), dst2.ram.blocks()[0].digest());
}

#[test]
fn corrupt_streams_are_typed_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.mig");
    let src = side(4 * MIB, false);
    fill(&src.ram, 2 * MIB, 5);
    enable_verify(&src);
    let uri = format!("file:{}", path.display());
    src.migrate(&uri).unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Completed);
    src.finish().unwrap();
    let good = std::fs::read(&path).unwrap();
    let dst = side(4 * MIB, false);
    let load = |bytes: Vec<u8>, reg: &mut Registry| {
        let mut rp = incoming::ReturnPath::new(None);
        incoming::load_stream(
            Box::new(std::io::Cursor::new(bytes)),
            reg,
            testkit::MACHINE,
            &mut rp,
            &mut IncomingSession::standalone(),
        )
    };
    dst.with_registry(|reg| corrupt_streams(&good, reg, load));
}

fn corrupt_streams(
    good: &[u8],
    reg: &mut Registry,
    load: impl Fn(Vec<u8>, &mut Registry) -> Result<(), MigrationError>,
) {
    load(good.to_vec(), reg).expect("the intact stream loads");
    // Every truncation point of the header and section structure, then a stride of the rest.
    let cuts = (0..200).chain((200..good.len()).step_by(997));
    for cut in cuts {
        assert!(
            load(good[..cut].to_vec(), reg).is_err(),
            "truncated at {cut} loaded"
        );
    }
    // Flipped bytes: an error or (for bytes inside page data caught by ram-verify) an error too;
    // never a panic. Page payloads that ram-verify cannot see do not exist: it hashes all RAM.
    let mut x = 0x9e37_79b9u64;
    for _ in 0..400 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut bad = good.to_vec();
        let at = (x as usize) % bad.len();
        bad[at] ^= 1 << (x % 8);
        let _ = load(bad, reg);
    }
}

#[test]
fn tls_creds_never_fall_back_to_plain_text() {
    let src = side(4 * MIB, true);
    src.set_params(serde_json::json!({"tls-creds": "tls0"}));
    let dst = side(4 * MIB, false);
    dst.set_params(serde_json::json!({"tls-creds": "tls0"}));
    let listener = transport::listen(&"tcp:127.0.0.1:0".parse().unwrap(), &transport::NoFds);
    let listener = listener.unwrap();
    let uri = listener.local_description();
    // The destination refuses to listen without the credentials.
    let job = migration::incoming::Incoming {
        listener,
        machine: testkit::MACHINE.into(),
        registry: Registry::new(),
        vm: dst.vm.clone(),
        global_state: GlobalState::new(),
        autostart: true,
        on_finished: None,
        tls: Default::default(),
    };
    let rejected = migration::incoming::start(job, &dst.state).unwrap_err();
    assert_eq!(
        rejected.error.to_string(),
        "No TLS credentials with id 'tls0'"
    );
    drop(uri);
    // The source fails before it connects: nothing goes out in clear text.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    peer.set_nonblocking(true).unwrap();
    let port = peer.local_addr().unwrap().port();
    src.migrate(&format!("tcp:127.0.0.1:{port}")).unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Failed);
    let err = src.finish().unwrap_err();
    assert!(matches!(err, MigrationError::TlsCredsNotFound(_)), "{err}");
    assert_eq!(
        src.state.info().error_desc.as_deref(),
        Some("No TLS credentials with id 'tls0'")
    );
    assert_eq!(src.vm.run_state(), RunState::Running);
    let accepted = peer.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the source connected: {accepted:?}"
    );
}

/// A destination that reads the whole stream (up to the end of the trailer, which announces
/// the source's switchover commit) and then either vanishes without reporting (`hold` None:
/// closes the connection) or never answers (holds it open until `hold` is set).
fn silent_destination(hold: Option<Arc<AtomicBool>>) -> (String, thread::JoinHandle<u64>) {
    use std::io::Read;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("tcp:{}", l.local_addr().unwrap());
    let h = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        let end = br#"{"switchover-commit": true}}"#;
        let mut tail = Vec::new();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    n += k as u64;
                    tail.extend_from_slice(&buf[..k]);
                    let keep = tail.len().saturating_sub(end.len());
                    tail.drain(..keep);
                    if tail == end {
                        break;
                    }
                }
            }
        }
        if let Some(release) = hold {
            let t = std::time::Instant::now();
            while !release.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(60) {
                thread::sleep(Duration::from_millis(5));
            }
        }
        drop(s);
        n
    });
    (uri, h)
}

#[test]
fn a_destination_that_dies_before_reporting_leaves_the_source_running() {
    // return-path is on by default: the source waits for the destination's word, and a
    // destination that reports before it starts the guest and died before reporting never ran it.
    let src = side(8 * MIB, true);
    fill(&src.ram, 4 * MIB, 7);
    assert!(src.state.capabilities().get(Capability::ReturnPath));
    let (uri, dh) = silent_destination(None);
    src.migrate(&uri).unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Failed);
    assert!(dh.join().unwrap() > 2 * MIB, "the whole stream was sent");
    let err = src.finish().unwrap_err();
    assert!(matches!(err, MigrationError::ReturnPathClosed), "{err}");
    assert_eq!(src.vm.run_state(), RunState::Running);
}

#[test]
fn a_destination_that_never_answers_keeps_the_source_paused_until_cancel() {
    let src = side(8 * MIB, true);
    fill(&src.ram, 4 * MIB, 8);
    let release = Arc::new(AtomicBool::new(false));
    let (uri, dh) = silent_destination(Some(release.clone()));
    src.migrate(&uri).unwrap();
    testkit::wait_for(Duration::from_secs(30), "the source to wait", || {
        src.state.info().awaiting_destination
    });
    // Split brain is worse than a pause: the guest runs nowhere while the source waits.
    thread::sleep(Duration::from_millis(200));
    // QEMU 7.2: without pause-before-switchover the switchover happens in `active`.
    assert_eq!(src.state.status(), MigrationStatus::Active);
    assert_eq!(src.vm.run_state(), RunState::FinishMigrate);
    src.cancel();
    assert_eq!(src.wait_final(), MigrationStatus::Cancelled);
    assert!(src.finish().is_err());
    assert_eq!(src.vm.run_state(), RunState::Running);
    release.store(true, Ordering::SeqCst);
    dh.join().unwrap();
}

#[test]
fn a_destination_with_ram_verify_refuses_a_stream_without_the_digest() {
    let src = side(8 * MIB, true);
    fill(&src.ram, 4 * MIB, 9);
    let dst = side(8 * MIB, false);
    dst.enable(&[Capability::RamVerify]);
    let uri = dst.listen("tcp:127.0.0.1:0");
    src.migrate(&uri).unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Failed);
    let err = dst.finish().unwrap_err();
    assert!(matches!(err, MigrationError::VerifyMissing), "{err}");
    assert!(src.finish().is_err());
    // The destination said no on the return path: the guest runs on at the source only.
    assert_eq!(src.vm.run_state(), RunState::Running);
    assert_ne!(dst.vm.run_state(), RunState::Running);
}

#[test]
fn stray_connections_before_the_source_do_not_block_the_migration() {
    use std::io::Write;
    let src = side(8 * MIB, true);
    fill(&src.ram, 4 * MIB, 10);
    enable_verify(&src);
    let dst = side(8 * MIB, false);
    let uri = dst.listen("tcp:127.0.0.1:0");
    let addr = uri.strip_prefix("tcp:").unwrap();
    // Something that is not a migration stream, then a peer that connects and says nothing
    // until the destination gives up on it.
    let mut junk = std::net::TcpStream::connect(addr).unwrap();
    junk.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let silent = std::net::TcpStream::connect(addr).unwrap();
    src.migrate(&uri).unwrap();
    assert_eq!(
        src.wait_final(),
        MigrationStatus::Completed,
        "{:?}",
        src.state.info()
    );
    src.finish().unwrap();
    dst.finish().unwrap();
    assert_eq!(src.ram.blocks()[0].digest(), dst.ram.blocks()[0].digest());
    drop((junk, silent));
}

#[test]
fn pause_before_switchover_waits_for_continue_and_can_be_cancelled() {
    for cancel in [false, true] {
        let src = side(8 * MIB, true);
        fill(&src.ram, 4 * MIB, 11);
        src.enable(&[Capability::PauseBeforeSwitchover]);
        let dst = side(8 * MIB, false);
        let uri = dst.listen("tcp:127.0.0.1:0");
        // A continue before the pause is refused and does not release a later pause.
        let early = src.state.migrate_continue(MigrationStatus::PreSwitchover);
        assert_eq!(
            early.unwrap_err().to_string(),
            "Migration not in expected state: none"
        );
        src.migrate(&uri).unwrap();
        testkit::wait_for(Duration::from_secs(30), "pre-switchover", || {
            src.state.status() == MigrationStatus::PreSwitchover
        });
        assert_eq!(src.vm.run_state(), RunState::FinishMigrate);
        let wrong = src.state.migrate_continue(MigrationStatus::Active);
        assert_eq!(
            wrong.unwrap_err().to_string(),
            "Migration not in expected state: pre-switchover"
        );
        if cancel {
            src.cancel();
            let st = src.wait_final();
            assert_eq!(st, MigrationStatus::Cancelled, "{:?}", src.state.info());
            assert_eq!(src.vm.run_state(), RunState::Running);
        } else {
            src.state
                .migrate_continue(MigrationStatus::PreSwitchover)
                .unwrap();
            assert_eq!(src.wait_final(), MigrationStatus::Completed);
            assert_eq!(src.vm.run_state(), RunState::Postmigrate);
            assert_eq!(dst.wait_final(), MigrationStatus::Completed);
        }
    }
}

/// A source that opens the main stream and goes before it connects its multifd channels
/// (killed, or its migration failed) must not leave the destination waiting forever.
#[test]
fn a_multifd_destination_whose_source_leaves_before_its_channels_fails() {
    use std::io::Write;
    let dst = side(8 * MIB, false);
    dst.enable(&[Capability::Multifd]);
    let uri = dst.listen("tcp:127.0.0.1:0");
    let addr = uri.strip_prefix("tcp:").unwrap();
    let mut main = std::net::TcpStream::connect(addr).unwrap();
    // The stream's magic and version, then nothing more: the source is gone.
    main.write_all(&[0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3])
        .unwrap();
    drop(main);
    let err = dst.finish().expect_err("the destination must fail");
    assert!(
        matches!(
            err,
            MigrationError::MultifdSourceGone {
                connected: 0,
                expected: 2
            }
        ),
        "{err:?}"
    );
    assert_ne!(dst.vm.run_state(), RunState::Running);
}
