//! The VM UUID (QEMU's `-uuid`, `query-uuid`, capability `validate-uuid`): parsed once from
//! its text form, sent in the configuration record's `configuration/uuid` subsection when
//! `validate-uuid` is on, and compared on load (a destination refuses a stream from another
//! VM; see `incoming::load`).

use std::fmt;
use std::str::FromStr;

/// A VM UUID: 16 bytes, written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct VmUuid(pub [u8; 16]);

/// A UUID that is not in QEMU's text form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Fail to parse UUID string.")]
pub struct BadUuid;

impl FromStr for VmUuid {
    type Err = BadUuid;
    /// QEMU's `qemu_uuid_parse`: exactly 36 characters, hex digits with dashes at 8, 13,
    /// 18 and 23.
    fn from_str(s: &str) -> Result<Self, BadUuid> {
        let b = s.as_bytes();
        if b.len() != 36 {
            return Err(BadUuid);
        }
        let mut out = [0u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            if matches!(i, 8 | 13 | 18 | 23) {
                if b[i] != b'-' {
                    return Err(BadUuid);
                }
                i += 1;
                continue;
            }
            let hex = std::str::from_utf8(&b[i..i + 2]).map_err(|_| BadUuid)?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(BadUuid);
            }
            out[n] = u8::from_str_radix(hex, 16).map_err(|_| BadUuid)?;
            n += 1;
            i += 2;
        }
        Ok(Self(out))
    }
}

impl fmt::Display for VmUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_bad_forms_are_refused() {
        let s = "12345678-9abc-def0-1234-56789abcdef0";
        let u: VmUuid = s.parse().unwrap();
        assert_eq!(u.0[0], 0x12);
        assert_eq!(u.to_string(), s);
        let upper: VmUuid = s.to_uppercase().parse().unwrap();
        assert_eq!(upper, u);
        for bad in [
            "",
            "12345678-9abc-def0-1234-56789abcdef",
            "12345678-9abc-def0-1234-56789abcdef01",
            "12345678x9abc-def0-1234-56789abcdef0",
            "1234567g-9abc-def0-1234-56789abcdef0",
            "12345678-9abc-def0-1234-56789abcdeé",
        ] {
            assert_eq!(bad.parse::<VmUuid>(), Err(BadUuid), "{bad}");
        }
        assert_eq!(
            VmUuid::default().to_string(),
            "00000000-0000-0000-0000-000000000000"
        );
    }
}
