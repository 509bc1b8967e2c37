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
//! | `exec-oob` | `The command NAME does not support OOB` (livemig offers no OOB) |

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
}

/// A request that cannot run: the id to echo (if the input had one) and the error.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// The request's `id`.
    pub id: Option<Value>,
    /// The error reply.
    pub error: CommandError,
}

/// Checks the members of a request.
pub fn parse(v: Value) -> Result<Request, Rejected> {
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
    let mut oob = false;
    let mut arguments = None;
    for (k, v) in obj {
        match k.as_str() {
            "execute" | "exec-oob" => {
                if name.is_some() {
                    return Err(fail(format!("QMP input member '{k}' is unexpected")));
                }
                let Value::String(s) = v else {
                    return Err(fail(format!("QMP input member '{k}' must be a string")));
                };
                oob = k == "exec-oob";
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
    if oob {
        return Err(fail(format!("The command {name} does not support OOB")));
    }
    Ok(Request {
        name,
        arguments,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> (Option<Value>, String) {
        let r = parse(v).unwrap_err();
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
            err(json!({"exec-oob": "migrate-pause"})).1,
            "The command migrate-pause does not support OOB"
        );
        let r = parse(json!({"execute": "stop", "id": {"a": [1]}})).unwrap();
        assert_eq!(r.name, "stop");
        assert_eq!(r.id, Some(json!({"a": [1]})));
        assert!(r.arguments.is_none());
    }
}
