//! `query-qmp-schema`: QEMU's introspection format (`SchemaInfo` list) describing livemig's
//! commands, their arguments and its events, so managers can probe features the way they
//! probe QEMU (libvirt: `migrate-set-parameters/arg-type/max-bandwidth`).
//!
//! The command list is [`COMMANDS`] itself, so a command added to the table is described
//! here; its arguments come from [`command_args`] (a unit test fails for a command that has
//! none), and the parameters of `migrate-set-parameters` and the capability and status enums
//! are generated from the migration crate's tables, so they follow those tables.
//!
//! ```text
//! {"name": "migrate", "meta-type": "command", "arg-type": "1", "ret-type": "0"}
//! {"name": "1", "meta-type": "object", "members": [{"name": "uri", "type": "str"},
//!                                                  {"name": "blk", "type": "bool", "default": null}]}
//! {"name": "str", "meta-type": "builtin", "json-type": "string"}
//! {"name": "2", "meta-type": "enum", "values": [...], "members": [{"name": ...}]}
//! {"name": "[2]", "meta-type": "array", "element-type": "2"}
//! ```
//! Like QEMU, object and enum types are named by numbers (their names are not part of the
//! interface); `0` is the empty object. Query commands return the builtin `any`: livemig
//! describes what managers send, not yet the shape of every reply.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::COMMANDS;
use migration::dirty_rate::DirtyRateMode;
use migration::params::{ParamKind, PARAMS};
use migration::{Capability, MigrationStatus};

/// A QAPI type as introspection shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ty {
    /// A builtin (`str`, `bool`, `int`, `uint8`, `uint32`, `uint64`, `size`, `number`,
    /// `any`, `null`).
    Builtin(&'static str),
    /// An enumeration.
    Enum(Vec<String>),
    /// An array of the element type.
    Array(Box<Ty>),
    /// An object with members `(name, type, optional)`.
    Object(Vec<Member>),
}

/// An object member: name, type, optional.
pub type Member = (String, Ty, bool);

fn req(name: &str, ty: Ty) -> Member {
    (name.to_string(), ty, false)
}

fn opt(name: &str, ty: Ty) -> Member {
    (name.to_string(), ty, true)
}

const STR: Ty = Ty::Builtin("str");
const BOOL: Ty = Ty::Builtin("bool");
const INT: Ty = Ty::Builtin("int");

fn migration_status() -> Ty {
    Ty::Enum(
        MigrationStatus::ALL
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
    )
}

fn param_type(kind: ParamKind) -> Ty {
    match kind {
        ParamKind::Size => Ty::Builtin("size"),
        ParamKind::Uint8 => Ty::Builtin("uint8"),
        ParamKind::Uint32 => Ty::Builtin("uint32"),
        ParamKind::Uint64 => Ty::Builtin("uint64"),
        ParamKind::Bool => BOOL,
        ParamKind::Str => STR,
        ParamKind::Enum(values) => Ty::Enum(values.iter().map(|v| v.to_string()).collect()),
    }
}

/// The members of a command's `arguments`, or `None` for a command not described yet.
pub fn command_args(name: &str) -> Option<Vec<Member>> {
    Some(match name {
        "qmp_capabilities" => vec![opt(
            "enable",
            Ty::Array(Box::new(Ty::Enum(vec!["oob".into()]))),
        )],
        "migrate" => vec![
            req("uri", STR),
            opt("blk", BOOL),
            opt("inc", BOOL),
            opt("detach", BOOL),
            opt("resume", BOOL),
        ],
        "migrate-incoming" | "migrate-recover" => vec![req("uri", STR)],
        "migrate-continue" => vec![req("state", migration_status())],
        "migrate-set-capabilities" => {
            let cap = Ty::Enum(
                Capability::ALL
                    .iter()
                    .map(|c| c.as_str().to_string())
                    .collect(),
            );
            let status = Ty::Object(vec![req("capability", cap), req("state", BOOL)]);
            vec![req("capabilities", Ty::Array(Box::new(status)))]
        }
        "migrate-set-parameters" => PARAMS
            .iter()
            .map(|p| opt(p.name, param_type(p.kind)))
            .collect(),
        "getfd" | "closefd" => vec![req("fdname", STR)],
        "add-fd" => vec![opt("fdset-id", INT), opt("opaque", STR)],
        "calc-dirty-rate" => {
            let modes = DirtyRateMode::ALL.iter().map(|m| m.as_str().to_string());
            vec![
                req("calc-time", INT),
                opt("sample-pages", INT),
                opt("mode", Ty::Enum(modes.collect())),
            ]
        }
        "remove-fd" => vec![req("fdset-id", INT), opt("fd", INT)],
        // QEMU's ObjectOptions union flattened to the members livemig's two types take.
        "object-add" => vec![
            req(
                "qom-type",
                Ty::Enum(vec!["tls-creds-x509".into(), "authz-simple".into()]),
            ),
            req("id", STR),
            opt("dir", STR),
            opt("endpoint", Ty::Enum(vec!["client".into(), "server".into()])),
            opt("verify-peer", BOOL),
            opt("identity", STR),
        ],
        "object-del" => vec![req("id", STR)],
        "yank" => {
            // QEMU's union flattened: `type` plus the members of its variants.
            let ty = Ty::Enum(vec![
                "block-node".into(),
                "chardev".into(),
                "migration".into(),
            ]);
            let instance = Ty::Object(vec![req("type", ty), opt("node-name", STR), opt("id", STR)]);
            vec![req("instances", Ty::Array(Box::new(instance)))]
        }
        "human-monitor-command" => vec![req("command-line", STR), opt("cpu-index", INT)],
        "migrate_cancel"
        | "migrate-start-postcopy"
        | "migrate-pause"
        | "query-yank"
        | "query-fdsets"
        | "query-dirty-rate"
        | "query-uuid"
        | "query-migrate"
        | "query-migrate-capabilities"
        | "query-migrate-parameters"
        | "query-status"
        | "stop"
        | "cont"
        | "quit"
        | "query-commands"
        | "query-version"
        | "query-qmp-schema" => vec![],
        _ => return None,
    })
}

/// What the command returns: `{}` (the empty object) or data described as `any`.
fn returns_data(name: &str) -> bool {
    name.starts_with("query-") || matches!(name, "human-monitor-command" | "add-fd")
}

/// Commands QEMU 7.2 allows out of band.
pub fn allows_oob(name: &str) -> bool {
    matches!(name, "migrate-recover" | "migrate-pause" | "yank")
}

/// The events livemig emits with their data members.
fn events() -> Vec<(&'static str, Vec<Member>)> {
    let cause = Ty::Enum(
        [
            "none",
            "host-error",
            "host-qmp-quit",
            "host-qmp-system-reset",
            "host-signal",
            "host-ui",
            "guest-shutdown",
            "guest-reset",
            "guest-panic",
            "subsystem-reset",
            "snapshot-load",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    vec![
        ("MIGRATION", vec![req("status", migration_status())]),
        ("MIGRATION_PASS", vec![req("pass", INT)]),
        ("STOP", vec![]),
        ("RESUME", vec![]),
        ("SHUTDOWN", vec![req("guest", BOOL), req("reason", cause)]),
    ]
}

/// Collects type definitions and names them.
#[derive(Default)]
struct Builder {
    names: HashMap<Ty, String>,
    defs: Vec<Value>,
    next: u32,
}

impl Builder {
    fn name(&mut self, ty: &Ty) -> String {
        if let Some(n) = self.names.get(ty) {
            return n.clone();
        }
        let (name, def) = match ty {
            Ty::Builtin(b) => {
                let json_type = match *b {
                    "str" => "string",
                    "bool" => "boolean",
                    "number" => "number",
                    "any" => "value",
                    "null" => "null",
                    _ => "int",
                };
                (
                    b.to_string(),
                    json!({"name": b, "meta-type": "builtin", "json-type": json_type}),
                )
            }
            Ty::Enum(values) => {
                let name = self.fresh();
                let members: Vec<Value> = values.iter().map(|v| json!({ "name": v })).collect();
                (
                    name.clone(),
                    json!({"name": name, "meta-type": "enum", "values": values, "members": members}),
                )
            }
            Ty::Array(elem) => {
                let e = self.name(elem);
                let name = format!("[{e}]");
                (
                    name.clone(),
                    json!({"name": name, "meta-type": "array", "element-type": e}),
                )
            }
            Ty::Object(members) => {
                let name = if members.is_empty() {
                    "0".to_string()
                } else {
                    self.fresh()
                };
                let members: Vec<Value> = members
                    .iter()
                    .map(|(n, t, optional)| {
                        let t = self.name(t);
                        if *optional {
                            json!({"name": n, "type": t, "default": null})
                        } else {
                            json!({"name": n, "type": t})
                        }
                    })
                    .collect();
                (
                    name.clone(),
                    json!({"name": name, "meta-type": "object", "members": members}),
                )
            }
        };
        self.names.insert(ty.clone(), name.clone());
        self.defs.push(def);
        name
    }

    fn fresh(&mut self) -> String {
        self.next += 1;
        self.next.to_string()
    }
}

/// The `query-qmp-schema` reply.
pub fn query() -> Value {
    let mut b = Builder::default();
    b.name(&Ty::Object(Vec::new()));
    let mut entities = Vec::new();
    for (name, _) in COMMANDS {
        // A command not described yet is still listed, taking an empty object.
        let args = command_args(name).unwrap_or_default();
        let arg_type = b.name(&Ty::Object(args));
        let ret_type = if returns_data(name) {
            b.name(&Ty::Builtin("any"))
        } else {
            "0".to_string()
        };
        let mut e = json!({"name": name, "meta-type": "command", "arg-type": arg_type,
                           "ret-type": ret_type});
        if allows_oob(name) {
            e["allow-oob"] = json!(true);
        }
        entities.push(e);
    }
    for (name, data) in events() {
        let arg_type = b.name(&Ty::Object(data));
        entities.push(json!({"name": name, "meta-type": "event", "arg-type": arg_type}));
    }
    entities.extend(b.defs);
    Value::Array(entities)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolves a libvirt-style path such as `migrate-set-parameters/arg-type/max-bandwidth`.
    fn lookup<'a>(schema: &'a [Value], path: &str) -> Option<&'a Value> {
        let by_name = |n: &str| schema.iter().find(|e| e["name"] == n);
        let mut parts = path.split('/');
        let mut cur = by_name(parts.next()?)?;
        for p in parts {
            cur = match p {
                "arg-type" | "ret-type" => by_name(cur[p].as_str()?)?,
                member => {
                    let m = cur["members"]
                        .as_array()?
                        .iter()
                        .find(|m| m["name"] == member)?;
                    by_name(m["type"].as_str()?)?
                }
            };
        }
        Some(cur)
    }

    #[test]
    fn every_command_is_described() {
        for (name, _) in COMMANDS {
            assert!(
                command_args(name).is_some(),
                "{name} has no schema in schema.rs"
            );
        }
    }

    #[test]
    fn libvirt_style_probes_resolve() {
        let v = query();
        let schema = v.as_array().unwrap();
        let bw = lookup(schema, "migrate-set-parameters/arg-type/max-bandwidth").unwrap();
        assert_eq!(bw["json-type"], "int");
        let state = lookup(schema, "migrate-continue/arg-type/state").unwrap();
        assert!(state["values"]
            .as_array()
            .unwrap()
            .contains(&json!("pre-switchover")));
        assert!(lookup(schema, "MIGRATION/arg-type/status").is_some());
        assert!(lookup(schema, "migrate-set-parameters/arg-type/nosuch").is_none());
        let names: Vec<String> = schema.iter().map(|e| e["name"].to_string()).collect();
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(names.len(), unique.len(), "entity names are unique");
    }
}
