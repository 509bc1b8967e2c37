//! Stream structure: header, configuration, section headers, footers, commands, EOF and the
//! VMDESCRIPTION trailer (spec §2.1–2.3, 2.5–2.7).
//!
//! ```text
//! stream      := be32 0x5145564d  be32 3
//!                [ 0x07 configuration ]             ; see Configuration
//!                { command | section }
//!                0x00                               ; EOF
//!                [ 0x06 be32 json_len json ]        ; VMDESCRIPTION trailer
//! START/FULL  := 0x01|0x04 be32 section_id cstr8 idstr be32 instance_id be32 version_id
//!                body  footer
//! PART/END    := 0x02|0x03 be32 section_id  body  footer
//! footer      := 0x7e be32 section_id
//! command     := 0x08 be16 cmd be16 len len*u8      ; PACKAGED: then be32-announced bytes
//! ```
//!
//! Nothing marks the end of a section body: [`read_record`] reads the type byte and the header
//! only, and the caller parses the body with the handler that owns the section, then checks the
//! footer with [`read_footer`].

mod commit;
mod configuration;
pub mod postcopy;
pub mod recovery;
mod return_path;
mod section;

pub use commit::{
    announces_commit, read_commit, write_commit, COMMIT_ANNOUNCEMENT, LIVEMIG_CMD_COMMIT,
};
pub(crate) use configuration::peek_subsection_name;
pub use configuration::{read_configuration, Configuration, MAX_CAPABILITIES, MAX_MACHINE_NAME};
pub use return_path::{read_rp, write_rp, RpMessage, RP_MAX_LEN, RP_PONG, RP_SHUT};
pub use section::*;

use crate::error::Error;
use crate::qemu_file::{QemuFileReader, QemuFileWriter};

/// First be32 of every stream: "QEVM".
pub const QEMU_VM_FILE_MAGIC: u32 = 0x5145_564d;
/// Obsolete stream version, rejected.
pub const QEMU_VM_FILE_VERSION_COMPAT: u32 = 2;
/// The stream version written and accepted.
pub const QEMU_VM_FILE_VERSION: u32 = 3;

/// End of device data.
pub const QEMU_VM_EOF: u8 = 0x00;
/// First chunk of a live section (full header).
pub const QEMU_VM_SECTION_START: u8 = 0x01;
/// Middle chunk of a live section (short header).
pub const QEMU_VM_SECTION_PART: u8 = 0x02;
/// Last chunk of a live section (short header).
pub const QEMU_VM_SECTION_END: u8 = 0x03;
/// Complete state of a non-live device (full header).
pub const QEMU_VM_SECTION_FULL: u8 = 0x04;
/// VMState subsection marker inside a body.
pub const QEMU_VM_SUBSECTION: u8 = 0x05;
/// JSON description trailer after EOF.
pub const QEMU_VM_VMDESCRIPTION: u8 = 0x06;
/// Configuration record right after the header.
pub const QEMU_VM_CONFIGURATION: u8 = 0x07;
/// Out-of-section command.
pub const QEMU_VM_COMMAND: u8 = 0x08;
/// Footer after each section body.
pub const QEMU_VM_SECTION_FOOTER: u8 = 0x7e;

/// Largest VMDESCRIPTION trailer accepted by [`read_vmdesc`] (QEMU's is ~100 KB).
pub const MAX_VMDESC_LEN: u32 = 64 * 1024 * 1024;

/// Writes the stream header: magic and version 3.
pub fn write_header(w: &mut QemuFileWriter) {
    w.put_be32(QEMU_VM_FILE_MAGIC);
    w.put_be32(QEMU_VM_FILE_VERSION);
}

/// Reads and checks the stream header.
pub fn read_header(r: &mut QemuFileReader) -> Result<(), Error> {
    let magic = r.get_be32()?;
    if magic != QEMU_VM_FILE_MAGIC {
        return Err(Error::NotAMigrationStream { magic });
    }
    match r.get_be32()? {
        QEMU_VM_FILE_VERSION => Ok(()),
        QEMU_VM_FILE_VERSION_COMPAT => Err(Error::ObsoleteVersion),
        version => Err(Error::UnsupportedVersion { version }),
    }
}

/// Writes the VMDESCRIPTION trailer: `0x06`, be32 length, the JSON bytes.
///
/// JSON longer than `u32::MAX` bytes latches [`Error::LengthTooLarge`].
pub fn write_vmdesc(w: &mut QemuFileWriter, json: &[u8]) {
    let Ok(len) = u32::try_from(json.len()) else {
        w.set_error(Error::LengthTooLarge {
            what: "vmdescription",
            len: json.len() as u64,
            max: u64::from(u32::MAX),
            offset: w.total_transferred(),
        });
        return;
    };
    w.put_u8(QEMU_VM_VMDESCRIPTION);
    w.put_be32(len);
    w.put_buffer(json);
}

/// Reads the VMDESCRIPTION trailer after EOF.
///
/// Returns `None` at a clean end of stream or when the next byte is not `0x06` (QEMU only logs
/// "Expected vmdescription section" then); the byte is not consumed in that case. The length
/// is capped at [`MAX_VMDESC_LEN`] and the buffer grows only as bytes actually arrive.
pub fn read_vmdesc(r: &mut QemuFileReader) -> Result<Option<Vec<u8>>, Error> {
    if r.is_eof()? || r.peek_u8()? != QEMU_VM_VMDESCRIPTION {
        return Ok(None);
    }
    r.get_u8()?;
    let offset = r.bytes_read();
    let len = r.get_be32()?;
    if len > MAX_VMDESC_LEN {
        return Err(Error::LengthTooLarge {
            what: "vmdescription",
            len: u64::from(len),
            max: u64::from(MAX_VMDESC_LEN),
            offset,
        });
    }
    let len = len as usize;
    let mut out = Vec::with_capacity(len.min(64 * 1024));
    let mut chunk = [0u8; 4096];
    while out.len() < len {
        let k = (len - out.len()).min(chunk.len());
        r.get_buffer(&mut chunk[..k])?;
        out.extend_from_slice(&chunk[..k]);
    }
    Ok(Some(out))
}
