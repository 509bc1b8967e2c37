//! Postcopy recovery end to end over TCP (QEMU 7.2 behaviour): the link breaks in the middle
//! of the background phase (a relay cut, or `migrate-pause`), both sides report
//! `postcopy-paused` with the guest running on the destination only, then the destination
//! listens again (`migrate-recover`), the source reconnects (`migrate resume=true`), the
//! RECV_BITMAP / RESUME handshake rebuilds what is left to send, and the migration completes
//! with the RAM verified. And when a side died, the survivor says so and stays paused.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use migration::{MigrationError, MigrationStatus, RunState, VmControl};
use testkit::relay::{FaultRelay, Trigger};
use testkit::RamVm;

mod common;
use common::guest::{fill, postcopy_pair, reader, slow_postcopy, start_postcopy, writer};

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

/// A listener on a free local port for `migrate-recover`, and its URI for `migrate -r`.
fn recovery_listener() -> (transport::Listener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("tcp:{}", l.local_addr().unwrap());
    (transport::Listener::from_tcp(l).unwrap(), uri)
}

fn wait_status(side: &RamVm, what: &str, want: MigrationStatus) {
    testkit::wait_for(WAIT, what, || side.state.status() == want);
}

/// Both sides paused, the guest running on the destination only.
fn assert_paused(src: &RamVm, dst: &RamVm) {
    wait_status(src, "the source pauses", MigrationStatus::PostcopyPaused);
    wait_status(
        dst,
        "the destination pauses",
        MigrationStatus::PostcopyPaused,
    );
    assert_eq!(dst.vm.run_state(), RunState::Running);
    assert_ne!(src.vm.run_state(), RunState::Running);
    assert_eq!(src.vm.starts(), 0);
    // livemig says why (QEMU 7.2 only logs it).
    assert!(
        src.state.info().error_desc.is_some(),
        "{:?}",
        src.state.info()
    );
    assert!(dst.state.info().error_desc.is_some());
    // Statistics stay visible on the source while paused (QEMU 7.2).
    assert!(src.state.info().ram.is_some());
}

/// `migrate-recover` on the destination, `migrate -r` on the source.
fn recover(src: &RamVm, dst: &RamVm) {
    let (listener, uri) = recovery_listener();
    dst.state.recover_postcopy(listener).unwrap();
    src.state.resume_postcopy(uri.parse().unwrap()).unwrap();
}

fn completed_with_ram_verified(src: &RamVm, dst: &RamVm) {
    assert_eq!(
        src.wait_final(),
        MigrationStatus::Completed,
        "{:?}",
        src.state.info()
    );
    src.finish().unwrap();
    dst.finish()
        .expect("the destination loads everything, ram-verify passes");
    assert_eq!(dst.state.status(), MigrationStatus::Completed);
    assert_eq!(src.vm.run_state(), RunState::Postmigrate);
    assert_eq!(dst.vm.run_state(), RunState::Running);
    assert_eq!(src.vm.starts(), 0);
}

#[test]
fn cut_link_pauses_both_sides_and_recovery_completes() {
    let (src, dst) = postcopy_pair(32 * MIB);
    fill(&src.ram, 32 * MIB, 21);
    src.set_params(serde_json::json!({
        "max-bandwidth": 16 * MIB,
        "max-postcopy-bandwidth": 2 * MIB,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(src.ram.clone(), &src.vm, stop.clone(), 8 * MIB);
    let r = reader(dst.ram.clone(), &dst.vm, stop.clone());
    let target = dst.listen("tcp:127.0.0.1:0");
    let relay = FaultRelay::start(target.trim_start_matches("tcp:"), Trigger::Manual);
    start_postcopy(&src, &dst, &relay.uri());
    relay.cut();
    assert_paused(&src, &dst);
    // Each command only where it belongs (QEMU's texts).
    assert_eq!(
        dst.state
            .resume_postcopy("tcp:127.0.0.1:1".parse().unwrap())
            .unwrap_err()
            .to_string(),
        "Cannot resume if there is no paused migration"
    );
    assert_eq!(
        src.state.check_recoverable().unwrap_err().to_string(),
        "Migrate recover can only be run when postcopy is paused."
    );
    assert_eq!(
        src.state.migrate_pause().unwrap_err().to_string(),
        "migrate-pause is currently only supported during postcopy-active state"
    );
    let before = dst.vm.run_state();
    // A first migrate-recover the source never uses: the second one replaces it.
    let (unused, _) = recovery_listener();
    dst.state.recover_postcopy(unused).unwrap();
    recover(&src, &dst);
    completed_with_ram_verified(&src, &dst);
    assert_eq!(before, RunState::Running);
    stop.store(true, Ordering::SeqCst);
    assert!(w.join().unwrap() > 0);
    assert!(r.join().unwrap() > 0, "the destination guest ran");
    // The destination only read: its RAM is the source's final RAM.
    assert_eq!(src.ram.blocks()[0].digest(), dst.ram.blocks()[0].digest());
}

/// `migrate-pause` on either side, twice: each pause is recovered, the destination's guest
/// writing all along (`ram-verify` checks the pages as delivered).
#[test]
fn migrate_pause_on_each_side_then_recover_twice() {
    let (src, dst) = postcopy_pair(32 * MIB);
    fill(&src.ram, 32 * MIB, 23);
    src.set_params(serde_json::json!({
        "max-bandwidth": 16 * MIB,
        "max-postcopy-bandwidth": MIB,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(dst.ram.clone(), &dst.vm, stop.clone(), 32 * MIB);
    let uri = dst.listen("tcp:127.0.0.1:0");
    start_postcopy(&src, &dst, &uri);
    src.state.migrate_pause().unwrap();
    assert_paused(&src, &dst);
    recover(&src, &dst);
    wait_status(&src, "the source resumes", MigrationStatus::PostcopyActive);
    wait_status(
        &dst,
        "the destination resumes",
        MigrationStatus::PostcopyActive,
    );
    dst.state.migrate_pause().unwrap();
    assert_paused(&src, &dst);
    recover(&src, &dst);
    completed_with_ram_verified(&src, &dst);
    stop.store(true, Ordering::SeqCst);
    assert!(w.join().unwrap() > 0, "the destination guest wrote");
}

/// The destination died while paused: the source cannot reconnect, says why and stays paused
/// (its guest never restarts: it ran on the destination); only a cancel ends it.
#[test]
fn destination_gone_source_stays_paused_and_says_why() {
    let (src, dst) = slow_postcopy(25);
    src.state.migrate_pause().unwrap();
    assert_paused(&src, &dst);
    dst.cancel();
    assert!(matches!(
        dst.finish(),
        Err(MigrationError::Postcopy(
            migration::postcopy::PostcopyError::FailedAfterRun(_)
        ))
    ));
    assert_eq!(dst.vm.run_state(), RunState::Paused);
    // Nobody listens there any more.
    let (gone, gone_uri) = recovery_listener();
    drop(gone);
    src.state
        .resume_postcopy(gone_uri.parse().unwrap())
        .unwrap();
    testkit::wait_for(WAIT, "the source reports the failed reconnection", || {
        src.state.info().error_desc.is_some_and(|e| {
            e.contains(&format!("postcopy recovery over {gone_uri} failed"))
                && e.contains("refused")
        })
    });
    assert_eq!(src.state.status(), MigrationStatus::PostcopyPaused);
    assert_ne!(src.vm.run_state(), RunState::Running);
    src.cancel();
    assert_eq!(src.wait_final(), MigrationStatus::Cancelled);
    assert!(src.finish().is_err());
    assert_eq!(src.vm.starts(), 0, "the source's guest is never restarted");
}

/// The source died while paused: the destination keeps its guest running and waits, saying
/// why it paused; a `migrate-recover` nobody answers changes nothing.
#[test]
fn source_gone_destination_keeps_running_and_waits() {
    let (src, dst) = slow_postcopy(27);
    src.cancel();
    assert_eq!(src.wait_final(), MigrationStatus::Cancelled);
    assert!(src.finish().is_err());
    wait_status(
        &dst,
        "the destination pauses",
        MigrationStatus::PostcopyPaused,
    );
    let why = dst.state.info().error_desc.unwrap();
    assert!(
        why.contains("the link to the source broke; the guest runs on the destination (here)"),
        "{why}"
    );
    let (listener, _) = recovery_listener();
    dst.state.recover_postcopy(listener).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(dst.state.status(), MigrationStatus::PostcopyPaused);
    assert_eq!(dst.vm.run_state(), RunState::Running);
    dst.cancel();
    assert!(dst.finish().is_err());
    assert_eq!(dst.vm.run_state(), RunState::Paused);
    assert_eq!(dst.state.status(), MigrationStatus::Cancelled);
}

/// With multifd channels (which a recovery would not reconnect), a broken link fails both
/// sides as before recovery existed: the source's guest stays paused, the destination's stops.
#[test]
fn multifd_postcopy_fails_instead_of_pausing() {
    let (src, dst) = postcopy_pair(16 * MIB);
    for s in [&src, &dst] {
        s.enable(&[migration::Capability::Multifd]);
    }
    fill(&src.ram, 16 * MIB, 29);
    src.set_params(serde_json::json!({
        "max-bandwidth": 8 * MIB,
        "max-postcopy-bandwidth": MIB,
    }));
    let uri = dst.listen("tcp:127.0.0.1:0");
    start_postcopy(&src, &dst, &uri);
    src.state.migrate_pause().unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Failed);
    assert!(src.finish().is_err());
    assert_eq!(dst.wait_final(), MigrationStatus::Failed);
    assert!(dst.finish().is_err());
    assert_eq!(src.vm.starts(), 0);
    assert_ne!(src.vm.run_state(), RunState::Running);
    assert_eq!(dst.vm.run_state(), RunState::Paused);
}
