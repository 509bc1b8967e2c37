//! `livemig bench` case (d): the same guest (the built-in payload on KVM) migrated by livemig
//! and by QEMU 7.2 (`-M microvm -accel kvm`), over loopback TCP, measured the same way: total
//! time and downtime as each side's `query-migrate` reports them.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use monitor::QmpClient;
use serde_json::{json, Value};
use vmm::machine::{Accel, MachineConfig};
use vmm::soft::WorkloadConfig;

use super::pair::{machine_pair, migrate};
use super::qemu::QemuProcess;

const MEMORY: &str = "256M";
/// Guest parameters: fill 8 MiB, rewrite 1 MiB continuously.
const CMDLINE: &str = "fill=8388608 ws=1048576";

fn qemu(
    dir: &std::path::Path,
    name: &str,
    kernel: &std::path::Path,
    extra: &[&str],
) -> anyhow::Result<(QemuProcess, QmpClient)> {
    let mut args: Vec<String> = [
        "-M",
        "microvm",
        "-accel",
        "kvm",
        "-m",
        MEMORY,
        "-nodefaults",
        "-display",
        "none",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(["-kernel".into(), kernel.display().to_string()]);
    args.extend(["-append".into(), CMDLINE.into()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    QemuProcess::start(dir, name, &args)
}

fn print(side: &str, info: &Value) {
    println!(
        "  {side}: total {} ms, downtime {} ms, setup {} ms, transferred {} KiB, passes {}",
        info["total-time"],
        info["downtime"],
        info["setup-time"],
        info["ram"]["transferred"].as_u64().unwrap_or(0) / 1024,
        info["ram"]["dirty-sync-count"]
    );
}

fn qemu_side() -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let kernel = dir.path().join("payload.elf");
    std::fs::write(&kernel, payload::PAYLOAD_ELF)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let incoming = format!("tcp:127.0.0.1:{port}");
    let (_dst, _dst_qmp) = qemu(dir.path(), "dst", &kernel, &["-incoming", &incoming])?;
    let (_src, mut src) = qemu(dir.path(), "src", &kernel, &[])?;
    // Default QEMU limits bandwidth to 128 MiB/s; lift it like livemig's default.
    src.execute("migrate-set-parameters", Some(json!({"max-bandwidth": 0})))?;
    std::thread::sleep(Duration::from_secs(2));
    src.execute("migrate", Some(json!({ "uri": incoming })))?;
    let t = Instant::now();
    loop {
        let info = src.execute("query-migrate", None)?;
        match info["status"].as_str() {
            Some("completed") => return Ok(info),
            Some("failed" | "cancelled") => bail!("QEMU migration {info}"),
            _ if t.elapsed() > Duration::from_secs(60) => bail!("QEMU migration stuck: {info}"),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn livemig_side() -> anyhow::Result<Value> {
    let (src, dst) = machine_pair(MachineConfig {
        memory: 256 << 20,
        accel: Accel::Kvm,
        cmdline: Some(CMDLINE.into()),
        workload: Some(WorkloadConfig {
            vcpus: 1,
            ..Default::default()
        }),
        ..Default::default()
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let outcome = migrate(&src, &dst);
    src.shutdown();
    dst.shutdown();
    Ok(outcome?.info.to_json())
}

/// Runs case (d), or says why it cannot.
pub fn case_d() -> anyhow::Result<()> {
    println!("(d) the payload on KVM, {MEMORY} RAM ({CMDLINE}): livemig and QEMU 7.2 microvm");
    if !vmm::kvm::kvm_available() {
        println!("  SKIP: /dev/kvm not available");
        return Ok(());
    }
    print("livemig", &livemig_side()?);
    match Command::new("qemu-system-x86_64").arg("--version").output() {
        Ok(o) if o.status.success() => match qemu_side() {
            Ok(info) => print("QEMU 7.2", &info),
            Err(e) => println!("  QEMU 7.2: could not measure: {e:#}"),
        },
        _ => println!("  SKIP QEMU: qemu-system-x86_64 not installed"),
    }
    Ok(())
}
