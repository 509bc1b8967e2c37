//! Throw-away TLS credentials for tests, generated at run time (nothing secret is committed):
//! a CA and certificates written with QEMU's file names, so the same directory serves a
//! livemig `tls-creds-x509` object and a QEMU one.
//!
//! Certificates carry what QEMU's own checks want (`crypto/tlscredsx509.c`): the CA has
//! `basicConstraints CA:TRUE` and `keyCertSign`; leaves have `CA:FALSE`, `digitalSignature`
//! + `keyEncipherment` and the `serverAuth` / `clientAuth` purpose.

use std::path::Path;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// A certificate authority for one test.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

/// What a leaf certificate says.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Subject common name.
    pub cn: String,
    /// Subject organisation (for `authz-simple` DNs), if any.
    pub org: Option<String>,
    /// Subject alternative names (DNS names or IP addresses).
    pub sans: Vec<String>,
    /// Make it expired (valid 2000-2001).
    pub expired: bool,
}

impl Leaf {
    /// A valid certificate for `localhost` and `127.0.0.1`.
    pub fn localhost(cn: &str) -> Leaf {
        Leaf {
            cn: cn.to_string(),
            org: Some("livemig tests".into()),
            sans: vec!["localhost".into(), "127.0.0.1".into()],
            expired: false,
        }
    }

    /// The subject DN as GnuTLS and livemig's `authz-simple` print it.
    pub fn dn(&self) -> String {
        match &self.org {
            Some(o) => format!("O={o},CN={}", self.cn),
            None => format!("CN={}", self.cn),
        }
    }
}

impl TestCa {
    /// A new CA named `cn`.
    pub fn new(cn: &str) -> TestCa {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa { cert, key }
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf certificate and key (PEM) for `leaf`, for a server or a client.
    pub fn issue(&self, leaf: &Leaf, server: bool) -> (String, String) {
        let mut params = CertificateParams::new(leaf.sans.clone()).expect("SANs");
        params.distinguished_name = DistinguishedName::new();
        if let Some(o) = &leaf.org {
            params.distinguished_name.push(DnType::CommonName, &leaf.cn);
            params.distinguished_name.push(DnType::OrganizationName, o);
        } else {
            params.distinguished_name.push(DnType::CommonName, &leaf.cn);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        if leaf.expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a server credentials directory: `ca-cert.pem`, `server-cert.pem`,
    /// `server-key.pem`.
    pub fn write_server_dir(&self, dir: &Path, leaf: &Leaf) {
        std::fs::create_dir_all(dir).expect("create creds dir");
        let (cert, key) = self.issue(leaf, true);
        write(dir, "ca-cert.pem", &self.cert_pem());
        write(dir, "server-cert.pem", &cert);
        write(dir, "server-key.pem", &key);
    }

    /// Writes a client credentials directory: `ca-cert.pem`, and with `leaf`
    /// `client-cert.pem` + `client-key.pem`.
    pub fn write_client_dir(&self, dir: &Path, leaf: Option<&Leaf>) {
        std::fs::create_dir_all(dir).expect("create creds dir");
        write(dir, "ca-cert.pem", &self.cert_pem());
        if let Some(leaf) = leaf {
            let (cert, key) = self.issue(leaf, false);
            write(dir, "client-cert.pem", &cert);
            write(dir, "client-key.pem", &key);
        }
    }
}

fn write(dir: &Path, name: &str, pem: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join(name))
        .expect("write PEM");
    std::io::Write::write_all(&mut f, pem.as_bytes()).expect("write PEM");
}
