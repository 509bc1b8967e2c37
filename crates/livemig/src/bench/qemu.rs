//! QEMU 7.2 as the other implementation in a bench case: a `qemu-system-x86_64` process with
//! a QMP socket in a scratch directory, killed when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use monitor::QmpClient;

/// A running QEMU, killed on drop.
pub(super) struct QemuProcess(Child);

impl Drop for QemuProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl QemuProcess {
    /// Starts `qemu-system-x86_64 ARGS -qmp unix:DIR/NAME.qmp` and connects to its QMP.
    pub(super) fn start(
        dir: &Path,
        name: &str,
        args: &[String],
    ) -> anyhow::Result<(QemuProcess, QmpClient)> {
        let sock = dir.join(format!("{name}.qmp"));
        let child = Command::new("qemu-system-x86_64")
            .args(args)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start qemu-system-x86_64")?;
        let vm = QemuProcess(child);
        let t = Instant::now();
        loop {
            if let Ok(c) = QmpClient::connect_unix(&sock) {
                return Ok((vm, c));
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("QEMU did not open its QMP socket");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id.
    pub(super) fn pid(&self) -> u32 {
        self.0.id()
    }
}
