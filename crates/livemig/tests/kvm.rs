//! A KVM guest (the built-in payload) migrated live between two `livemig run --accel kvm`
//! processes: the serial counter goes on where it stopped, with no reboot. Prints SKIP without a
//! usable /dev/kvm.

mod common;

use std::time::Duration;

use common::guest::assert_continues;
use common::{destination, Vm};
use serde_json::{json, Value};

#[test]
fn kvm_guest_keeps_running_across_processes() {
    if !testkit::require_kvm("kvm_guest_keeps_running_across_processes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let serial = |name: &str| dir.path().join(format!("{name}.serial"));
    let spec = |name: &str| format!("file:{}", serial(name).display());
    let (src_serial, dst_serial) = (spec("src"), spec("dst"));
    let guest = [
        "--accel",
        "kvm",
        "-m",
        "64M",
        "--smp",
        "1",
        "--append",
        "fill=131072 ws=65536 selfcheck=5",
    ];
    let mut dst_args = guest.to_vec();
    dst_args.extend(["--serial", &dst_serial]);
    let (mut dst, uri) = destination(dir.path(), "dst", &dst_args, "tcp:127.0.0.1:0");
    let mut src_args = guest.to_vec();
    src_args.extend(["--serial", &src_serial]);
    let mut src = Vm::start(dir.path(), "src", &src_args);
    src.wait_status("running");
    // Wait until the guest counts.
    let t = std::time::Instant::now();
    while payload::Output::parse(&std::fs::read_to_string(serial("src")).unwrap_or_default())
        .counts
        .len()
        < 3
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the guest does not count"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    src.enable_verify();
    src.cmd("migrate", json!({ "uri": uri }));
    let info = src.wait_migration();
    assert_eq!(info["status"], "completed", "{info}\n{}", src.stderr());
    dst.wait_status("running");
    assert_eq!(src.status(), "postmigrate");
    // The guest is slow under nested KVM and on a loaded machine: wait for its next self-check
    // rather than for a fixed time.
    let read = |side| payload::Output::parse(&std::fs::read_to_string(serial(side)).unwrap());
    let t = std::time::Instant::now();
    // A guest stopped between a count and its self-check prints the self-check first here.
    let went_on = |o: &payload::Output| !o.selfchecks.is_empty() && !o.counts.is_empty();
    while !went_on(&read("dst")) && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = read("src");
    let after = read("dst");
    assert!(
        !after.selfchecks.is_empty(),
        "no self-check ran on the destination"
    );
    assert_continues(*before.counts.last().unwrap(), &after);
    let _ = dst.cmd("quit", Value::Null);
}

#[test]
fn guest_power_off_ends_the_process() {
    if !testkit::require_kvm("guest_power_off_ends_the_process") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let serial = format!("file:{}", dir.path().join("vm.serial").display());
    let args = [
        "--accel",
        "kvm",
        "-m",
        "32M",
        "--append",
        "fill=65536 ws=65536 max=3",
        "--serial",
        &serial,
    ];
    let mut vm = Vm::start(dir.path(), "vm", &args);
    let out = vm.wait_exit();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("vm.serial")).unwrap();
    assert_eq!(payload::Output::parse(&text).poweroff, Some(3), "{text}");
}

#[test]
fn serial_port_on_a_unix_socket() {
    if !testkit::require_kvm("serial_port_on_a_unix_socket") {
        return;
    }
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serial.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let spec = format!("unix:{}", path.display());
    let args = [
        "--accel",
        "kvm",
        "-m",
        "32M",
        "--append",
        "fill=65536 ws=65536 max=2",
        "--serial",
        &spec,
    ];
    let mut vm = Vm::start(dir.path(), "vm", &args);
    let (mut conn, _) = listener.accept().unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    assert!(vm.wait_exit().status.success());
    assert_eq!(payload::Output::parse(&text).counts, vec![1, 2], "{text}");
}
