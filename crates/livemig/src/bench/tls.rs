//! `livemig bench` case (t): what TLS costs. The same paused source (incompressible RAM) is
//! migrated over loopback four ways — plain and TLS, single channel and multifd (2 channels)
//! — by livemig (two VMs in this process) and, when it is installed, by QEMU 7.2 (two
//! processes, see [`tls_qemu`]) with the same bytes and the same
//! certificates. All eight runs alternate round by round, so host noise hits each alike; the
//! table gives each run's median throughput with its min–max spread, and the TLS / plain
//! ratio of the medians for each implementation.
//!
//! Credentials are generated for the run (a CA, a server and a client certificate for
//! `127.0.0.1`) into a temporary directory with QEMU's file names, loaded by livemig as
//! `tls-creds-x509` objects exactly as `--object` would, and by QEMU with `-object`.

use std::path::Path;

use anyhow::Context;
use migration::{Capability, ParameterUpdate};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use transport::tls::{CredsEndpoint, TlsObject, X509Options};
use vmm::machine::{Machine, MachineConfig};

use super::pair::migrate;
use super::tls_qemu::{self, QemuSide};
use super::{fill_random, MIB};
use crate::size::human;

/// Writes `ca-cert.pem`, `server-*.pem` and `client-*.pem` into `dir`.
fn write_credentials(dir: &Path) -> anyhow::Result<()> {
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "livemig bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca-cert.pem"), ca_cert.pem())?;
    for (name, purpose) in [
        ("server", ExtendedKeyUsagePurpose::ServerAuth),
        ("client", ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()])?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![purpose];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
        std::fs::write(dir.join(format!("{name}-cert.pem")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem())?;
    }
    Ok(())
}

fn creds(dir: &Path, endpoint: CredsEndpoint) -> TlsObject {
    TlsObject::X509(X509Options {
        id: "tls0".into(),
        dir: dir.to_path_buf(),
        endpoint,
        verify_peer: true,
    })
}

/// Capabilities and parameters of one variant on one machine.
fn configure(m: &Machine, tls: bool, multifd: bool) -> anyhow::Result<()> {
    m.set_capabilities(&[(Capability::Multifd, multifd)])?;
    let creds = if tls { "tls0" } else { "" };
    let json = serde_json::json!({"tls-creds": creds, "multifd-channels": 2});
    let update = ParameterUpdate::from_json(json.as_object().context("a JSON object")?)?;
    m.set_parameters(&update)?;
    Ok(())
}

/// One livemig migration of `src` into a fresh destination; returns the source's total time
/// in ms.
fn livemig_run(
    src: &std::sync::Arc<Machine>,
    cfg: &MachineConfig,
    pki: &Path,
    tls: bool,
    multifd: bool,
) -> anyhow::Result<f64> {
    let dst = Machine::new(MachineConfig {
        incoming: true,
        ..cfg.clone()
    })?;
    dst.object_add(creds(pki, CredsEndpoint::Server))?;
    configure(src, tls, multifd)?;
    configure(&dst, tls, multifd)?;
    let o = migrate(src, &dst)?;
    anyhow::ensure!(
        src.ram().blocks()[0].digest() == dst.ram().blocks()[0].digest(),
        "destination RAM differs from the source (tls {tls}, multifd {multifd})"
    );
    dst.shutdown();
    drop(dst);
    // The next round migrates the same source again.
    src.cont()?;
    src.stop()?;
    Ok(o.total_ms().max(1) as f64)
}

/// Median, min and max.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// The four variants, in the order they alternate: (name, tls, multifd).
const VARIANTS: [(&str, bool, bool); 4] = [
    ("plain, 1 channel", false, false),
    ("TLS,   1 channel", true, false),
    ("plain, multifd 2", false, true),
    ("TLS,   multifd 2", true, true),
];

/// Runs case (t) with `rounds` alternating rounds.
pub(super) fn case_t(scale: u64, rounds: usize) -> anyhow::Result<()> {
    let size = 512 * MIB / scale;
    let mib = size as f64 / MIB as f64;
    let have_qemu = tls_qemu::available();
    println!(
        "(t) TLS cost: {} of incompressible RAM, guest paused, {rounds} alternating rounds, \
         livemig{} (return path on, no bandwidth limit)",
        human(size),
        if have_qemu { " and QEMU 7.2" } else { "" }
    );
    if !have_qemu {
        println!("  SKIP QEMU: qemu-system-x86_64 not installed");
    }
    let scratch = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir())?;
    let pki = scratch.path().join("pki");
    std::fs::create_dir(&pki)?;
    write_credentials(&pki)?;
    let cfg = MachineConfig {
        memory: size,
        start_paused: true,
        ..Default::default()
    };
    let src = Machine::new(cfg.clone())?;
    src.object_add(creds(&pki, CredsEndpoint::Client))?;
    fill_random(&src.ram().blocks()[0])?;
    let qemu = match have_qemu {
        true => Some(QemuSide::new(scratch.path(), &pki, &src.ram().blocks()[0])?),
        false => None,
    };
    // mibs[0] livemig, mibs[1] QEMU; one list of MiB/s per variant.
    let mut mibs: [Vec<Vec<f64>>; 2] = [vec![Vec::new(); 4], vec![Vec::new(); 4]];
    for round in 1..=rounds {
        for (i, &(name, tls, multifd)) in VARIANTS.iter().enumerate() {
            let ms = livemig_run(&src, &cfg, &pki, tls, multifd)?;
            print!("  round {round} {name}: livemig {ms:.0} ms");
            mibs[0][i].push(mib / (ms / 1000.0));
            if let Some(q) = &qemu {
                let ms = q.run(tls, multifd)?.max(1.0);
                print!(", QEMU 7.2 {ms:.0} ms");
                mibs[1][i].push(mib / (ms / 1000.0));
            }
            println!();
        }
    }
    src.shutdown();
    println!("  => throughput in MiB/s, median [min–max] of {rounds} rounds:");
    println!("     {:<18} {:>22} {:>22}", "", "livemig", "QEMU 7.2");
    let mut medians = [[0f64; 4]; 2];
    for (i, &(name, ..)) in VARIANTS.iter().enumerate() {
        let mut row = format!("     {name:<18}");
        for (who, runs) in mibs.iter().enumerate() {
            if runs[i].is_empty() {
                row.push_str(&format!(" {:>22}", "-"));
                continue;
            }
            let (median, min, max) = stats(&runs[i]);
            medians[who][i] = median;
            row.push_str(&format!(
                " {:>22}",
                format!("{median:.0} [{min:.0}–{max:.0}]")
            ));
        }
        println!("{row}");
    }
    for (who, name) in ["livemig", "QEMU 7.2"].iter().enumerate() {
        if mibs[who][0].is_empty() {
            continue;
        }
        let m = &medians[who];
        println!(
            "  => {name}: TLS / plain (medians) 1 channel {:.2}, multifd {:.2}",
            m[1] / m[0],
            m[3] / m[2]
        );
    }
    println!(
        "  => livemig TLS multifd / livemig plain multifd: {:.2} (target >= 0.8)",
        medians[0][3] / medians[0][2]
    );
    if qemu.is_some() {
        let cost = |who: usize, tls: usize| 1.0 - medians[who][tls] / medians[who][tls - 1];
        println!(
            "  => throughput TLS takes away: livemig {:.0}% / {:.0}%, QEMU 7.2 {:.0}% / {:.0}% \
             (1 channel / multifd; target: livemig's the smaller)",
            100.0 * cost(0, 1),
            100.0 * cost(0, 3),
            100.0 * cost(1, 1),
            100.0 * cost(1, 3)
        );
    }
    Ok(())
}
