//! `livemig bench` case (t), QEMU 7.2's side: the bytes livemig migrates, migrated by two
//! `qemu-system-x86_64 -M none` processes whose RAM is a file on `/dev/shm` (the source's
//! holds livemig's source RAM), plain and TLS, single channel and multifd ×2, with the
//! credentials directory livemig uses (QEMU reads the same `ca-cert.pem`, `server-*.pem`,
//! `client-*.pem` through `-object tls-creds-x509,dir=DIR,endpoint=server|client`).
//!
//! Both implementations run with the return path on (livemig's default), no bandwidth limit,
//! and are timed by their source's `total-time`. Every run's destination RAM file is compared
//! with the source's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use guest_ram::RamBlock;
use monitor::QmpClient;
use serde_json::json;

use super::qemu::QemuProcess;

/// QEMU's default `max-bandwidth` is 128 MiB/s; this is out of the way.
const NO_LIMIT: u64 = 100_000_000_000;

/// QEMU 7.2 migrating a copy of livemig's source RAM.
pub(super) struct QemuSide {
    dir: PathBuf,
    pki: PathBuf,
    src_ram: PathBuf,
    size: u64,
}

/// Whether `qemu-system-x86_64` can be run.
pub(super) fn available() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl QemuSide {
    /// Writes `block`'s bytes to `dir/qemu-src.ram` (`dir` should be on `/dev/shm`).
    pub(super) fn new(dir: &Path, pki: &Path, block: &RamBlock) -> anyhow::Result<QemuSide> {
        let size = block.len();
        let len = usize::try_from(size)?;
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(len)?;
        bytes.resize(len, 0);
        block.read_range(0, &mut bytes)?;
        let src_ram = dir.join("qemu-src.ram");
        std::fs::write(&src_ram, &bytes)?;
        Ok(QemuSide {
            dir: dir.to_path_buf(),
            pki: pki.to_path_buf(),
            src_ram,
            size,
        })
    }

    fn start(
        &self,
        name: &str,
        ram: &Path,
        endpoint: &str,
    ) -> anyhow::Result<(QemuProcess, QmpClient)> {
        let mut args: Vec<String> = ["-nodefaults", "-display", "none", "-accel", "tcg"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend([
            "-object".into(),
            format!(
                "memory-backend-file,id=ram,size={},mem-path={},share=on",
                self.size,
                ram.display()
            ),
            "-machine".into(),
            "none,memory-backend=ram".into(),
            "-object".into(),
            format!(
                "tls-creds-x509,id=tls0,dir={},endpoint={endpoint}",
                self.pki.display()
            ),
        ]);
        if endpoint == "server" {
            args.extend(["-incoming".into(), "defer".into()]);
        }
        QemuProcess::start(&self.dir, name, &args)
    }

    /// One migration; returns the source's `total-time` in ms.
    pub(super) fn run(&self, tls: bool, multifd: bool) -> anyhow::Result<f64> {
        let dst_ram = self.dir.join("qemu-dst.ram");
        std::fs::File::create(&dst_ram)?.set_len(self.size)?;
        let (dst_process, mut dst) = self.start("dst", &dst_ram, "server")?;
        let (src_process, mut src) = self.start("src", &self.src_ram, "client")?;
        for q in [&mut src, &mut dst] {
            q.execute(
                "migrate-set-capabilities",
                Some(json!({"capabilities": [
                    {"capability": "multifd", "state": multifd},
                    {"capability": "return-path", "state": true},
                ]})),
            )?;
            q.execute(
                "migrate-set-parameters",
                Some(json!({
                    "multifd-channels": 2,
                    "max-bandwidth": NO_LIMIT,
                    "tls-creds": if tls { "tls0" } else { "" },
                })),
            )?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let uri = format!("tcp:127.0.0.1:{port}");
        dst.execute("migrate-incoming", Some(json!({ "uri": uri })))?;
        src.execute("migrate", Some(json!({ "uri": uri })))?;
        let t = Instant::now();
        let info = loop {
            let info = src.execute("query-migrate", None)?;
            match info["status"].as_str() {
                Some("completed") => break info,
                Some("failed" | "cancelled") => bail!("QEMU migration (tls {tls}): {info}"),
                _ if t.elapsed() > Duration::from_secs(600) => {
                    bail!("QEMU migration stuck: {info}")
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        // The destination is done once it runs (no vCPU: it leaves `inmigrate`).
        let t = Instant::now();
        while dst.execute("query-status", None)?["status"] == "inmigrate" {
            if t.elapsed() > Duration::from_secs(60) {
                bail!("QEMU destination did not finish loading");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        drop((src, src_process, dst, dst_process));
        if std::fs::read(&self.src_ram)? != std::fs::read(&dst_ram)? {
            bail!("QEMU (tls {tls}, multifd {multifd}): destination RAM differs from the source");
        }
        info["total-time"].as_f64().context("no total-time")
    }
}
