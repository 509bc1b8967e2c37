//! The TLS objects an operator creates, as QEMU spells them, parsed once at the boundary:
//! `--object TYPE,id=ID,prop=value,...` on the command line, or QMP `object-add` with
//! `qom-type`, `id` and the properties as flat members (QEMU 7.2).
//!
//! | `qom-type` | properties |
//! | --- | --- |
//! | `tls-creds-x509` | `dir` (required), `endpoint` (`server`/`client`, default `client`), `verify-peer` (default on) |
//! | `authz-simple` | `identity` (required) |
//!
//! Command-line booleans accept `on`/`off`/`yes`/`no`/`true`/`false`; QMP wants JSON
//! booleans. `tls-creds-psk` is refused with a message: rustls has no API for TLS 1.3
//! external pre-shared keys (nor TLS 1.2 PSK suites), so livemig cannot speak QEMU's PSK
//! credentials.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::{AuthzSimple, CredsEndpoint, TlsError, X509Options};

/// A TLS object to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsObject {
    /// `tls-creds-x509`.
    X509(X509Options),
    /// `authz-simple`.
    Authz(AuthzSimple),
}

/// A property value as given: text (command line) or JSON (QMP).
enum Prop {
    Text(String),
    Json(Value),
}

impl TlsObject {
    /// The object id.
    pub fn id(&self) -> &str {
        match self {
            TlsObject::X509(o) => &o.id,
            TlsObject::Authz(a) => &a.id,
        }
    }

    /// Parses `TYPE,id=ID,prop=value,...` (`--object`). Commas in values are not supported
    /// (QEMU's `,,` escape is refused, not misread).
    pub fn parse_cli(s: &str) -> Result<TlsObject, TlsError> {
        let mut parts = s.split(',');
        let ty = parts.next().unwrap_or_default().to_string();
        let mut props = Vec::new();
        for part in parts {
            let (k, v) = part.split_once('=').ok_or_else(|| TlsError::BadProperty {
                property: "object",
                value: part.to_string(),
            })?;
            props.push((k.to_string(), Prop::Text(v.to_string())));
        }
        Self::from_props(&ty, props)
    }

    /// Parses QMP `object-add` arguments.
    pub fn from_qmp(args: Map<String, Value>) -> Result<TlsObject, TlsError> {
        let mut ty = None;
        let mut props = Vec::new();
        for (k, v) in args {
            if k == "qom-type" {
                ty = Some(
                    v.as_str()
                        .map(str::to_string)
                        .ok_or(TlsError::BadProperty {
                            property: "qom-type",
                            value: v.to_string(),
                        })?,
                );
            } else {
                props.push((k, Prop::Json(v)));
            }
        }
        let ty = ty.ok_or(TlsError::MissingProperty("qom-type"))?;
        Self::from_props(&ty, props)
    }

    fn from_props(ty: &str, props: Vec<(String, Prop)>) -> Result<TlsObject, TlsError> {
        let known: &[&'static str] = match ty {
            "tls-creds-x509" => &["id", "dir", "endpoint", "verify-peer"],
            "authz-simple" => &["id", "identity"],
            "tls-creds-psk" => return Err(TlsError::PskUnsupported),
            other => return Err(TlsError::UnknownObjectType(other.to_string())),
        };
        let mut id = None;
        let mut dir = None;
        let mut endpoint = CredsEndpoint::Client;
        let mut verify_peer = true;
        let mut identity = None;
        for (k, v) in props {
            let Some(&key) = known.iter().find(|&&n| n == k) else {
                return Err(TlsError::UnknownProperty {
                    ty: ty.to_string(),
                    property: k,
                });
            };
            match key {
                "id" => id = Some(string(key, v)?),
                "dir" => dir = Some(PathBuf::from(string(key, v)?)),
                "endpoint" => endpoint = string(key, v)?.parse()?,
                "verify-peer" => verify_peer = boolean(key, v)?,
                _ => identity = Some(string(key, v)?),
            }
        }
        let id = id
            .filter(|i| !i.is_empty())
            .ok_or(TlsError::MissingProperty("id"))?;
        Ok(match ty {
            "tls-creds-x509" => TlsObject::X509(X509Options {
                id,
                dir: dir.ok_or(TlsError::MissingProperty("dir"))?,
                endpoint,
                verify_peer,
            }),
            _ => TlsObject::Authz(AuthzSimple {
                id,
                identity: identity.ok_or(TlsError::MissingProperty("identity"))?,
            }),
        })
    }
}

fn string(property: &'static str, v: Prop) -> Result<String, TlsError> {
    match v {
        Prop::Text(s) => Ok(s),
        Prop::Json(Value::String(s)) => Ok(s),
        Prop::Json(other) => Err(TlsError::BadProperty {
            property,
            value: other.to_string(),
        }),
    }
}

fn boolean(property: &'static str, v: Prop) -> Result<bool, TlsError> {
    match v {
        Prop::Json(Value::Bool(b)) => Ok(b),
        Prop::Text(s) => match s.as_str() {
            "on" | "yes" | "true" => Ok(true),
            "off" | "no" | "false" => Ok(false),
            _ => Err(TlsError::BadProperty { property, value: s }),
        },
        Prop::Json(other) => Err(TlsError::BadProperty {
            property,
            value: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn command_line_and_qmp_forms() {
        let cli = TlsObject::parse_cli(
            "tls-creds-x509,id=tls0,dir=/etc/pki/qemu,endpoint=server,verify-peer=off",
        )
        .unwrap();
        let qmp = TlsObject::from_qmp(
            json!({"qom-type": "tls-creds-x509", "id": "tls0", "dir": "/etc/pki/qemu",
                   "endpoint": "server", "verify-peer": false})
            .as_object()
            .cloned()
            .unwrap(),
        )
        .unwrap();
        assert_eq!(cli, qmp);
        assert_eq!(
            cli,
            TlsObject::X509(X509Options {
                id: "tls0".into(),
                dir: "/etc/pki/qemu".into(),
                endpoint: CredsEndpoint::Server,
                verify_peer: false,
            })
        );
        let a = TlsObject::parse_cli("authz-simple,id=auth0,identity=CN=a,O=b");
        // A comma inside a value is not guessed at.
        assert!(a.is_err());
        let a = TlsObject::parse_cli("authz-simple,id=auth0,identity=CN=src").unwrap();
        assert_eq!(a.id(), "auth0");
    }

    #[test]
    fn hostile_or_wrong_input_is_a_typed_error() {
        for (input, expected) in [
            ("tls-creds-x509,dir=/x", "Parameter 'id' is missing"),
            ("tls-creds-x509,id=a", "Parameter 'dir' is missing"),
            (
                "tls-creds-x509,id=a,dir=/x,endpoint=both",
                "invalid value 'both' for property 'endpoint'",
            ),
            (
                "tls-creds-x509,id=a,dir=/x,verify-peer=maybe",
                "invalid value 'maybe' for property 'verify-peer'",
            ),
            (
                "tls-creds-x509,id=a,dir=/x,priority=NORMAL",
                "Property 'tls-creds-x509.priority' not found",
            ),
            (
                "memory-backend-ram,id=m",
                "invalid object type: memory-backend-ram",
            ),
            (
                "tls-creds-x509,id",
                "invalid value 'id' for property 'object'",
            ),
            ("", "invalid object type: "),
        ] {
            assert_eq!(
                TlsObject::parse_cli(input).unwrap_err().to_string(),
                expected,
                "{input}"
            );
        }
        let e = TlsObject::parse_cli("tls-creds-psk,id=p,dir=/x,username=u").unwrap_err();
        assert!(e.to_string().contains("rustls"), "{e}");
        let qmp = |v: Value| TlsObject::from_qmp(v.as_object().cloned().unwrap());
        assert!(qmp(json!({"id": "a"})).is_err());
        assert!(qmp(json!({"qom-type": 5, "id": "a"})).is_err());
        assert!(qmp(
            json!({"qom-type": "tls-creds-x509", "id": "a", "dir": "/x", "verify-peer": "on"})
        )
        .is_err());
        assert!(qmp(json!({"qom-type": "tls-creds-x509", "id": 1, "dir": "/x"})).is_err());
    }
}
