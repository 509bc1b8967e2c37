//! HMP over a unix socket against real VMs: help, capabilities, a synchronous `migrate`,
//! `info migrate`, `info status`, and the parser's errors.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{destination, Vm, SMALL};

struct Hmp(UnixStream);

impl Hmp {
    fn connect(path: &Path) -> Hmp {
        let t = Instant::now();
        while !path.exists() {
            assert!(t.elapsed() < Duration::from_secs(20), "no HMP socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        let s = common::retry_connect(|| UnixStream::connect(path));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut h = Hmp(s);
        let banner = h.read_prompt();
        assert!(
            banner.contains("monitor - type 'help' for more information"),
            "{banner}"
        );
        h
    }

    /// Reads until the `(qemu) ` prompt; returns what came before it.
    fn read_prompt(&mut self) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !out.ends_with(b"(qemu) ") {
            let n = self.0.read(&mut buf).unwrap();
            assert!(n > 0, "HMP closed: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out[..out.len() - 7]).replace("\r\n", "\n")
    }

    fn run(&mut self, line: &str) -> String {
        self.0.write_all(format!("{line}\n").as_bytes()).unwrap();
        self.read_prompt()
    }
}

#[test]
fn hmp_session_migrates_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dst, uri) = destination(dir.path(), "dst", SMALL, "tcp:127.0.0.1:0");
    let hmp_path = dir.path().join("src.hmp");
    let spec = format!("unix:{},server=on,wait=off", hmp_path.display());
    let mut args = SMALL.to_vec();
    args.extend(["--fill", "16M", "--monitor", &spec]);
    let mut src = Vm::start(dir.path(), "src", &args);
    let mut hmp = Hmp::connect(&hmp_path);

    let help = hmp.run("help");
    assert!(help.contains("migrate [-d] [-b] [-i]"), "{help}");
    assert!(help.contains("migrate_set_capability"), "{help}");
    assert!(hmp.run("help migrate_cancel").contains("migrate_cancel"));
    assert_eq!(hmp.run("info status").trim(), "VM status: running");

    assert!(hmp
        .run("migrate -b -d tcp:127.0.0.1:1")
        .contains("migrate: unsupported option -d"));
    assert!(hmp.run("nosuch").contains("unknown command: 'nosuch'"));
    assert!(hmp
        .run("migrate_set_capability bogus on")
        .contains("Error:"));
    assert!(hmp
        .run("migrate_set_capability ram-verify on")
        .trim()
        .is_empty());
    assert!(hmp
        .run("info migrate_capabilities")
        .contains("ram-verify: on"));
    assert!(hmp
        .run("migrate_set_parameter downtime-limit 100")
        .trim()
        .is_empty());
    assert!(hmp
        .run("info migrate_parameters")
        .contains("downtime-limit: 100 ms"));

    // Without -d the command returns once the migration is over.
    let out = hmp.run(&format!("migrate {uri}"));
    assert!(!out.contains("Error"), "{out}");
    let info = hmp.run("info migrate");
    assert!(info.contains("Migration status: completed"), "{info}");
    assert!(
        info.contains("transferred ram: ") && info.contains("dirty sync count: "),
        "{info}"
    );
    assert_eq!(
        hmp.run("info status").trim(),
        "VM status: paused (postmigrate)"
    );
    dst.wait_status("running");

    // A failing synchronous migrate prints the error.
    let out = hmp.run("migrate tcp:127.0.0.1:1");
    assert!(
        out.contains("Error: Can't migrate the vm that was paused due to previous migration"),
        "{out}"
    );
    assert!(hmp.run("cont").trim().is_empty());
    assert_eq!(hmp.run("info status").trim(), "VM status: running");
    assert_eq!(src.status(), "running");
}
