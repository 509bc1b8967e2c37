//! Writing a VMState body and its JSON description.

use serde_json::{json, Map, Value as Json};

use super::{FieldKind, Value, VmStateDescription, VmStateField, VmStateValue};
use crate::error::Error;
use crate::qemu_file::QemuFileWriter;
use crate::record::QEMU_VM_SUBSECTION;

/// Writes the body of `value` as described by `desc` (fields, then the subsections the value
/// carries, each behind a `0x05` header) and returns the JSON description object
/// (`vmsd_name`, `version`, `fields`, optional `subsections`) with the sizes actually written.
///
/// Fails when the value does not match the description (missing field, wrong shape, out of
/// range, wrong size, undeclared subsection) or when the writer has latched an error.
pub fn save(
    desc: &VmStateDescription,
    value: &VmStateValue,
    w: &mut QemuFileWriter,
) -> Result<Json, Error> {
    let j = save_vmsd(desc, value, w)?;
    match w.error() {
        Some(e) => Err(e),
        None => Ok(Json::Object(j)),
    }
}

fn save_vmsd(
    desc: &VmStateDescription,
    value: &VmStateValue,
    w: &mut QemuFileWriter,
) -> Result<Map<String, Json>, Error> {
    let mut obj = Map::new();
    obj.insert("vmsd_name".into(), json!(desc.name));
    obj.insert("version".into(), json!(desc.version_id));
    let mut fields = Vec::new();
    for (idx, field) in desc.fields.iter().enumerate() {
        if field.since_version > desc.version_id {
            continue;
        }
        save_field(desc, idx, field, value, w, &mut fields)?;
    }
    obj.insert("fields".into(), Json::Array(fields));

    for (name, _) in &value.subsections {
        if !desc.subsections.iter().any(|s| &s.name == name) {
            return Err(Error::UnknownSubsection {
                parent: desc.name.clone(),
                name: name.clone(),
            });
        }
    }
    let mut subs = Vec::new();
    for sub in &desc.subsections {
        let Some(sv) = value.subsection(&sub.name) else {
            continue;
        };
        w.put_u8(QEMU_VM_SUBSECTION);
        w.put_counted_string(&sub.name);
        w.put_be32(sub.version_id);
        subs.push(Json::Object(save_vmsd(sub, sv, w)?));
    }
    if !subs.is_empty() {
        obj.insert("subsections".into(), Json::Array(subs));
    }
    Ok(obj)
}

/// The value of field `idx`: the k-th value named like it, where k counts the earlier fields
/// of the same name that are on the wire (QEMU allows repeated field names).
fn field_value<'a>(
    desc: &VmStateDescription,
    idx: usize,
    value: &'a VmStateValue,
) -> Result<&'a Value, Error> {
    let name = &desc.fields[idx].name;
    let k = desc.occurrence(idx, desc.version_id);
    value.get_nth(name, k).ok_or_else(|| Error::FieldMissing {
        vmsd: desc.name.clone(),
        field: name.into(),
    })
}

fn save_field(
    desc: &VmStateDescription,
    idx: usize,
    field: &VmStateField,
    value: &VmStateValue,
    w: &mut QemuFileWriter,
    out: &mut Vec<Json>,
) -> Result<(), Error> {
    let name = &field.name;
    match field.kind.codec() {
        FieldKind::Unused(n) => {
            let start = w.total_transferred();
            put_zeros(w, *n);
            out.push(describe(
                desc,
                idx,
                &field.kind,
                None,
                None,
                w.total_transferred() - start,
            ));
        }
        FieldKind::Array { elem, len } => {
            let list = list_of(field_value(desc, idx, value)?, name)?;
            if list.len() != *len {
                return Err(Error::SizeMismatch {
                    field: name.clone(),
                    expected: *len as u64,
                    actual: list.len() as u64,
                });
            }
            save_elements(desc, idx, field, elem, list, w, out)?;
        }
        FieldKind::VarArray { elem, len_field } => {
            let list = list_of(field_value(desc, idx, value)?, name)?;
            let want = earlier_len(desc, idx, value, len_field)?;
            if list.len() as u64 != want {
                return Err(Error::SizeMismatch {
                    field: name.clone(),
                    expected: want,
                    actual: list.len() as u64,
                });
            }
            save_elements(desc, idx, field, elem, list, w, out)?;
        }
        _ => {
            let kind = &field.kind;
            let v = field_value(desc, idx, value)?;
            let start = w.total_transferred();
            let nested = write_scalar(desc, idx, name, kind, v, value, w)?;
            out.push(describe(
                desc,
                idx,
                kind,
                None,
                nested,
                w.total_transferred() - start,
            ));
        }
    }
    Ok(())
}

fn save_elements(
    desc: &VmStateDescription,
    idx: usize,
    field: &VmStateField,
    elem: &FieldKind,
    list: &[Value],
    w: &mut QemuFileWriter,
    out: &mut Vec<Json>,
) -> Result<(), Error> {
    if !elem.is_element_kind() {
        return Err(Error::InvalidDescription {
            vmsd: desc.name.clone(),
            reason: format!(
                "field \"{}\" has an unsupported array element type",
                field.name
            ),
        });
    }
    let n = list.len();
    let compress = elem.can_compress();
    let dummy = VmStateValue::new();
    for (i, v) in list.iter().enumerate() {
        let start = w.total_transferred();
        let nested = write_scalar(desc, idx, &field.name, elem, v, &dummy, w)?;
        let size = w.total_transferred() - start;
        if compress {
            if i == 0 {
                let array = if n > 1 { Some(("array_len", n)) } else { None };
                out.push(describe(desc, idx, elem, array, nested, size));
            }
        } else {
            let array = if n > 1 { Some(("index", i)) } else { None };
            out.push(describe(desc, idx, elem, array, nested, size));
        }
    }
    Ok(())
}

/// The JSON object of one described element, in QEMU's member order.
fn describe(
    desc: &VmStateDescription,
    idx: usize,
    kind: &FieldKind,
    array: Option<(&str, usize)>,
    nested: Option<Nested>,
    size: u64,
) -> Json {
    let mut o = Map::new();
    o.insert("name".into(), json!(desc.json_field_name(idx)));
    if let Some((key, n)) = array {
        o.insert(key.into(), json!(n));
    }
    o.insert("type".into(), json!(kind.type_name()));
    match nested {
        Some(Nested::Struct(s)) => {
            o.insert("struct".into(), Json::Object(s));
        }
        Some(Nested::Inline(m)) => o.extend(m),
        None => {}
    }
    o.insert("size".into(), json!(size));
    Json::Object(o)
}

fn list_of<'a>(v: &'a Value, field: &str) -> Result<&'a [Value], Error> {
    match v {
        Value::List(l) => Ok(l),
        _ => Err(Error::FieldType {
            field: field.into(),
            expected: "a list",
        }),
    }
}

/// The value of the length field `len_field`, which must precede field `idx`.
pub(super) fn earlier_len(
    desc: &VmStateDescription,
    idx: usize,
    value: &VmStateValue,
    len_field: &str,
) -> Result<u64, Error> {
    if !desc.fields[..idx]
        .iter()
        .any(|f| f.name == len_field && f.kind.int_layout().is_some())
    {
        return Err(Error::InvalidDescription {
            vmsd: desc.name.clone(),
            reason: format!(
                "length field \"{len_field}\" must be an integer field before \"{}\"",
                desc.fields[idx].name
            ),
        });
    }
    let v = value.get(len_field).ok_or_else(|| Error::FieldMissing {
        vmsd: desc.name.clone(),
        field: len_field.into(),
    })?;
    v.as_u64().ok_or(Error::FieldType {
        field: len_field.into(),
        expected: "a non-negative integer",
    })
}

fn put_zeros(w: &mut QemuFileWriter, n: usize) {
    const Z: [u8; 256] = [0; 256];
    let mut left = n;
    while left > 0 {
        let k = left.min(Z.len());
        w.put_buffer(&Z[..k]);
        left -= k;
    }
}

/// Nested description produced while writing a field.
enum Nested {
    /// A struct field: goes under `"struct"`.
    Struct(Map<String, Json>),
    /// A tmp or qtailq field: the description (`vmsd_name`, `version`, `fields`...) goes
    /// directly into the field object. For qtailq 7.2 repeats these keys once per element; a
    /// JSON map cannot hold repeated keys, so only the first element's description is kept.
    Inline(Map<String, Json>),
}

/// Writes one non-array value; returns the nested JSON for struct and queue kinds.
fn write_scalar(
    desc: &VmStateDescription,
    idx: usize,
    name: &str,
    kind: &FieldKind,
    v: &Value,
    parent: &VmStateValue,
    w: &mut QemuFileWriter,
) -> Result<Option<Nested>, Error> {
    let kind = kind.codec();
    if let Some((bytes, signed)) = kind.int_layout() {
        let raw = int_bits(name, v, bytes, signed)?;
        match bytes {
            1 => w.put_u8(raw as u8),
            2 => w.put_be16(raw as u16),
            4 => w.put_be32(raw as u32),
            _ => w.put_be64(raw),
        }
        return Ok(None);
    }
    match kind {
        FieldKind::Bool => match v {
            Value::Bool(b) => w.put_u8(u8::from(*b)),
            _ => {
                return Err(Error::FieldType {
                    field: name.into(),
                    expected: "a bool",
                })
            }
        },
        FieldKind::Buffer(n) => {
            let b = bytes_of(v, name)?;
            if b.len() != *n {
                return Err(Error::SizeMismatch {
                    field: name.into(),
                    expected: *n as u64,
                    actual: b.len() as u64,
                });
            }
            w.put_buffer(b);
        }
        FieldKind::VBuffer { len_field } => {
            let b = bytes_of(v, name)?;
            let want = earlier_len(desc, idx, parent, len_field)?;
            if b.len() as u64 != want {
                return Err(Error::SizeMismatch {
                    field: name.into(),
                    expected: want,
                    actual: b.len() as u64,
                });
            }
            w.put_buffer(b);
        }
        FieldKind::Bitmap(bits) => {
            let words = list_of(v, name)?;
            let want = bits.div_ceil(64);
            if words.len() != want {
                return Err(Error::SizeMismatch {
                    field: name.into(),
                    expected: want as u64,
                    actual: words.len() as u64,
                });
            }
            for word in words {
                let x = word.as_u64().ok_or(Error::FieldType {
                    field: name.into(),
                    expected: "a list of u64 words",
                })?;
                w.put_be64(x);
            }
        }
        FieldKind::Struct(sd) => {
            let sv = match v {
                Value::Struct(s) => s,
                _ => {
                    return Err(Error::FieldType {
                        field: name.into(),
                        expected: "a struct",
                    })
                }
            };
            return Ok(Some(Nested::Struct(save_vmsd(sd, sv, w)?)));
        }
        FieldKind::Tmp(sd) => {
            let sv = match v {
                Value::Struct(s) => s,
                _ => {
                    return Err(Error::FieldType {
                        field: name.into(),
                        expected: "a struct",
                    })
                }
            };
            return Ok(Some(Nested::Inline(save_vmsd(sd, sv, w)?)));
        }
        FieldKind::QTailQ(sd) => {
            let mut first = None;
            for e in list_of(v, name)? {
                let Value::Struct(sv) = e else {
                    return Err(Error::FieldType {
                        field: name.into(),
                        expected: "a list of structs",
                    });
                };
                w.put_u8(1);
                let j = save_vmsd(sd, sv, w)?;
                first.get_or_insert(j);
            }
            w.put_u8(0);
            return Ok(first.map(Nested::Inline));
        }
        _ => {
            return Err(Error::InvalidDescription {
                vmsd: desc.name.clone(),
                reason: format!("field \"{name}\" cannot be nested here"),
            })
        }
    }
    Ok(None)
}

fn bytes_of<'a>(v: &'a Value, field: &str) -> Result<&'a [u8], Error> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(Error::FieldType {
            field: field.into(),
            expected: "bytes",
        }),
    }
}

/// Two's-complement bits of `v` for an integer of `bytes` bytes, range-checked.
fn int_bits(field: &str, v: &Value, bytes: usize, signed: bool) -> Result<u64, Error> {
    let bits = bytes as u32 * 8;
    let out_of_range = |x: i128| Error::ValueOutOfRange {
        field: field.into(),
        value: x,
    };
    let x: i128 = match v {
        Value::Uint(u) => i128::from(*u),
        Value::Int(i) => i128::from(*i),
        _ => {
            return Err(Error::FieldType {
                field: field.into(),
                expected: "an integer",
            })
        }
    };
    let (lo, hi) = if signed {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    };
    if x < lo || x > hi {
        return Err(out_of_range(x));
    }
    Ok((x as u64) & (u64::MAX >> (64 - bits)))
}
