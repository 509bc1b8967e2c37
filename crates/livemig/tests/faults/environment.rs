//! Faults of the environment rather than of a process: a destination whose disk fills up, and
//! a link that goes down between two network namespaces (no FIN, no RST: the kernel here has
//! no netem, so a dead link is `ip link set DEV down`). Both need root; without it they print
//! a visible SKIP.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cases::{
    caps, guest_args, qemu_img_create, retry, settle, side_state, SideState, Variant,
};
use crate::common::{configure, deferred_destination, Vm};
use crate::netns::{Host, Testbed};

const MIB: u64 = 1 << 20;

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A small tmpfs, unmounted on drop.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().to_str()?;
        let opts = format!("size={size}");
        run("mount", &["-t", "tmpfs", "-o", &opts, "tmpfs", path]).then_some(SmallFs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", self.0.path().to_str().unwrap_or("")]);
    }
}

fn ram_stat(vm: &mut Vm, key: &str) -> u64 {
    vm.cmd("query-migrate", Value::Null)["ram"][key]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_full_destination_disk_fails_the_migration_and_leaves_everything_as_it_was() {
    let v = Variant {
        block: true,
        ..Variant::default()
    };
    // 6 MiB: room for the empty image and its journal, not for the 12 MiB the source writes.
    let Some(fs) = SmallFs::mount("6m") else {
        testkit::print_skip("cannot mount a tmpfs (needs root): full destination disk");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    qemu_img_create(&dir.path().join("src.qcow2"));
    qemu_img_create(&fs.path().join("dst.qcow2"));
    let before = std::fs::read(fs.path().join("dst.qcow2")).unwrap();
    let mut sargs = guest_args(dir.path(), v, "src.qcow2");
    sargs.extend(["--fill", "8M"].map(String::from));
    let sargs: Vec<&str> = sargs.iter().map(|s| s.as_str()).collect();
    // Data on 12 of the source disk's 16 MiB.
    assert!(run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 0 12M",
            dir.path().join("src.qcow2").to_str().unwrap()
        ]
    ));
    let mut src = Vm::start(dir.path(), "src", &sargs);
    let dargs = guest_args(fs.path(), v, "dst.qcow2");
    let dargs: Vec<&str> = dargs.iter().map(|s| s.as_str()).collect();
    let (mut dst, uri) = deferred_destination(dir.path(), "dst", &dargs, &caps(v), Value::Null);
    configure(&mut src, &caps(v), Value::Null);
    src.wait_status("running");
    src.cmd("migrate", json!({"uri": uri, "blk": true}));
    let info = src.wait_migration();
    assert_eq!(info["status"], "failed", "{info}");
    assert_eq!(side_state(&mut src), SideState::Running);
    // A destination whose load failed exits (as QEMU's); give it the moment it needs.
    settle(&mut dst, "full disk, destination");
    assert_eq!(side_state(&mut dst), SideState::Gone, "{}", dst.stderr());
    assert!(
        dst.stderr().contains("No space left on device"),
        "the destination names the cause: {}",
        dst.stderr()
    );
    // The destination image is as it was, with no journal left behind.
    assert_eq!(std::fs::read(fs.path().join("dst.qcow2")).unwrap(), before);
    assert!(!fs.path().join(".dst.qcow2.livemig-undo").exists());
    // The source lost nothing: it migrates (disk included) to a destination with room.
    qemu_img_create(&dir.path().join("dst.qcow2"));
    retry(dir.path(), v, &mut src);
}

fn destination_in(tb: &Testbed, dir: &Path, name: &str, port: u16) -> Vm {
    let args = guest_args(dir, Variant::default(), "");
    let mut args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    args.extend(["--incoming", "defer"]);
    let mut dst = Vm::start_wrapped(dir, name, &tb.exec(Host::B), &args, |_| {});
    configure(&mut dst, &caps(Variant::default()), Value::Null);
    let uri = format!("tcp:{}:{port}", tb.addr(Host::B));
    dst.cmd("migrate-incoming", json!({ "uri": uri }));
    dst
}

#[test]
fn a_link_that_goes_down_mid_migration_leaves_the_source_running_after_cancel() {
    let tb = match Testbed::create("lmF") {
        Ok(tb) => tb,
        Err(e) => {
            testkit::print_skip(&format!("link down: {e}"));
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut dst = destination_in(&tb, dir.path(), "dst", 47011);
    let mut sargs = guest_args(dir.path(), Variant::default(), "");
    sargs.extend(["--fill", "16M"].map(String::from));
    let sargs: Vec<&str> = sargs.iter().map(|s| s.as_str()).collect();
    let mut src = Vm::start_wrapped(dir.path(), "src", &tb.exec(Host::A), &sargs, |_| {});
    configure(
        &mut src,
        &caps(Variant::default()),
        json!({"max-bandwidth": 16 * MIB}),
    );
    src.wait_status("running");
    let uri = format!("tcp:{}:47011", tb.addr(Host::B));
    src.cmd("migrate", json!({ "uri": uri }));
    let t = Instant::now();
    while ram_stat(&mut src, "transferred") < 4 * MIB {
        assert!(t.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    tb.set_link(Host::A, false).unwrap();
    // Nothing arrives any more and nothing tells either side: the source keeps trying, its
    // guest running; the destination waits, its guest not started.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(src.cmd("query-migrate", Value::Null)["status"], "active");
    assert_eq!(side_state(&mut src), SideState::Running);
    assert_ne!(side_state(&mut dst), SideState::Running);
    // The operator's way out: cancel; the guest stays on the source.
    src.cmd("migrate_cancel", Value::Null);
    let info = src.wait_migration();
    assert_eq!(info["status"], "cancelled", "{info}");
    assert_eq!(side_state(&mut src), SideState::Running);
    assert_ne!(side_state(&mut dst), SideState::Running);
    dst.kill();
    // Once the link is back the source migrates to a new destination.
    tb.set_link(Host::A, true).unwrap();
    let mut dst2 = destination_in(&tb, dir.path(), "dst2", 47012);
    src.cmd(
        "migrate-set-parameters",
        json!({"max-bandwidth": 1u64 << 30}),
    );
    let uri = format!("tcp:{}:47012", tb.addr(Host::B));
    src.cmd("migrate", json!({ "uri": uri }));
    let info = src.wait_migration();
    assert_eq!(info["status"], "completed", "{info}\n{}", dst2.stderr());
    dst2.wait_status("running");
}
