//! Migration parameters (QEMU's `MigrationParameters`), typed and generated from one table.
//!
//! | module | what |
//! | --- | --- |
//! | `table` | the table: one line per QEMU 7.2 parameter (name, field, type, range, default, HMP unit) expanded into [`MigrationParameters`], [`ParameterUpdate`] and [`PARAMS`] |
//! | `value` | one JSON member → a field's type, with QEMU's visitor texts |
//! | `validate` | the range and cross-field rules of QEMU's `migrate_params_check` |
//!
//! A change is parsed once at the boundary: QMP arguments with [`ParameterUpdate::from_json`],
//! HMP `migrate_set_parameter` through the same table ([`spec`]). Then
//! [`MigrationParameters::apply`] merges the update into a copy, checks the merged set and
//! applies all of it or nothing. The engine reads the typed fields.
//!
//! One default differs from QEMU on purpose: `max-bandwidth` is 0 (unlimited) instead of
//! 128 MiB/s, because a live migration should not be throttled unless the operator asks for it.

mod table;
mod validate;
mod value;

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

pub use table::{MigrationParameters, ParameterUpdate, PARAMS};

/// The QAPI type of a parameter, which decides how QMP and HMP values are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A byte size or count (`size`): HMP accepts suffixes.
    Size,
    /// `uint8`.
    Uint8,
    /// `uint32`.
    Uint32,
    /// `uint64` (HMP parses it as a size, like QEMU).
    Uint64,
    /// A boolean.
    Bool,
    /// A string or `null` (`StrOrNull`, the TLS names).
    Str,
    /// One of the listed names.
    Enum(&'static [&'static str]),
}

/// The valid values of a parameter, checked on the merged set by [`MigrationParameters::apply`].
#[derive(Debug, Clone, Copy)]
pub enum Range {
    /// Every value of the type.
    Any,
    /// `[min, max]`, refused with `expects a value between MIN and MAX`.
    Between(u64, u64),
    /// `[min, max]`, refused with `expects an integer in the range of MIN to MAX`.
    InRange(u64, u64),
    /// A rule of its own.
    Rule(fn(&MigrationParameters, &ParamLimits) -> Result<(), ParamError>),
}

/// Description of one parameter: a line of the table.
pub struct ParamSpec {
    /// The QAPI name (dashes).
    pub name: &'static str,
    /// Type.
    pub kind: ParamKind,
    /// Valid values.
    pub range: Range,
    /// Unit text appended by `info migrate_parameters` (e.g. `" ms"`); `None` when QEMU 7.2
    /// does not print the parameter.
    pub hmp_unit: Option<&'static str>,
    get: fn(&MigrationParameters) -> Value,
    parse: fn(&mut ParameterUpdate, &ParamSpec, &Value) -> Result<(), ParamError>,
}

impl fmt::Debug for ParamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParamSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("range", &self.range)
            .field("hmp_unit", &self.hmp_unit)
            .finish()
    }
}

impl ParamSpec {
    /// This parameter's value in `p`, as `query-migrate-parameters` shows it.
    pub fn value(&self, p: &MigrationParameters) -> Value {
        (self.get)(p)
    }

    /// Parses `v` (a `migrate-set-parameters` member) into `update`.
    pub fn parse_into(&self, update: &mut ParameterUpdate, v: &Value) -> Result<(), ParamError> {
        (self.parse)(update, self, v)
    }

    /// True when `info migrate_parameters` does not print it (as QEMU 7.2).
    pub fn hmp_hidden(&self) -> bool {
        self.hmp_unit.is_none()
    }
}

/// Looks a parameter up by its QAPI name.
pub fn spec(name: &str) -> Option<&'static ParamSpec> {
    PARAMS.iter().find(|s| s.name == name)
}

/// `multifd-compression`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum MultifdCompression {
    /// Pages are sent as they are.
    #[default]
    None,
    /// zlib.
    Zlib,
    /// zstd.
    Zstd,
}

impl MultifdCompression {
    /// The QAPI names, in enum order.
    pub const NAMES: &'static [&'static str] = &["none", "zlib", "zstd"];

    /// The QAPI name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zlib => "zlib",
            Self::Zstd => "zstd",
        }
    }
}

impl fmt::Display for MultifdCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MultifdCompression {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        [Self::None, Self::Zlib, Self::Zstd]
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or(())
    }
}

/// Why a parameter change was refused. Texts follow QEMU 7.2's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// Not a parameter.
    #[error("Parameter '{0}' is unexpected")]
    Unknown(String),
    /// Wrong JSON type for a boolean, string or enum parameter.
    #[error("Invalid parameter type for '{name}', expected: {expected}")]
    WrongType {
        /// Parameter name.
        name: String,
        /// Expected type name.
        expected: &'static str,
    },
    /// Not a valid value: a wrong integer type (`uint64`, `uint8_t`, named with dashes) or a
    /// broken rule (named with underscores like QEMU's C fields).
    #[error("Parameter '{name}' expects {what}")]
    Invalid {
        /// Parameter name.
        name: String,
        /// What is expected.
        what: String,
    },
    /// Not one of an enum's names.
    #[error("Parameter '{name}' does not accept value '{value}'")]
    BadValue {
        /// Parameter name.
        name: String,
        /// The refused value.
        value: String,
    },
    /// Capability `zero-copy-send` is on and the change turns on compression or TLS.
    #[error("Zero copy only available for non-compressed non-TLS multifd migration")]
    ZeroCopy,
    /// A migration is running and the parameter cannot change now.
    #[error("There's a migration process in progress")]
    MigrationRunning,
}

/// What else constrains the parameters: facts about the VM and the capabilities, given to
/// [`MigrationParameters::apply`] by whoever owns them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParamLimits {
    /// Guest RAM size in bytes; `xbzrle-cache-size` may not exceed it. `None`: not checked.
    pub ram_size: Option<u64>,
    /// Capability `zero-copy-send` is on (no multifd compression, no TLS then).
    pub zero_copy_send: bool,
}

impl ParameterUpdate {
    /// Parses `migrate-set-parameters` arguments. Members are visited in table order, then
    /// the first unknown member is reported, as QEMU's visitor does.
    pub fn from_json(args: &Map<String, Value>) -> Result<Self, ParamError> {
        let mut u = Self::default();
        for s in PARAMS {
            if let Some(v) = args.get(s.name) {
                s.parse_into(&mut u, v)?;
            }
        }
        if let Some(name) = args.keys().find(|k| spec(k).is_none()) {
            return Err(ParamError::Unknown(name.clone()));
        }
        Ok(u)
    }
}

impl MigrationParameters {
    /// Merges `update` into a copy, checks the whole merged set (QEMU's
    /// `migrate_params_check`) and applies it; on error nothing changes. The RAM-size bound
    /// applies only when the update sets `xbzrle-cache-size`, so the 64 MiB default does not
    /// block other changes on a smaller guest.
    pub fn apply(
        &mut self,
        update: &ParameterUpdate,
        limits: &ParamLimits,
    ) -> Result<(), ParamError> {
        let limits = ParamLimits {
            ram_size: limits
                .ram_size
                .filter(|_| update.xbzrle_cache_size.is_some()),
            ..*limits
        };
        let mut next = self.clone();
        next.merge(update);
        next.check(&limits)?;
        *self = next;
        Ok(())
    }

    /// `max-bandwidth` in bytes per second; 0 means unlimited.
    pub fn max_bandwidth(&self) -> u64 {
        self.max_bandwidth
    }

    /// `downtime-limit` in milliseconds.
    pub fn downtime_limit_ms(&self) -> u64 {
        self.downtime_limit
    }

    /// True when TLS is configured (`tls-creds` not empty), QEMU's `migrate_use_tls`.
    pub fn uses_tls(&self) -> bool {
        !self.tls_creds.is_empty()
    }

    /// The `query-migrate-parameters` reply, in table order.
    pub fn to_json(&self) -> Value {
        let m: Map<String, Value> = PARAMS
            .iter()
            .map(|s| (s.name.to_string(), s.value(self)))
            .collect();
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_query_order() {
        let p = MigrationParameters::default();
        assert_eq!(p.max_bandwidth, 0);
        assert_eq!(p.downtime_limit_ms(), 300);
        assert_eq!(p.multifd_channels, 2);
        assert_eq!(p.multifd_compression, MultifdCompression::None);
        let j = p.to_json();
        assert_eq!(j["xbzrle-cache-size"], json!(67108864));
        assert_eq!(j["tls-creds"], json!(""));
        assert_eq!(j["multifd-compression"], json!("none"));
        let keys: Vec<_> = j.as_object().unwrap().keys().cloned().collect();
        let names: Vec<_> = PARAMS.iter().map(|s| s.name.to_string()).collect();
        assert_eq!(keys, names);
        assert_eq!(keys.len(), 26);
        assert_eq!(keys[0], "announce-initial");
        assert_eq!(keys[25], "multifd-zstd-level");
    }

    #[test]
    fn table_lookups() {
        let s = spec("multifd-channels").unwrap();
        assert_eq!(s.kind, ParamKind::Uint8);
        assert_eq!(s.value(&MigrationParameters::default()), json!(2));
        assert!(spec("multifd-zlib-level").unwrap().hmp_hidden());
        assert!(!spec("tls-authz").unwrap().hmp_hidden());
        assert_eq!(spec("downtime-limit").unwrap().hmp_unit, Some(" ms"));
        assert!(spec("bogus").is_none());
    }

    #[test]
    fn update_round_trips_every_default() {
        let p = MigrationParameters::default();
        let u = ParameterUpdate::from_json(p.to_json().as_object().unwrap()).unwrap();
        let mut q = MigrationParameters {
            max_bandwidth: 5,
            ..Default::default()
        };
        q.apply(&u, &ParamLimits::default()).unwrap();
        assert_eq!(q, p);
    }
}
