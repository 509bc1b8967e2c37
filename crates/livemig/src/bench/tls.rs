//! `livemig bench` case (t): what TLS costs. The same paused source (incompressible RAM) is
//! migrated over loopback four ways — plain and TLS, single channel and multifd (2 channels)
//! — alternating the four round by round, so host noise hits each alike; medians and the
//! min–max spread of the throughput are reported, and the TLS / plain ratio of the medians.
//!
//! Credentials are generated for the run (a CA, a server and a client certificate for
//! `127.0.0.1`) into a temporary directory with QEMU's file names, and loaded as
//! `tls-creds-x509` objects exactly as `--object` would.

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

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Runs case (t) with `rounds` alternating rounds.
pub(super) fn case_t(scale: u64, rounds: usize) -> anyhow::Result<()> {
    let size = 512 * MIB / scale;
    println!(
        "(t) TLS cost: {} of incompressible RAM, guest paused, {rounds} alternating rounds",
        human(size)
    );
    let pki = tempfile::tempdir()?;
    write_credentials(pki.path())?;
    let cfg = MachineConfig {
        memory: size,
        start_paused: true,
        ..Default::default()
    };
    let src = Machine::new(cfg.clone())?;
    src.object_add(creds(pki.path(), CredsEndpoint::Client))?;
    fill_random(&src.ram().blocks()[0])?;
    let variants = [
        ("plain, 1 channel", false, false),
        ("TLS,   1 channel", true, false),
        ("plain, multifd 2", false, true),
        ("TLS,   multifd 2", true, true),
    ];
    let mut mibs: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 1..=rounds {
        for (i, &(name, tls, multifd)) in variants.iter().enumerate() {
            let dst = Machine::new(MachineConfig {
                incoming: true,
                ..cfg.clone()
            })?;
            dst.object_add(creds(pki.path(), CredsEndpoint::Server))?;
            configure(&src, tls, multifd)?;
            configure(&dst, tls, multifd)?;
            let o = migrate(&src, &dst)?;
            anyhow::ensure!(
                src.ram().blocks()[0].digest() == dst.ram().blocks()[0].digest(),
                "destination RAM differs from the source ({name})"
            );
            dst.shutdown();
            drop(dst);
            src.cont()?;
            src.stop()?;
            let v = size as f64 / MIB as f64 / (o.total_ms().max(1) as f64 / 1000.0);
            println!("  round {round} {name}: {} ms, {v:.0} MiB/s", o.total_ms());
            mibs[i].push(v);
        }
    }
    let mut medians = Vec::new();
    for (i, &(name, ..)) in variants.iter().enumerate() {
        let (median, min, max) = stats(&mut mibs[i]);
        println!("  => {name}: median {median:.0} MiB/s (min {min:.0}, max {max:.0})");
        medians.push(median);
    }
    println!(
        "  => TLS / plain (medians): 1 channel {:.2}, multifd {:.2}; TLS multifd / plain 1 channel {:.2}",
        medians[1] / medians[0],
        medians[3] / medians[2],
        medians[3] / medians[0]
    );
    src.shutdown();
    Ok(())
}
