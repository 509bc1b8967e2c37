//! Size strings with unit suffixes (QEMU's `qemu_strtosz`), used by the `o` argument type
//! and by `migrate_set_parameter`.
//!
//! Syntax: a decimal number (or `0x` hex, which takes no fraction or suffix), an optional
//! `.fraction`, an optional suffix `B K M G T P E` (case-insensitive, powers of 1024). The
//! caller chooses the unit of a bare number (bytes, or MiB for `max-bandwidth` and `o`).
//! A fraction needs a unit larger than a byte.

/// One byte.
pub const BYTE: u64 = 1;
/// One MiB, the default unit of `max-bandwidth` and `o` arguments.
pub const MIB: u64 = 1 << 20;

/// Why a size did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidSize;

fn suffix_mul(b: u8) -> Option<u64> {
    let shift = match b.to_ascii_uppercase() {
        b'B' => 0,
        b'K' => 10,
        b'M' => 20,
        b'G' => 30,
        b'T' => 40,
        b'P' => 50,
        b'E' => 60,
        _ => return None,
    };
    Some(1u64 << shift)
}

/// Parses a size at the start of `s`; returns the value and the number of bytes used.
pub fn strtosz(s: &[u8], default_unit: u64) -> Result<(u64, usize), InvalidSize> {
    let mut i = 0;
    while s.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    if matches!(s.get(i), Some(b'0')) && matches!(s.get(i + 1), Some(b'x' | b'X')) {
        let start = i + 2;
        let mut end = start;
        while s.get(end).is_some_and(u8::is_ascii_hexdigit) {
            end += 1;
        }
        let text =
            std::str::from_utf8(s.get(start..end).unwrap_or(&[])).map_err(|_| InvalidSize)?;
        let v = u64::from_str_radix(text, 16).map_err(|_| InvalidSize)?;
        if s.get(end)
            .is_some_and(|b| *b == b'.' || suffix_mul(*b).is_some())
        {
            return Err(InvalidSize);
        }
        return v
            .checked_mul(default_unit)
            .map(|v| (v, end))
            .ok_or(InvalidSize);
    }
    let int_start = i;
    while s.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let int_text =
        std::str::from_utf8(s.get(int_start..i).unwrap_or(&[])).map_err(|_| InvalidSize)?;
    let mut frac_text = "";
    if s.get(i) == Some(&b'.') {
        let fs = i + 1;
        let mut fe = fs;
        while s.get(fe).is_some_and(u8::is_ascii_digit) {
            fe += 1;
        }
        frac_text = std::str::from_utf8(s.get(fs..fe).unwrap_or(&[])).map_err(|_| InvalidSize)?;
        i = fe;
    }
    if int_text.is_empty() && frac_text.is_empty() {
        return Err(InvalidSize);
    }
    let mul = match s.get(i).and_then(|b| suffix_mul(*b)) {
        Some(m) => {
            i += 1;
            m
        }
        None => default_unit,
    };
    let int: u64 = if int_text.is_empty() {
        0
    } else {
        int_text.parse().map_err(|_| InvalidSize)?
    };
    let mut v = int.checked_mul(mul).ok_or(InvalidSize)?;
    if !frac_text.is_empty() {
        if mul == 1 {
            return Err(InvalidSize);
        }
        let frac: f64 = format!("0.{frac_text}").parse().map_err(|_| InvalidSize)?;
        v = v
            .checked_add((frac * mul as f64) as u64)
            .ok_or(InvalidSize)?;
    }
    Ok((v, i))
}

/// Parses a whole string as a size (trailing text is an error).
pub fn parse_size(s: &str, default_unit: u64) -> Result<u64, InvalidSize> {
    let (v, used) = strtosz(s.as_bytes(), default_unit)?;
    if used != s.len() {
        return Err(InvalidSize);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32", MIB), Ok(32 << 20));
        assert_eq!(parse_size("10k", MIB), Ok(10240));
        assert_eq!(parse_size("128M", BYTE), Ok(128 << 20));
        assert_eq!(parse_size("4096", BYTE), Ok(4096));
        assert_eq!(parse_size("1.5K", BYTE), Ok(1536));
        assert_eq!(parse_size("1.5", BYTE), Err(InvalidSize));
        assert_eq!(parse_size("0x10", BYTE), Ok(16));
        assert_eq!(parse_size("0x10M", BYTE), Err(InvalidSize));
        assert_eq!(parse_size("16E", BYTE), Err(InvalidSize));
        assert_eq!(parse_size("", BYTE), Err(InvalidSize));
        assert_eq!(parse_size("-1", BYTE), Err(InvalidSize));
        assert_eq!(parse_size("12x", BYTE), Err(InvalidSize));
        assert_eq!(strtosz(b"12Mrest", BYTE), Ok((12 << 20, 3)));
    }
}
