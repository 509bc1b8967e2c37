//! Typed access to QMP `arguments` with QEMU's argument-checking texts.
//!
//! Members are taken in schema order; whatever is left when [`Args::finish`] runs is
//! reported as unexpected, exactly like QEMU's QAPI input visitor:
//!
//! | problem | text |
//! | --- | --- |
//! | mandatory member absent | `Parameter 'uri' is missing` |
//! | wrong JSON type | `Invalid parameter type for 'uri', expected: string` |
//! | member not in the schema | `Parameter 'bogus' is unexpected` |
//! | bad enum value | `Parameter 'state' does not accept value 'bogus'` |

use serde_json::{Map, Value};

use crate::backend::CommandError;

/// The `arguments` object of one command, consumed member by member.
#[derive(Debug, Default)]
pub struct Args {
    map: Map<String, Value>,
    prefix: String,
}

/// `Parameter '<name>' is missing`.
pub fn missing(name: &str) -> CommandError {
    CommandError::generic(format!("Parameter '{name}' is missing"))
}

/// `Invalid parameter type for '<name>', expected: <what>`.
pub fn wrong_type(name: &str, what: &str) -> CommandError {
    CommandError::generic(format!(
        "Invalid parameter type for '{name}', expected: {what}"
    ))
}

/// `Parameter '<name>' does not accept value '<value>'`.
pub fn bad_enum(name: &str, value: &str) -> CommandError {
    CommandError::generic(format!(
        "Parameter '{name}' does not accept value '{value}'"
    ))
}

impl Args {
    /// Wraps a command's arguments (`None` = no `arguments` member).
    pub fn new(map: Option<Map<String, Value>>) -> Self {
        Self {
            map: map.unwrap_or_default(),
            prefix: String::new(),
        }
    }

    /// Wraps a nested object whose members are reported as `<prefix>.<member>`.
    pub fn nested(map: Map<String, Value>, prefix: String) -> Self {
        Self { map, prefix }
    }

    /// The full name of member `key` for messages.
    pub fn full_name(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    /// A mandatory string.
    pub fn req_str(&mut self, key: &str) -> Result<String, CommandError> {
        self.opt_str(key)?
            .ok_or_else(|| missing(&self.full_name(key)))
    }

    /// An optional string.
    pub fn opt_str(&mut self, key: &str) -> Result<Option<String>, CommandError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(wrong_type(&self.full_name(key), "string")),
        }
    }

    /// A mandatory boolean.
    pub fn req_bool(&mut self, key: &str) -> Result<bool, CommandError> {
        self.opt_bool(key)?
            .ok_or_else(|| missing(&self.full_name(key)))
    }

    /// An optional boolean.
    pub fn opt_bool(&mut self, key: &str) -> Result<Option<bool>, CommandError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(wrong_type(&self.full_name(key), "boolean")),
        }
    }

    /// An optional integer.
    pub fn opt_int(&mut self, key: &str) -> Result<Option<i64>, CommandError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) => Ok(Some(v)),
                None => Err(wrong_type(&self.full_name(key), "integer")),
            },
            Some(_) => Err(wrong_type(&self.full_name(key), "integer")),
        }
    }

    /// An optional array.
    pub fn opt_array(&mut self, key: &str) -> Result<Option<Vec<Value>>, CommandError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(wrong_type(&self.full_name(key), "array")),
        }
    }

    /// A mandatory array.
    pub fn req_array(&mut self, key: &str) -> Result<Vec<Value>, CommandError> {
        self.opt_array(key)?
            .ok_or_else(|| missing(&self.full_name(key)))
    }

    /// Every remaining member (for commands whose members the backend validates).
    pub fn take_all(&mut self) -> Map<String, Value> {
        std::mem::take(&mut self.map)
    }

    /// Fails with `Parameter '<x>' is unexpected` if any member was not consumed.
    pub fn finish(self) -> Result<(), CommandError> {
        match self.map.keys().next() {
            Some(k) => Err(CommandError::generic(format!(
                "Parameter '{}' is unexpected",
                self.full_name(k)
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Args {
        Args::new(v.as_object().cloned())
    }

    #[test]
    fn qemu_texts() {
        let mut a = args(json!({"uri": 5, "bogus": 1}));
        assert_eq!(
            a.req_str("uri").unwrap_err().desc,
            "Invalid parameter type for 'uri', expected: string"
        );
        assert_eq!(
            a.finish().unwrap_err().desc,
            "Parameter 'bogus' is unexpected"
        );
        let mut a = args(json!({}));
        assert_eq!(
            a.req_str("uri").unwrap_err().desc,
            "Parameter 'uri' is missing"
        );
        let mut a = Args::nested(Map::new(), "capabilities[0]".into());
        assert_eq!(
            a.req_bool("state").unwrap_err().desc,
            "Parameter 'capabilities[0].state' is missing"
        );
        let mut a = args(json!({"blk": "yes", "n": 1.5}));
        assert!(a
            .opt_bool("blk")
            .unwrap_err()
            .desc
            .ends_with("expected: boolean"));
        assert!(a
            .opt_int("n")
            .unwrap_err()
            .desc
            .ends_with("expected: integer"));
    }
}
