//! Migration parameters (QEMU's `MigrationParameters`), table-driven.
//!
//! [`PARAMS`] lists every QEMU 7.2 parameter with its type, default and valid range, in the
//! order `info migrate_parameters` prints them. `migrate-set-parameters` validates the whole
//! merged set before applying anything. Two defaults differ from QEMU on purpose:
//! `max-bandwidth` is 0 (unlimited) instead of 128 MiB/s, because a live migration should not
//! be throttled unless the operator asks for it.

use serde_json::{Map, Value};

/// The type of a parameter's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A byte size or other unsigned integer accepting size suffixes in HMP.
    Size,
    /// An unsigned integer in `[min, max]`.
    Int {
        /// Smallest valid value.
        min: u64,
        /// Largest valid value.
        max: u64,
    },
    /// A boolean.
    Bool,
    /// A string (TLS names).
    Str,
    /// One of the listed strings.
    Enum(&'static [&'static str]),
}

/// A parameter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue {
    /// Integer kinds.
    Int(u64),
    /// Booleans.
    Bool(bool),
    /// Strings and enums.
    Str(String),
}

/// Description of one parameter.
#[derive(Debug)]
pub struct ParamSpec {
    /// The QAPI name (dashes).
    pub name: &'static str,
    /// Type and range.
    pub kind: ParamKind,
    /// Default as a JSON literal-free value.
    default: DefaultValue,
    /// Unit text appended by `info migrate_parameters` (e.g. " ms").
    pub hmp_unit: &'static str,
}

#[derive(Debug)]
enum DefaultValue {
    Int(u64),
    Bool(bool),
    Str(&'static str),
}

const fn int(min: u64, max: u64) -> ParamKind {
    ParamKind::Int { min, max }
}

const fn p(name: &'static str, kind: ParamKind, d: DefaultValue, unit: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        kind,
        default: d,
        hmp_unit: unit,
    }
}

/// Largest `downtime-limit` QEMU accepts, in ms.
pub const MAX_DOWNTIME_LIMIT_MS: u64 = 2000 * 1000;

use DefaultValue::{Bool as DB, Int as DI, Str as DS};

/// Every parameter, in `info migrate_parameters` order.
pub static PARAMS: &[ParamSpec] = &[
    p("announce-initial", int(0, 100_000), DI(50), " ms"),
    p("announce-max", int(0, 100_000), DI(550), " ms"),
    p("announce-rounds", int(0, 1000), DI(5), ""),
    p("announce-step", int(1, 10_000), DI(100), " ms"),
    p("compress-level", int(0, 9), DI(1), ""),
    p("compress-threads", int(1, 255), DI(8), ""),
    p("compress-wait-thread", ParamKind::Bool, DB(true), ""),
    p("decompress-threads", int(1, 255), DI(2), ""),
    p("throttle-trigger-threshold", int(1, 100), DI(50), ""),
    p("cpu-throttle-initial", int(1, 99), DI(20), ""),
    p("cpu-throttle-increment", int(1, 99), DI(10), ""),
    p("cpu-throttle-tailslow", ParamKind::Bool, DB(false), ""),
    p("max-cpu-throttle", int(1, 99), DI(99), ""),
    p("tls-creds", ParamKind::Str, DS(""), ""),
    p("tls-hostname", ParamKind::Str, DS(""), ""),
    p("max-bandwidth", ParamKind::Size, DI(0), " bytes/second"),
    p(
        "downtime-limit",
        int(0, MAX_DOWNTIME_LIMIT_MS),
        DI(300),
        " ms",
    ),
    p(
        "x-checkpoint-delay",
        int(0, u32::MAX as u64),
        DI(20_000),
        " ms",
    ),
    p("block-incremental", ParamKind::Bool, DB(false), ""),
    p("multifd-channels", int(1, 255), DI(2), ""),
    p(
        "multifd-compression",
        ParamKind::Enum(&["none", "zlib", "zstd"]),
        DS("none"),
        "",
    ),
    p("xbzrle-cache-size", ParamKind::Size, DI(64 << 20), " bytes"),
    p("max-postcopy-bandwidth", ParamKind::Size, DI(0), ""),
    p("tls-authz", ParamKind::Str, DS(""), ""),
    p("multifd-zlib-level", int(0, 9), DI(1), ""),
    p("multifd-zstd-level", int(0, 20), DI(1), ""),
];

/// Parameters that `info migrate_parameters` does not print (as QEMU 7.2).
pub const HMP_HIDDEN: &[&str] = &["multifd-zlib-level", "multifd-zstd-level"];

/// Looks a parameter up by its QAPI name.
pub fn spec(name: &str) -> Option<&'static ParamSpec> {
    PARAMS.iter().find(|s| s.name == name)
}

/// Why a parameter change was refused. Texts follow QEMU's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// Not a parameter.
    #[error("Parameter '{0}' is unexpected")]
    Unknown(String),
    /// Wrong JSON type.
    #[error("Invalid parameter type for '{name}', expected: {expected}")]
    WrongType {
        /// Parameter name.
        name: String,
        /// Expected type name.
        expected: &'static str,
    },
    /// Out of range or otherwise invalid; the name uses underscores like QEMU.
    #[error("Parameter '{name}' expects {what}")]
    Invalid {
        /// Parameter name with underscores.
        name: String,
        /// What is expected.
        what: String,
    },
    /// A migration is running and the parameter cannot change now.
    #[error("There's a migration process in progress")]
    MigrationRunning,
}

/// The current parameter values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationParameters {
    values: Vec<ParamValue>,
}

impl Default for MigrationParameters {
    fn default() -> Self {
        let values = PARAMS
            .iter()
            .map(|s| match s.default {
                DefaultValue::Int(v) => ParamValue::Int(v),
                DefaultValue::Bool(v) => ParamValue::Bool(v),
                DefaultValue::Str(v) => ParamValue::Str(v.to_string()),
            })
            .collect();
        Self { values }
    }
}

fn index(name: &str) -> Option<usize> {
    PARAMS.iter().position(|s| s.name == name)
}

fn c_name(name: &str) -> String {
    name.replace('-', "_")
}

fn parse_value(spec: &ParamSpec, v: &Value) -> Result<ParamValue, ParamError> {
    let wrong = |expected| ParamError::WrongType {
        name: spec.name.to_string(),
        expected,
    };
    match spec.kind {
        ParamKind::Size | ParamKind::Int { .. } => {
            let n = v.as_u64().ok_or_else(|| wrong("integer"))?;
            if let ParamKind::Int { min, max } = spec.kind {
                if n < min || n > max {
                    let what = if spec.name == "downtime-limit" {
                        "an integer in the range of 0 to (2000 * 1000) ms".to_string()
                    } else {
                        format!("a value between {min} and {max}")
                    };
                    return Err(ParamError::Invalid {
                        name: c_name(spec.name),
                        what,
                    });
                }
            }
            if spec.name == "xbzrle-cache-size" && (n < 4096 || !n.is_power_of_two()) {
                return Err(ParamError::Invalid {
                    name: c_name(spec.name),
                    what: "a power of two no less than the target page size".into(),
                });
            }
            Ok(ParamValue::Int(n))
        }
        ParamKind::Bool => v
            .as_bool()
            .map(ParamValue::Bool)
            .ok_or_else(|| wrong("boolean")),
        ParamKind::Str => match v {
            Value::Null => Ok(ParamValue::Str(String::new())),
            Value::String(s) => Ok(ParamValue::Str(s.clone())),
            _ => Err(wrong("string")),
        },
        ParamKind::Enum(choices) => {
            let s = v.as_str().ok_or_else(|| wrong("string"))?;
            if choices.contains(&s) {
                Ok(ParamValue::Str(s.to_string()))
            } else {
                Err(ParamError::Invalid {
                    name: c_name(spec.name),
                    what: format!("one of {}", choices.join(", ")),
                })
            }
        }
    }
}

impl MigrationParameters {
    /// Validates every member of `args` against the merged set, then applies all of them.
    pub fn apply_json(&mut self, args: &Map<String, Value>) -> Result<(), ParamError> {
        let mut next = self.clone();
        for (name, v) in args {
            let i = index(name).ok_or_else(|| ParamError::Unknown(name.clone()))?;
            next.values[i] = parse_value(&PARAMS[i], v)?;
        }
        if next.int("cpu-throttle-initial") > next.int("max-cpu-throttle") {
            return Err(ParamError::Invalid {
                name: "max_cpu_throttle".into(),
                what: "a value between cpu-throttle-initial and 99".into(),
            });
        }
        *self = next;
        Ok(())
    }

    /// The value of an integer parameter (0 for non-integers).
    pub fn int(&self, name: &str) -> u64 {
        match index(name).map(|i| &self.values[i]) {
            Some(ParamValue::Int(v)) => *v,
            _ => 0,
        }
    }

    /// The value of any parameter.
    pub fn get(&self, name: &str) -> Option<&ParamValue> {
        index(name).map(|i| &self.values[i])
    }

    /// `max-bandwidth` in bytes per second; 0 means unlimited.
    pub fn max_bandwidth(&self) -> u64 {
        self.int("max-bandwidth")
    }

    /// `downtime-limit` in milliseconds.
    pub fn downtime_limit_ms(&self) -> u64 {
        self.int("downtime-limit")
    }

    /// The `query-migrate-parameters` reply.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        for (s, v) in PARAMS.iter().zip(&self.values) {
            m.insert(s.name.to_string(), value_json(v));
        }
        Value::Object(m)
    }
}

fn value_json(v: &ParamValue) -> Value {
    match v {
        ParamValue::Int(n) => Value::from(*n),
        ParamValue::Bool(b) => Value::from(*b),
        ParamValue::Str(s) => Value::from(s.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(p: &mut MigrationParameters, v: Value) -> Result<(), ParamError> {
        p.apply_json(v.as_object().unwrap())
    }

    #[test]
    fn defaults() {
        let p = MigrationParameters::default();
        assert_eq!(p.max_bandwidth(), 0);
        assert_eq!(p.downtime_limit_ms(), 300);
        assert_eq!(p.to_json()["xbzrle-cache-size"], json!(67108864));
        assert_eq!(p.to_json()["tls-creds"], json!(""));
    }

    #[test]
    fn validation_is_all_or_nothing_with_qemu_texts() {
        let mut p = MigrationParameters::default();
        let e = apply(
            &mut p,
            json!({"max-bandwidth": 1000, "downtime-limit": 3_000_000}),
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"
        );
        assert_eq!(p.max_bandwidth(), 0);
        let e = apply(&mut p, json!({"xbzrle-cache-size": 5000})).unwrap_err();
        assert!(e.to_string().contains("power of two"));
        let e = apply(&mut p, json!({"bogus": 1})).unwrap_err();
        assert_eq!(e.to_string(), "Parameter 'bogus' is unexpected");
        let e = apply(&mut p, json!({"downtime-limit": "x"})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid parameter type for 'downtime-limit', expected: integer"
        );
        apply(&mut p, json!({"max-bandwidth": 1000, "tls-creds": null})).unwrap();
        assert_eq!(p.max_bandwidth(), 1000);
    }
}
