//! Validating one QMP request object (QEMU's `qmp_dispatch` checks).
//!
//! ```text
//! {"execute": NAME [, "arguments": {...}] [, "id": ANY]}
//! ```
//! | problem | desc |
//! | --- | --- |
//! | not an object | `QMP input must be a JSON object` |
//! | no `execute` | `QMP input lacks member 'execute'` |
//! | `execute` not a string | `QMP input member 'execute' must be a string` |
//! | `arguments` not an object | `QMP input member 'arguments' must be an object` |
//! | other member | `QMP input member 'foo' is unexpected` |
//! | `exec-oob` without `oob` negotiated | `QMP input member 'exec-oob' is unexpected` |
//! | both `execute` and `exec-oob` | `QMP input member 'execute' clashes with 'exec-oob'` |
//! | `exec-oob` of a command not allowed out of band | `The command NAME does not support OOB` |

use serde_json::{Map, Value};

use crate::backend::CommandError;

/// A well-formed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Command name.
    pub name: String,
    /// Arguments, if given.
    pub arguments: Option<Map<String, Value>>,
    /// Echoed verbatim in the reply.
    pub id: Option<Value>,
    /// Sent with `exec-oob` (out of band).
    pub oob: bool,
}

/// A request that cannot run: the id to echo (if the input had one) and the error.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// The request's `id`.
    pub id: Option<Value>,
    /// The error reply.
    pub error: CommandError,
}

/// Checks the members of a request; `exec-oob` is a member only when the connection enabled
/// `oob` (`oob_enabled`).
pub fn parse(v: Value, oob_enabled: bool) -> Result<Request, Rejected> {
    let Value::Object(obj) = v else {
        return Err(Rejected {
            id: None,
            error: CommandError::generic("QMP input must be a JSON object"),
        });
    };
    let id = obj.get("id").cloned();
    let fail = |desc: String| Rejected {
        id: id.clone(),
        error: CommandError::generic(desc),
    };
    let mut name = None;
    let mut key: Option<String> = None;
    let mut arguments = None;
    for (k, v) in obj {
        match k.as_str() {
            "execute" | "exec-oob" if k == "execute" || oob_enabled => {
                let Value::String(s) = v else {
                    return Err(fail(format!("QMP input member '{k}' must be a string")));
                };
                if let Some(first) = &key {
                    return Err(fail(format!(
                        "QMP input member '{k}' clashes with '{first}'"
                    )));
                }
                key = Some(k);
                name = Some(s);
            }
            "arguments" => {
                let Value::Object(m) = v else {
                    return Err(fail(
                        "QMP input member 'arguments' must be an object".into(),
                    ));
                };
                arguments = Some(m);
            }
            "id" => {}
            other => return Err(fail(format!("QMP input member '{other}' is unexpected"))),
        }
    }
    let name = name.ok_or_else(|| fail("QMP input lacks member 'execute'".into()))?;
    let oob = key.as_deref() == Some("exec-oob");
    if oob && !crate::cmd::schema::allows_oob(&name) {
        return Err(fail(format!("The command {name} does not support OOB")));
    }
    Ok(Request {
        name,
        arguments,
        id,
        oob,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> (Option<Value>, String) {
        let r = parse(v, true).unwrap_err();
        (r.id, r.error.desc)
    }

    #[test]
    fn checks() {
        assert_eq!(
            err(json!([1])),
            (None, "QMP input must be a JSON object".into())
        );
        assert_eq!(
            err(json!({"id": 7})),
            (Some(json!(7)), "QMP input lacks member 'execute'".into())
        );
        assert_eq!(
            err(json!({"execute": 1})).1,
            "QMP input member 'execute' must be a string"
        );
        assert_eq!(
            err(json!({"execute": "x", "arguments": []})).1,
            "QMP input member 'arguments' must be an object"
        );
        assert_eq!(
            err(json!({"execute": "x", "foo": 1})).1,
            "QMP input member 'foo' is unexpected"
        );
        assert_eq!(
            err(json!({"exec-oob": "query-status"})).1,
            "The command query-status does not support OOB"
        );
        assert_eq!(
            err(json!({"exec-oob": "yank", "execute": "yank"})).1,
            "QMP input member 'execute' clashes with 'exec-oob'"
        );
        let r = parse(json!({"exec-oob": "yank"}), false).unwrap_err();
        assert_eq!(r.error.desc, "QMP input member 'exec-oob' is unexpected");
        assert!(
            parse(json!({"exec-oob": "migrate-pause"}), true)
                .unwrap()
                .oob
        );
        let r = parse(json!({"execute": "stop", "id": {"a": [1]}}), false).unwrap();
        assert_eq!(r.name, "stop");
        assert_eq!(r.id, Some(json!({"a": [1]})));
        assert!(r.arguments.is_none());
    }
}
