//! QEMU 7.2 as the other side of an end-to-end test: `-M none` with its RAM in a shared file
//! (so tests can compare it byte for byte), driven over QMP, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use monitor::QmpClient;
use serde_json::Value;

/// Guest RAM of a [`QemuProc`] (what `livemig run --machine none -m 64M` matches).
pub const QEMU_RAM: &str = "64M";

/// A QEMU 7.2 `-M none` process whose QMP socket is left free for the script; killed on drop.
pub struct QemuProc {
    child: Child,
    /// Its QMP socket (nobody connected).
    pub qmp: PathBuf,
}

impl Drop for QemuProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl QemuProc {
    /// Starts `qemu` with `QEMU_RAM` of anonymous RAM and `extra` arguments; returns once its
    /// QMP socket exists.
    pub fn start(qemu: &Path, dir: &Path, name: &str, extra: &[&str]) -> QemuProc {
        let qmp = dir.join(format!("{name}.qmp"));
        let backend = format!("memory-backend-ram,id=ram,size={QEMU_RAM}");
        let child = spawn_none(qemu, &backend, &qmp, extra);
        QemuProc { child, qmp }
    }
}

/// Guest RAM of the QEMU side.
pub const RAM: u64 = 64 << 20;

/// Starts `qemu -M none` with RAM from the memory-backend object `backend` (id `ram`), its QMP
/// server on `qmp` and `extra` arguments; returns once the socket exists.
fn spawn_none<I>(qemu: &Path, backend: &str, qmp: &Path, extra: I) -> Child
where
    I: IntoIterator,
    I::Item: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(qemu);
    cmd.args(["-nodefaults", "-display", "none", "-accel", "tcg"])
        .args(["-object", backend])
        .args(["-machine", "none,memory-backend=ram"])
        .args(extra);
    spawn_with_qmp(cmd, qmp)
}

/// Spawns the QEMU `cmd` with its QMP server on the unix socket `qmp` (added here); returns
/// once the socket exists.
pub fn spawn_with_qmp(mut cmd: Command, qmp: &Path) -> Child {
    let child = cmd
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start qemu");
    let t = Instant::now();
    while !qmp.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "QEMU did not create its QMP socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// A running `qemu-system-x86_64 -M none`.
pub struct Qemu {
    child: Child,
    /// Its QMP connection.
    pub qmp: QmpClient,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Qemu {
    /// Starts `qemu` (the binary) with its RAM in `ram_file` (shared) and `extra` arguments;
    /// returns once its QMP socket in `dir` answers.
    pub fn start(qemu: &Path, dir: &Path, ram_file: &Path, extra: &[String]) -> Qemu {
        let sock = dir.join("qemu.qmp");
        let backend = format!(
            "memory-backend-file,id=ram,size={RAM},mem-path={},share=on",
            ram_file.display()
        );
        let child = spawn_none(qemu, &backend, &sock, extra);
        let qmp = super::retry_connect(|| QmpClient::connect_unix(&sock));
        Qemu { child, qmp }
    }

    /// Runs a QMP command; panics on an error reply.
    pub fn cmd(&mut self, name: &str, args: Value) -> Value {
        let args = if args.is_null() { None } else { Some(args) };
        self.qmp
            .execute(name, args)
            .unwrap_or_else(|e| panic!("QEMU {name}: {e}"))
    }

    /// Waits until `query-migrate` reports a final status; returns it.
    pub fn wait_migration(&mut self) -> Value {
        super::wait_final_migration(|| self.cmd("query-migrate", Value::Null))
    }
}

/// A RAM image: xorshift data in three pages of four over the first half, zero elsewhere.
pub fn random_ram_image() -> Vec<u8> {
    let mut data = vec![0u8; RAM as usize];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for (i, page) in data[..(RAM / 2) as usize].chunks_mut(4096).enumerate() {
        if i % 4 == 3 {
            continue;
        }
        for w in page.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
    }
    data
}

/// Asserts that two RAM files hold the same bytes; names the first page that differs.
pub fn assert_same_ram(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(x.len(), y.len());
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("RAM differs at byte {i:#x} (page {})", i / 4096);
    }
}
