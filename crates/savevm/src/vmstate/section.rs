//! Helpers for the common case: a device's state as one FULL section.

use super::{load, save, VmStateDescription, VmStateValue};
use crate::error::Error;
use crate::qemu_file::{QemuFileReader, QemuFileWriter};
use crate::record::{read_footer, write_footer, SectionHeader};
use crate::vmdesc::VmDescBuilder;

/// Writes `value` as a FULL section (`0x04` header with `desc.version_id`, body, footer) and,
/// if `vmdesc` is given, adds the device's entry to the VMDESCRIPTION being built.
pub fn save_full_section(
    w: &mut QemuFileWriter,
    section_id: u32,
    idstr: &str,
    instance_id: u32,
    desc: &VmStateDescription,
    value: &VmStateValue,
    vmdesc: Option<&mut VmDescBuilder>,
) -> Result<(), Error> {
    SectionHeader::Full {
        section_id,
        idstr: idstr.to_owned(),
        instance_id,
        version_id: desc.version_id,
    }
    .write_to(w);
    let json = save(desc, value, w)?;
    write_footer(w, section_id);
    if let Some(b) = vmdesc {
        b.add_device(idstr, instance_id, json);
    }
    match w.error() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Loads the body of a START/FULL section whose header was already read by
/// [`read_record`](crate::record::read_record), then checks its footer.
pub fn load_section_body(
    r: &mut QemuFileReader,
    header: &SectionHeader,
    desc: &VmStateDescription,
) -> Result<VmStateValue, Error> {
    let version = header.version_id().unwrap_or(desc.version_id);
    let v = load(desc, version, r)?;
    read_footer(r, header.section_id())?;
    Ok(v)
}
