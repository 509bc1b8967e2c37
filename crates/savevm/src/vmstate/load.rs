//! Reading a VMState body.

use super::save::earlier_len;
use super::{FieldKind, Value, VmStateDescription, VmStateValue, MAX_VAR_ARRAY, MAX_VBUFFER};
use crate::error::Error;
use crate::qemu_file::QemuFileReader;
use crate::record::peek_subsection_name;

/// Reads a body written with version `version_id` of `desc`.
///
/// Checks the version range ([`Error::VersionTooNew`] / [`Error::VersionTooOld`]), skips fields
/// newer than the incoming version (they are absent from the result), loads nested structs
/// with their own version, and loads subsections while the next byte is `0x05` and the name
/// starts with `desc.name` (an unknown subsection of ours is [`Error::UnknownSubsection`]).
///
/// `equal` / `int32 le` fields are returned as received; use [`load_checked`] to compare them
/// with the local state.
pub fn load(
    desc: &VmStateDescription,
    version_id: u32,
    r: &mut QemuFileReader,
) -> Result<VmStateValue, Error> {
    load_vmsd(desc, version_id, r, None)
}

/// Like [`load`], and also applies QEMU's checks of `equal` fields (received == local) and
/// `int32 le` fields (0 <= received <= local) against `current`, the local state.
pub fn load_checked(
    desc: &VmStateDescription,
    version_id: u32,
    r: &mut QemuFileReader,
    current: &VmStateValue,
) -> Result<VmStateValue, Error> {
    load_vmsd(desc, version_id, r, Some(current))
}

fn load_vmsd(
    desc: &VmStateDescription,
    version: u32,
    r: &mut QemuFileReader,
    current: Option<&VmStateValue>,
) -> Result<VmStateValue, Error> {
    if version > desc.version_id {
        return Err(Error::VersionTooNew {
            name: desc.name.clone(),
            version,
            max: desc.version_id,
        });
    }
    if version < desc.minimum_version_id {
        return Err(Error::VersionTooOld {
            name: desc.name.clone(),
            version,
            min: desc.minimum_version_id,
        });
    }
    let mut out = VmStateValue::new();
    for (idx, field) in desc.fields.iter().enumerate() {
        if field.since_version > version {
            continue;
        }
        let k = desc.occurrence(idx, version);
        let cur = current.and_then(|c| c.get_nth(&field.name, k));
        match field.kind.codec() {
            FieldKind::Unused(n) => r.skip(*n as u64)?,
            FieldKind::Array { elem, len } => {
                let v = load_elements(desc, &field.name, elem, *len as u64, r, cur)?;
                out.fields.push((field.name.clone(), v));
            }
            FieldKind::VarArray { elem, len_field } => {
                let n = earlier_len(desc, idx, &out, len_field)?;
                if n > MAX_VAR_ARRAY {
                    return Err(Error::LengthTooLarge {
                        what: "variable array",
                        len: n,
                        max: MAX_VAR_ARRAY,
                        offset: r.bytes_read(),
                    });
                }
                let v = load_elements(desc, &field.name, elem, n, r, cur)?;
                out.fields.push((field.name.clone(), v));
            }
            kind => {
                let v = load_one(desc, idx, &field.name, kind, r, &out, cur)?;
                out.fields.push((field.name.clone(), v));
            }
        }
    }
    while let Some(name) = peek_subsection_name(r, &desc.name)? {
        let Some(sub) = desc.subsections.iter().find(|s| s.name == name) else {
            return Err(Error::UnknownSubsection {
                parent: desc.name.clone(),
                name,
            });
        };
        r.skip(2 + name.len() as u64)?;
        let v = r.get_be32()?;
        let cur = current.and_then(|c| c.subsection(&name));
        let sv = load_vmsd(sub, v, r, cur)?;
        out.subsections.push((name, sv));
    }
    Ok(out)
}

fn load_elements(
    desc: &VmStateDescription,
    name: &str,
    elem: &FieldKind,
    n: u64,
    r: &mut QemuFileReader,
    cur: Option<&Value>,
) -> Result<Value, Error> {
    if !elem.is_element_kind() {
        return Err(Error::InvalidDescription {
            vmsd: desc.name.clone(),
            reason: format!("field \"{name}\" has an unsupported array element type"),
        });
    }
    let cur_list = match cur {
        Some(Value::List(l)) => Some(l.as_slice()),
        _ => None,
    };
    let empty = VmStateValue::new();
    let mut list = Vec::new();
    for i in 0..n {
        let c = cur_list.and_then(|l| l.get(i as usize));
        // Elements never need an earlier sibling (VBuffer/VarArray are not element kinds).
        list.push(load_one(desc, usize::MAX, name, elem, r, &empty, c)?);
    }
    Ok(Value::List(list))
}

fn check_equal(name: &str, received: i128, cur: Option<&Value>) -> Result<(), Error> {
    let Some(local) = cur.and_then(local_int) else {
        return Ok(());
    };
    if received != local {
        return Err(Error::CheckFailed {
            field: name.into(),
            received,
            local,
            check: "must be equal",
        });
    }
    Ok(())
}

fn local_int(v: &Value) -> Option<i128> {
    match *v {
        Value::Uint(u) => Some(i128::from(u)),
        Value::Int(i) => Some(i128::from(i)),
        _ => None,
    }
}

fn load_one(
    desc: &VmStateDescription,
    idx: usize,
    name: &str,
    kind: &FieldKind,
    r: &mut QemuFileReader,
    siblings: &VmStateValue,
    cur: Option<&Value>,
) -> Result<Value, Error> {
    let kind = kind.codec();
    if let Some((bytes, signed)) = kind.int_layout() {
        let raw = match bytes {
            1 => u64::from(r.get_u8()?),
            2 => u64::from(r.get_be16()?),
            4 => u64::from(r.get_be32()?),
            _ => r.get_be64()?,
        };
        let v = if signed {
            let shift = 64 - bytes as u32 * 8;
            Value::Int(((raw << shift) as i64) >> shift)
        } else {
            Value::Uint(raw)
        };
        let received = local_int(&v).unwrap_or_default();
        match kind {
            FieldKind::U8Equal
            | FieldKind::U16Equal
            | FieldKind::U32Equal
            | FieldKind::I32Equal
            | FieldKind::I64Equal => check_equal(name, received, cur)?,
            FieldKind::I32Le => {
                if let Some(local) = cur.and_then(local_int) {
                    if received < 0 || received > local {
                        return Err(Error::CheckFailed {
                            field: name.into(),
                            received,
                            local,
                            check: "must be 0 <= received <= local",
                        });
                    }
                }
            }
            _ => {}
        }
        return Ok(v);
    }
    match kind {
        FieldKind::Bool => Ok(Value::Bool(r.get_u8()? != 0)),
        FieldKind::Buffer(n) => Ok(Value::Bytes(read_bytes(r, *n as u64)?)),
        FieldKind::VBuffer { len_field } => {
            if idx == usize::MAX {
                return Err(Error::InvalidDescription {
                    vmsd: desc.name.clone(),
                    reason: format!("field \"{name}\": variable buffers cannot be array elements"),
                });
            }
            let n = earlier_len(desc, idx, siblings, len_field)?;
            if n > MAX_VBUFFER {
                return Err(Error::LengthTooLarge {
                    what: "variable buffer",
                    len: n,
                    max: MAX_VBUFFER,
                    offset: r.bytes_read(),
                });
            }
            Ok(Value::Bytes(read_bytes(r, n)?))
        }
        FieldKind::Bitmap(bits) => {
            let words = bits.div_ceil(64);
            let mut l = Vec::new();
            for _ in 0..words {
                l.push(Value::Uint(r.get_be64()?));
            }
            Ok(Value::List(l))
        }
        FieldKind::Struct(sd) | FieldKind::Tmp(sd) => {
            let c = match cur {
                Some(Value::Struct(s)) => Some(s),
                _ => None,
            };
            Ok(Value::Struct(load_vmsd(sd, sd.version_id, r, c)?))
        }
        FieldKind::QTailQ(sd) => {
            let mut l = Vec::new();
            loop {
                let offset = r.bytes_read();
                match r.get_u8()? {
                    0 => break,
                    1 => {
                        if l.len() as u64 >= MAX_VAR_ARRAY {
                            return Err(Error::LengthTooLarge {
                                what: "queue",
                                len: l.len() as u64 + 1,
                                max: MAX_VAR_ARRAY,
                                offset,
                            });
                        }
                        l.push(Value::Struct(load_vmsd(sd, sd.version_id, r, None)?));
                    }
                    marker => {
                        return Err(Error::BadListMarker {
                            field: name.into(),
                            marker,
                            offset,
                        })
                    }
                }
            }
            Ok(Value::List(l))
        }
        _ => Err(Error::InvalidDescription {
            vmsd: desc.name.clone(),
            reason: format!("field \"{name}\" cannot be nested here"),
        }),
    }
}

/// Reads `n` bytes, growing the buffer only as data arrives.
fn read_bytes(r: &mut QemuFileReader, n: u64) -> Result<Vec<u8>, Error> {
    let n = usize::try_from(n).map_err(|_| Error::LengthTooLarge {
        what: "buffer",
        len: n,
        max: usize::MAX as u64,
        offset: r.bytes_read(),
    })?;
    let mut out = Vec::with_capacity(n.min(64 * 1024));
    let mut chunk = [0u8; 4096];
    while out.len() < n {
        let k = (n - out.len()).min(chunk.len());
        r.get_buffer(&mut chunk[..k])?;
        out.extend_from_slice(&chunk[..k]);
    }
    Ok(out)
}
