//! Same-host migration with a disk: the destination reopens the source's image instead of
//! receiving a copy. The operator-facing shape is QEMU's for shared storage: the destination
//! is started with the same `--drive file=…` and `migrate` runs without `blk`/`inc`; with
//! `x-ignore-shared` (+ `x-local-handover` for memfd RAM) nothing of RAM or disk crosses the
//! socket. The destination opens its image inactive (no lock), the source flushes it and
//! drops its lock when it stops for the switchover, the destination locks it when the
//! migration completes; after a failure the source locks it again and runs on.
//!
//! Who holds an image is asked of `qemu-img info`, which fails while a process has it locked
//! for writing. Prints SKIP without qemu-img.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{configure, deferred_destination_on, image_unlocked, Vm};
use serde_json::{json, Value};

const HANDOVER: [&str; 3] = ["x-ignore-shared", "x-local-handover", "ram-verify"];

/// A qcow2 image of 16 MiB at `dir/disk.qcow2`, or None (SKIP) without qemu-img.
fn image(dir: &Path, test: &str) -> Option<std::path::PathBuf> {
    testkit::require_qemu_img(test)?;
    let img = dir.join("disk.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "16M"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    Some(img)
}

/// `livemig run` arguments: memfd RAM, `--smp smp`, the image as its drive, and a disk writer
/// (400 writes/s over 4 MiB) when `writer`.
fn args(img: &Path, smp: &'static str, writer: bool) -> Vec<String> {
    let mut v: Vec<String> = [
        "-m",
        "64M",
        "--smp",
        smp,
        "--working-set",
        "2M",
        "--backing",
        "memfd",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend([
        "--drive".into(),
        format!("file={},format=qcow2", img.display()),
    ]);
    if writer {
        v.extend(["--disk-write-rate", "400", "--disk-working-set", "4M"].map(String::from));
    }
    v
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn qemu_img_ok(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A source with `src_smp` vCPUs writing its disk, and a destination on the same image with
/// `dst_smp` vCPUs waiting on a unix socket; both with the handover capabilities.
fn pair(dir: &Path, img: &Path, src_smp: &'static str, dst_smp: &'static str) -> (Vm, Vm, String) {
    let uri = format!("unix:{}", dir.join("mig.sock").display());
    let dst = deferred_destination_on(
        dir,
        "dst",
        &refs(&args(img, dst_smp, false)),
        &HANDOVER,
        &uri,
    );
    let mut src = Vm::start(dir, "src", &refs(&args(img, src_smp, true)));
    configure(&mut src, &HANDOVER, Value::Null);
    src.wait_status("running");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!image_unlocked(img), "the running source holds its image");
    (src, dst, uri)
}

#[test]
fn the_destination_reopens_the_image_and_nothing_of_it_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let test = "the_destination_reopens_the_image_and_nothing_of_it_is_sent";
    let Some(img) = image(dir.path(), test) else {
        return;
    };
    let (mut src, mut dst, uri) = pair(dir.path(), &img, "1", "1");
    src.cmd("migrate", json!({ "uri": uri }));
    let info = src.wait_completed(&dst);
    dst.wait_status("running");
    // No block migration ran, and the whole stream (device state included) is smaller than
    // one page: neither RAM nor the disk crossed the socket.
    assert!(info.get("disk").is_none(), "{info}");
    assert!(
        info["ram"]["transferred"].as_u64().unwrap() < 4096,
        "{info}"
    );
    assert_eq!(info["ram"]["normal"], 0, "{info}");
    // The image is the destination's now: locked while it runs, and the source (alive, in
    // postmigrate) no longer holds it.
    assert_eq!(src.status(), "postmigrate");
    assert!(!image_unlocked(&img), "the destination holds the image");
    let at_switchover = bytes(&img);
    dst.quit();
    assert!(
        image_unlocked(&img),
        "the source gave the image up at the switchover"
    );
    // What the source wrote up to the switchover reached the image (flushed, qcow2 metadata
    // included) and the destination, which only opened it, left it as it was.
    assert_eq!(
        bytes(&img),
        at_switchover,
        "the destination changed the image"
    );
    qemu_img_ok(&["check", img.to_str().unwrap()]);
}

#[test]
fn a_failed_switchover_gives_the_image_back_to_the_running_source() {
    let dir = tempfile::tempdir().unwrap();
    let test = "a_failed_switchover_gives_the_image_back_to_the_running_source";
    let Some(img) = image(dir.path(), test) else {
        return;
    };
    // The source has two vCPUs, the destination one: it refuses the second vCPU's state,
    // which comes after the source stopped and gave up its image.
    let (mut src, mut dst, uri) = pair(dir.path(), &img, "2", "1");
    configure(&mut src, &["pause-before-switchover"], Value::Null);
    src.cmd("migrate", json!({ "uri": uri }));
    let t = std::time::Instant::now();
    while src.cmd("query-migrate", Value::Null)["status"] != "pre-switchover" {
        assert!(t.elapsed() < Duration::from_secs(30), "{}", src.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Stopped for the switchover: the source flushed the image and dropped its lock; the
    // destination has it open, inactive.
    assert!(image_unlocked(&img), "the source still holds the image");
    src.cmd("migrate-continue", json!({"state": "pre-switchover"}));
    let info = src.wait_migration();
    assert_eq!(info["status"], "failed", "{info}");
    let refusal = String::from_utf8_lossy(&dst.wait_exit().stderr).into_owned();
    assert!(refusal.contains("soft-cpu"), "{refusal}");
    // The source took its image back and runs on, writing it.
    src.wait_status("running");
    assert!(
        !image_unlocked(&img),
        "the source did not lock its image again"
    );
    let before = bytes(&img);
    let t = std::time::Instant::now();
    while bytes(&img) == before {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the source does not write its disk any more"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    src.quit();
    qemu_img_ok(&["check", img.to_str().unwrap()]);
}
