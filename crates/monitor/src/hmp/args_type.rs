//! The `args_type` mini-language of HMP command tables (QEMU's `monitor/hmp.c`, spec §6.7).
//!
//! A command declares its arguments as a comma-separated list of `key:TYPE` specs, for
//! example `migrate`'s `detach:-d,blk:-b,inc:-i,resume:-r,uri:s`. The command line is
//! consumed left to right, one spec at a time:
//!
//! | type | consumes | value |
//! | --- | --- | --- |
//! | `s` `F` `B` | one token, or a `"quoted string"` with `\n \r \\ \' \"` escapes | string |
//! | `S` | the rest of the line | string |
//! | `i` `l` `M` | an integer expression (`+ - * / % & \| ^ ~ ( )`, C number syntax); `i` must fit 32 bits, `M` is × 2^20 | integer |
//! | `o` | a size with optional `B K M G T P E` suffix, default unit MiB | integer (bytes) |
//! | `T` | a floating number with optional `ms`/`us`/`ns` suffix | float (seconds) |
//! | `b` | exactly `on` or `off` | bool |
//! | `-x` | the flag `-x` if it is the next token | `true`, else unset |
//! | `-xs` | the flag `-x` followed by a string | string, else unset |
//!
//! A `?` after the type makes the argument optional (`.` for integers: present only when
//! introduced by a `.` token). Flags must come in declaration order: at a flag spec, a
//! different flag letter that occurs *later* in `args_type` leaves this flag unset; one that
//! does not occur later is an error (`migrate: unsupported option -d` for
//! `migrate -b -d uri`).

use std::fmt;

/// The kind of one argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// `s`, `F`, `B`: one string token (the character is kept for the error text).
    Str(char),
    /// `S`: the rest of the line.
    Rest,
    /// `i` (32-bit), `l` (long) or `M` (MiB) integer expression.
    Int(char),
    /// `o`: a size.
    Size,
    /// `T`: a float with time suffixes.
    Float,
    /// `b`: `on` / `off`.
    Bool,
    /// `-x`: a boolean flag.
    Flag(char),
    /// `-xs`: a flag with a string value.
    FlagStr(char),
}

/// One parsed `key:TYPE` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgSpec {
    /// The key the value is stored under.
    pub key: String,
    /// The type.
    pub kind: ArgKind,
    /// `?` suffix.
    pub optional: bool,
    /// `.` suffix (integers: only when introduced by `.`).
    pub dot: bool,
    /// The text of `args_type` after this spec's type (flags look for later letters in it).
    rest: String,
}

/// An error in an `args_type` string (a bug in a command table).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid args_type '{args_type}': {reason}")]
pub struct SpecError {
    /// The offending string.
    pub args_type: String,
    /// What is wrong.
    pub reason: String,
}

/// Parses an `args_type` string.
pub fn parse_spec(args_type: &str) -> Result<Vec<ArgSpec>, SpecError> {
    let err = |reason: String| SpecError {
        args_type: args_type.to_string(),
        reason,
    };
    let mut specs = Vec::new();
    let mut offset = 0;
    for item in args_type.split(',') {
        let end = offset + item.len();
        let rest = args_type.get(end..).unwrap_or("").to_string();
        offset = end + 1;
        if item.is_empty() {
            continue;
        }
        let (key, ty) = item
            .split_once(':')
            .ok_or_else(|| err(format!("'{item}' lacks a ':'")))?;
        let mut chars = ty.chars();
        let c = chars
            .next()
            .ok_or_else(|| err(format!("'{key}' has no type")))?;
        let kind = match c {
            's' | 'F' | 'B' => ArgKind::Str(c),
            'S' => ArgKind::Rest,
            'i' | 'l' | 'M' => ArgKind::Int(c),
            'o' => ArgKind::Size,
            'T' => ArgKind::Float,
            'b' => ArgKind::Bool,
            '-' => {
                let letter = chars
                    .next()
                    .ok_or_else(|| err(format!("'{key}' has no flag")))?;
                if chars.as_str().starts_with('s') {
                    chars.next();
                    ArgKind::FlagStr(letter)
                } else {
                    ArgKind::Flag(letter)
                }
            }
            other => return Err(err(format!("unknown type '{other}'"))),
        };
        let suffix = chars.as_str();
        let (optional, dot) = match suffix {
            "" => (false, false),
            "?" => (true, false),
            "." if matches!(kind, ArgKind::Int(_)) => (false, true),
            _ => return Err(err(format!("unknown suffix '{suffix}' of '{key}'"))),
        };
        specs.push(ArgSpec {
            key: key.to_string(),
            kind,
            optional,
            dot,
            rest,
        });
    }
    Ok(specs)
}

/// A parsed argument value.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgValue {
    /// Strings.
    Str(String),
    /// Integers and sizes.
    Int(i64),
    /// Floats.
    Float(f64),
    /// Booleans and flags.
    Bool(bool),
}

/// The values of one command line, by key (unset optional arguments are absent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HmpArgs {
    values: Vec<(String, ArgValue)>,
}

impl HmpArgs {
    fn put(&mut self, key: &str, v: ArgValue) {
        self.values.push((key.to_string(), v));
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&ArgValue> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A string argument.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(ArgValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// A boolean argument or flag (`false` when unset).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some(ArgValue::Bool(true)))
    }

    /// A boolean argument, if set.
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key) {
            Some(ArgValue::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// An integer argument, if set.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key) {
            Some(ArgValue::Int(n)) => Some(*n),
            _ => None,
        }
    }

    /// A float argument, if set.
    pub fn float(&self, key: &str) -> Option<f64> {
        match self.get(key) {
            Some(ArgValue::Float(f)) => Some(*f),
            _ => None,
        }
    }
}

/// A command line that does not match the command's `args_type`; the text is QEMU's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgsError(pub String);

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArgsError {}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// A cursor over the command line (bytes, like QEMU's `const char *p`).
struct Cursor<'a> {
    s: &'a [u8],
    p: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.p).copied()
    }

    fn peek_at(&self, n: usize) -> Option<u8> {
        self.s.get(self.p + n).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.p += 1;
        }
    }

    fn at_end(&self) -> bool {
        self.p >= self.s.len()
    }

    fn rest(&self) -> &[u8] {
        self.s.get(self.p..).unwrap_or(&[])
    }
}

/// Reads one string token (QEMU's `get_str`); `None` when there is none or a quoted string
/// is malformed.
fn get_str(c: &mut Cursor<'_>) -> Option<String> {
    c.skip_space();
    let mut out = Vec::new();
    match c.peek() {
        None => return None,
        Some(b'"') => {
            c.p += 1;
            loop {
                match c.peek() {
                    None => return None, // unterminated string
                    Some(b'"') => {
                        c.p += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let e = c.peek_at(1)?;
                        c.p += 2;
                        out.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b'\\' | b'\'' | b'"' => e,
                            _ => return None, // unsupported escape code
                        });
                    }
                    Some(b) => {
                        out.push(b);
                        c.p += 1;
                    }
                }
            }
        }
        Some(_) => {
            while let Some(b) = c.peek().filter(|b| !is_space(*b)) {
                out.push(b);
                c.p += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Parses `line` (the text after the command name) against `specs`. `cmd` is the command
/// name used in error texts.
pub fn parse_args(cmd: &str, specs: &[ArgSpec], line: &str) -> Result<HmpArgs, ArgsError> {
    let mut c = Cursor {
        s: line.as_bytes(),
        p: 0,
    };
    let mut args = HmpArgs::default();
    for spec in specs {
        match spec.kind {
            ArgKind::Str(t) => {
                c.skip_space();
                if spec.optional && c.at_end() {
                    continue;
                }
                let v = get_str(&mut c).ok_or_else(|| {
                    ArgsError(match t {
                        'F' => format!("{cmd}: filename expected"),
                        'B' => format!("{cmd}: block device name expected"),
                        _ => format!("{cmd}: string expected"),
                    })
                })?;
                args.put(&spec.key, ArgValue::Str(v));
            }
            ArgKind::Rest => {
                c.skip_space();
                if c.at_end() {
                    if spec.optional {
                        continue;
                    }
                    return Err(ArgsError(format!("{cmd}: string expected")));
                }
                let v = String::from_utf8_lossy(c.rest()).into_owned();
                c.p = c.s.len();
                args.put(&spec.key, ArgValue::Str(v));
            }
            ArgKind::Int(t) => {
                c.skip_space();
                if spec.optional && c.at_end() {
                    continue;
                }
                if spec.dot {
                    if c.peek() != Some(b'.') {
                        continue;
                    }
                    c.p += 1;
                    c.skip_space();
                }
                let v = expr::parse(&mut c)?;
                let v = match t {
                    'i' if (v >> 32) & 0xffff_ffff != 0 => {
                        return Err(ArgsError(format!(
                            "'{cmd}' has failed: integer is for 32-bit values"
                        )))
                    }
                    'M' if v < 0 => return Err(ArgsError("enter a positive value".into())),
                    'M' => v
                        .checked_mul(1 << 20)
                        .ok_or_else(|| ArgsError("invalid size".into()))?,
                    _ => v,
                };
                args.put(&spec.key, ArgValue::Int(v));
            }
            ArgKind::Size => {
                c.skip_space();
                if spec.optional && c.at_end() {
                    continue;
                }
                let (v, used) = super::size::strtosz(c.rest(), super::size::MIB)
                    .ok()
                    .filter(|(v, _)| *v <= i64::MAX as u64)
                    .ok_or_else(|| ArgsError("invalid size".into()))?;
                c.p += used;
                args.put(&spec.key, ArgValue::Int(v as i64));
            }
            ArgKind::Float => {
                c.skip_space();
                if spec.optional && c.at_end() {
                    continue;
                }
                let (mut v, used) =
                    parse_double(c.rest()).ok_or_else(|| ArgsError("Number expected".into()))?;
                c.p += used;
                if c.peek_at(1) == Some(b's') {
                    let div = match c.peek() {
                        Some(b'm') => Some(1e3),
                        Some(b'u') => Some(1e6),
                        Some(b'n') => Some(1e9),
                        _ => None,
                    };
                    if let Some(d) = div {
                        v /= d;
                        c.p += 2;
                    }
                }
                if c.peek().is_some_and(|b| !is_space(b)) {
                    return Err(ArgsError("Unknown unit suffix".into()));
                }
                args.put(&spec.key, ArgValue::Float(v));
            }
            ArgKind::Bool => {
                c.skip_space();
                let beg = c.p;
                while c.peek().is_some_and(|b| b.is_ascii_graphic()) {
                    c.p += 1;
                }
                let v = match c.s.get(beg..c.p) {
                    Some(b"on") => true,
                    Some(b"off") => false,
                    _ => return Err(ArgsError("Expected 'on' or 'off'".into())),
                };
                args.put(&spec.key, ArgValue::Bool(v));
            }
            ArgKind::Flag(letter) | ArgKind::FlagStr(letter) => {
                let start = c.p;
                c.skip_space();
                if c.peek() != Some(b'-') {
                    continue;
                }
                let given = c.peek_at(1);
                if given != Some(letter as u8) {
                    // A different flag: fine only if it is declared later.
                    let wanted = match given {
                        Some(g) => format!("-{}", g as char),
                        None => "-".to_string(),
                    };
                    if !spec.rest.contains(&wanted) {
                        let shown = given.map(|g| (g as char).to_string()).unwrap_or_default();
                        return Err(ArgsError(format!("{cmd}: unsupported option -{shown}")));
                    }
                    c.p = start;
                    continue;
                }
                c.p += 2;
                if matches!(spec.kind, ArgKind::FlagStr(_)) {
                    let v = get_str(&mut c)
                        .ok_or_else(|| ArgsError(format!("{cmd}: value expected for -{letter}")))?;
                    args.put(&spec.key, ArgValue::Str(v));
                } else {
                    args.put(&spec.key, ArgValue::Bool(true));
                }
            }
        }
    }
    c.skip_space();
    if !c.at_end() {
        return Err(ArgsError(format!(
            "{cmd}: extraneous characters at the end of line"
        )));
    }
    Ok(args)
}

/// The longest prefix of `s` that is a decimal floating number (C `strtod` without hex and
/// inf/nan), and its length.
fn parse_double(s: &[u8]) -> Option<(f64, usize)> {
    let mut i = 0;
    let digits = |s: &[u8], mut i: usize| {
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    if matches!(s.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_end = digits(s, i);
    let mut end = int_end;
    if s.get(end) == Some(&b'.') {
        end = digits(s, end + 1);
    }
    if end == i || (end == i + 1 && int_end == i) {
        return None; // no digits at all
    }
    if matches!(s.get(end), Some(b'e' | b'E')) {
        let mut j = end + 1;
        if matches!(s.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let k = digits(s, j);
        if k > j {
            end = k;
        }
    }
    let text = std::str::from_utf8(s.get(..end)?).ok()?;
    text.parse::<f64>().ok().map(|v| (v, end))
}

/// Integer expressions (QEMU's `get_expr`): sums of products of bitwise terms of unary
/// terms; numbers in C syntax (`0x` hex, leading `0` octal).
mod expr {
    use super::{ArgsError, Cursor};

    fn err(msg: impl Into<String>) -> ArgsError {
        ArgsError(msg.into())
    }

    pub(super) fn parse(c: &mut Cursor<'_>) -> Result<i64, ArgsError> {
        c.skip_space();
        let v = sum(c, 0)?;
        c.skip_space();
        Ok(v)
    }

    const MAX_DEPTH: u32 = 64;

    fn next_op(c: &mut Cursor<'_>, ops: &[u8]) -> Option<u8> {
        c.skip_space();
        let op = c.peek().filter(|b| ops.contains(b))?;
        c.p += 1;
        Some(op)
    }

    fn sum(c: &mut Cursor<'_>, depth: u32) -> Result<i64, ArgsError> {
        let mut v = prod(c, depth)?;
        while let Some(op) = next_op(c, b"+-") {
            let r = prod(c, depth)?;
            v = if op == b'+' {
                v.wrapping_add(r)
            } else {
                v.wrapping_sub(r)
            };
        }
        Ok(v)
    }

    fn prod(c: &mut Cursor<'_>, depth: u32) -> Result<i64, ArgsError> {
        let mut v = logic(c, depth)?;
        while let Some(op) = next_op(c, b"*/%") {
            let r = logic(c, depth)?;
            v = match op {
                b'*' => v.wrapping_mul(r),
                _ if r == 0 => return Err(err("division by zero")),
                b'/' => v.wrapping_div(r),
                _ => v.wrapping_rem(r),
            };
        }
        Ok(v)
    }

    fn logic(c: &mut Cursor<'_>, depth: u32) -> Result<i64, ArgsError> {
        let mut v = unary(c, depth)?;
        while let Some(op) = next_op(c, b"&|^") {
            let r = unary(c, depth)?;
            v = match op {
                b'&' => v & r,
                b'|' => v | r,
                _ => v ^ r,
            };
        }
        Ok(v)
    }

    fn unary(c: &mut Cursor<'_>, depth: u32) -> Result<i64, ArgsError> {
        if depth > MAX_DEPTH {
            return Err(err("expression too deeply nested"));
        }
        c.skip_space();
        match c.peek() {
            None => Err(err("unexpected end of expression")),
            Some(b'+') => {
                c.p += 1;
                unary(c, depth + 1)
            }
            Some(b'-') => {
                c.p += 1;
                Ok(unary(c, depth + 1)?.wrapping_neg())
            }
            Some(b'~') => {
                c.p += 1;
                Ok(!unary(c, depth + 1)?)
            }
            Some(b'(') => {
                c.p += 1;
                let v = sum(c, depth + 1)?;
                c.skip_space();
                if c.peek() != Some(b')') {
                    return Err(err("')' expected"));
                }
                c.p += 1;
                Ok(v)
            }
            Some(b) if b.is_ascii_digit() => number(c),
            Some(b) => Err(err(format!("invalid char '{}' in expression", b as char))),
        }
    }

    fn number(c: &mut Cursor<'_>) -> Result<i64, ArgsError> {
        let (radix, skip) = match (c.peek(), c.peek_at(1)) {
            (Some(b'0'), Some(b'x' | b'X')) => (16, 2),
            (Some(b'0'), Some(b'0'..=b'7')) => (8, 1),
            _ => (10, 0),
        };
        let start = c.p + skip;
        let mut end = start;
        while c.s.get(end).is_some_and(|b| (*b as char).is_digit(radix)) {
            end += 1;
        }
        let text = std::str::from_utf8(c.s.get(start..end).unwrap_or(&[])).unwrap_or("");
        if text.is_empty() {
            // "0x" without digits: C reads the "0" and stops at 'x'.
            c.p += 1;
            return Ok(0);
        }
        let v = u64::from_str_radix(text, radix).map_err(|_| err("number too large"))?;
        c.p = end;
        Ok(v as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATE: &str = "detach:-d,blk:-b,inc:-i,resume:-r,uri:s";

    fn parse(args_type: &str, line: &str) -> Result<HmpArgs, String> {
        let specs = parse_spec(args_type).unwrap();
        parse_args("migrate", &specs, line).map_err(|e| e.0)
    }

    #[test]
    fn spec_parsing() {
        let s = parse_spec(MIGRATE).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].kind, ArgKind::Flag('d'));
        assert_eq!(s[4].kind, ArgKind::Str('s'));
        let s = parse_spec("a:s?,b:-fs,c:i.,d:S").unwrap();
        assert!(s[0].optional);
        assert_eq!(s[1].kind, ArgKind::FlagStr('f'));
        assert!(s[2].dot);
        assert_eq!(s[3].kind, ArgKind::Rest);
        assert!(parse_spec("a:q").is_err());
        assert!(parse_spec("a").is_err());
        assert_eq!(parse_spec("").unwrap(), vec![]);
    }

    #[test]
    fn flags_in_declaration_order() {
        let a = parse(MIGRATE, "-d -b tcp:127.0.0.1:4444").unwrap();
        assert!(a.flag("detach") && a.flag("blk") && !a.flag("inc"));
        assert_eq!(a.str("uri"), Some("tcp:127.0.0.1:4444"));
        let a = parse(MIGRATE, "-i uri").unwrap();
        assert!(a.flag("inc") && !a.flag("detach"));
        assert!(a.get("detach").is_none());
        assert_eq!(
            parse(MIGRATE, "-b -d uri").unwrap_err(),
            "migrate: unsupported option -d"
        );
        assert_eq!(
            parse(MIGRATE, "-x uri").unwrap_err(),
            "migrate: unsupported option -x"
        );
    }

    #[test]
    fn strings_and_leftovers() {
        assert_eq!(parse(MIGRATE, "").unwrap_err(), "migrate: string expected");
        assert_eq!(
            parse(MIGRATE, "   ").unwrap_err(),
            "migrate: string expected"
        );
        assert_eq!(
            parse(MIGRATE, "a b").unwrap_err(),
            "migrate: extraneous characters at the end of line"
        );
        let a = parse("x:s", r#" "exec:cat > \"f\" \\n" "#).unwrap();
        assert_eq!(a.str("x"), Some("exec:cat > \"f\" \\n"));
        assert!(parse("x:s", r#""open"#).is_err());
        assert!(parse("x:s", r#""bad \q""#).is_err());
        let a = parse("x:s?", "").unwrap();
        assert!(a.get("x").is_none());
        let a = parse("x:S", "  all of  this ").unwrap();
        assert_eq!(a.str("x"), Some("all of  this "));
        let a = parse("x:-fs,y:s", "-f val rest").unwrap();
        assert_eq!((a.str("x"), a.str("y")), (Some("val"), Some("rest")));
        assert_eq!(
            parse("x:-fs", "-f").unwrap_err(),
            "migrate: value expected for -f"
        );
    }

    #[test]
    fn bools_numbers_sizes() {
        let a = parse("c:s,state:b", "events on").unwrap();
        assert_eq!(a.bool("state"), Some(true));
        assert_eq!(
            parse("state:b", "yes").unwrap_err(),
            "Expected 'on' or 'off'"
        );
        assert_eq!(parse("n:i", "0x10 + 2*3").unwrap().int("n"), Some(22));
        assert_eq!(parse("n:l", "(1+2)*-3").unwrap().int("n"), Some(-9));
        // QEMU checks the upper 32 bits, so negative `i` values are refused too.
        assert!(parse("n:i", "-1").is_err());
        assert_eq!(parse("n:i", "010").unwrap().int("n"), Some(8));
        assert_eq!(
            parse("n:i", "0x100000000").unwrap_err(),
            "'migrate' has failed: integer is for 32-bit values"
        );
        assert_eq!(parse("n:l", "0x100000000").unwrap().int("n"), Some(1 << 32));
        assert_eq!(parse("n:i", "1/0").unwrap_err(), "division by zero");
        assert_eq!(
            parse("n:i", "x").unwrap_err(),
            "invalid char 'x' in expression"
        );
        assert_eq!(parse("n:i", "(1").unwrap_err(), "')' expected");
        assert_eq!(
            parse("n:i", "").unwrap_err(),
            "unexpected end of expression"
        );
        assert!(parse("n:i?", "").unwrap().get("n").is_none());
        assert_eq!(parse("n:i.", "").unwrap().get("n"), None);
        assert_eq!(parse("n:i.", ". 5").unwrap().int("n"), Some(5));
        assert_eq!(parse("n:M", "2").unwrap().int("n"), Some(2 << 20));
        assert_eq!(parse("n:o", "2").unwrap().int("n"), Some(2 << 20));
        assert_eq!(parse("n:o", "10k").unwrap().int("n"), Some(10 << 10));
        assert_eq!(parse("n:o", "1G").unwrap().int("n"), Some(1 << 30));
        assert_eq!(parse("n:o", "lots").unwrap_err(), "invalid size");
        assert_eq!(parse("t:T", "1.5").unwrap().float("t"), Some(1.5));
        assert_eq!(parse("t:T", "250ms").unwrap().float("t"), Some(0.25));
        assert_eq!(parse("t:T", "5xs").unwrap_err(), "Unknown unit suffix");
        assert_eq!(parse("t:T", "x").unwrap_err(), "Number expected");
    }
}
