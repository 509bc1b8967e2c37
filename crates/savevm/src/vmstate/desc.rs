//! VMState descriptions: the schema of a device's state.

use std::sync::Arc;

/// A versioned description of a state struct, the analogue of QEMU's `VMStateDescription`.
///
/// One description drives [`save`](super::save), [`load`](super::load) and the JSON entry of
/// the VMDESCRIPTION trailer, so the three cannot drift apart.
#[derive(Debug, Clone, PartialEq)]
pub struct VmStateDescription {
    /// VMSD name (subsection names must start with the parent's name, e.g. `"cpu/xsave"`).
    pub name: String,
    /// Version written by save; the highest version load accepts.
    pub version_id: u32,
    /// Lowest version load accepts.
    pub minimum_version_id: u32,
    /// Fields in wire order.
    pub fields: Vec<VmStateField>,
    /// Subsections in declaration (= wire) order. A subsection is written when the value
    /// carries it (the data-driven equivalent of QEMU's `needed()`).
    pub subsections: Vec<VmStateDescription>,
}

/// One field of a description.
#[derive(Debug, Clone, PartialEq)]
pub struct VmStateField {
    /// Field name (also the key in [`VmStateValue`](super::VmStateValue)).
    pub name: String,
    /// Wire codec.
    pub kind: FieldKind,
    /// First version that has this field (QEMU's `field->version_id`); 0 = always.
    pub since_version: u32,
}

/// Wire codecs (spec §2.4). Integers are big-endian.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldKind {
    /// 1 byte 0/1 (`bool`).
    Bool,
    /// 1 byte (`uint8`).
    U8,
    /// be16 (`uint16`).
    U16,
    /// be32 (`uint32`).
    U32,
    /// be64 (`uint64`).
    U64,
    /// 1 byte (`int8`).
    I8,
    /// be16 (`int16`).
    I16,
    /// be32 (`int32`).
    I32,
    /// be64 (`int64`).
    I64,
    /// be32 (`int32 le`): with a local value, load requires 0 <= received <= local.
    I32Le,
    /// 1 byte (`uint8 equal`): with a local value, load requires equality.
    U8Equal,
    /// be16 (`uint16 equal`).
    U16Equal,
    /// be32 (`uint32 equal`).
    U32Equal,
    /// be32 (`int32 equal`).
    I32Equal,
    /// be64 (`int64 equal`).
    I64Equal,
    /// be64 of the IEEE-754 bits (`float64`), held as `Value::Uint(bits)`.
    Float64,
    /// be64 expire time in ns (`timer`), `u64::MAX` = not armed.
    Timer,
    /// Fixed-size raw bytes (`buffer`).
    Buffer(usize),
    /// Raw bytes whose length is an earlier integer field of the same struct (`buffer`,
    /// QEMU's VBUFFER). Capped at [`MAX_VBUFFER`](super::MAX_VBUFFER) on load.
    VBuffer {
        /// Name of the earlier length field.
        len_field: String,
    },
    /// N zero bytes, ignored on load and absent from values (`unused_buffer`).
    Unused(usize),
    /// A bitmap of `bits` bits as ceil(bits/64) be64 words (`bitmap`), held as a list of
    /// `Value::Uint` words.
    Bitmap(usize),
    /// A fixed-length array; `elem` is a scalar, buffer or struct kind.
    Array {
        /// Element codec.
        elem: Box<FieldKind>,
        /// Element count.
        len: usize,
    },
    /// An array whose length is an earlier integer field of the same struct. Capped at
    /// [`MAX_VAR_ARRAY`](super::MAX_VAR_ARRAY) elements on load.
    VarArray {
        /// Element codec.
        elem: Box<FieldKind>,
        /// Name of the earlier length field.
        len_field: String,
    },
    /// A nested struct: its fields and subsections, no header (`struct`).
    Struct(Arc<VmStateDescription>),
    /// A temporary struct encoded inline like a struct (`tmp`); in the JSON its description
    /// (`vmsd_name`, `version`, `fields`) sits directly in the field object.
    Tmp(Arc<VmStateDescription>),
    /// A queue of structs: { u8 1, element }* u8 0 (`qtailq`).
    QTailQ(Arc<VmStateDescription>),
    /// The wire codec of `codec` under another JSON `type` string, for QEMU types whose
    /// encoding equals a basic one (e.g. `"CPU_Double_U"` = [`FieldKind::Float64`],
    /// `"uint8 from uint16"`...). Wrap scalar, buffer or struct kinds; for arrays wrap the
    /// element.
    Named {
        /// JSON type string.
        type_name: String,
        /// Wire codec.
        codec: Box<FieldKind>,
    },
}

impl FieldKind {
    /// The `type` string of the JSON description.
    pub fn type_name(&self) -> &str {
        match self {
            FieldKind::Named { type_name, .. } => type_name,
            FieldKind::Bool => "bool",
            FieldKind::U8 => "uint8",
            FieldKind::U16 => "uint16",
            FieldKind::U32 => "uint32",
            FieldKind::U64 => "uint64",
            FieldKind::I8 => "int8",
            FieldKind::I16 => "int16",
            FieldKind::I32 => "int32",
            FieldKind::I64 => "int64",
            FieldKind::I32Le => "int32 le",
            FieldKind::U8Equal => "uint8 equal",
            FieldKind::U16Equal => "uint16 equal",
            FieldKind::U32Equal => "uint32 equal",
            FieldKind::I32Equal => "int32 equal",
            FieldKind::I64Equal => "int64 equal",
            FieldKind::Float64 => "float64",
            FieldKind::Timer => "timer",
            FieldKind::Buffer(_) | FieldKind::VBuffer { .. } => "buffer",
            FieldKind::Unused(_) => "unused_buffer",
            FieldKind::Bitmap(_) => "bitmap",
            FieldKind::Array { elem, .. } | FieldKind::VarArray { elem, .. } => elem.type_name(),
            FieldKind::Struct(_) => "struct",
            FieldKind::Tmp(_) => "tmp",
            FieldKind::QTailQ(_) => "qtailq",
        }
    }

    /// The wire codec (unwraps [`FieldKind::Named`]).
    pub fn codec(&self) -> &FieldKind {
        match self {
            FieldKind::Named { codec, .. } => codec.codec(),
            k => k,
        }
    }

    /// Integer kinds: (wire bytes, signed).
    pub(crate) fn int_layout(&self) -> Option<(usize, bool)> {
        Some(match self.codec() {
            FieldKind::U8 | FieldKind::U8Equal => (1, false),
            FieldKind::U16 | FieldKind::U16Equal => (2, false),
            FieldKind::U32 | FieldKind::U32Equal => (4, false),
            FieldKind::U64 | FieldKind::Float64 | FieldKind::Timer => (8, false),
            FieldKind::I8 => (1, true),
            FieldKind::I16 => (2, true),
            FieldKind::I32 | FieldKind::I32Le | FieldKind::I32Equal => (4, true),
            FieldKind::I64 | FieldKind::I64Equal => (8, true),
            _ => return None,
        })
    }

    /// Whether `kind` may be an array element.
    pub(crate) fn is_element_kind(&self) -> bool {
        self.int_layout().is_some()
            || matches!(
                self,
                FieldKind::Bool | FieldKind::Buffer(_) | FieldKind::Struct(_)
            )
    }

    /// QEMU's `vmsd_can_compress`: struct elements with subsections anywhere are described
    /// element by element.
    pub(crate) fn can_compress(&self) -> bool {
        match self.codec() {
            FieldKind::Struct(d) => d.can_compress(),
            FieldKind::Array { elem, .. } | FieldKind::VarArray { elem, .. } => elem.can_compress(),
            _ => true,
        }
    }
}

impl VmStateDescription {
    /// A description with no fields yet; `minimum_version_id` = `version_id`.
    pub fn new(name: impl Into<String>, version_id: u32) -> Self {
        VmStateDescription {
            name: name.into(),
            version_id,
            minimum_version_id: version_id,
            fields: Vec::new(),
            subsections: Vec::new(),
        }
    }

    /// Sets the minimum accepted version.
    pub fn minimum_version(mut self, v: u32) -> Self {
        self.minimum_version_id = v;
        self
    }

    /// Appends a field present in every version.
    pub fn field(self, name: impl Into<String>, kind: FieldKind) -> Self {
        self.field_since(name, kind, 0)
    }

    /// Appends a field that exists from version `since` on.
    pub fn field_since(mut self, name: impl Into<String>, kind: FieldKind, since: u32) -> Self {
        self.fields.push(VmStateField {
            name: name.into(),
            kind,
            since_version: since,
        });
        self
    }

    /// Appends a subsection.
    pub fn subsection(mut self, sub: VmStateDescription) -> Self {
        self.subsections.push(sub);
        self
    }

    fn can_compress(&self) -> bool {
        self.subsections.is_empty() && self.fields.iter().all(|f| f.kind.can_compress())
    }

    /// How many fields before `idx` share its name and are stored in values at `version`
    /// (on the wire and not `unused`): the occurrence number used with
    /// [`VmStateValue::get_nth`](super::VmStateValue::get_nth).
    pub(crate) fn occurrence(&self, idx: usize, version: u32) -> usize {
        let name = &self.fields[idx].name;
        self.fields[..idx]
            .iter()
            .filter(|f| {
                &f.name == name
                    && f.since_version <= version
                    && !matches!(f.kind.codec(), FieldKind::Unused(_))
            })
            .count()
    }

    /// JSON name of field `idx`: `name`, or `name[k]` when the name occurs more than once in
    /// this description (k = occurrence number), as QEMU does.
    pub(crate) fn json_field_name(&self, idx: usize) -> String {
        let name = &self.fields[idx].name;
        let total = self.fields.iter().filter(|f| &f.name == name).count();
        if total <= 1 {
            return name.clone();
        }
        let k = self.fields[..idx]
            .iter()
            .filter(|f| &f.name == name)
            .count();
        format!("{name}[{k}]")
    }
}
