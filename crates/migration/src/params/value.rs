//! Parsing one JSON member into a field's Rust type, with the texts of QEMU 7.2's QObject
//! input visitor.
//!
//! | QAPI type ([`ParamKind`]) | accepted | refused with |
//! | --- | --- | --- |
//! | `size`, `uint64` | integers; negative ones wrap (QEMU: `-1` is 2⁶⁴−1) | `Parameter 'x' expects uint64` |
//! | `uint8`, `uint32` | integers up to 255 / 2³²−1 | `Parameter 'x' expects uint8_t` (`uint32_t`); non-integers as `uint64` |
//! | `bool` | `true`, `false` | `Invalid parameter type for 'x', expected: boolean` |
//! | `StrOrNull` | strings, `null` (= `""`) | `Invalid parameter type for 'x', expected: StrOrNull` |
//! | enum | its names | `Parameter 'x' does not accept value 'y'`; non-strings: `... expected: string` |
//!
//! Like QEMU's visitor, a negative number for a `uint64`/`size` member wraps (`-1` becomes
//! 2⁶⁴−1, an unlimited `max-bandwidth`; a negative `downtime-limit` then fails its range check
//! with QEMU's text), so managers that send `-1` get QEMU's answer.

use serde_json::Value;

use super::{MultifdCompression, ParamError, ParamKind, ParamSpec};

/// A Rust type that holds a parameter value.
pub trait ParamType: Sized {
    /// Parses a `migrate-set-parameters` member.
    fn parse(spec: &ParamSpec, v: &Value) -> Result<Self, ParamError>;
    /// The `query-migrate-parameters` value.
    fn to_json(&self) -> Value;
}

fn invalid(spec: &ParamSpec, what: &str) -> ParamError {
    ParamError::Invalid {
        name: spec.name.to_string(),
        what: what.to_string(),
    }
}

fn wrong_type(spec: &ParamSpec, expected: &'static str) -> ParamError {
    ParamError::WrongType {
        name: spec.name.to_string(),
        expected,
    }
}

/// An unsigned integer no larger than what `spec.kind` allows.
fn parse_uint(spec: &ParamSpec, v: &Value) -> Result<u64, ParamError> {
    let (max, ty) = match spec.kind {
        ParamKind::Uint8 => (u8::MAX as u64, "uint8_t"),
        ParamKind::Uint32 => (u32::MAX as u64, "uint32_t"),
        _ => (u64::MAX, "uint64"),
    };
    // QEMU's visitor reads a negative integer as its two's complement.
    let n = v.as_u64().or_else(|| v.as_i64().map(|i| i as u64));
    match n {
        Some(n) if n <= max => Ok(n),
        Some(_) => Err(invalid(spec, ty)),
        None => Err(invalid(spec, "uint64")),
    }
}

impl ParamType for u64 {
    fn parse(spec: &ParamSpec, v: &Value) -> Result<Self, ParamError> {
        parse_uint(spec, v)
    }

    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}

impl ParamType for u8 {
    fn parse(spec: &ParamSpec, v: &Value) -> Result<Self, ParamError> {
        let n = parse_uint(spec, v)?;
        u8::try_from(n).map_err(|_| invalid(spec, "uint8_t"))
    }

    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}

impl ParamType for bool {
    fn parse(spec: &ParamSpec, v: &Value) -> Result<Self, ParamError> {
        v.as_bool().ok_or_else(|| wrong_type(spec, "boolean"))
    }

    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}

impl ParamType for String {
    fn parse(spec: &ParamSpec, v: &Value) -> Result<Self, ParamError> {
        match v {
            Value::Null => Ok(String::new()),
            Value::String(s) => Ok(s.clone()),
            _ => Err(wrong_type(spec, "StrOrNull")),
        }
    }

    fn to_json(&self) -> Value {
        Value::from(self.as_str())
    }
}

impl ParamType for MultifdCompression {
    fn parse(spec: &ParamSpec, v: &Value) -> Result<Self, ParamError> {
        let s = v.as_str().ok_or_else(|| wrong_type(spec, "string"))?;
        s.parse().map_err(|_| ParamError::BadValue {
            name: spec.name.to_string(),
            value: s.to_string(),
        })
    }

    fn to_json(&self) -> Value {
        Value::from(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ParamError, ParameterUpdate};
    use serde_json::{json, Value};

    fn err(v: Value) -> String {
        ParameterUpdate::from_json(v.as_object().unwrap())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn integer_types_use_the_visitor_texts() {
        assert_eq!(
            err(json!({"downtime-limit": "x"})),
            "Parameter 'downtime-limit' expects uint64"
        );
        // QEMU wraps negative numbers: accepted for uint64, out of range for the others.
        let u = ParameterUpdate::from_json(json!({"max-bandwidth": -2000}).as_object().unwrap());
        assert_eq!(u.unwrap().max_bandwidth, Some(u64::MAX - 1999));
        assert_eq!(
            err(json!({"max-postcopy-bandwidth": 1.5})),
            "Parameter 'max-postcopy-bandwidth' expects uint64"
        );
        assert_eq!(
            err(json!({"multifd-channels": 256})),
            "Parameter 'multifd-channels' expects uint8_t"
        );
        assert_eq!(
            err(json!({"compress-level": -1})),
            "Parameter 'compress-level' expects uint8_t"
        );
        assert_eq!(
            err(json!({"compress-level": true})),
            "Parameter 'compress-level' expects uint64"
        );
        assert_eq!(
            err(json!({"x-checkpoint-delay": 1u64 << 32})),
            "Parameter 'x-checkpoint-delay' expects uint32_t"
        );
        let u = ParameterUpdate::from_json(
            json!({"x-checkpoint-delay": 4_294_967_295u64, "max-bandwidth": u64::MAX})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(u.x_checkpoint_delay, Some(u32::MAX as u64));
        assert_eq!(u.max_bandwidth, Some(u64::MAX));
    }

    #[test]
    fn bool_string_and_enum_types() {
        assert_eq!(
            err(json!({"block-incremental": 1})),
            "Invalid parameter type for 'block-incremental', expected: boolean"
        );
        assert_eq!(
            err(json!({"tls-creds": 5})),
            "Invalid parameter type for 'tls-creds', expected: StrOrNull"
        );
        assert_eq!(
            err(json!({"multifd-compression": 1})),
            "Invalid parameter type for 'multifd-compression', expected: string"
        );
        assert_eq!(
            err(json!({"multifd-compression": "lz4"})),
            "Parameter 'multifd-compression' does not accept value 'lz4'"
        );
        let u = ParameterUpdate::from_json(
            json!({"tls-creds": null, "tls-authz": "a", "multifd-compression": "zstd"})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(u.tls_creds.as_deref(), Some(""));
        assert_eq!(u.tls_authz.as_deref(), Some("a"));
        assert_eq!(u.multifd_compression, Some(super::MultifdCompression::Zstd));
    }

    #[test]
    fn unknown_members_are_reported_after_known_ones() {
        assert_eq!(err(json!({"bogus": 1})), "Parameter 'bogus' is unexpected");
        // QEMU visits the known members first, then complains about leftovers.
        assert_eq!(
            err(json!({"bogus": 1, "downtime-limit": "x"})),
            "Parameter 'downtime-limit' expects uint64"
        );
        assert!(matches!(
            ParameterUpdate::from_json(json!({"zz": 1}).as_object().unwrap()),
            Err(ParamError::Unknown(n)) if n == "zz"
        ));
    }
}
