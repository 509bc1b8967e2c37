//! Section headers, footers, commands and the record dispatcher.

use super::*;

/// Highest command number understood by QEMU 7.2 (`MIG_CMD_MAX` - 1).
pub const MIG_CMD_MAX_72: u16 = 10;
/// `MIG_CMD_OPEN_RETURN_PATH`.
pub const MIG_CMD_OPEN_RETURN_PATH: u16 = 1;
/// `MIG_CMD_PING` (be32 payload).
pub const MIG_CMD_PING: u16 = 2;
/// `MIG_CMD_POSTCOPY_ADVISE` (0 or 16 bytes).
pub const MIG_CMD_POSTCOPY_ADVISE: u16 = 3;
/// `MIG_CMD_POSTCOPY_LISTEN`.
pub const MIG_CMD_POSTCOPY_LISTEN: u16 = 4;
/// `MIG_CMD_POSTCOPY_RUN`.
pub const MIG_CMD_POSTCOPY_RUN: u16 = 5;
/// `MIG_CMD_POSTCOPY_RAM_DISCARD` (variable).
pub const MIG_CMD_POSTCOPY_RAM_DISCARD: u16 = 6;
/// `MIG_CMD_PACKAGED` (be32 N, then N bytes outside the command).
pub const MIG_CMD_PACKAGED: u16 = 7;
/// `MIG_CMD_ENABLE_COLO`.
pub const MIG_CMD_ENABLE_COLO: u16 = 8;
/// `MIG_CMD_POSTCOPY_RESUME`.
pub const MIG_CMD_POSTCOPY_RESUME: u16 = 9;
/// `MIG_CMD_RECV_BITMAP` (variable).
pub const MIG_CMD_RECV_BITMAP: u16 = 10;

/// The header of a section record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionHeader {
    /// `0x01`: first chunk of a live section.
    Start {
        /// Section id (bound by the loader to its entry).
        section_id: u32,
        /// Entry name, 1..=255 bytes.
        idstr: String,
        /// Instance number.
        instance_id: u32,
        /// Sender's version of the entry.
        version_id: u32,
    },
    /// `0x04`: the complete state of a non-live device.
    Full {
        /// Section id.
        section_id: u32,
        /// Entry name, 1..=255 bytes.
        idstr: String,
        /// Instance number.
        instance_id: u32,
        /// Sender's version of the entry.
        version_id: u32,
    },
    /// `0x02`: a middle chunk.
    Part {
        /// Section id from the START.
        section_id: u32,
    },
    /// `0x03`: the last chunk.
    End {
        /// Section id from the START.
        section_id: u32,
    },
}

impl SectionHeader {
    /// The record type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            SectionHeader::Start { .. } => QEMU_VM_SECTION_START,
            SectionHeader::Full { .. } => QEMU_VM_SECTION_FULL,
            SectionHeader::Part { .. } => QEMU_VM_SECTION_PART,
            SectionHeader::End { .. } => QEMU_VM_SECTION_END,
        }
    }

    /// The section id.
    pub fn section_id(&self) -> u32 {
        match self {
            SectionHeader::Start { section_id, .. }
            | SectionHeader::Full { section_id, .. }
            | SectionHeader::Part { section_id }
            | SectionHeader::End { section_id } => *section_id,
        }
    }

    /// The idstr of a START/FULL header.
    pub fn idstr(&self) -> Option<&str> {
        match self {
            SectionHeader::Start { idstr, .. } | SectionHeader::Full { idstr, .. } => Some(idstr),
            _ => None,
        }
    }

    /// The instance id of a START/FULL header.
    pub fn instance_id(&self) -> Option<u32> {
        match self {
            SectionHeader::Start { instance_id, .. } | SectionHeader::Full { instance_id, .. } => {
                Some(*instance_id)
            }
            _ => None,
        }
    }

    /// The version id of a START/FULL header.
    pub fn version_id(&self) -> Option<u32> {
        match self {
            SectionHeader::Start { version_id, .. } | SectionHeader::Full { version_id, .. } => {
                Some(*version_id)
            }
            _ => None,
        }
    }

    /// Writes the type byte and the header.
    pub fn write_to(&self, w: &mut QemuFileWriter) {
        w.put_u8(self.type_byte());
        match self {
            SectionHeader::Start {
                section_id,
                idstr,
                instance_id,
                version_id,
            }
            | SectionHeader::Full {
                section_id,
                idstr,
                instance_id,
                version_id,
            } => {
                w.put_be32(*section_id);
                w.put_counted_string(idstr);
                w.put_be32(*instance_id);
                w.put_be32(*version_id);
            }
            SectionHeader::Part { section_id } | SectionHeader::End { section_id } => {
                w.put_be32(*section_id);
            }
        }
    }
}

/// Writes a section footer: `0x7e`, be32 section id.
pub fn write_footer(w: &mut QemuFileWriter, section_id: u32) {
    w.put_u8(QEMU_VM_SECTION_FOOTER);
    w.put_be32(section_id);
}

/// Reads and checks a section footer.
pub fn read_footer(r: &mut QemuFileReader, expected_section_id: u32) -> Result<(), Error> {
    let offset = r.bytes_read();
    let found = r.get_u8()?;
    if found != QEMU_VM_SECTION_FOOTER {
        return Err(Error::MissingFooter {
            section_id: expected_section_id,
            found,
            offset,
        });
    }
    let offset = r.bytes_read();
    let found = r.get_be32()?;
    if found != expected_section_id {
        return Err(Error::MismatchedFooter {
            expected: expected_section_id,
            found,
            offset,
        });
    }
    Ok(())
}

/// Writes the EOF byte.
pub fn write_eof(w: &mut QemuFileWriter) {
    w.put_u8(QEMU_VM_EOF);
}

/// Writes a command record: `0x08`, be16 cmd, be16 len, data. Data over 65535 bytes latches
/// [`Error::LengthTooLarge`].
pub fn write_command(w: &mut QemuFileWriter, cmd: u16, data: &[u8]) {
    let Ok(len) = u16::try_from(data.len()) else {
        w.set_error(Error::LengthTooLarge {
            what: "command",
            len: data.len() as u64,
            max: u64::from(u16::MAX),
            offset: w.total_transferred(),
        });
        return;
    };
    w.put_u8(QEMU_VM_COMMAND);
    w.put_be16(cmd);
    w.put_be16(len);
    w.put_buffer(data);
}

/// One top-level record, as returned by [`read_record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A section header; the body follows and belongs to the section's handler.
    Section(SectionHeader),
    /// A command with its payload. For `MIG_CMD_PACKAGED` the payload is the be32 N; the N
    /// bytes of the nested stream follow and are *not* consumed (see [`Record::packaged_len`]).
    Command {
        /// Command number, 1..=10.
        cmd: u16,
        /// Payload.
        data: Vec<u8>,
    },
    /// `QEMU_VM_EOF`.
    Eof,
}

impl Record {
    /// For a PACKAGED command: the number of nested-stream bytes that follow it.
    pub fn packaged_len(&self) -> Option<u32> {
        match self {
            Record::Command {
                cmd: MIG_CMD_PACKAGED,
                data,
            } => {
                let b: [u8; 4] = data.as_slice().try_into().ok()?;
                Some(u32::from_be_bytes(b))
            }
            _ => None,
        }
    }
}

/// Required payload length of a command, or None when variable.
fn fixed_command_len(cmd: u16) -> Option<(&'static [u16], &'static str)> {
    match cmd {
        MIG_CMD_OPEN_RETURN_PATH
        | MIG_CMD_POSTCOPY_LISTEN
        | MIG_CMD_POSTCOPY_RUN
        | MIG_CMD_ENABLE_COLO
        | MIG_CMD_POSTCOPY_RESUME => Some((&[0], "0")),
        MIG_CMD_PING | MIG_CMD_PACKAGED => Some((&[4], "4")),
        MIG_CMD_POSTCOPY_ADVISE => Some((&[0, 16], "0 or 16")),
        _ => None,
    }
}

/// Reads the next record's type byte and header (not the body).
pub fn read_record(r: &mut QemuFileReader) -> Result<Record, Error> {
    let offset = r.bytes_read();
    let byte = r.get_u8()?;
    match byte {
        QEMU_VM_EOF => Ok(Record::Eof),
        QEMU_VM_SECTION_START | QEMU_VM_SECTION_FULL => {
            let section_id = r.get_be32()?;
            let id_offset = r.bytes_read();
            let idstr = r.get_counted_string()?;
            if idstr.is_empty() {
                return Err(Error::EmptyIdstr { offset: id_offset });
            }
            let instance_id = r.get_be32()?;
            let version_id = r.get_be32()?;
            Ok(Record::Section(if byte == QEMU_VM_SECTION_START {
                SectionHeader::Start {
                    section_id,
                    idstr,
                    instance_id,
                    version_id,
                }
            } else {
                SectionHeader::Full {
                    section_id,
                    idstr,
                    instance_id,
                    version_id,
                }
            }))
        }
        QEMU_VM_SECTION_PART => Ok(Record::Section(SectionHeader::Part {
            section_id: r.get_be32()?,
        })),
        QEMU_VM_SECTION_END => Ok(Record::Section(SectionHeader::End {
            section_id: r.get_be32()?,
        })),
        QEMU_VM_COMMAND => {
            let cmd_offset = r.bytes_read();
            let cmd = r.get_be16()?;
            let len = r.get_be16()?;
            if cmd == 0 || cmd > MIG_CMD_MAX_72 {
                return Err(Error::InvalidCommand {
                    cmd,
                    offset: cmd_offset,
                });
            }
            if let Some((allowed, expected)) = fixed_command_len(cmd) {
                if !allowed.contains(&len) {
                    return Err(Error::CommandLength { cmd, len, expected });
                }
            }
            let mut data = vec![0u8; usize::from(len)];
            r.get_buffer(&mut data)?;
            Ok(Record::Command { cmd, data })
        }
        _ => Err(Error::UnknownRecordType { byte, offset }),
    }
}
