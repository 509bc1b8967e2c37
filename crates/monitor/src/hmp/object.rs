//! HMP `object_add` and `object_del`, QEMU's human forms of QMP `object-add` / `object-del`:
//!
//! ```text
//! (qemu) object_add tls-creds-x509,id=tls0,dir=/etc/pki/qemu,endpoint=client
//! (qemu) object_add authz-simple,id=auth0,identity=CN=src,,O=example
//! (qemu) object_del tls0
//! ```
//!
//! The argument of `object_add` is the rest of the line in QEMU's `key=value,...` syntax, the
//! same as `--object` (the first item may omit `qom-type=`, `,,` is a comma inside a value);
//! it is parsed by [`TlsObject::parse_cli`] and created through the same backend call as
//! QMP's `object-add` ([`ObjectAdd`]), so both monitors and the command line share one
//! parser and one set of error texts. Errors print as `Error: <QEMU's text>`, with QEMU's
//! hint line after a malformed `id`. `object_add help` lists the object types livemig
//! knows and `object_add TYPE,help` their properties, as QEMU does for its own.

use transport::tls::{TlsError, TlsObject};

use super::args_type::HmpArgs;
use crate::backend::CommandError;
use crate::cmd::object_add::ObjectAdd;
use crate::cmd::object_del::ObjectDel;
use crate::session::Session;

/// QEMU's hint after "Parameter 'id' expects an identifier".
const ID_HINT: &str =
    "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.";

/// The object types and their properties, for `object_add help`.
const TYPES: &[(&str, &[&str])] = &[
    ("authz-simple", &["identity=<string>"]),
    (
        "tls-creds-x509",
        &[
            "dir=<string>",
            "endpoint=<QCryptoTLSCredsEndpoint> - server or client",
            "verify-peer=<bool>",
        ],
    ),
];

/// `object_add [qom-type=]type,id=str[,prop=value][,...]`.
pub(super) fn hmp_object_add(
    s: &mut Session,
    a: &HmpArgs,
    out: &mut String,
) -> Result<(), CommandError> {
    let spec = a.str("object").unwrap_or_default();
    if let Some(text) = help(spec) {
        out.push_str(&text);
        return Ok(());
    }
    let object = TlsObject::parse_cli(spec).map_err(|e| match e {
        TlsError::BadId(_) => CommandError::generic(format!("{e}\n{ID_HINT}")),
        e => CommandError::generic(e.to_string()),
    })?;
    ObjectAdd(object).run(s)
}

/// `object_del id`.
pub(super) fn hmp_object_del(
    s: &mut Session,
    a: &HmpArgs,
    _: &mut String,
) -> Result<(), CommandError> {
    ObjectDel {
        id: a.str("id").unwrap_or_default().to_string(),
    }
    .run(s)
}

/// The text of `object_add help` / `object_add TYPE,help`, or `None` for a real request.
fn help(spec: &str) -> Option<String> {
    if spec == "help" || spec == "?" {
        let mut text = String::from("List of user creatable objects:\n");
        for (name, _) in TYPES {
            text.push_str(&format!("  {name}\n"));
        }
        return Some(text);
    }
    let ty = spec
        .strip_suffix(",help")
        .or_else(|| spec.strip_suffix(",?"))?;
    let ty = ty.strip_prefix("qom-type=").unwrap_or(ty);
    let (name, props) = TYPES.iter().find(|(name, _)| *name == ty)?;
    let mut text = format!("{name} options:\n");
    for p in *props {
        text.push_str(&format!("  {p}\n"));
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_types_and_properties() {
        assert_eq!(
            help("help").unwrap(),
            "List of user creatable objects:\n  authz-simple\n  tls-creds-x509\n"
        );
        assert_eq!(
            help("authz-simple,help").unwrap(),
            "authz-simple options:\n  identity=<string>\n"
        );
        assert!(help("qom-type=tls-creds-x509,?")
            .unwrap()
            .contains("  verify-peer=<bool>\n"));
        // Not help: parsed as an object (and refused there if wrong).
        assert!(help("tls-creds-x509,id=help").is_none());
        assert!(help("nosuch,help").is_none());
    }
}
