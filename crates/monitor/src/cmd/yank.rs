//! `yank` and `query-yank`: unblock a migration stuck on a dead peer.
//!
//! ```text
//! {"execute": "query-yank"}                       → [{"type": "migration"}] while one runs
//! {"execute": "yank", "arguments": {"instances": [{"type": "migration"}]}}
//!   → {}: the migration's connections are shut down; it fails and the source resumes
//! ```
//! QEMU's `YankInstance` is a union on `type`: `block-node` (`node-name`), `chardev` (`id`)
//! or `migration`. livemig registers only the `migration` instance (its monitors and disks
//! have nothing that can hang on a peer). As in QEMU, every instance must exist before any
//! is yanked, else `DeviceNotFound` "Instance not found". `yank` may run out of band.

use serde_json::{json, Value};

use super::args::{bad_enum, wrong_type, Args};
use crate::backend::{CommandError, ErrorClass};
use crate::session::Session;

/// One `YankInstance`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum YankInstance {
    /// A block node (never registered by livemig).
    BlockNode(String),
    /// A character device (never registered by livemig).
    Chardev(String),
    /// The migration.
    Migration,
}

/// Arguments of `yank`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Yank {
    /// The instances to yank.
    pub instances: Vec<YankInstance>,
}

impl Yank {
    /// Parses `instances: [YankInstance]`.
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        let list = a.req_array("instances")?;
        let mut instances = Vec::with_capacity(list.len());
        for (i, item) in list.into_iter().enumerate() {
            let prefix = format!("instances[{i}]");
            let Value::Object(obj) = item else {
                return Err(wrong_type(&prefix, "object"));
            };
            let mut entry = Args::nested(obj, prefix);
            let ty = entry.req_str("type")?;
            let instance = match ty.as_str() {
                "block-node" => YankInstance::BlockNode(entry.req_str("node-name")?),
                "chardev" => YankInstance::Chardev(entry.req_str("id")?),
                "migration" => YankInstance::Migration,
                // QEMU names the member without its path here (an enum check).
                other => return Err(bad_enum("type", other)),
            };
            entry.finish()?;
            instances.push(instance);
        }
        Ok(Self { instances })
    }

    /// Checks that every instance exists, then yanks them.
    pub fn run(&self, s: &Session) -> Result<(), CommandError> {
        let registered = |i: &YankInstance| {
            *i == YankInstance::Migration && s.backend.migration_yank_registered()
        };
        if !self.instances.iter().all(registered) {
            return Err(CommandError {
                class: ErrorClass::DeviceNotFound,
                desc: "Instance not found".into(),
            });
        }
        if !self.instances.is_empty() {
            s.backend.yank_migration();
        }
        Ok(())
    }
}

/// The `query-yank` reply.
pub fn query(s: &Session) -> Value {
    if s.backend.migration_yank_registered() {
        json!([{ "type": "migration" }])
    } else {
        json!([])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Yank, CommandError> {
        Yank::parse(&mut Args::new(v.as_object().cloned()))
    }

    #[test]
    fn instances_are_a_union_on_type() {
        let y = parse(json!({"instances": [{"type": "migration"},
                                           {"type": "chardev", "id": "c"},
                                           {"type": "block-node", "node-name": "n"}]}));
        assert_eq!(
            y.unwrap().instances,
            vec![
                YankInstance::Migration,
                YankInstance::Chardev("c".into()),
                YankInstance::BlockNode("n".into())
            ]
        );
        let e = parse(json!({"instances": [{"type": "bogus"}]})).unwrap_err();
        assert_eq!(e.desc, "Parameter 'type' does not accept value 'bogus'");
        let e = parse(json!({"instances": [{"type": "chardev"}]})).unwrap_err();
        assert_eq!(e.desc, "Parameter 'instances[0].id' is missing");
        let e = parse(json!({"instances": [{"type": "migration", "id": "x"}]})).unwrap_err();
        assert_eq!(e.desc, "Parameter 'instances[0].id' is unexpected");
        assert_eq!(
            parse(json!({})).unwrap_err().desc,
            "Parameter 'instances' is missing"
        );
    }
}
