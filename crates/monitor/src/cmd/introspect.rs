//! `qmp_capabilities` (after negotiation), `query-commands`, `query-version` and `query-uuid`.

use serde_json::{json, Value};

use super::args::{bad_enum, wrong_type, Args};
use super::COMMANDS;
use crate::backend::CommandError;

/// The QEMU version livemig's QMP claims to be compatible with (`qemu` member of the
/// greeting and `query-version`), so version-checking clients accept it.
pub const QEMU_COMPAT_VERSION: (u32, u32, u32) = (7, 2, 22);

/// The `package` member: livemig's own version.
pub fn package() -> String {
    format!("livemig {}", env!("CARGO_PKG_VERSION"))
}

/// The version object shared by the greeting and `query-version`.
pub fn version_json() -> Value {
    let (major, minor, micro) = QEMU_COMPAT_VERSION;
    json!({ "qemu": { "micro": micro, "minor": minor, "major": major }, "package": package() })
}

/// Arguments of `qmp_capabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QmpCapabilities {
    /// Capabilities the client asks for (only `oob` exists).
    pub enable: Vec<String>,
}

impl QmpCapabilities {
    /// Parses `enable: [QMPCapability]`.
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        let mut enable = Vec::new();
        for (i, v) in a
            .opt_array("enable")?
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let name = format!("enable[{i}]");
            let s = v.as_str().ok_or_else(|| wrong_type(&name, "string"))?;
            if s != "oob" {
                return Err(bad_enum(&name, s));
            }
            enable.push(s.to_string());
        }
        Ok(Self { enable })
    }

    /// Validates the request during negotiation; true when out-of-band execution is enabled
    /// (the only capability, and the parser admits no other name).
    pub fn negotiate(&self) -> Result<bool, CommandError> {
        Ok(self.enable.iter().any(|c| c == "oob"))
    }

    /// After negotiation the command is refused (class `CommandNotFound`).
    pub fn run(&self) -> Result<Value, CommandError> {
        Err(CommandError::not_found(
            "Capabilities negotiation is already complete, command ignored",
        ))
    }
}

/// `query-commands`: `[{"name": ...}, ...]`.
pub fn query_commands() -> Value {
    Value::Array(COMMANDS.iter().map(|(n, _)| json!({ "name": n })).collect())
}

/// `query-uuid`: `{"UUID": ...}`, all zeros without `--uuid` (QEMU).
pub fn query_uuid(s: &crate::session::Session) -> Value {
    json!({ "UUID": s.backend.uuid().unwrap_or_default().to_string() })
}

/// `query-version`.
pub fn query_version() -> Value {
    version_json()
}
