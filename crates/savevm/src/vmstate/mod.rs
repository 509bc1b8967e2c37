//! Versioned device-state descriptions (spec §2.4), the analogue of QEMU's VMStateDescription.
//!
//! A [`VmStateDescription`] lists fields (each with a wire codec and the version that
//! introduced it) and subsections. The same description drives:
//!
//! * [`save`]: writes the body and returns the JSON description entry with the sizes actually
//!   written (for the VMDESCRIPTION trailer, see [`crate::vmdesc`]);
//! * [`load`] / [`load_checked`]: reads a body of a given incoming version.
//!
//! Body layout (no header: the section header carries name and version):
//!
//! ```text
//! body       := { field }  { subsection }
//! subsection := 0x05  u8 len  name[len]  be32 version_id  body      ; name = "parent/child"
//! ```
//!
//! Load rules: incoming version > `version_id` → too new; < `minimum_version_id` → too old;
//! fields with `since_version` > incoming version are not on the wire; subsections are read
//! while the next byte is `0x05` and the peeked name starts with the parent's name; a name
//! that starts with ours but is not declared is fatal; anything else ends the body.
//! (As in QEMU, the test is a plain prefix test: a subsection named `"p/a"` followed by a
//! sibling `"p/ab"` makes the loader of `"p/a"` claim `"p/ab"` and fail, so sibling names
//! must not be prefixes of later siblings.)
//!
//! Values are plain trees ([`VmStateValue`]); a device's state struct implements [`VmState`]
//! to convert to and from them. A description may repeat a field name (QEMU devices do; the
//! JSON then says `name[0]`, `name[1]`): the k-th value of that name in the
//! [`VmStateValue`] (see [`VmStateValue::push`] / [`VmStateValue::get_nth`]) belongs to the
//! k-th such field.
//!
//! Conformance: `tests/savevm/qemu_capture.rs` rebuilds a complete stream written by QEMU
//! 7.2.22 (30 devices, incl. `cpu` with `tmp` fields, indexed struct arrays and
//! subsections) byte for byte, JSON trailer included.
//!
//! ```
//! use savevm::vmstate::{self, FieldKind, Value, VmStateDescription, VmStateValue};
//! use savevm::qemu_file::{memory_reader, memory_writer};
//!
//! let desc = VmStateDescription::new("timer", 2)
//!     .field("cpu_ticks_offset", FieldKind::I64)
//!     .field("unused", FieldKind::Unused(8))
//!     .field_since("cpu_clock_offset", FieldKind::I64, 2);
//! let v = VmStateValue::new()
//!     .with("cpu_ticks_offset", Value::Int(5))
//!     .with("cpu_clock_offset", Value::Int(-1));
//! let (mut w, buf) = memory_writer();
//! let json = vmstate::save(&desc, &v, &mut w).unwrap();
//! w.flush().unwrap();
//! assert_eq!(json["fields"][1]["type"], "unused_buffer");
//! let bytes = buf.contents();
//! assert_eq!(bytes.len(), 24);
//! let mut r = memory_reader(bytes);
//! assert_eq!(vmstate::load(&desc, 2, &mut r).unwrap(), v);
//! ```

mod desc;
mod load;
mod save;
mod section;
mod value;

pub use desc::{FieldKind, VmStateDescription, VmStateField};
pub use load::{load, load_checked};
pub use save::save;
pub use section::{load_section_body, save_full_section};
pub use value::{Value, VmStateValue};

use crate::error::Error;

/// Cap on the element count of variable arrays and queues read from the wire.
pub const MAX_VAR_ARRAY: u64 = 1 << 20;
/// Cap on the length of variable buffers read from the wire.
pub const MAX_VBUFFER: u64 = 64 << 20;

/// A plain state struct with a VMState description, in the style of Firecracker's `Persist`:
/// saving cannot fail, restoring is a constructor that validates.
pub trait VmState: Sized {
    /// The description (name, versions, fields, subsections).
    fn description() -> VmStateDescription;
    /// The current state as a value tree matching [`description`](Self::description).
    fn save(&self) -> VmStateValue;
    /// Builds the state from a loaded value (fields of newer versions may be absent).
    fn restore(v: &VmStateValue) -> Result<Self, Error>;
}
