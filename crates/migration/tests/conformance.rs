//! The device-state conformance checks (`testkit::conformance`) on the engine's own device
//! sections: `globalstate`, `ram-verify` and `disk-verify`.

use std::sync::Arc;

use guest_ram::{Backing, GuestRam, RamBlock};
use migration::block::DiskVerify;
use migration::verify::RamVerify;
use migration::GlobalState;
use testkit::conformance::boxed;

fn global_state(runstate: Option<&str>) -> GlobalState {
    let g = GlobalState::new();
    if let Some(s) = runstate {
        g.store(s);
    }
    g
}

testkit::device_state_conformance!(globalstate {
    populated: boxed(global_state(Some("paused"))),
    fresh: boxed(global_state(None)),
});

/// Two RAM blocks with the same deterministic content on every call.
fn ram() -> Arc<GuestRam> {
    let blocks = [("pc.ram", 1u64 << 20), ("vga.vram", 64 << 10)]
        .iter()
        .enumerate()
        .map(|(i, &(name, size))| {
            let b = RamBlock::new(name, size, Backing::Anonymous).unwrap();
            for page in (0..b.pages()).step_by(3) {
                let fill = vec![(page as u8) ^ (i as u8 + 1); 4096];
                b.write_page(page, &fill).unwrap();
            }
            b
        })
        .collect();
    Arc::new(GuestRam::new(blocks))
}

// Loading `ram-verify` compares digests with the local RAM: the destination's RAM equals the
// source's, so a fresh verifier saves the same digests before loading.
testkit::device_state_conformance!(ram_verify {
    populated: boxed(RamVerify::new(ram())),
    fresh: boxed(RamVerify::new(ram())),
    load_only_checks: true,
});

#[test]
fn ram_verify_refuses_other_ram() {
    let src = RamVerify::new(ram());
    let other = ram();
    other.blocks()[1].write_page(2, &[0xee; 4096]).unwrap();
    let mut dst = RamVerify::new(other);
    let bytes = testkit::conformance::save_bytes(&src);
    let desc = migration::DeviceState::description(&dst);
    let v = savevm::vmstate::load(&desc, 2, &mut savevm::qemu_file::memory_reader(bytes)).unwrap();
    let err = migration::DeviceState::load(&mut dst, &v, 2).unwrap_err();
    assert!(
        matches!(err, migration::MigrationError::VerifyMismatch(ref b) if b == "vga.vram"),
        "{err:?}"
    );
}

/// A 3 MiB raw drive `drive0` with the same content on every call, in a directory that lives
/// as long as the test binary.
fn disk() -> Arc<block::Disk> {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = dir.path().join(format!("d{n}.raw"));
    std::fs::File::create(&path)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    let spec = block::DriveSpec::parse(&format!("file={},format=raw,id=drive0", path.display()), 0);
    let d = Arc::new(block::Disk::open(&spec.unwrap()).unwrap());
    d.write(1 << 20, &[0x3c; 8192]).unwrap();
    d
}

/// A `disk-verify` device whose digests were taken (as the switchover does before saving).
fn disk_verify() -> DiskVerify {
    let mut v = DiskVerify::new(vec![disk()]);
    migration::DeviceState::pre_save(&mut v).unwrap();
    v
}

// Like `ram-verify`: loading compares with the local drives, which equal the source's.
testkit::device_state_conformance!(disk_verify {
    populated: boxed(disk_verify()),
    fresh: boxed(disk_verify()),
    load_only_checks: true,
});

#[test]
fn disk_verify_refuses_another_disk_and_never_sends_uncomputed_digests() {
    let src = disk_verify();
    let other = disk();
    other.write(2 << 20, &[1]).unwrap();
    let mut dst = DiskVerify::new(vec![other]);
    let bytes = testkit::conformance::save_bytes(&src);
    let desc = migration::DeviceState::description(&dst);
    let v = savevm::vmstate::load(&desc, 1, &mut savevm::qemu_file::memory_reader(bytes)).unwrap();
    let err = migration::DeviceState::load(&mut dst, &v, 1).unwrap_err();
    assert!(
        matches!(err, migration::MigrationError::DiskVerifyMismatch(ref d) if d == "drive0"),
        "{err:?}"
    );
    // Without pre_save there is no digest to send: the value is empty, so the section cannot
    // be saved at all rather than carrying a made-up digest.
    let unprepared = DiskVerify::new(vec![disk()]);
    assert!(migration::DeviceState::save(&unprepared)
        .get_bytes("drive0")
        .is_err());
}
