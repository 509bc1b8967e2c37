//! The configuration record (`0x07`), spec §2.3.
//!
//! ```text
//! 0x07  be32 len  machine[len]                         ; VMState "configuration" v1, no header
//!       [0x05 cstr8 "configuration/target-page-bits" be32 1  be32 bits]
//!       [0x05 cstr8 "configuration/capabilities"     be32 1  be32 n  n*cstr8 capability]
//!       [0x05 cstr8 "configuration/uuid"             be32 1  16*u8 uuid]
//! ```
//!
//! There is no terminator: the loader stops at the first byte that is not `0x05` (or at a
//! subsection whose name does not start with "configuration").

use super::*;

/// Cap on the machine-type name length read from the wire.
pub const MAX_MACHINE_NAME: u32 = 256;
/// Cap on the number of capabilities read from the wire.
pub const MAX_CAPABILITIES: u32 = 256;

const NAME: &str = "configuration";
const SUB_PAGE_BITS: &str = "configuration/target-page-bits";
const SUB_CAPS: &str = "configuration/capabilities";
const SUB_UUID: &str = "configuration/uuid";

/// Contents of the configuration record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Configuration {
    /// Resolved machine type name, e.g. `pc-i440fx-7.2`.
    pub machine: String,
    /// Enabled *validated* capabilities (7.2: only `x-ignore-shared`); subsection written iff
    /// non-empty.
    pub capabilities: Vec<String>,
    /// VM UUID; subsection written iff `Some` (QEMU: `-uuid` given and `validate-uuid` on).
    pub uuid: Option<[u8; 16]>,
    /// Target page bits; subsection written iff `Some` (never on x86).
    pub target_page_bits: Option<u32>,
}

fn write_sub_header(w: &mut QemuFileWriter, name: &str) {
    w.put_u8(QEMU_VM_SUBSECTION);
    w.put_counted_string(name);
    w.put_be32(1);
}

impl Configuration {
    /// Writes `0x07` and the record, subsections only when needed, in QEMU's order.
    pub fn write_to(&self, w: &mut QemuFileWriter) {
        w.put_u8(QEMU_VM_CONFIGURATION);
        let Ok(len) = u32::try_from(self.machine.len()) else {
            w.set_error(Error::StringTooLong {
                len: self.machine.len(),
            });
            return;
        };
        w.put_be32(len);
        w.put_buffer(self.machine.as_bytes());
        if let Some(bits) = self.target_page_bits {
            write_sub_header(w, SUB_PAGE_BITS);
            w.put_be32(bits);
        }
        if !self.capabilities.is_empty() {
            write_sub_header(w, SUB_CAPS);
            w.put_be32(self.capabilities.len() as u32);
            for c in &self.capabilities {
                w.put_counted_string(c);
            }
        }
        if let Some(uuid) = &self.uuid {
            write_sub_header(w, SUB_UUID);
            w.put_buffer(uuid);
        }
    }

    /// Reads the record after the `0x07` byte was consumed.
    pub fn read_from(r: &mut QemuFileReader) -> Result<Configuration, Error> {
        let offset = r.bytes_read();
        let len = r.get_be32()?;
        if len > MAX_MACHINE_NAME {
            return Err(Error::LengthTooLarge {
                what: "machine name",
                len: u64::from(len),
                max: u64::from(MAX_MACHINE_NAME),
                offset,
            });
        }
        let mut name = vec![0u8; len as usize];
        r.get_buffer(&mut name)?;
        let machine = String::from_utf8(name).map_err(|_| Error::InvalidUtf8 { offset })?;
        let mut cfg = Configuration {
            machine,
            ..Default::default()
        };

        while let Some(sub) = peek_subsection_name(r, NAME)? {
            // Consume the marker, name and version.
            r.skip(2 + sub.len() as u64)?;
            let version = r.get_be32()?;
            if version > 1 {
                return Err(Error::VersionTooNew {
                    name: sub,
                    version,
                    max: 1,
                });
            }
            if version < 1 {
                return Err(Error::VersionTooOld {
                    name: sub,
                    version,
                    min: 1,
                });
            }
            match sub.as_str() {
                SUB_PAGE_BITS => cfg.target_page_bits = Some(r.get_be32()?),
                SUB_CAPS => {
                    let offset = r.bytes_read();
                    let n = r.get_be32()?;
                    if n > MAX_CAPABILITIES {
                        return Err(Error::LengthTooLarge {
                            what: "capability count",
                            len: u64::from(n),
                            max: u64::from(MAX_CAPABILITIES),
                            offset,
                        });
                    }
                    let mut caps = Vec::new();
                    for _ in 0..n {
                        caps.push(r.get_counted_string()?);
                    }
                    cfg.capabilities = caps;
                }
                SUB_UUID => {
                    let mut uuid = [0u8; 16];
                    r.get_buffer(&mut uuid)?;
                    cfg.uuid = Some(uuid);
                }
                _ => return Err(Error::UnknownConfigSubsection { name: sub }),
            }
        }
        Ok(cfg)
    }
}

/// Reads the `0x07` byte (error [`Error::ConfigurationMissing`] if absent) and the record.
pub fn read_configuration(r: &mut QemuFileReader) -> Result<Configuration, Error> {
    let offset = r.bytes_read();
    let found = r.get_u8()?;
    if found != QEMU_VM_CONFIGURATION {
        return Err(Error::ConfigurationMissing { found, offset });
    }
    Configuration::read_from(r)
}

/// QEMU's subsection detection (`vmstate_subsection_load`): if the next bytes are `0x05`, a
/// length of at least `len(parent)+1` and a name starting with `parent`, returns the name
/// without consuming anything. Returns None at end of stream or when the subsection is not
/// addressed to `parent`.
pub(crate) fn peek_subsection_name(
    r: &mut QemuFileReader,
    parent: &str,
) -> Result<Option<String>, Error> {
    if r.is_eof()? {
        return Ok(None);
    }
    let head = match r.peek(2) {
        Ok(h) => [h[0], h[1]],
        Err(Error::UnexpectedEof { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if head[0] != QEMU_VM_SUBSECTION {
        return Ok(None);
    }
    let len = usize::from(head[1]);
    if len < parent.len() + 1 {
        return Ok(None);
    }
    let name = match r.peek(2 + len) {
        Ok(b) => &b[2..],
        Err(Error::UnexpectedEof { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !name.starts_with(parent.as_bytes()) {
        return Ok(None);
    }
    match std::str::from_utf8(name) {
        Ok(s) => Ok(Some(s.to_owned())),
        Err(_) => Err(Error::InvalidUtf8 {
            offset: r.bytes_read() + 2,
        }),
    }
}
