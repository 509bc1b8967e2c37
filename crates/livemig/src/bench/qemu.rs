//! QEMU 7.2 as the other implementation in a bench case: a `qemu-system-x86_64 -M none`
//! process whose RAM is a file (so it can hold exactly the bytes livemig's source holds, and
//! its destination's RAM can be compared afterwards), with a QMP socket in a scratch
//! directory, killed when dropped; and one timed migration between two of them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use monitor::QmpClient;
use serde_json::{json, Value};

/// Whether `qemu-system-x86_64` can be run.
pub(super) fn installed() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

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

/// A QEMU `-M none` with its RAM in a file mapped shared, and its QMP connection.
pub(super) struct QemuVm {
    pub(super) process: QemuProcess,
    pub(super) qmp: QmpClient,
}

impl QemuVm {
    /// Starts QEMU named `name` (its QMP socket in `dir`) with `size` bytes of RAM in the file
    /// `ram` (created by the caller), plus `extra` arguments (e.g. `-incoming defer`).
    pub(super) fn start(
        dir: &Path,
        name: &str,
        ram: &Path,
        size: u64,
        extra: &[&str],
    ) -> anyhow::Result<QemuVm> {
        let mut args: Vec<String> = [
            "-nodefaults",
            "-display",
            "none",
            "-accel",
            "tcg",
            "-object",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.push(format!(
            "memory-backend-file,id=ram,size={size},mem-path={},share=on",
            ram.display()
        ));
        args.extend(["-machine".into(), "none,memory-backend=ram".into()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let (process, qmp) = QemuProcess::start(dir, name, &args)?;
        Ok(QemuVm { process, qmp })
    }

    /// Sets `multifd` and the return path (as livemig, where it is on by default: the source
    /// completes when the destination has loaded everything, not when the last bytes sit in
    /// socket buffers), then the migration parameters `params` (a JSON object).
    pub(super) fn configure(&mut self, multifd: bool, params: Value) -> anyhow::Result<()> {
        self.qmp.execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [
                {"capability": "multifd", "state": multifd},
                {"capability": "return-path", "state": true},
            ]})),
        )?;
        self.qmp.execute("migrate-set-parameters", Some(params))?;
        Ok(())
    }
}

/// Starts `src` migrating to `uri` (where `dst` was told to listen), waits until the source
/// reports `completed` and the destination has left `inmigrate` (it has no vCPU, so it then
/// runs), and returns the source's final `query-migrate`.
pub(super) fn migrate(src: &mut QemuVm, dst: &mut QemuVm, uri: &str) -> anyhow::Result<Value> {
    src.qmp.execute("migrate", Some(json!({ "uri": uri })))?;
    let t = Instant::now();
    let info = loop {
        let info = src.qmp.execute("query-migrate", None)?;
        match info["status"].as_str() {
            Some("completed") => break info,
            Some("failed" | "cancelled") => bail!("QEMU migration: {info}"),
            _ if t.elapsed() > Duration::from_secs(600) => bail!("QEMU migration stuck: {info}"),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let t = Instant::now();
    while dst.qmp.execute("query-status", None)?["status"] == "inmigrate" {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("QEMU destination did not finish loading");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(info)
}

/// Whether two files hold the same bytes, compared 1 MiB at a time (they are guest RAM, so
/// gigabytes: never read whole).
pub(super) fn same_contents(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        if n != read_full(&mut fb, &mut bb)? || ba[..n] != bb[..n] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the end of the file; returns how many bytes it holds.
fn read_full(f: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::same_contents;

    #[test]
    fn same_contents_compares_every_byte_and_the_length() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c, d) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
            dir.path().join("d"),
        );
        let bytes: Vec<u8> = (0..(3 << 20) + 123).map(|i| (i % 251) as u8).collect();
        std::fs::write(&a, &bytes).unwrap();
        std::fs::write(&b, &bytes).unwrap();
        let mut other = bytes.clone();
        // One byte in the last, partial MiB.
        *other.last_mut().unwrap() ^= 1;
        std::fs::write(&c, &other).unwrap();
        std::fs::write(&d, &bytes[..bytes.len() - 1]).unwrap();
        assert!(same_contents(&a, &b).unwrap());
        assert!(!same_contents(&a, &c).unwrap());
        assert!(!same_contents(&a, &d).unwrap());
        assert!(same_contents(&a, &dir.path().join("missing")).is_err());
    }
}
