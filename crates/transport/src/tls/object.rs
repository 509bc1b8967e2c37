//! The TLS objects an operator creates, as QEMU spells them, parsed once at the boundary:
//! `--object TYPE,id=ID,prop=value,...` on the command line, or QMP `object-add` with
//! `qom-type`, `id` and the properties as flat members (QEMU 7.2).
//!
//! | `qom-type` | properties |
//! | --- | --- |
//! | `tls-creds-x509` | `dir` (required), `endpoint` (`server`/`client`, default `client`), `verify-peer` (default on) |
//! | `authz-simple` | `identity` (required) |
//!
//! The text form (`--object`, HMP `object_add`) is QEMU's `key=value,...`: the first item
//! may omit `qom-type=`, and `,,` stands for a comma inside a value (`identity=CN=a,,O=b`).
//! Text booleans accept `on`/`off`/`yes`/`no`/`true`/`false`; QMP wants JSON booleans. An
//! `id` must be an identifier as QEMU's (a letter, then letters, digits, `-`, `.`, `_`).
//! Error texts are QEMU 7.2's. `tls-creds-psk` is refused with a message: rustls has no API for TLS 1.3
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

    /// Parses `[qom-type=]TYPE,id=ID,prop=value,...` (`--object`, HMP `object_add`).
    pub fn parse_cli(s: &str) -> Result<TlsObject, TlsError> {
        let mut ty = None;
        let mut props = Vec::new();
        for (i, item) in split_items(s).into_iter().enumerate() {
            match item.split_once('=') {
                Some(("qom-type", v)) => ty = Some(v.to_string()),
                Some((k, v)) => props.push((k.to_string(), Prop::Text(v.to_string()))),
                None if i == 0 => ty = Some(item),
                None => return Err(TlsError::ExpectedEquals(item)),
            }
        }
        let ty = ty.ok_or(TlsError::MissingProperty("qom-type"))?;
        Self::from_props(&ty, props)
    }

    /// Parses QMP `object-add` arguments.
    pub fn from_qmp(args: Map<String, Value>) -> Result<TlsObject, TlsError> {
        let mut ty = None;
        let mut props = Vec::new();
        for (k, v) in args {
            if k == "qom-type" {
                ty = Some(v.as_str().map(str::to_string).ok_or(TlsError::WrongType {
                    property: "qom-type",
                    expected: "string",
                })?);
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
                return Err(TlsError::UnknownProperty(k));
            };
            match key {
                "id" => id = Some(string(key, v)?),
                "dir" => dir = Some(PathBuf::from(string(key, v)?)),
                "endpoint" => endpoint = string(key, v)?.parse()?,
                "verify-peer" => verify_peer = boolean(key, v)?,
                _ => identity = Some(string(key, v)?),
            }
        }
        let id = id.ok_or(TlsError::MissingProperty("id"))?;
        if !is_identifier(&id) {
            return Err(TlsError::BadId(id));
        }
        Ok(match ty {
            "tls-creds-x509" => TlsObject::X509(X509Options {
                id,
                dir: dir.ok_or(TlsError::MissingValue("dir"))?,
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

/// Splits at single commas; `,,` is a comma inside an item.
fn split_items(s: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut item = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ',' {
            item.push(c);
        } else if chars.next_if_eq(&',').is_some() {
            item.push(',');
        } else {
            items.push(std::mem::take(&mut item));
        }
    }
    items.push(item);
    items
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.`, `_`.
fn is_identifier(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

fn string(property: &'static str, v: Prop) -> Result<String, TlsError> {
    match v {
        Prop::Text(s) => Ok(s),
        Prop::Json(Value::String(s)) => Ok(s),
        Prop::Json(_) => Err(TlsError::WrongType {
            property,
            expected: "string",
        }),
    }
}

fn boolean(property: &'static str, v: Prop) -> Result<bool, TlsError> {
    match v {
        Prop::Json(Value::Bool(b)) => Ok(b),
        Prop::Text(s) => match s.as_str() {
            "on" | "yes" | "true" => Ok(true),
            "off" | "no" | "false" => Ok(false),
            _ => Err(TlsError::NotOnOff(property)),
        },
        Prop::Json(_) => Err(TlsError::WrongType {
            property,
            expected: "boolean",
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
        // A lone comma ends the value; `,,` is a comma inside it.
        let a = TlsObject::parse_cli("authz-simple,id=auth0,identity=CN=a,O=b");
        assert_eq!(a.unwrap_err().to_string(), "Parameter 'O' is unexpected");
        let a = TlsObject::parse_cli("qom-type=authz-simple,id=auth0,identity=CN=a,,O=b").unwrap();
        assert_eq!(
            a,
            TlsObject::Authz(AuthzSimple {
                id: "auth0".into(),
                identity: "CN=a,O=b".into(),
            })
        );
        let x = TlsObject::parse_cli("tls-creds-x509,id=t,dir=/a,,b,,").unwrap();
        assert!(matches!(x, TlsObject::X509(o) if o.dir == std::path::Path::new("/a,b,")));
    }

    #[test]
    fn hostile_or_wrong_input_is_a_typed_error() {
        for (input, expected) in [
            ("tls-creds-x509,dir=/x", "Parameter 'id' is missing"),
            ("tls-creds-x509,id=a", "Missing 'dir' property value"),
            (
                "tls-creds-x509,id=a,dir=/x,endpoint=both",
                "Parameter 'endpoint' does not accept value 'both'",
            ),
            (
                "tls-creds-x509,id=a,dir=/x,verify-peer=maybe",
                "Parameter 'verify-peer' expects 'on' or 'off'",
            ),
            (
                "tls-creds-x509,id=a,dir=/x,priority=NORMAL",
                "Parameter 'priority' is unexpected",
            ),
            (
                "memory-backend-ram,id=m",
                "Parameter 'qom-type' does not accept value 'memory-backend-ram'",
            ),
            ("tls-creds-x509,id", "Expected '=' after parameter 'id'"),
            ("", "Parameter 'qom-type' does not accept value ''"),
            ("id=a,dir=/x", "Parameter 'qom-type' is missing"),
            (
                "authz-simple,id=5a,identity=x",
                "Parameter 'id' expects an identifier",
            ),
            (
                "authz-simple,id=,identity=x",
                "Parameter 'id' expects an identifier",
            ),
            (
                "authz-simple,id=a b,identity=x",
                "Parameter 'id' expects an identifier",
            ),
            ("authz-simple,id=a", "Parameter 'identity' is missing"),
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
        assert_eq!(
            qmp(json!({"qom-type": "tls-creds-x509", "id": "a", "dir": "/x", "verify-peer": "on"}))
                .unwrap_err()
                .to_string(),
            "Invalid parameter type for 'verify-peer', expected: boolean"
        );
        assert!(qmp(json!({"qom-type": "tls-creds-x509", "id": 1, "dir": "/x"})).is_err());
    }
}
