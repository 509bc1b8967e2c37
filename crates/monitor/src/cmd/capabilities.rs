//! `migrate-set-capabilities` and `query-migrate-capabilities`.
//!
//! ```text
//! {"execute": "migrate-set-capabilities",
//!  "arguments": {"capabilities": [{"capability": "events", "state": true}, ...]}}
//! {"execute": "query-migrate-capabilities"}
//!   → [{"state": false, "capability": "xbzrle"}, ...]   (what livemig implements, enum order)
//! ```
//! The whole list is handed to the backend, which applies it all-or-nothing.

use serde_json::{json, Value};

use super::args::{bad_enum, wrong_type, Args};
use crate::backend::CommandError;
use crate::session::Session;
use migration::Capability;

/// Arguments of `migrate-set-capabilities`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCapabilities {
    /// The requested states, in request order.
    pub changes: Vec<(Capability, bool)>,
}

impl SetCapabilities {
    /// Parses `capabilities: [{capability, state}]` with QEMU's nested member names
    /// (`capabilities[1].state`).
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        let list = a.req_array("capabilities")?;
        let mut changes = Vec::with_capacity(list.len());
        for (i, item) in list.into_iter().enumerate() {
            let prefix = format!("capabilities[{i}]");
            let Value::Object(obj) = item else {
                return Err(wrong_type(&prefix, "object"));
            };
            let mut entry = Args::nested(obj, prefix);
            let name = entry.req_str("capability")?;
            // QEMU's enum check names the member without its path (unlike its type checks).
            let cap = name
                .parse::<Capability>()
                .map_err(|_| bad_enum("capability", &name))?;
            let state = entry.req_bool("state")?;
            entry.finish()?;
            changes.push((cap, state));
        }
        Ok(Self { changes })
    }

    /// Applies the changes.
    pub fn run(&self, s: &Session) -> Result<(), CommandError> {
        s.backend.set_capabilities(&self.changes)
    }
}

/// The `query-migrate-capabilities` reply.
pub fn query(s: &Session) -> Value {
    let list = s.backend.capabilities().list();
    Value::Array(
        list.into_iter()
            .map(|(c, on)| json!({ "state": on, "capability": c.as_str() }))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<SetCapabilities, CommandError> {
        let mut a = Args::new(v.as_object().cloned());
        SetCapabilities::parse(&mut a)
    }

    #[test]
    fn nested_errors_name_the_element() {
        let e = parse(
            json!({"capabilities": [{"capability": "events", "state": true},
                                              {"capability": "bogus", "state": true}]}),
        );
        assert_eq!(
            e.unwrap_err().desc,
            "Parameter 'capability' does not accept value 'bogus'"
        );
        let e = parse(json!({"capabilities": [{"capability": "events", "state": "on"}]}));
        assert_eq!(
            e.unwrap_err().desc,
            "Invalid parameter type for 'capabilities[0].state', expected: boolean"
        );
        let e = parse(json!({"capabilities": [{"capability": "events", "state": true, "x": 1}]}));
        assert_eq!(
            e.unwrap_err().desc,
            "Parameter 'capabilities[0].x' is unexpected"
        );
        let e = parse(json!({"capabilities": [1]}));
        assert_eq!(
            e.unwrap_err().desc,
            "Invalid parameter type for 'capabilities[0]', expected: object"
        );
        let ok = parse(json!({"capabilities": [{"capability": "events", "state": true}]}));
        assert_eq!(ok.unwrap().changes, vec![(Capability::Events, true)]);
    }
}
