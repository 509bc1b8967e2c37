//! `ram-verify` covers disks: a block migration proves every drive by digest (`disk-verify`),
//! so disk data changed on the way is caught before the destination reports success, and a
//! destination that checks refuses a stream that copied disks without proving them.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use block::DiskFormat;
use guest_ram::{Backing, GuestRam, RamBlock, UffdDirtyLog};
use migration::block::{BlockHandler, BlockMigrationOptions};
use migration::ram::RamHandler;
use migration::verify::{self, RamVerify};
use migration::{
    Capability, GlobalState, MigrationError, MigrationStatus, Registry, RunState, VmControl,
};
use testkit::{FakeVm, Side};

mod common;

use common::disks::*;

/// The byte every source disk chunk is filled with; RAM never holds a run of it.
const MARK: u8 = 0xa5;

/// A TCP relay between `listen` and `target` that flips one bit of the first long run of
/// [`MARK`] bytes it forwards (disk data), once. Returns its address and whether it flipped.
fn tampering_relay(target: String) -> (String, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp:{}", listener.local_addr().unwrap());
    let flipped = Arc::new(AtomicBool::new(false));
    let done = flipped.clone();
    thread::spawn(move || {
        let (down, _) = listener.accept().unwrap();
        let up = TcpStream::connect(target.strip_prefix("tcp:").unwrap()).unwrap();
        let (mut down_r, mut up_w) = (down.try_clone().unwrap(), up.try_clone().unwrap());
        // Return path: destination → source, untouched.
        let (mut up_r, mut down_w) = (up, down);
        thread::spawn(move || {
            let _ = std::io::copy(&mut up_r, &mut down_w);
            let _ = down_w.shutdown(Shutdown::Write);
        });
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match down_r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !done.load(Ordering::SeqCst) {
                if let Some(at) = buf[..n]
                    .windows(256)
                    .position(|w| w.iter().all(|&b| b == MARK))
                {
                    buf[at + 100] ^= 0x10;
                    done.store(true, Ordering::SeqCst);
                }
            }
            if up_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = up_w.shutdown(Shutdown::Write);
    });
    (addr, flipped)
}

#[test]
fn disk_data_changed_in_transit_fails_the_migration_and_leaves_the_image_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (s, d) = (dir.path().join("src.qcow2"), dir.path().join("dst.qcow2"));
    create(&s, "qcow2", 8 * MIB);
    create(&d, "qcow2", 8 * MIB);
    let src = side(vec![open(&s, DiskFormat::Qcow2, "drive0")], true);
    src.disks[0]
        .write(2 * MIB, &vec![MARK; MIB as usize])
        .unwrap();
    let before = std::fs::read(&d).unwrap();
    let dst = side(vec![open(&d, DiskFormat::Qcow2, "drive0")], false);
    src.enable(&[Capability::RamVerify]);
    dst.enable(&[Capability::RamVerify]);
    let (relay, flipped) = tampering_relay(dst.listen("tcp:127.0.0.1:0"));
    src.migrate_with(&relay, Some(BlockMigrationOptions { incremental: false }))
        .unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Failed);
    assert!(
        flipped.load(Ordering::SeqCst),
        "the relay saw the disk data"
    );
    let err = dst.finish().unwrap_err();
    assert!(
        matches!(err, MigrationError::DiskVerifyMismatch(ref id) if id == "drive0"),
        "{}",
        err.report()
    );
    assert!(src.finish().is_err());
    // The guest runs on the source only; the destination image is untouched.
    assert_eq!(src.vm.run_state(), RunState::Running);
    assert_ne!(dst.vm.run_state(), RunState::Running);
    drop(dst);
    assert_eq!(std::fs::read(&d).unwrap(), before);
}

/// A source that checks RAM but does not prove its disks (as an older livemig would).
fn side_without_disk_digest(disks: Vec<Arc<block::Disk>>) -> Side<FakeVm> {
    let ram = Arc::new(GuestRam::new(vec![RamBlock::new(
        "pc.ram",
        8 * MIB,
        Backing::Anonymous,
    )
    .unwrap()]));
    // The same RAM as `side`'s.
    ram.blocks()[0].write_page(1, &[0x5a; 4096]).unwrap();
    let global = GlobalState::new();
    let mut reg = Registry::new();
    reg.register_live(Box::new(BlockHandler::new(disks)));
    let log = Box::new(UffdDirtyLog::new(ram.clone()));
    reg.register_live(Box::new(RamHandler::new(ram.clone(), log)));
    reg.register_device("globalstate", Some(0), Box::new(global.clone()));
    reg.register_device(verify::IDSTR, Some(0), Box::new(RamVerify::new(ram)));
    Side::new(reg, Arc::new(FakeVm::new(true)), global)
}

#[test]
fn a_destination_with_ram_verify_refuses_copied_disks_without_their_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (s, d) = (dir.path().join("src.raw"), dir.path().join("dst.raw"));
    create(&s, "raw", 4 * MIB);
    create(&d, "raw", 4 * MIB);
    let src = side_without_disk_digest(vec![open(&s, DiskFormat::Raw, "drive0")]);
    let dst = side(vec![open(&d, DiskFormat::Raw, "drive0")], false);
    src.enable(&[Capability::RamVerify]);
    dst.enable(&[Capability::RamVerify]);
    let uri = dst.listen("tcp:127.0.0.1:0");
    src.migrate_with(&uri, Some(BlockMigrationOptions { incremental: false }))
        .unwrap();
    assert_eq!(src.wait_final(), MigrationStatus::Failed);
    let err = dst.finish().unwrap_err();
    assert!(matches!(err, MigrationError::DiskVerifyMissing), "{err}");
    assert_eq!(src.vm.run_state(), RunState::Running);
    assert_ne!(dst.vm.run_state(), RunState::Running);
}
