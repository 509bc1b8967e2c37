//! The device-state conformance checks (`testkit::conformance`) on the engine's own device
//! sections: `globalstate` and `ram-verify`.

use std::sync::Arc;

use guest_ram::{Backing, GuestRam, RamBlock};
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
    let v = savevm::vmstate::load(&desc, 1, &mut savevm::qemu_file::memory_reader(bytes)).unwrap();
    let err = migration::DeviceState::load(&mut dst, &v, 1).unwrap_err();
    assert!(
        matches!(err, migration::MigrationError::VerifyMismatch(ref b) if b == "vga.vram"),
        "{err:?}"
    );
}
