//! HMP `migrate_set_parameter NAME VALUE` and `migrate_set_capability NAME on|off`: turning
//! the text into the same backend calls as the QMP commands (spec §6.6).
//!
//! | parameter | HMP value syntax |
//! | --- | --- |
//! | `max-bandwidth` | size, bare numbers are **MiB** (`32` = 33554432, `10k` = 10240) |
//! | `announce-*`, `downtime-limit`, `xbzrle-cache-size`, `max-postcopy-bandwidth` | size, bare numbers in the parameter's unit |
//! | other integers | C integer (`0x` hex accepted) |
//! | booleans | `on`/`yes`/`true`/`y`, `off`/`no`/`false`/`n` |
//! | strings, enums | as typed |
//!
//! An unknown name fails with `invalid parameter value: <name>`. The value's syntax follows
//! the parameter's [`ParamKind`] in the table; the typed value then goes through the same
//! parsing as a QMP member, so the result is the [`ParameterUpdate`] QMP would build.

use serde_json::Value;

use super::size::{parse_size, BYTE, MIB};
use crate::backend::CommandError;
use migration::params::{self, ParamKind};
use migration::{Capability, ParameterUpdate};

/// `invalid parameter value: <name>`.
fn invalid_name(name: &str) -> CommandError {
    CommandError::generic(format!("invalid parameter value: {name}"))
}

/// Parses `migrate_set_parameter NAME VALUE` into a one-member update.
pub fn parameter_update(name: &str, value: &str) -> Result<ParameterUpdate, CommandError> {
    if name == "block-bitmap-mapping" {
        return Err(CommandError::generic(
            "The block-bitmap-mapping parameter can only be set through QMP",
        ));
    }
    let spec = params::spec(name).ok_or_else(|| invalid_name(name))?;
    let expects = |what: &str| CommandError::generic(format!("Parameter '{name}' expects {what}"));
    let v = match spec.kind {
        ParamKind::Size if name == "max-bandwidth" => {
            let n = parse_size(value, MIB)
                .ok()
                .filter(|n| *n <= i64::MAX as u64)
                .ok_or_else(|| CommandError::generic(format!("Invalid size {value}")))?;
            Value::from(n)
        }
        ParamKind::Size | ParamKind::Uint64 => {
            Value::from(parse_size(value, BYTE).map_err(|_| expects("a size value"))?)
        }
        ParamKind::Uint8 | ParamKind::Uint32 => {
            let n = parse_uint(value).ok_or_else(|| expects("an uint64 value"))?;
            let (limit, ty) = if spec.kind == ParamKind::Uint8 {
                (u8::MAX as u64, "uint8_t")
            } else {
                (u32::MAX as u64, "uint32_t")
            };
            if n > limit {
                return Err(expects(ty));
            }
            Value::from(n)
        }
        ParamKind::Bool => Value::from(parse_bool(value).ok_or_else(|| expects("'on' or 'off'"))?),
        ParamKind::Str | ParamKind::Enum(_) => Value::from(value),
    };
    let mut update = ParameterUpdate::default();
    spec.parse_into(&mut update, &v)?;
    Ok(update)
}

/// Parses a capability name for `migrate_set_capability`.
pub fn capability(name: &str) -> Result<Capability, CommandError> {
    name.parse().map_err(|_| invalid_name(name))
}

/// QEMU's `qapi_bool_parse` words.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

/// An unsigned integer in C syntax (decimal, `0x` hex, leading-zero octal).
fn parse_uint(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(name: &str, value: &str) -> Result<Value, String> {
        let update = parameter_update(name, value).map_err(|e| e.desc)?;
        // Read the member back through the parameters it produces.
        let mut p = migration::MigrationParameters::default();
        p.apply(&update, &Default::default())
            .map_err(|e| e.to_string())?;
        Ok(params::spec(name).unwrap().value(&p))
    }

    #[test]
    fn value_syntax_per_parameter() {
        assert_eq!(one("max-bandwidth", "32"), Ok(json!(33554432)));
        assert_eq!(one("max-bandwidth", "10k"), Ok(json!(10240)));
        assert_eq!(
            one("max-bandwidth", "fast"),
            Err("Invalid size fast".into())
        );
        assert_eq!(one("xbzrle-cache-size", "128M"), Ok(json!(128u64 << 20)));
        assert_eq!(one("xbzrle-cache-size", "4096"), Ok(json!(4096)));
        assert_eq!(one("downtime-limit", "500"), Ok(json!(500)));
        assert_eq!(
            one("downtime-limit", "soon"),
            Err("Parameter 'downtime-limit' expects a size value".into())
        );
        assert_eq!(one("multifd-channels", "0x10"), Ok(json!(16)));
        assert_eq!(
            one("multifd-channels", "300"),
            Err("Parameter 'multifd-channels' expects uint8_t".into())
        );
        assert_eq!(one("x-checkpoint-delay", "70000"), Ok(json!(70000)));
        assert_eq!(one("block-incremental", "yes"), Ok(json!(true)));
        assert_eq!(one("cpu-throttle-tailslow", "n"), Ok(json!(false)));
        assert_eq!(
            one("block-incremental", "maybe"),
            Err("Parameter 'block-incremental' expects 'on' or 'off'".into())
        );
        assert_eq!(one("tls-creds", "tls0"), Ok(json!("tls0")));
        assert_eq!(one("multifd-compression", "zstd"), Ok(json!("zstd")));
        assert_eq!(
            one("multifd-compression", "lz4"),
            Err("Parameter 'multifd-compression' does not accept value 'lz4'".into())
        );
        assert_eq!(
            one("bogus", "1"),
            Err("invalid parameter value: bogus".into())
        );
        assert!(one("block-bitmap-mapping", "x")
            .unwrap_err()
            .contains("only be set through QMP"));
    }

    #[test]
    fn capability_names() {
        assert_eq!(capability("events"), Ok(Capability::Events));
        assert_eq!(capability("ram-verify"), Ok(Capability::RamVerify));
        assert_eq!(
            capability("nope").unwrap_err().desc,
            "invalid parameter value: nope"
        );
    }
}
