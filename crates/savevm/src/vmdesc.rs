//! The VMDESCRIPTION trailer: a JSON description of every FULL section (spec §2.7).
//!
//! ```text
//! {"page_size": 4096, "devices": [{"name": <idstr>, "instance_id": <n>, "vmsd_name": ...,
//!   "version": <v>, "fields": [...], "subsections": [...]}, ...]}
//! ```
//!
//! QEMU writes it with its own compact JSON writer: `", "` between members, `": "` between
//! key and value, no newlines, and escapes every character outside printable ASCII as
//! `\u` and four hex digits (uppercase, surrogate pairs above the BMP). [`to_qemu_json`] reproduces that
//! byte for byte; member order is insertion order (`serde_json` with `preserve_order`).

use serde_json::{json, Map, Value};

/// Collects device entries and renders the trailer JSON.
#[derive(Debug, Clone)]
pub struct VmDescBuilder {
    page_size: u64,
    devices: Vec<Value>,
    commit: bool,
}

impl VmDescBuilder {
    /// An empty description for `page_size` (4096 on x86).
    pub fn new(page_size: u64) -> Self {
        VmDescBuilder {
            page_size,
            devices: Vec::new(),
            commit: false,
        }
    }

    /// Adds a VMState device: `vmsd` is the object returned by [`crate::vmstate::save`].
    pub fn add_device(&mut self, idstr: &str, instance_id: u32, vmsd: Value) {
        self.devices.push(device_entry(idstr, instance_id, vmsd));
    }

    /// Adds a legacy (non-VMSD) device whose state is `size` opaque bytes.
    pub fn add_legacy_device(&mut self, idstr: &str, instance_id: u32, size: u64) {
        self.devices.push(json!({
            "name": idstr,
            "instance_id": instance_id,
            "size": size,
            "fields": [{"name": "data", "size": size, "type": "buffer"}],
        }));
    }

    /// Number of devices added.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// True when no device was added.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Announces livemig's switchover commit (see [`crate::record::write_commit`]).
    pub fn announce_commit(&mut self) {
        self.commit = true;
    }

    /// The JSON value `{"page_size": .., "devices": [..]}` (and livemig's announcement).
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "page_size": self.page_size, "devices": self.devices.clone() });
        if self.commit {
            v[crate::record::COMMIT_ANNOUNCEMENT] = json!({ "switchover-commit": true });
        }
        v
    }

    /// The trailer text in QEMU's formatting.
    pub fn to_qemu_json(&self) -> String {
        to_qemu_json(&self.to_json())
    }
}

/// A device entry: `name`, `instance_id`, then the members of the VMSD description.
pub fn device_entry(idstr: &str, instance_id: u32, vmsd: Value) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), json!(idstr));
    o.insert("instance_id".into(), json!(instance_id));
    if let Value::Object(m) = vmsd {
        o.extend(m);
    }
    Value::Object(o)
}

/// Serialises `v` exactly as QEMU's JSON writer does (compact, `", "` / `": "` separators).
pub fn to_qemu_json(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, e);
            }
            out.push(']');
        }
        Value::Object(m) => {
            out.push('{');
            for (i, (k, e)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(out, k);
                out.push_str(": ");
                write_value(out, e);
            }
            out.push('}');
        }
    }
}

fn write_str(out: &mut String, s: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) >= 0x7f => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{:04X}", u);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_style_and_order() {
        let mut b = VmDescBuilder::new(4096);
        b.add_device(
            "timer",
            0,
            json!({"vmsd_name": "timer", "version": 2, "fields": [
                {"name": "cpu_ticks_offset", "type": "int64", "size": 8}]}),
        );
        assert_eq!(
            b.to_qemu_json(),
            "{\"page_size\": 4096, \"devices\": [{\"name\": \"timer\", \"instance_id\": 0, \
             \"vmsd_name\": \"timer\", \"version\": 2, \"fields\": [{\"name\": \
             \"cpu_ticks_offset\", \"type\": \"int64\", \"size\": 8}]}]}"
        );
    }

    #[test]
    fn escaping() {
        let v = json!(["a\"b\\c\n\t\r\u{8}\u{c}", "\u{1}\u{7f}é", "😀", "/"]);
        assert_eq!(
            to_qemu_json(&v),
            r#"["a\"b\\c\n\t\r\b\f", "\u0001\u007F\u00E9", "\uD83D\uDE00", "/"]"#
        );
    }

    #[test]
    fn empty_containers_and_legacy_device() {
        let mut b = VmDescBuilder::new(4096);
        assert_eq!(b.to_qemu_json(), r#"{"page_size": 4096, "devices": []}"#);
        b.add_legacy_device("slirp", 0, 12);
        assert_eq!(
            b.to_qemu_json(),
            r#"{"page_size": 4096, "devices": [{"name": "slirp", "instance_id": 0, "size": 12, "fields": [{"name": "data", "size": 12, "type": "buffer"}]}]}"#
        );
        assert_eq!(to_qemu_json(&json!({})), "{}");
    }
}
