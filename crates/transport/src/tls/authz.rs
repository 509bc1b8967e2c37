//! `authz-simple`: QEMU's simplest authorization object. With `tls-authz` set, the destination
//! accepts a source only if the subject of its client certificate, written as a distinguished
//! name string the way GnuTLS prints it (RFC 4514: the last RDN first, `,` between RDNs, `+`
//! inside one, e.g. `CN=source.example.com,O=Example,C=GB`), equals `identity` exactly.
//!
//! The certificate bytes come from the peer: parsing failures are errors, never panics.

use x509_parser::prelude::{FromDer, X509Certificate};

use super::TlsError;

/// An `authz-simple,id=ID,identity=DN` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzSimple {
    /// The object id, what `tls-authz` names.
    pub id: String,
    /// The one distinguished name allowed.
    pub identity: String,
}

impl AuthzSimple {
    /// Checks the peer's certificate (DER). `None`: the peer presented no certificate.
    pub fn check(&self, peer_cert: Option<&[u8]>) -> Result<(), TlsError> {
        let der = peer_cert.ok_or(TlsError::AuthzNoCertificate)?;
        let dn = subject_dn(der)?;
        if dn == self.identity {
            Ok(())
        } else {
            Err(TlsError::AuthzDenied { dn })
        }
    }
}

/// The subject of a DER certificate as an RFC 4514 string (see the module documentation).
pub fn subject_dn(der: &[u8]) -> Result<String, TlsError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| TlsError::BadPeerCertificate(e.to_string()))?;
    let mut rdns = Vec::new();
    for rdn in cert.subject().iter_rdn() {
        let mut attrs = Vec::new();
        for attr in rdn.iter() {
            let oid = attr.attr_type().to_id_string();
            let name = short_name(&oid).map_or(oid.clone(), str::to_string);
            let value = attr
                .as_str()
                .map_err(|e| TlsError::BadPeerCertificate(e.to_string()))?;
            attrs.push(format!("{name}={}", escape(value)));
        }
        rdns.push(attrs.join("+"));
    }
    rdns.reverse();
    Ok(rdns.join(","))
}

/// Short names GnuTLS prints for the usual attribute types.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.42" => "GN",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "EMAIL",
        _ => return None,
    })
}

/// RFC 4514 escaping of an attribute value.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_rfc4514() {
        assert_eq!(escape("a,b"), "a\\,b");
        assert_eq!(escape(" x "), "\\ x\\ ");
        assert_eq!(escape("#1"), "\\#1");
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn garbage_certificate_is_an_error() {
        let authz = AuthzSimple {
            id: "a".into(),
            identity: "CN=x".into(),
        };
        assert!(matches!(
            authz.check(Some(b"\x30\x03junk")),
            Err(TlsError::BadPeerCertificate(_))
        ));
        assert!(matches!(
            authz.check(None),
            Err(TlsError::AuthzNoCertificate)
        ));
    }
}
