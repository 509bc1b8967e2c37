//! Typed reads of QEMU section values, with the field named in every error (a peer's stream is
//! hostile: a missing or out-of-range field is a load error, never a panic).

use savevm::vmstate::{Value, VmStateValue};

/// Field `name` as u64 (unsigned or non-negative).
pub(crate) fn u64_of(v: &VmStateValue, name: &str) -> Result<u64, String> {
    v.get_u64(name).map_err(|e| e.to_string())
}

/// Field `name` as i64.
pub(crate) fn i64_of(v: &VmStateValue, name: &str) -> Result<i64, String> {
    v.get_i64(name).map_err(|e| e.to_string())
}

/// Field `name` as a value that must fit `T`.
pub(crate) fn uint<T: TryFrom<u64>>(v: &VmStateValue, name: &str) -> Result<T, String> {
    let x = u64_of(v, name)?;
    T::try_from(x).map_err(|_| format!("field {name} = {x:#x} is out of range"))
}

/// Array field `name` of exactly `len` unsigned integers.
pub(crate) fn u64_list(v: &VmStateValue, name: &str, len: usize) -> Result<Vec<u64>, String> {
    let l = v.get_list(name).map_err(|e| e.to_string())?;
    if l.len() != len {
        return Err(format!(
            "field {name} has {} elements, expected {len}",
            l.len()
        ));
    }
    l.iter()
        .map(|x| {
            x.as_u64()
                .ok_or_else(|| format!("field {name}: not an unsigned integer"))
        })
        .collect()
}

/// Array field `name` (the `k`-th field of that name) of exactly `len` structs.
pub(crate) fn struct_list<'a>(
    v: &'a VmStateValue,
    name: &str,
    k: usize,
    len: usize,
) -> Result<Vec<&'a VmStateValue>, String> {
    let Some(Value::List(l)) = v.get_nth(name, k) else {
        return Err(format!("field {name} (#{k}) is missing or not an array"));
    };
    if l.len() != len {
        return Err(format!(
            "field {name} has {} elements, expected {len}",
            l.len()
        ));
    }
    l.iter()
        .map(|x| match x {
            Value::Struct(s) => Ok(s),
            _ => Err(format!("field {name}: element is not a struct")),
        })
        .collect()
}

/// Struct field `name`.
pub(crate) fn strukt<'a>(v: &'a VmStateValue, name: &str) -> Result<&'a VmStateValue, String> {
    v.get_struct(name).map_err(|e| e.to_string())
}

/// A list of unsigned values.
pub(crate) fn uints(it: impl IntoIterator<Item = u64>) -> Value {
    Value::List(it.into_iter().map(Value::Uint).collect())
}
