//! Block migration through the CLI: `migrate` with `blk` (full copy) and `inc` (incremental
//! over a shared base) while the guest writes to its disk; `qemu-img compare` must find the
//! images identical and `qemu-img check` clean. Prints SKIP without qemu-img.

mod common;

use std::path::Path;
use std::process::Command;

use common::{destination, Vm};
use serde_json::{json, Value};

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img")
}

fn have_qemu_img(test: &str) -> bool {
    testkit::require_qemu_img(test).is_some()
}

fn create(path: &Path, args: &[&str], size: &str) {
    let p = path.to_str().unwrap();
    let mut all = vec!["create", "-q"];
    all.extend(args);
    all.push(p);
    all.push(size);
    let out = qemu_img(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn migrate_disk(dir: &Path, src_drive: &str, dst_drive: &str, opt: &str) -> Value {
    // A quiet RAM workload: this test is about the disk.
    let guest = [
        "-m",
        "64M",
        "--smp",
        "1",
        "--working-set",
        "4M",
        "--write-rate",
        "4M",
    ];
    let mut src_args = guest.to_vec();
    src_args.extend([
        "--drive",
        src_drive,
        "--disk-write-rate",
        "400",
        "--disk-working-set",
        "4M",
    ]);
    let mut dst_args = guest.to_vec();
    dst_args.extend(["--drive", dst_drive]);
    let (mut dst, uri) = destination(dir, "dst", &dst_args, "tcp:127.0.0.1:0");
    let mut src = Vm::start(dir, "src", &src_args);
    src.wait_status("running");
    src.enable_verify();
    src.cmd("migrate-set-parameters", json!({"max-bandwidth": 32 << 20}));
    std::thread::sleep(std::time::Duration::from_millis(200));
    src.cmd("migrate", json!({ "uri": uri, opt: true }));
    let info = src.wait_migration();
    assert_eq!(
        info["status"],
        "completed",
        "{info}\n{}\n{}",
        src.stderr(),
        dst.stderr()
    );
    dst.wait_status("running");
    // The block capability only lasted for that migration.
    let caps = src.cmd("query-migrate-capabilities", Value::Null);
    assert!(caps
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["capability"] == "block" && c["state"] == false));
    let _ = dst.qmp().execute("quit", None);
    dst.wait_exit();
    let _ = src.qmp().execute("quit", None);
    src.wait_exit();
    info
}

fn assert_identical(a: &Path, b: &Path) {
    let out = qemu_img(&["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn assert_check_clean(p: &Path) {
    let out = qemu_img(&["check", p.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn full_copy_of_a_qcow2_disk_being_written() {
    if !have_qemu_img("full_copy_of_a_qcow2_disk_being_written") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src.qcow2"), dir.path().join("dst.qcow2"));
    create(&src, &["-f", "qcow2"], "16M");
    create(&dst, &["-f", "qcow2"], "16M");
    let src_spec = format!("file={},format=qcow2", src.display());
    let dst_spec = format!("file={},format=qcow2", dst.display());
    let info = migrate_disk(dir.path(), &src_spec, &dst_spec, "blk");
    assert!(info["status"] == "completed");
    assert_identical(&src, &dst);
    assert_check_clean(&dst);
}

#[test]
fn incremental_copy_over_a_shared_base() {
    if !have_qemu_img("incremental_copy_over_a_shared_base") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(
        &base,
        (0..16u32 << 20)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let (src, dst) = (dir.path().join("src.qcow2"), dir.path().join("dst.qcow2"));
    let b = base.to_str().unwrap();
    create(&src, &["-f", "qcow2", "-b", b, "-F", "raw"], "16M");
    create(&dst, &["-f", "qcow2", "-b", b, "-F", "raw"], "16M");
    let src_spec = format!("file={},format=qcow2", src.display());
    let dst_spec = format!("file={},format=qcow2", dst.display());
    migrate_disk(dir.path(), &src_spec, &dst_spec, "inc");
    assert_identical(&src, &dst);
    assert_check_clean(&dst);
    // The destination overlay holds what the source overlay holds, not the base.
    // Allocated 64 KiB clusters of the top layer (qemu-img merges extents by host layout).
    let map = |p: &Path| -> Vec<u64> {
        let out = qemu_img(&["map", "--output=json", p.to_str().unwrap()]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["depth"] == 0 && e["data"] == true)
            .flat_map(|e| {
                let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
                (start..start + len).step_by(65536)
            })
            .collect()
    };
    let (src_map, dst_map) = (map(&src), map(&dst));
    assert!(
        !src_map.is_empty(),
        "the guest wrote nothing to its overlay"
    );
    assert_eq!(src_map, dst_map);
}

#[test]
fn full_copy_writes_the_destination_file_in_place() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !have_qemu_img("full_copy_writes_the_destination_file_in_place") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src.qcow2"), dir.path().join("dst.qcow2"));
    create(&src, &["-f", "qcow2"], "16M");
    create(&dst, &["-f", "qcow2"], "16M");
    // The destination's image: reached through a symlink, hard-linked, mode 0640, owned by
    // nobody when we may chown.
    let (link, sym) = (
        dir.path().join("dst-link.qcow2"),
        dir.path().join("vm.qcow2"),
    );
    std::fs::hard_link(&dst, &link).unwrap();
    std::os::unix::fs::symlink("dst.qcow2", &sym).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o640)).unwrap();
    let chowned = std::os::unix::fs::chown(&dst, Some(65534), Some(65534)).is_ok();
    let before = std::fs::metadata(&dst).unwrap();
    let src_spec = format!("file={},format=qcow2", src.display());
    let dst_spec = format!("file={},format=qcow2", sym.display());
    migrate_disk(dir.path(), &src_spec, &dst_spec, "blk");
    assert_identical(&src, &sym);
    assert_check_clean(&dst);
    let after = std::fs::metadata(&dst).unwrap();
    assert_eq!(after.ino(), before.ino(), "the image file was replaced");
    assert_eq!(after.nlink(), 2);
    assert_eq!(after.mode() & 0o7777, 0o640);
    if chowned {
        assert_eq!(after.uid(), 65534);
    }
    assert!(std::fs::symlink_metadata(&sym)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_identical(&src, &link);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("livemig-undo"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_running_vm_locks_its_image_against_qemu_io() {
    if !have_qemu_img("a_running_vm_locks_its_image_against_qemu_io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.qcow2");
    create(&img, &["-f", "qcow2"], "16M");
    let drive = format!("file={},format=qcow2", img.display());
    let mut vm = Vm::start(
        dir.path(),
        "vm",
        &["-m", "64M", "--smp", "1", "--drive", &drive],
    );
    vm.wait_status("running");
    let before = std::fs::read(&img).unwrap();
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0xaa 0 4k",
            img.to_str().unwrap(),
        ])
        .output();
    let _ = vm.qmp().execute("quit", None);
    vm.wait_exit();
    let Ok(out) = out else {
        testkit::print_skip("qemu-io not installed");
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "qemu-io wrote an image livemig runs on"
    );
    assert!(stderr.contains("Failed to get \"write\" lock"), "{stderr}");
    assert!(std::fs::read(&img).unwrap() == before, "the image changed");
}

#[test]
fn shared_storage_migration_hands_the_image_over() {
    if !have_qemu_img("shared_storage_migration_hands_the_image_over") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("shared.qcow2");
    create(&img, &["-f", "qcow2"], "16M");
    // Both sides name the same image (shared storage, no -b): the destination opens it
    // inactive, the source gives it up at the switchover, the destination takes it over.
    let drive = format!("file={},format=qcow2", img.display());
    let info = migrate_disk(dir.path(), &drive, &drive, "detach");
    assert!(info.get("disk").is_none(), "{info}");
    assert_check_clean(&img);
}
