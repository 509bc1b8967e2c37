//! Boots the payload ELF under QEMU 7.2 `-M microvm` (TCG, PVH boot through `-kernel`) and
//! reads its counter and self-check from the serial port: the guest used by livemig's KVM
//! VMM is the same one QEMU boots, so benchmarks compare the two on the identical guest.
//! Prints `SKIP` and passes when `qemu-system-x86_64` is not installed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use payload::{Output, Params, SelfCheck, PAYLOAD_ELF};

/// Kills the QEMU child when the test ends, also on a failed assertion.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn boot(elf: &Path, serial: &Path, params: &Params) -> Qemu {
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm",
            "-accel",
            "tcg",
            "-m",
            "64M",
            "-nodefaults",
            "-display",
            "none",
        ])
        .arg("-kernel")
        .arg(elf)
        .arg("-append")
        .arg(params.cmdline())
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 starts");
    Qemu(child)
}

#[test]
fn payload_boots_under_qemu_microvm() {
    if testkit::require_qemu_system("payload_boots_under_qemu_microvm").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let elf = dir.path().join("payload.elf");
    std::fs::write(&elf, PAYLOAD_ELF).unwrap();
    let serial = dir.path().join("serial.out");
    let params = Params {
        fill: 1 << 20,
        ws: 64 << 10,
        selfcheck: 3,
        max: 6,
        ..Default::default()
    };
    let mut qemu = boot(&elf, &serial, &params);
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        let out = Output::parse(&text);
        if out.poweroff.is_some() {
            break out;
        }
        if let Ok(Some(status)) = qemu.0.try_wait() {
            panic!("QEMU exited early with {status}; serial output:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "no poweroff line within 60 s; serial output:\n{text}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(out.starts, 1);
    assert_eq!(out.counts, (1..=6).collect::<Vec<u64>>());
    assert_eq!(
        out.selfchecks,
        vec![SelfCheck::Ok { count: 3 }, SelfCheck::Ok { count: 6 }]
    );
    assert_eq!(out.poweroff, Some(6));
}
