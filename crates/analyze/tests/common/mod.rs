//! Helpers shared by the integration tests: locating QEMU, preparing file-backed guest RAM
//! and producing a real migration stream with `migrate exec:cat > FILE`.

pub mod qmp;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use qmp::Qmp;

/// Returns the QEMU binary when installed; otherwise prints a visible SKIP line.
pub fn qemu_or_skip(test: &str) -> Option<PathBuf> {
    testkit::require_qemu_system(test)
}

/// Deterministic pseudo-random guest RAM content of `size` bytes: every third page is zero,
/// every seventh page is filled with one repeated non-zero byte, the rest is xorshift noise.
pub fn ram_pattern(size: usize, seed: u64) -> Vec<u8> {
    const PAGE: usize = 4096;
    let mut out = vec![0u8; size];
    let mut x = seed | 1;
    for (i, page) in out.chunks_mut(PAGE).enumerate() {
        if i % 3 == 0 {
            continue;
        }
        if i % 7 == 0 {
            page.fill((i % 251) as u8 + 1);
            continue;
        }
        for chunk in page.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = x.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
    out
}

/// Kills the QEMU child if a test fails half-way.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How the QEMU run should behave before `migrate`.
pub struct Run<'a> {
    /// Machine arguments (everything except `-qmp`).
    pub args: Vec<String>,
    /// Time to let the guest run before migrating.
    pub run_before_migrate: Duration,
    /// Migration capabilities to switch on first.
    pub capabilities: &'a [&'a str],
    /// Directory for the QMP socket and the output stream.
    pub dir: &'a Path,
}

/// Starts QEMU, migrates it into `dir/stream.mig` via `exec:cat`, quits QEMU and returns
/// the stream path. QEMU has exited (and flushed its file-backed RAM) when this returns.
pub fn make_stream(qemu: &Path, run: Run<'_>) -> PathBuf {
    migrate(qemu, run, false)
}

/// Like [`make_stream`] for a guest that keeps dirtying memory, with XBZRLE on: the
/// migration is throttled (2 MiB/s, 1 ms downtime limit) so that it iterates, and the
/// downtime limit is raised once five dirty syncs happened so that it completes.
pub fn make_stream_converging(qemu: &Path, args: Vec<String>, dir: &Path) -> PathBuf {
    let run = Run {
        args,
        run_before_migrate: Duration::from_millis(100),
        capabilities: &["xbzrle"],
        dir,
    };
    migrate(qemu, run, true)
}

fn migrate(qemu: &Path, run: Run<'_>, converge: bool) -> PathBuf {
    let sock = run.dir.join("qmp.sock");
    let out = run.dir.join("stream.mig");
    let stderr_path = run.dir.join("qemu.stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("create stderr file");
    let child = Command::new(qemu)
        .args(&run.args)
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn qemu");
    let mut guard = ChildGuard(Some(child));
    let describe = || {
        let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        format!("QEMU stderr:\n{err}")
    };
    let mut qmp = Qmp::connect(&sock, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", describe()));
    if !run.capabilities.is_empty() {
        let caps: Vec<_> = run
            .capabilities
            .iter()
            .map(|c| json!({"capability": c, "state": true}))
            .collect();
        qmp.execute("migrate-set-capabilities", json!({ "capabilities": caps }))
            .unwrap_or_else(|e| panic!("{e}\n{}", describe()));
    }
    if converge {
        qmp.execute(
            "migrate-set-parameters",
            json!({"downtime-limit": 1, "max-bandwidth": 2 << 20}),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", describe()));
    }
    std::thread::sleep(run.run_before_migrate);
    let uri = format!("exec:cat > '{}'", out.display());
    qmp.execute("migrate", json!({ "uri": uri }))
        .unwrap_or_else(|e| panic!("{e}\n{}", describe()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = qmp
            .execute("query-migrate", json!({}))
            .unwrap_or_else(|e| panic!("{e}\n{}", describe()));
        match info.get("status").and_then(|s| s.as_str()) {
            Some("completed") => break,
            Some("failed") | Some("cancelled") => {
                panic!("migration ended badly: {info}\n{}", describe())
            }
            _ => {}
        }
        let syncs = info["ram"]["dirty-sync-count"].as_u64().unwrap_or(0);
        if converge && syncs >= 5 {
            qmp.execute("migrate-set-parameters", json!({"downtime-limit": 2000}))
                .unwrap_or_else(|e| panic!("{e}\n{}", describe()));
        }
        assert!(
            Instant::now() < deadline,
            "migration did not complete: {info}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    qmp.quit();
    let mut child = guard.0.take().expect("child present");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    out
}

/// Common arguments: no default devices, no display, TCG, file-backed RAM.
pub fn base_args(machine: &str, mem_id: &str, mem_file: &Path, mib: usize) -> Vec<String> {
    vec![
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-accel".into(),
        "tcg".into(),
        "-m".into(),
        format!("{mib}"),
        "-object".into(),
        format!(
            "memory-backend-file,id={mem_id},size={mib}M,mem-path={},share=on",
            mem_file.display()
        ),
        "-machine".into(),
        format!("{machine},memory-backend={mem_id}"),
    ]
}
