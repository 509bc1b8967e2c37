//! Values held by VMState fields.

use crate::error::Error;

/// The value of one field (or array element).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Unsigned integers, `equal` variants, `float64` bits, `timer`.
    Uint(u64),
    /// Signed integers, `int32 le`, signed `equal` variants.
    Int(i64),
    /// `bool`.
    Bool(bool),
    /// `buffer`.
    Bytes(Vec<u8>),
    /// Arrays, bitmaps (be64 words) and queues.
    List(Vec<Value>),
    /// A nested struct.
    Struct(VmStateValue),
}

impl Value {
    /// The value as u64 (Uint, non-negative Int, Bool).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            Value::Bool(b) => Some(u64::from(b)),
            _ => None,
        }
    }

    /// The value as i64 (Int, Uint that fits, Bool).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(v) => Some(v),
            Value::Uint(v) => i64::try_from(v).ok(),
            Value::Bool(b) => Some(i64::from(b)),
            _ => None,
        }
    }
}

/// The state of one VMSD instance: field values by name and the subsections present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmStateValue {
    /// Field values in description order (fields of type `unused` are absent).
    pub fields: Vec<(String, Value)>,
    /// Subsections that are present ("needed"), keyed by full subsection name.
    pub subsections: Vec<(String, VmStateValue)>,
}

fn missing(field: &str) -> Error {
    Error::FieldMissing {
        vmsd: "value".into(),
        field: field.into(),
    }
}

fn wrong(field: &str, expected: &'static str) -> Error {
    Error::FieldType {
        field: field.into(),
        expected,
    }
}

macro_rules! uint_getter {
    ($name:ident, $t:ty, $what:literal) => {
        #[doc = concat!("Field `name` as ", $what, ".")]
        pub fn $name(&self, name: &str) -> Result<$t, Error> {
            let v = self.get(name).ok_or_else(|| missing(name))?;
            let u = v.as_u64().ok_or_else(|| wrong(name, $what))?;
            <$t>::try_from(u).map_err(|_| Error::ValueOutOfRange {
                field: name.into(),
                value: i128::from(u),
            })
        }
    };
}

macro_rules! int_getter {
    ($name:ident, $t:ty, $what:literal) => {
        #[doc = concat!("Field `name` as ", $what, ".")]
        pub fn $name(&self, name: &str) -> Result<$t, Error> {
            let v = self.get(name).ok_or_else(|| missing(name))?;
            let i = v.as_i64().ok_or_else(|| wrong(name, $what))?;
            <$t>::try_from(i).map_err(|_| Error::ValueOutOfRange {
                field: name.into(),
                value: i128::from(i),
            })
        }
    };
}

impl VmStateValue {
    /// An empty value.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder: appends (or replaces) field `name`.
    pub fn with(mut self, name: impl Into<String>, v: Value) -> Self {
        self.set(name, v);
        self
    }

    /// Builder: adds subsection `name`.
    pub fn with_subsection(mut self, name: impl Into<String>, v: VmStateValue) -> Self {
        self.set_subsection(name, v);
        self
    }

    /// Sets field `name`, replacing an existing value.
    pub fn set(&mut self, name: impl Into<String>, v: Value) {
        let name = name.into();
        match self.fields.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = v,
            None => self.fields.push((name, v)),
        }
    }

    /// Sets subsection `name`, replacing an existing one.
    pub fn set_subsection(&mut self, name: impl Into<String>, v: VmStateValue) {
        let name = name.into();
        match self.subsections.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = v,
            None => self.subsections.push((name, v)),
        }
    }

    /// Appends field `name` even if the name is already present (for descriptions that
    /// repeat a field name, as some QEMU devices do; the k-th value of a name belongs to the
    /// k-th field of that name).
    pub fn push(&mut self, name: impl Into<String>, v: Value) {
        self.fields.push((name.into(), v));
    }

    /// Field `name`, if present (the first one when the name repeats).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.get_nth(name, 0)
    }

    /// The `k`-th field called `name` (0-based), for repeated names.
    pub fn get_nth(&self, name: &str, k: usize) -> Option<&Value> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .nth(k)
            .map(|(_, v)| v)
    }

    /// Subsection `name`, if present.
    pub fn subsection(&self, name: &str) -> Option<&VmStateValue> {
        self.subsections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    uint_getter!(get_u8, u8, "an unsigned 8-bit integer");
    uint_getter!(get_u16, u16, "an unsigned 16-bit integer");
    uint_getter!(get_u32, u32, "an unsigned 32-bit integer");
    uint_getter!(get_u64, u64, "an unsigned 64-bit integer");
    int_getter!(get_i8, i8, "a signed 8-bit integer");
    int_getter!(get_i16, i16, "a signed 16-bit integer");
    int_getter!(get_i32, i32, "a signed 32-bit integer");
    int_getter!(get_i64, i64, "a signed 64-bit integer");

    /// Field `name` as bool.
    pub fn get_bool(&self, name: &str) -> Result<bool, Error> {
        match self.get(name).ok_or_else(|| missing(name))? {
            Value::Bool(b) => Ok(*b),
            _ => Err(wrong(name, "a bool")),
        }
    }

    /// Field `name` as bytes.
    pub fn get_bytes(&self, name: &str) -> Result<&[u8], Error> {
        match self.get(name).ok_or_else(|| missing(name))? {
            Value::Bytes(b) => Ok(b),
            _ => Err(wrong(name, "bytes")),
        }
    }

    /// Field `name` as a list.
    pub fn get_list(&self, name: &str) -> Result<&[Value], Error> {
        match self.get(name).ok_or_else(|| missing(name))? {
            Value::List(l) => Ok(l),
            _ => Err(wrong(name, "a list")),
        }
    }

    /// Field `name` as a nested struct.
    pub fn get_struct(&self, name: &str) -> Result<&VmStateValue, Error> {
        match self.get(name).ok_or_else(|| missing(name))? {
            Value::Struct(s) => Ok(s),
            _ => Err(wrong(name, "a struct")),
        }
    }
}
