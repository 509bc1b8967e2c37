//! Disk helpers shared by the block-migration tests: images made and judged by `qemu-img`,
//! and a [`Vm`] whose "vCPUs" are disk writers that pause with the guest.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use block::{Disk, DiskFormat, DiskWriter, DiskWriterConfig, DriveSpec, WritePattern};
use guest_ram::{Backing, GuestRam, RamBlock};
use migration::block::BlockMigrationOptions;
use migration::{
    Capability, EventBus, GlobalState, MigrationError, MigrationStatus, OutgoingSession, RunState,
    Runtime, Settings, VmControl,
};
use serde_json::Value;
use testkit::{ram_registry, FakeVm, Side};

pub const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// qemu-img helpers

pub fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (qemu-utils) is installed")
}

pub fn qemu_img_ok(args: &[&str]) -> String {
    let out = qemu_img(args);
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub fn create(path: &Path, format: &str, size: u64) {
    qemu_img_ok(&["create", "-q", "-f", format, p(path), &size.to_string()]);
}

pub fn create_overlay(path: &Path, base: &Path) {
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        p(base),
        "-F",
        "qcow2",
        p(path),
    ]);
}

/// Ranges `[start, end)` allocated in the top layer, merged.
pub fn top_allocation(path: &Path) -> Vec<(u64, u64)> {
    let json = qemu_img_ok(&["map", "-U", "--output=json", p(path)]);
    let entries: Vec<Value> = serde_json::from_str(&json).unwrap();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in entries {
        if e["depth"].as_u64() != Some(0) || e["present"].as_bool() != Some(true) {
            continue;
        }
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        match out.last_mut() {
            Some(last) if last.1 == start => last.1 = start + len,
            _ => out.push((start, start + len)),
        }
    }
    out
}

pub fn open(path: &Path, format: DiskFormat, id: &str) -> Arc<Disk> {
    Arc::new(
        Disk::open(&DriveSpec {
            id: id.into(),
            path: path.into(),
            format,
        })
        .unwrap(),
    )
}

/// Fills `len` bytes at `offset` with pseudo-random data, leaving every fourth MiB zero.
pub fn fill(disk: &Disk, offset: u64, len: u64, seed: u64) {
    let mut x = seed;
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = offset;
    while pos < offset + len {
        if (pos / MIB) % 4 != 3 {
            for w in buf.chunks_exact_mut(8) {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                w.copy_from_slice(&x.to_le_bytes());
            }
            let n = MIB.min(offset + len - pos) as usize;
            disk.write(pos, &buf[..n]).unwrap();
        }
        pos += MIB;
    }
}

// ---------------------------------------------------------------------------------------------
// A VM whose "vCPUs" are disk writers

/// One VM of a block-migration pair: its drives and their writers, which pause with the
/// (fake) vCPUs as a real VMM's do.
pub struct Vm {
    pub disks: Vec<Arc<Disk>>,
    pub writers: Arc<Mutex<Vec<DiskWriter>>>,
    /// Writes completed when the guest was stopped for the switchover.
    pub writes_at_stop: Arc<AtomicU64>,
    pub side: Side<FakeVm>,
}

impl std::ops::Deref for Vm {
    type Target = Side<FakeVm>;
    fn deref(&self) -> &Side<FakeVm> {
        &self.side
    }
}

pub fn total_writes(writers: &Mutex<Vec<DiskWriter>>) -> u64 {
    writers
        .lock()
        .unwrap()
        .iter()
        .map(|w| w.stats().writes)
        .sum()
}

impl Vm {
    pub fn writes(&self) -> u64 {
        total_writes(&self.writers)
    }
}

pub fn side(disks: Vec<Arc<Disk>>, running: bool) -> Vm {
    let ram = Arc::new(GuestRam::new(vec![RamBlock::new(
        "pc.ram",
        8 * MIB,
        Backing::Anonymous,
    )
    .unwrap()]));
    ram.blocks()[0].write_page(1, &[0x5a; 4096]).unwrap();
    let vm = Arc::new(FakeVm::new(running));
    let writers: Arc<Mutex<Vec<DiskWriter>>> = Arc::default();
    let writes_at_stop = Arc::new(AtomicU64::new(0));
    let (w, at_stop) = (writers.clone(), writes_at_stop.clone());
    vm.on_stop(move || {
        for d in w.lock().unwrap().iter() {
            d.pause();
        }
        at_stop.store(total_writes(&w), Ordering::SeqCst);
    });
    let w = writers.clone();
    vm.on_start(move || {
        for d in w.lock().unwrap().iter() {
            d.resume();
        }
    });
    let global = GlobalState::new();
    // Block before RAM: the block section precedes the RAM section in every phase (QEMU).
    let reg = ram_registry(&ram, disks.clone(), &global);
    Vm {
        disks,
        writers,
        writes_at_stop,
        side: Side::new(reg, vm, global),
    }
}

/// A session over fresh statistics, for driving a handler by hand.
pub fn session(settings: Settings) -> (Arc<Runtime>, OutgoingSession) {
    let rt = Arc::new(Runtime::new(settings));
    let s = OutgoingSession::new(rt.clone(), Arc::new(EventBus::new()), Vec::new());
    (rt, s)
}

pub fn start_writer(src: &Vm, disk: usize, region: std::ops::Range<u64>, seed: u64) {
    let w = DiskWriter::start(
        src.disks[disk].clone(),
        DiskWriterConfig {
            region,
            rate: 500,
            pattern: WritePattern::Random,
            seed,
        },
    )
    .unwrap();
    src.writers.lock().unwrap().push(w);
}

/// Runs one `migrate -b`/`-i` from `src` to `dst`; returns the destination's load result.
///
/// The writers' working sets (a few MiB) stay well below what can be sent within the
/// downtime limit at this bandwidth, so the migration converges; like RAM, a guest dirtying
/// more than the link can carry would keep it iterating.
pub fn migrate(src: &Vm, dst: &Vm, incremental: bool) -> Result<(), MigrationError> {
    // A limited bandwidth makes the migration last long enough for the guest to write during
    // the bulk and dirty phases.
    src.set_params(serde_json::json!({ "max-bandwidth": 48 * MIB }));
    // Both sides check RAM and disks by digest (disk-verify).
    src.enable(&[Capability::RamVerify]);
    dst.enable(&[Capability::RamVerify]);
    let uri = dst.listen("tcp:127.0.0.1:0");
    let writes_before = src.writes();
    src.migrate_with(&uri, Some(BlockMigrationOptions { incremental }))
        .unwrap();
    assert!(src.state.capabilities().get(Capability::Block) || !src.state.status().is_running());
    let status = src.wait_final();
    src.finish().ok();
    let loaded = dst.finish();
    if loaded.is_ok() {
        assert_eq!(status, MigrationStatus::Completed, "{:?}", src.state.info());
        assert!(
            src.writes_at_stop.load(Ordering::SeqCst) > writes_before,
            "the guest wrote to its disk during the migration"
        );
        assert_eq!(dst.vm.run_state(), RunState::Running);
        assert!(
            src.state.info().disk.is_none(),
            "no disk stats after completion"
        );
    }
    // migrate -b/-i options last for one migration only.
    assert!(!src.state.capabilities().get(Capability::Block));
    assert!(!src.state.parameters().block_incremental);
    loaded
}

/// Stops the source's writers and flushes every disk so qemu-img sees the final images.
pub fn quiesce(src: &Vm, dst: &Vm) {
    for w in src.writers.lock().unwrap().drain(..) {
        let stats = w.stop();
        assert!(stats.error.is_none(), "{stats:?}");
    }
    for d in src.disks.iter().chain(dst.disks.iter()) {
        d.flush().unwrap();
        assert!(!d.journal_path().exists());
        assert!(!d.is_incoming());
    }
}

pub fn assert_identical(a: &Path, fa: &str, b: &Path, fb: &str) {
    let out = qemu_img(&["compare", "-U", "-f", fa, "-F", fb, p(a), p(b)]);
    assert!(
        out.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
