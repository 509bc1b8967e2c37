//! Decoding of non-live device sections (FULL sections) driven by the stream's own
//! VMDESCRIPTION JSON.
//!
//! A FULL section body is a VMState body: the fields of the device's VMSD, each element
//! encoded by its type codec, followed by the subsections that were `needed()` at save
//! time. Nothing in the body says where it ends, so a reader needs the schema. QEMU writes
//! that schema at the very end of the stream (the `0x06` trailer), one entry per FULL
//! section, in stream order:
//!
//! ```text
//! device     := { "name", "instance_id", "vmsd_name", "version", "fields": [field..],
//!                 ["subsections": [subsection..]] }
//! field      := { "name", ["array_len": n | "index": i], "type",
//!                 ["struct": {vmsd_name, version, fields, [subsections]}]    ; struct
//!                 [vmsd_name, version, fields]                               ; tmp (inline)
//!                 "size": bytes of ONE element, nested subsections included }
//! subsection := { "vmsd_name", "version", "fields", ["subsections"] }
//! ```
//!
//! and on the wire a subsection is `u8 0x05, u8 len, name, be32 version, body`.
//!
//! The decoder walks the description and the body together:
//! * integer-like types (`uint32`, `int32 le`, `timer`, …) become numbers when the
//!   described `size` equals the type's width (all big-endian on the wire);
//! * `struct` / `tmp` elements are decoded recursively inside a window of exactly `size`
//!   bytes, and the nested decode must consume the whole window;
//! * anything else (`buffer`, `pci config`, `qtailq`, unknown types) is kept as hex of
//!   `size` bytes — `size` is what was actually written, so this stays in sync.
//!
//! The JSON is as untrusted as the body: every size is checked against the bytes left
//! before use, recursion depth and the number of decoded values are capped, and a
//! malformed description is a [`DecodeError`], never a panic.

use serde::Serialize;
use serde_json::Value as Json;

/// Deepest struct/subsection nesting accepted from a description.
pub const MAX_DEPTH: usize = 32;
/// Most values (elements) decoded for one device; protects against `array_len` bombs.
pub const MAX_VALUES: usize = 1 << 20;
/// `uint8` arrays longer than this are shown as one hex string instead of a list.
const BYTE_ARRAY_AS_HEX: u64 = 16;

/// QEMU's subsection marker inside a VMState body.
const SUBSECTION_MARKER: u8 = 0x05;
/// `VMS_NULLPTR_MARKER`: written instead of a NULL element of an array of pointers. 7.2
/// describes such an element with the array's normal type and `size` 1.
const NULLPTR_MARKER: u8 = 0x30;

/// A decoded VMState struct: the device itself, a nested struct, a `tmp` or a subsection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StructValue {
    /// VMSD name from the description (e.g. `cpu`, `fdrive/media_rate`).
    pub vmsd_name: String,
    /// Version the sender wrote.
    pub version: u64,
    /// Decoded fields, in wire order.
    pub fields: Vec<FieldValue>,
    /// Decoded subsections, in wire order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subsections: Vec<StructValue>,
}

/// One described field (possibly an array) with its decoded value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldValue {
    /// Field name as described (`env.regs`, `config[0]`).
    pub name: String,
    /// `index` of a non-compressed array element, when described.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// VMState type string (`uint32`, `struct`, `pci config`, …).
    #[serde(rename = "type")]
    pub ty: String,
    /// Bytes of one element as described.
    pub size: u64,
    /// The decoded value; an [`Value::Array`] when `array_len` was given.
    pub value: Value,
}

/// A decoded field value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// `bool` with a 0/1 byte.
    Bool(bool),
    /// Unsigned integer types (and `timer`, float bit patterns).
    Unsigned(u64),
    /// Signed integer types.
    Signed(i64),
    /// Raw bytes as lowercase hex (buffers and unknown types).
    Hex(String),
    /// Nested struct or `tmp`.
    Struct(Box<StructValue>),
    /// Elements of an `array_len` field.
    Array(Vec<Value>),
    /// A NULL entry of an array of pointers: the single byte `0x30` instead of a struct.
    Null,
}

/// A decoding failure: `offset` is relative to the start of the body being decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (body offset {offset})")]
pub struct DecodeError {
    /// Byte offset inside the body where the problem was found.
    pub offset: u64,
    /// What was wrong.
    pub message: String,
}

/// Lowercase hex of `bytes`, no separators.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Decodes the body of the FULL section described by `device` (one element of the JSON
/// `devices` array). `body` may extend past the section: the number of bytes the device
/// really occupies is returned alongside the value, which lets a sequential walker find
/// the footer.
pub fn decode_device(device: &Json, body: &[u8]) -> Result<(StructValue, usize), DecodeError> {
    let mut dec = Decoder {
        buf: body,
        pos: 0,
        values: 0,
    };
    let value = dec.decode_struct(device, 0)?;
    Ok((value, dec.pos))
}

struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    values: usize,
}

/// Width and signedness of the integer-like VMState types.
fn int_type(ty: &str) -> Option<(usize, bool)> {
    Some(match ty {
        "int8" | "int8 equal" => (1, true),
        "uint8" | "uint8 equal" => (1, false),
        "int16" | "int16 equal" => (2, true),
        "uint16" | "uint16 equal" => (2, false),
        "int32" | "int32 equal" | "int32 le" => (4, true),
        "uint32" | "uint32 equal" => (4, false),
        "int64" | "int64 equal" => (8, true),
        "uint64" | "uint64 equal" | "timer" | "float64" | "CPU_Double_U" => (8, false),
        _ => return None,
    })
}

impl<'a> Decoder<'a> {
    fn err(&self, message: impl Into<String>) -> DecodeError {
        DecodeError {
            offset: self.pos as u64,
            message: message.into(),
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "{what} needs {n} bytes but only {} remain",
                self.remaining()
            )));
        }
        let buf: &'a [u8] = self.buf;
        let start = self.pos;
        self.pos += n;
        Ok(&buf[start..start + n])
    }

    fn count_value(&mut self) -> Result<(), DecodeError> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(self.err(format!("more than {MAX_VALUES} values in one device")));
        }
        Ok(())
    }

    /// Decodes fields then subsections of the VMSD described by `desc`.
    fn decode_struct(&mut self, desc: &Json, depth: usize) -> Result<StructValue, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!("description nested deeper than {MAX_DEPTH}")));
        }
        let vmsd_name = str_member(desc, "vmsd_name")
            .or_else(|| str_member(desc, "name"))
            .unwrap_or("")
            .to_string();
        let version = desc.get("version").and_then(Json::as_u64).unwrap_or(0);
        let mut fields = Vec::new();
        if let Some(list) = desc.get("fields") {
            let list = list
                .as_array()
                .ok_or_else(|| self.err(format!("`fields` of {vmsd_name} is not an array")))?;
            for f in list {
                fields.push(self.decode_field(f, depth)?);
            }
        }
        let mut subsections = Vec::new();
        if let Some(list) = desc.get("subsections") {
            let list = list
                .as_array()
                .ok_or_else(|| self.err(format!("`subsections` of {vmsd_name} is not an array")))?;
            for s in list {
                subsections.push(self.decode_subsection(s, depth)?);
            }
        }
        Ok(StructValue {
            vmsd_name,
            version,
            fields,
            subsections,
        })
    }

    fn decode_subsection(&mut self, desc: &Json, depth: usize) -> Result<StructValue, DecodeError> {
        let want = str_member(desc, "vmsd_name")
            .ok_or_else(|| self.err("subsection description without vmsd_name"))?;
        let marker = self.take(1, "subsection marker")?[0];
        if marker != SUBSECTION_MARKER {
            self.pos -= 1;
            return Err(self.err(format!(
                "expected subsection {want:?} (marker 0x05), found byte 0x{marker:02x}"
            )));
        }
        let len = usize::from(self.take(1, "subsection name length")?[0]);
        let name = self.take(len, "subsection name")?;
        if name != want.as_bytes() {
            let got = String::from_utf8_lossy(name).into_owned();
            return Err(self.err(format!("expected subsection {want:?}, found {got:?}")));
        }
        let v = self.take(4, "subsection version")?;
        let wire_version = u64::from(u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
        let mut value = self.decode_struct(desc, depth + 1)?;
        if let Some(described) = desc.get("version").and_then(Json::as_u64) {
            if described != wire_version {
                return Err(self.err(format!(
                    "subsection {want:?} has version {wire_version} on the wire \
                     but {described} in the description"
                )));
            }
        }
        value.version = wire_version;
        Ok(value)
    }

    fn decode_field(&mut self, desc: &Json, depth: usize) -> Result<FieldValue, DecodeError> {
        let name = str_member(desc, "name")
            .ok_or_else(|| self.err("field description without name"))?
            .to_string();
        let ty = str_member(desc, "type").unwrap_or("").to_string();
        let size = desc
            .get("size")
            .and_then(Json::as_u64)
            .ok_or_else(|| self.err(format!("field {name:?} has no numeric size")))?;
        let index = desc.get("index").and_then(Json::as_u64);
        let size_us = usize::try_from(size)
            .ok()
            .filter(|s| *s <= self.remaining())
            .ok_or_else(|| {
                self.err(format!(
                    "field {name:?} claims {size} bytes but only {} remain",
                    self.remaining()
                ))
            })?;
        let value = match desc.get("array_len").and_then(Json::as_u64) {
            None => self.decode_element(desc, &ty, size_us, depth)?,
            Some(n) => {
                let total = n
                    .checked_mul(size)
                    .filter(|t| *t <= self.remaining() as u64);
                if total.is_none() {
                    return Err(self.err(format!(
                        "field {name:?} claims {n} x {size} bytes but only {} remain",
                        self.remaining()
                    )));
                }
                if n > MAX_VALUES as u64 {
                    return Err(self.err(format!("field {name:?} has {n} elements")));
                }
                if ty == "uint8" && size == 1 && n > BYTE_ARRAY_AS_HEX {
                    // n <= remaining was checked above.
                    let bytes = self.take(n as usize, "byte array")?;
                    Value::Hex(hex(bytes))
                } else {
                    let mut items = Vec::new();
                    for _ in 0..n {
                        items.push(self.decode_element(desc, &ty, size_us, depth)?);
                    }
                    Value::Array(items)
                }
            }
        };
        Ok(FieldValue {
            name,
            index,
            ty,
            size,
            value,
        })
    }

    /// Decodes one element of `size` bytes.
    fn decode_element(
        &mut self,
        desc: &Json,
        ty: &str,
        size: usize,
        depth: usize,
    ) -> Result<Value, DecodeError> {
        self.count_value()?;
        let nested = match ty {
            "tmp" => Some(desc),
            _ => desc.get("struct").filter(|s| s.is_object()),
        };
        if let Some(nested) = nested {
            let start = self.pos;
            let window = self.take(size, "struct element")?;
            let mut inner = Decoder {
                buf: window,
                pos: 0,
                values: self.values,
            };
            let decoded = inner.decode_struct(nested, depth + 1);
            if window == [NULLPTR_MARKER] && (decoded.is_err() || inner.pos != size) {
                return Ok(Value::Null);
            }
            let value = decoded.map_err(|e| DecodeError {
                offset: start as u64 + e.offset,
                message: e.message,
            })?;
            if inner.pos != size {
                return Err(DecodeError {
                    offset: (start + inner.pos) as u64,
                    message: format!(
                        "struct {:?} decoded {} bytes but its element size is {size}",
                        value.vmsd_name, inner.pos
                    ),
                });
            }
            self.values = inner.values;
            return Ok(Value::Struct(Box::new(value)));
        }
        let bytes = self.take(size, "field element")?;
        if ty == "bool" && size == 1 && bytes[0] <= 1 {
            return Ok(Value::Bool(bytes[0] == 1));
        }
        match int_type(ty) {
            Some((width, signed)) if width == size => {
                let mut raw = [0u8; 8];
                raw[8 - width..].copy_from_slice(bytes);
                let u = u64::from_be_bytes(raw);
                if signed {
                    // Sign-extend from `width` bytes.
                    let shift = 64 - 8 * width as u32;
                    Ok(Value::Signed(((u << shift) as i64) >> shift))
                } else {
                    Ok(Value::Unsigned(u))
                }
            }
            _ => Ok(Value::Hex(hex(bytes))),
        }
    }
}

fn str_member<'j>(v: &'j Json, key: &str) -> Option<&'j str> {
    v.get(key).and_then(Json::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn timer_desc() -> Json {
        json!({"name": "timer", "instance_id": 0, "vmsd_name": "timer", "version": 2,
               "fields": [{"name": "cpu_ticks_offset", "type": "int64", "size": 8},
                          {"name": "unused", "type": "unused_buffer", "size": 8},
                          {"name": "cpu_clock_offset", "type": "int64", "size": 8}]})
    }

    #[test]
    fn decodes_integers_and_buffers_and_reports_consumed_length() {
        let mut body = Vec::new();
        body.extend_from_slice(&(-2i64).to_be_bytes());
        body.extend_from_slice(&[0xaa; 8]);
        body.extend_from_slice(&7i64.to_be_bytes());
        body.extend_from_slice(&[0x7e, 0, 0, 0, 0]); // footer, not part of the device
        let (v, used) = decode_device(&timer_desc(), &body).unwrap();
        assert_eq!(used, 24);
        assert_eq!(v.vmsd_name, "timer");
        assert_eq!(v.fields[0].value, Value::Signed(-2));
        assert_eq!(v.fields[1].value, Value::Hex("aa".repeat(8)));
        assert_eq!(v.fields[2].value, Value::Signed(7));
    }

    #[test]
    fn decodes_struct_arrays_tmp_and_subsections() {
        let desc = json!({"name": "d", "vmsd_name": "d", "version": 1, "fields": [
            {"name": "regs", "array_len": 2, "type": "uint16", "size": 2},
            {"name": "seg", "array_len": 2, "type": "struct", "size": 3,
             "struct": {"vmsd_name": "seg", "version": 1, "fields": [
                 {"name": "a", "type": "uint8", "size": 1},
                 {"name": "b", "type": "int16", "size": 2}]}},
            {"name": "tmp", "type": "tmp", "vmsd_name": "t", "version": 0, "size": 1,
             "fields": [{"name": "flag", "type": "bool", "size": 1}]}],
            "subsections": [{"vmsd_name": "d/x", "version": 3, "fields": [
                {"name": "x", "type": "uint32", "size": 4}]}]});
        let mut body = vec![0, 1, 0, 2, 9, 0xff, 0xfe, 8, 0, 1, 1];
        body.extend_from_slice(&[5, 3, b'd', b'/', b'x', 0, 0, 0, 3, 0, 0, 1, 0]);
        let (v, used) = decode_device(&desc, &body).unwrap();
        assert_eq!(used, body.len());
        assert_eq!(
            v.fields[0].value,
            Value::Array(vec![Value::Unsigned(1), Value::Unsigned(2)])
        );
        let Value::Array(segs) = &v.fields[1].value else {
            panic!("not an array")
        };
        let Value::Struct(s0) = &segs[0] else {
            panic!("not a struct")
        };
        assert_eq!(s0.fields[1].value, Value::Signed(-2));
        let Value::Struct(t) = &v.fields[2].value else {
            panic!("tmp not a struct")
        };
        assert_eq!(t.fields[0].value, Value::Bool(true));
        assert_eq!(v.subsections[0].vmsd_name, "d/x");
        assert_eq!(v.subsections[0].fields[0].value, Value::Unsigned(256));
    }

    #[test]
    fn missing_subsection_is_an_error_with_offset() {
        let desc = json!({"vmsd_name": "d", "version": 1, "fields": [],
                          "subsections": [{"vmsd_name": "d/x", "version": 1, "fields": []}]});
        let e = decode_device(&desc, &[0x7e, 0, 0, 0, 1]).unwrap_err();
        assert_eq!(e.offset, 0);
        assert!(e.message.contains("d/x"), "{e}");
    }

    #[test]
    fn hostile_descriptions_are_errors_not_panics() {
        let huge = json!({"vmsd_name": "d", "fields": [
            {"name": "a", "array_len": u64::MAX, "type": "uint8", "size": u64::MAX}]});
        assert!(decode_device(&huge, &[0; 16]).is_err());
        let zero_size_bomb = json!({"vmsd_name": "d", "fields": [
            {"name": "a", "array_len": 1u64 << 40, "type": "uint8", "size": 0}]});
        assert!(decode_device(&zero_size_bomb, &[]).is_err());
        let no_size = json!({"vmsd_name": "d", "fields": [{"name": "a", "type": "uint8"}]});
        assert!(decode_device(&no_size, &[1]).is_err());
        // Struct nested deeper than the cap.
        let mut deep = json!({"vmsd_name": "leaf", "fields": []});
        for _ in 0..(MAX_DEPTH + 2) {
            deep = json!({"vmsd_name": "n", "fields": [
                {"name": "s", "type": "struct", "size": 0, "struct": deep}]});
        }
        assert!(decode_device(&deep, &[]).is_err());
        // Struct whose element size disagrees with its fields.
        let short = json!({"vmsd_name": "d", "fields": [{"name": "s", "type": "struct",
            "size": 3, "struct": {"vmsd_name": "s", "fields": [
                {"name": "a", "type": "uint8", "size": 1}]}}]});
        assert!(decode_device(&short, &[1, 2, 3]).is_err());
    }

    #[test]
    fn null_pointer_elements_are_recognised() {
        let elem =
            json!({"vmsd_name": "e", "fields": [{"name": "v", "type": "uint32", "size": 4}]});
        let desc = json!({"vmsd_name": "d", "fields": [
            {"name": "p", "index": 0, "type": "struct", "size": 4, "struct": elem},
            {"name": "p", "index": 1, "type": "struct", "size": 1, "struct": elem}]});
        let (v, used) = decode_device(&desc, &[0, 0, 0, 9, 0x30]).unwrap();
        assert_eq!(used, 5);
        assert_eq!(v.fields[1].value, Value::Null);
        assert!(matches!(v.fields[0].value, Value::Struct(_)));
    }

    #[test]
    fn size_mismatch_for_integer_type_falls_back_to_hex() {
        let desc = json!({"vmsd_name": "d", "fields": [
            {"name": "a", "type": "uint32", "size": 2}]});
        let (v, used) = decode_device(&desc, &[0xab, 0xcd]).unwrap();
        assert_eq!(used, 2);
        assert_eq!(v.fields[0].value, Value::Hex("abcd".into()));
    }
}
