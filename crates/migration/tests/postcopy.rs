//! Postcopy end to end over TCP: a running guest is switched to the destination after some
//! pre-copy; the destination's "vCPU" touches pages that have not arrived yet (each a
//! userfaultfd fault and a page request to the source) while the rest of RAM streams in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use guest_ram::{Backing, GuestRam, RamBlock};
use migration::{Capability, MigrationError, MigrationStatus, RunState, VmControl};
use testkit::{ram_registry, ram_vm as side, FakeVm, RamVm, Side};

mod common;
use common::guest::{fill, postcopy_pair, reader, writer};

const MIB: u64 = 1 << 20;

/// Migrates `src` into `dst` over TCP, asks for postcopy once more than `precopy` bytes went
/// out, and waits for both ends; returns the destination's outcome.
fn migrate_then_postcopy(src: &RamVm, dst: &RamVm, precopy: u64) -> Result<(), MigrationError> {
    let uri = dst.listen("tcp:127.0.0.1:0");
    src.migrate(&uri).unwrap();
    testkit::wait_for(Duration::from_secs(30), "some pre-copy", || {
        src.state
            .info()
            .ram
            .is_some_and(|r| r.transferred > precopy)
    });
    src.state.start_postcopy().unwrap();
    let status = src.wait_final();
    assert_eq!(status, MigrationStatus::Completed, "{:?}", src.state.info());
    src.finish().unwrap();
    dst.finish()
}

#[test]
fn running_guest_switches_to_postcopy_and_ram_matches() {
    let (src, dst) = postcopy_pair(64 * MIB);
    fill(&src.ram, 48 * MIB, 7);
    // Slow enough that pre-copy is still running when postcopy is asked for, and that the
    // background phase lasts while the destination's vCPU touches every page.
    src.set_params(serde_json::json!({
        "max-bandwidth": 16 * MIB,
        "max-postcopy-bandwidth": 16 * MIB,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(src.ram.clone(), &src.vm, stop.clone(), 16 * MIB);
    let r = reader(dst.ram.clone(), &dst.vm, stop.clone());
    migrate_then_postcopy(&src, &dst, 4 * MIB).expect("destination load");
    stop.store(true, Ordering::SeqCst);
    assert!(
        w.join().unwrap() > 0,
        "the source guest ran before the switch"
    );
    assert!(r.join().unwrap() > 0, "the destination guest ran");
    // The guest runs on exactly one side.
    assert_eq!(src.vm.run_state(), RunState::Postmigrate);
    assert_eq!(dst.vm.run_state(), RunState::Running);
    assert_eq!(src.vm.starts(), 0);
    assert_eq!(dst.state.status(), MigrationStatus::Completed);
    // The destination only read: its RAM is the source's final RAM.
    assert_eq!(src.ram.blocks()[0].digest(), dst.ram.blocks()[0].digest());
    let ram = src.state.info().ram.unwrap();
    assert!(ram.postcopy_bytes > 0, "{ram:?}");
    assert!(
        ram.postcopy_requests > 0,
        "the destination asked for pages: {ram:?}"
    );
    assert!(src.state.info().downtime.is_some());
}

/// The destination's guest writes during the background phase (its stores to pages not there
/// yet wait for them): its RAM then differs from the source's, yet `ram-verify` passes, since
/// it checks the pages as delivered.
#[test]
fn ram_verify_passes_while_the_destination_guest_writes() {
    let (src, dst) = postcopy_pair(32 * MIB);
    fill(&src.ram, 32 * MIB, 11);
    src.set_params(serde_json::json!({
        "max-bandwidth": 16 * MIB,
        "max-postcopy-bandwidth": 8 * MIB,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let w_src = writer(src.ram.clone(), &src.vm, stop.clone(), 8 * MIB);
    let w_dst = writer(dst.ram.clone(), &dst.vm, stop.clone(), 32 * MIB);
    migrate_then_postcopy(&src, &dst, 2 * MIB).expect("ram-verify accepts the delivered pages");
    stop.store(true, Ordering::SeqCst);
    assert!(w_src.join().unwrap() > 0);
    assert!(w_dst.join().unwrap() > 0, "the destination guest wrote");
    assert_ne!(
        src.ram.blocks()[0].digest(),
        dst.ram.blocks()[0].digest(),
        "the destination guest's writes changed its RAM"
    );
    assert!(src.state.info().ram.unwrap().postcopy_requests > 0);
}

/// A cancel in the middle of the background phase: the source ends `cancelled` with its guest
/// paused (it may have run on the destination); the destination sees a broken link and pauses
/// (QEMU 7.2), its guest still running, until it is cancelled too: then it fails with the
/// reason, its guest stopped (its RAM is incomplete); neither side hangs on a page that never
/// comes.
#[test]
fn cancel_during_postcopy_leaves_no_guest_running() {
    let (src, dst) = postcopy_pair(32 * MIB);
    fill(&src.ram, 32 * MIB, 13);
    src.set_params(serde_json::json!({
        "max-bandwidth": 8 * MIB,
        "max-postcopy-bandwidth": MIB,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let w_dst = writer(dst.ram.clone(), &dst.vm, stop.clone(), 32 * MIB);
    let uri = dst.listen("tcp:127.0.0.1:0");
    src.migrate(&uri).unwrap();
    testkit::wait_for(Duration::from_secs(30), "some pre-copy", || {
        src.state.info().ram.is_some_and(|r| r.transferred > MIB)
    });
    src.state.start_postcopy().unwrap();
    testkit::wait_for(Duration::from_secs(30), "the destination runs", || {
        dst.vm.run_state() == RunState::Running
    });
    src.cancel();
    assert_eq!(src.wait_final(), MigrationStatus::Cancelled);
    assert!(matches!(src.finish(), Err(MigrationError::Cancelled)));
    testkit::wait_for(Duration::from_secs(30), "the destination pauses", || {
        dst.state.status() == MigrationStatus::PostcopyPaused
    });
    assert_eq!(dst.vm.run_state(), RunState::Running);
    dst.cancel();
    let err = dst.finish().unwrap_err();
    assert!(
        matches!(
            err,
            MigrationError::Postcopy(migration::postcopy::PostcopyError::FailedAfterRun(_))
        ),
        "{}",
        err.report()
    );
    stop.store(true, Ordering::SeqCst);
    w_dst.join().unwrap();
    assert_eq!(src.vm.run_state(), RunState::Paused);
    assert_eq!(src.vm.starts(), 0);
    assert_eq!(dst.vm.run_state(), RunState::Paused);
    assert_eq!(dst.state.status(), MigrationStatus::Cancelled);
}

/// With `postcopy-ram` on but no `migrate-start-postcopy`, a migration that converges ends
/// as a plain pre-copy (the destination was only advised).
#[test]
fn advised_migration_may_end_as_precopy() {
    let (src, dst) = postcopy_pair(16 * MIB);
    fill(&src.ram, 16 * MIB, 5);
    let uri = dst.listen("tcp:127.0.0.1:0");
    src.migrate(&uri).unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Completed);
    src.finish().unwrap();
    dst.finish().expect("ram-verify passes");
    assert_eq!(src.ram.blocks()[0].digest(), dst.ram.blocks()[0].digest());
    assert_eq!(src.state.info().ram.unwrap().postcopy_bytes, 0);
    assert_eq!(dst.vm.run_state(), RunState::Running);
}

#[test]
fn start_postcopy_needs_the_capability_and_a_migration() {
    let s = side(4 * MIB, true);
    assert_eq!(
        s.state.start_postcopy().unwrap_err().to_string(),
        "Enable postcopy with migrate_set_capability before the start of migration"
    );
    s.enable(&[Capability::PostcopyRam]);
    assert_eq!(
        s.state.start_postcopy().unwrap_err().to_string(),
        "Postcopy must be started after migration has been started"
    );
}

/// A destination whose RAM cannot be registered with userfaultfd (a private file mapping:
/// the kernel refuses MISSING mode there) fails at ADVISE, before the switch: the source
/// fails too and its guest keeps running.
#[test]
fn destination_without_userfaultfd_fails_before_the_switch() {
    let dir = tempfile::tempdir().unwrap();
    let src = side(16 * MIB, true);
    fill(&src.ram, 16 * MIB, 9);
    let path = dir.path().join("ram");
    let block = RamBlock::new("pc.ram", 16 * MIB, Backing::File { path, share: false }).unwrap();
    let ram = Arc::new(GuestRam::new(vec![block]));
    let global = migration::GlobalState::new();
    let dst = Side::new(
        ram_registry(&ram, Vec::new(), &global),
        Arc::new(FakeVm::new(false)),
        global,
    );
    for s in [&src.side, &dst] {
        s.enable(&[Capability::PostcopyRam]);
    }
    src.set_params(serde_json::json!({"max-bandwidth": 4 * MIB}));
    let uri = dst.listen("tcp:127.0.0.1:0");
    src.migrate(&uri).unwrap();
    // Asked at once: the source would switch at its first round if the destination let it.
    src.state.start_postcopy().unwrap();
    let err = dst.finish().unwrap_err();
    assert!(
        matches!(err, MigrationError::Postcopy(_)),
        "{}",
        err.report()
    );
    assert!(err.report().contains("userfaultfd"), "{}", err.report());
    assert_eq!(src.wait_final(), MigrationStatus::Failed);
    assert!(src.finish().is_err());
    assert_eq!(src.vm.run_state(), RunState::Running);
    assert_eq!(src.vm.stops(), 0, "the source never stopped its guest");
    assert_eq!(dst.vm.starts(), 0);
}
