//! Block migration from QEMU 7.2 into livemig over a live socket (issue "Reliability",
//! finding 8: chunks past 15–20 MiB were reported missing from the destination image while
//! both sides said `completed`). QEMU (`-M none`, file-backed RAM, one qcow2 drive with data)
//! runs `migrate` with `blk` (HMP `migrate -b`) straight into `livemig run --incoming tcp:`,
//! with no relay slowing the sender; after the destination quit, `qemu-img compare` must find
//! the images identical and `qemu-img check` the destination clean. Several drive sizes, so the
//! last chunks land in the bulk phase, in the END section, or both. Prints SKIP without QEMU.

mod common;

use std::path::Path;
use std::process::Command;

use common::destination;
use common::qemu::{Qemu, RAM};
use serde_json::{json, Value};

/// QEMU `-M none` with one drive; killed on drop.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `size_mib` qcow2 whose first `data_mib` MiB hold pseudo-random data, every seventh
/// 64 KiB cluster left zero (so the stream mixes data, zero data and unallocated chunks).
fn source_image(dir: &Path, size_mib: u64, data_mib: u64) -> std::path::PathBuf {
    let img = dir.join("src.qcow2");
    let data = dir.join("data.bin");
    let mut bytes = vec![0u8; (data_mib << 20) as usize];
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ size_mib;
    for (i, cluster) in bytes.chunks_mut(64 << 10).enumerate() {
        if i % 7 == 6 {
            continue;
        }
        for w in cluster.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(&data, bytes).unwrap();
    let (i, d) = (img.to_str().unwrap(), data.to_str().unwrap());
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", i, &format!("{size_mib}M")],
    );
    let write = format!("write -s {d} 0 {}M", data_mib);
    run("qemu-io", &["-f", "qcow2", "-c", &write, i]);
    std::fs::remove_file(&data).unwrap();
    img
}

/// QEMU migrates a `size_mib` drive (`data_mib` of data) into livemig at full speed, with
/// capabilities `caps` on in QEMU.
fn qemu_to_livemig_disk(test: &str, size_mib: u64, data_mib: u64, caps: &[&str]) {
    let Some(qemu) = testkit::require_qemu_system(test) else {
        return;
    };
    if testkit::require_qemu_img(test).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source_image(dir.path(), size_mib, data_mib);
    let dst = dir.path().join("dst.qcow2");
    let d = dst.to_str().unwrap();
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", d, &format!("{size_mib}M")],
    );
    let drive = format!("file={d},format=qcow2,id=drive0");
    let args = ["--machine", "none", "-m", "64M", "--drive", &drive];
    let (mut dst_vm, uri) = destination(dir.path(), "dst", &args, "tcp:127.0.0.1:0");
    let drive_arg = format!("if=none,id=drive0,format=qcow2,file={}", src.display());
    let ram = dir.path().join("qemu.ram");
    std::fs::File::create(&ram).unwrap().set_len(RAM).unwrap();
    let mut q = Qemu::start(&qemu, dir.path(), &ram, &["-drive".into(), drive_arg]);
    if !caps.is_empty() {
        let list: Vec<Value> = caps
            .iter()
            .map(|c| json!({"capability": c, "state": true}))
            .collect();
        q.cmd("migrate-set-capabilities", json!({ "capabilities": list }));
    }
    q.cmd("migrate", json!({ "uri": uri, "blk": true }));
    let info = q.wait_migration();
    assert_eq!(info["status"], "completed", "{info}\n{}", dst_vm.stderr());
    let dinfo = common::wait_final_migration(|| dst_vm.cmd("query-migrate", Value::Null));
    assert_eq!(dinfo["status"], "completed", "{dinfo}\n{}", dst_vm.stderr());
    drop(q);
    let out = dst_vm.quit();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("qemu-img")
        .args(["compare", src.to_str().unwrap(), d])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{size_mib} MiB drive ({data_mib} MiB data): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    run("qemu-img", &["check", "-q", d]);
}

#[test]
fn qemu_block_migration_8m_drive() {
    qemu_to_livemig_disk("qemu_block_migration_8m_drive", 8, 5, &[]);
}

#[test]
fn qemu_block_migration_64m_drive_21m_data() {
    qemu_to_livemig_disk("qemu_block_migration_64m_drive_21m_data", 64, 21, &[]);
}

#[test]
fn qemu_block_migration_96m_drive_full() {
    qemu_to_livemig_disk("qemu_block_migration_96m_drive_full", 96, 96, &[]);
}

#[test]
fn qemu_block_migration_zero_blocks() {
    qemu_to_livemig_disk("qemu_block_migration_zero_blocks", 64, 21, &["zero-blocks"]);
}

#[test]
fn qemu_block_migration_return_path() {
    qemu_to_livemig_disk("qemu_block_migration_return_path", 64, 21, &["return-path"]);
}
