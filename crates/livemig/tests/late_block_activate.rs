//! `late-block-activate` on a destination started with `-S`, with an image on shared storage:
//! without it the destination takes the image (its lock) when the migration completes; with
//! it only at `cont`, as QEMU 7.2 does. Whether anybody holds the image is asked of
//! `qemu-img info`, which fails while a process has it locked for writing. Prints SKIP
//! without qemu-img.

mod common;

use std::path::Path;
use std::process::Command;

use common::{image_unlocked as unlocked, Vm};
use serde_json::{json, Value};

/// Migrates a VM whose disk is `img` into a `-S` destination using the same image, with
/// `late-block-activate` on the destination if `late`; returns the destination, paused.
fn migrate_into_paused(dir: &Path, img: &Path, late: bool) -> (Vm, Vm) {
    let drive = format!("file={},format=qcow2", img.display());
    let guest = [
        "-m",
        "64M",
        "--smp",
        "1",
        "--working-set",
        "2M",
        "--drive",
        &drive,
    ];
    let mut dst_args = guest.to_vec();
    dst_args.extend(["-S", "--incoming", "defer"]);
    let mut dst = Vm::start(dir, "dst", &dst_args);
    let mut src = Vm::start(dir, "src", &guest);
    src.wait_status("running");
    assert!(!unlocked(img), "the running source holds its image");
    dst.cmd(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "late-block-activate", "state": late}]}),
    );
    let uri = format!("tcp:127.0.0.1:{}", testkit::free_tcp_port());
    dst.cmd("migrate-incoming", json!({ "uri": uri }));
    src.cmd("migrate", json!({ "uri": uri }));
    let info = src.wait_migration();
    assert_eq!(info["status"], "completed", "{info}\n{}", src.stderr());
    let dinfo = common::wait_final_migration(|| dst.cmd("query-migrate", Value::Null));
    assert_eq!(dinfo["status"], "completed", "{dinfo}\n{}", dst.stderr());
    assert_eq!(dst.status(), "paused");
    (src, dst)
}

#[test]
fn late_block_activate_leaves_the_image_to_cont() {
    if testkit::require_qemu_img("late_block_activate_leaves_the_image_to_cont").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("shared.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "16M"])
        .output()
        .unwrap();
    assert!(out.status.success());

    let (_src, mut dst) = migrate_into_paused(dir.path(), &img, true);
    assert!(
        unlocked(&img),
        "late-block-activate: nobody holds the image before cont"
    );
    dst.cmd("cont", Value::Null);
    dst.wait_status("running");
    assert!(!unlocked(&img), "cont took the image");
    dst.quit();
}

#[test]
fn without_late_block_activate_the_destination_takes_the_image_at_completion() {
    let test = "without_late_block_activate_the_destination_takes_the_image_at_completion";
    if testkit::require_qemu_img(test).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("shared.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "16M"])
        .output()
        .unwrap();
    assert!(out.status.success());

    let (_src, mut dst) = migrate_into_paused(dir.path(), &img, false);
    assert!(!unlocked(&img), "the paused destination holds the image");
    dst.cmd("cont", Value::Null);
    dst.wait_status("running");
    dst.quit();
}
