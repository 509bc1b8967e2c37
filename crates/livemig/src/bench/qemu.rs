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

use crate::timeline::{self, Sample};

/// Whether `qemu-system-x86_64` can be run.
pub(super) fn installed() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A running child process (QEMU, or `livemig run`), killed on drop.
pub(super) struct QemuProcess(Child);

impl Drop for QemuProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        super::track_child(self.0.id(), false);
    }
}

impl QemuProcess {
    /// Starts `qemu-system-x86_64 ARGS -qmp unix:DIR/NAME.qmp` and connects to its QMP.
    pub(super) fn start(
        dir: &Path,
        name: &str,
        args: &[String],
    ) -> anyhow::Result<(QemuProcess, QmpClient)> {
        let mut argv = vec!["qemu-system-x86_64".to_string()];
        argv.extend(args.iter().cloned());
        Self::spawn(dir, name, &argv, "-qmp")
    }

    /// Runs `argv` (program first) with `QMP_FLAG unix:DIR/NAME.qmp,server=on,wait=off`
    /// appended, and connects to that QMP socket.
    pub(super) fn spawn(
        dir: &Path,
        name: &str,
        argv: &[String],
        qmp_flag: &str,
    ) -> anyhow::Result<(QemuProcess, QmpClient)> {
        let sock = dir.join(format!("{name}.qmp"));
        let (program, args) = argv.split_first().context("no program to run")?;
        let child = Command::new(program)
            .args(args)
            .arg(qmp_flag)
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        super::track_child(child.id(), true);
        let mut vm = QemuProcess(child);
        let t = Instant::now();
        loop {
            if let Ok(c) = QmpClient::connect_unix(&sock) {
                return Ok((vm, c));
            }
            if let Ok(Some(status)) = vm.0.try_wait() {
                bail!(
                    "{} exited ({status}) before opening its QMP socket",
                    argv.join(" ")
                );
            }
            // Generous: the machines this runs on are often shared and loaded.
            if t.elapsed() > Duration::from_secs(60) {
                bail!("{} did not open its QMP socket", argv.join(" "));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id.
    pub(super) fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// Which implementation a [`QemuVm`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Implementation {
    /// QEMU 7.2, `-M none` with a `memory-backend-file`.
    Qemu,
    /// This binary's `livemig run -M none --backing file:PATH` (no vCPU).
    Livemig,
}

/// A QEMU-like VM process (`-M none`) with its RAM in a file mapped shared, and its QMP
/// connection: QEMU 7.2 or `livemig run`, driven alike.
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
        Self::start_in(&[], Implementation::Qemu, dir, name, ram, size, extra)
    }

    /// Starts `which` as [`QemuVm::start`] does, run through `wrapper` (e.g. `ip netns exec
    /// NS`); `extra` holds `-incoming defer`, `-mem-prealloc`, both or neither, translated for
    /// livemig, and for livemig possibly a writer (`--smp 1 --write-rate ...`).
    pub(super) fn start_in(
        wrapper: &[&str],
        which: Implementation,
        dir: &Path,
        name: &str,
        ram: &Path,
        size: u64,
        extra: &[&str],
    ) -> anyhow::Result<QemuVm> {
        let mut argv: Vec<String> = wrapper.iter().map(|a| a.to_string()).collect();
        let flag = match which {
            Implementation::Qemu => {
                argv.push("qemu-system-x86_64".into());
                argv.extend(
                    [
                        "-nodefaults",
                        "-display",
                        "none",
                        "-accel",
                        "tcg",
                        "-object",
                    ]
                    .map(String::from),
                );
                argv.push(format!(
                    "memory-backend-file,id=ram,size={size},mem-path={},share=on",
                    ram.display()
                ));
                argv.extend(["-machine".into(), "none,memory-backend=ram".into()]);
                argv.extend(extra.iter().map(|a| a.to_string()));
                "-qmp"
            }
            Implementation::Livemig => {
                let exe = std::env::current_exe().context("cannot find this program")?;
                argv.push(exe.display().to_string());
                argv.extend(["run", "-M", "none"].map(String::from));
                // No vCPU unless the caller asks for a writer.
                if !extra.contains(&"--smp") {
                    argv.extend(["--smp", "0"].map(String::from));
                }
                argv.push("-m".into());
                argv.push(size.to_string());
                argv.push("--backing".into());
                argv.push(format!("file:{}", ram.display()));
                argv.extend(extra.iter().map(|a| match *a {
                    "-incoming" => "--incoming".to_string(),
                    "-mem-prealloc" => "--mem-prealloc".to_string(),
                    a => a.to_string(),
                }));
                "--qmp"
            }
        };
        let (process, qmp) = QemuProcess::spawn(dir, name, &argv, flag)?;
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
/// runs), and returns the source's final `query-migrate` and the run's timeline.
pub(super) fn migrate(
    src: &mut QemuVm,
    dst: &mut QemuVm,
    uri: &str,
) -> anyhow::Result<(Value, Vec<Sample>)> {
    src.qmp.execute("migrate", Some(json!({ "uri": uri })))?;
    let mut samples = Vec::new();
    let t = Instant::now();
    let info = timeline::record(&mut src.qmp, t, |s| {
        samples.push(s.clone());
        if t.elapsed() > Duration::from_secs(600) {
            return Err(std::io::Error::other("migration stuck for 10 minutes"));
        }
        Ok(())
    })?;
    if info["status"] != "completed" {
        bail!("migration: {info}");
    }
    let t = Instant::now();
    while dst.qmp.execute("query-status", None)?["status"] == "inmigrate" {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("QEMU destination did not finish loading");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok((info, samples))
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
