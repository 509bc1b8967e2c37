//! The device-state part of the stream: from the first FULL section to the end.
//!
//! ```text
//! 0x04 id cstr8 idstr inst ver  body  0x7e id      ; FULL section, body not self-delimiting
//! ...
//! 0x00                                              ; EOF
//! 0x06 be32 N  N bytes JSON                         ; vmdescription: the schema of the bodies
//! ```
//!
//! [`Walker::enter_tail`] buffers everything from the first FULL body to the end of the
//! input (capped by [`Limits::tail`](crate::Limits::tail), allocated fallibly) and locates the trailer by its shape: a `0x00 0x06` pair
//! whose be32 length reaches exactly the end of the stream and whose JSON starts with `{`.
//! Each FULL body is then decoded with its description ([`crate::devices`]); the decode
//! tells where the body ends, and the footer (`0x7e` + the section id) must follow.
//!
//! When there is no usable description (trailer suppressed or truncated stream) or the
//! decode disagrees with the footer, the body end is found by scanning for the footer
//! followed by something that looks like the next record. The device is then reported
//! undecoded, with the reason, instead of failing the whole analysis.

use std::sync::Arc;

use savevm::record::{
    QEMU_VM_COMMAND, QEMU_VM_EOF, QEMU_VM_SECTION_END, QEMU_VM_SECTION_FOOTER,
    QEMU_VM_SECTION_FULL, QEMU_VM_SECTION_PART, QEMU_VM_SECTION_START, QEMU_VM_VMDESCRIPTION,
};

use crate::devices::{decode_device, hex};
use crate::error::AnalyzeError;
use crate::report::{DeviceReport, SectionKind};
use crate::source::Source;
use crate::stream::{at_eof, Entry, Walker};

/// Bytes copied per step while buffering the tail (must not exceed the reader's buffer).
const CHUNK: usize = 32 * 1024;
/// Bytes of an undecoded body shown in the report.
const PREVIEW: usize = 64;

impl Walker {
    /// Buffers the rest of `src` and returns a source over it; locates the trailer.
    pub(crate) fn enter_tail(&mut self, src: &mut Source) -> Result<Source, AnalyzeError> {
        let base = src.offset();
        let mut buf: Vec<u8> = Vec::new();
        let max = self.limits.tail;
        let too_large = || AnalyzeError::TailTooLarge { offset: base, max };
        loop {
            let at = src.offset();
            match src.r.peek(CHUNK) {
                Ok(bytes) => {
                    if (buf.len() + bytes.len()) as u64 > max {
                        return Err(too_large());
                    }
                    buf.try_reserve(bytes.len()).map_err(|_| too_large())?;
                    buf.extend_from_slice(bytes);
                    src.r
                        .skip(CHUNK as u64)
                        .map_err(|e| AnalyzeError::stream(at, e))?;
                }
                Err(savevm::Error::UnexpectedEof { .. }) => {
                    // Fewer than CHUNK bytes left: take them one by one.
                    while !at_eof(src, src.offset())? {
                        let at = src.offset();
                        if buf.len() as u64 >= max {
                            return Err(too_large());
                        }
                        buf.try_reserve(1).map_err(|_| too_large())?;
                        buf.push(src.r.get_u8().map_err(|e| AnalyzeError::stream(at, e))?);
                    }
                    break;
                }
                Err(e) => return Err(AnalyzeError::stream(at, e)),
            }
        }
        if let Some(p) = locate_trailer(&buf) {
            self.tail_limit = Some(p - 1);
            self.set_vmdesc(buf[p + 5..].to_vec());
        }
        Ok(Source::buffered(Arc::from(buf), base))
    }

    /// A FULL section whose header was just read from `src` (in tail mode).
    pub(crate) fn full_section(
        &mut self,
        src: &mut Source,
        at: u64,
        header_bytes: u64,
        section_id: u32,
        entry: &Entry,
    ) -> Result<(), AnalyzeError> {
        let body_offset = src.offset();
        let undelimited = || AnalyzeError::DeviceUndelimited {
            idstr: entry.idstr.clone(),
            offset: body_offset,
        };
        let Some((tail, pos)) = src.tail() else {
            return Err(undelimited());
        };
        let limit = self.tail_limit.unwrap_or(tail.len()).clamp(pos, tail.len());
        let body = &tail[pos..limit];
        let mut device = DeviceReport {
            name: entry.idstr.clone(),
            instance_id: entry.instance_id,
            section_id,
            version: entry.version,
            offset: body_offset,
            body_bytes: 0,
            decoded_bytes: None,
            state: None,
            raw_preview: None,
            error: None,
        };
        let desc = self
            .desc_index
            .get(&(entry.idstr.clone(), entry.instance_id))
            .and_then(|&i| self.desc.as_ref()?.get("devices")?.get(i));
        let mut len = None;
        match desc {
            None if self.desc.is_none() => {
                device.error = Some("no vmdescription to decode with".into());
            }
            None => device.error = Some("device not described in the vmdescription".into()),
            Some(desc) => match decode_device(desc, body) {
                Ok((state, used)) => {
                    let version_ok = desc
                        .get("version")
                        .and_then(|v| v.as_u64())
                        .is_none_or(|v| v == u64::from(entry.version));
                    if !self.ends_here(tail, pos + used, section_id) {
                        device.error = Some(format!(
                            "decoded {used} bytes but no footer for section {section_id} follows"
                        ));
                    } else {
                        if !version_ok {
                            device.error =
                                Some("description version differs from the section's".into());
                        }
                        device.decoded_bytes = Some(used as u64);
                        device.state = Some(state);
                        len = Some(used);
                    }
                }
                Err(e) => {
                    device.error = Some(format!("decoding failed: {e}"));
                }
            },
        }
        let len = match len {
            Some(n) => n,
            None => {
                let n = self
                    .scan_footer(tail, pos, limit, section_id)
                    .ok_or_else(undelimited)?;
                device.raw_preview = Some(hex(&body[..n.min(PREVIEW)]));
                n
            }
        };
        device.body_bytes = len as u64;
        src.r
            .skip(len as u64)
            .map_err(|e| AnalyzeError::stream(body_offset, e))?;
        let footer = self.footer(src, section_id)?;
        self.push_section(
            SectionKind::Full,
            section_id,
            entry,
            at,
            header_bytes,
            len as u64,
            footer,
        );
        self.devices.push(device);
        Ok(())
    }

    /// Whether a body ending at `end` is followed by this section's footer (or, in a stream
    /// without footers, by a plausible next record).
    fn ends_here(&self, t: &[u8], end: usize, section_id: u32) -> bool {
        if self.footers == Some(false) {
            return plausible_record(t, end);
        }
        is_footer(t, end, section_id) && plausible_record(t, end + 5)
    }

    /// Finds the body length by searching the footer; `None` when nothing fits.
    fn scan_footer(&self, t: &[u8], pos: usize, limit: usize, section_id: u32) -> Option<usize> {
        if self.footers == Some(false) {
            // Without footers there is nothing to anchor on but the next record, which is
            // too weak to trust.
            return None;
        }
        (pos..limit)
            .find(|&q| is_footer(t, q, section_id) && plausible_record(t, q + 5))
            .map(|q| q - pos)
    }
}

fn is_footer(t: &[u8], at: usize, section_id: u32) -> bool {
    t.get(at) == Some(&QEMU_VM_SECTION_FOOTER)
        && t.get(at + 1..at + 5) == Some(&section_id.to_be_bytes()[..])
}

/// Whether a record can start at `at`: the end of the data, EOF (followed by the trailer or
/// the end), a section header with a printable idstr, or a command with a valid number.
fn plausible_record(t: &[u8], at: usize) -> bool {
    let Some(&kind) = t.get(at) else {
        return true;
    };
    match kind {
        QEMU_VM_EOF => matches!(t.get(at + 1), None | Some(&QEMU_VM_VMDESCRIPTION)),
        QEMU_VM_SECTION_START | QEMU_VM_SECTION_FULL => {
            let Some(&len) = t.get(at + 5) else {
                return false;
            };
            let name = t.get(at + 6..at + 6 + usize::from(len));
            len > 0
                && name.is_some_and(|n| n.iter().all(|b| b.is_ascii_graphic() || *b == b' '))
                && t.len() >= at + 6 + usize::from(len) + 8
        }
        QEMU_VM_SECTION_PART | QEMU_VM_SECTION_END => t.len() >= at + 5,
        QEMU_VM_COMMAND => t
            .get(at + 1..at + 3)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .is_some_and(|c| (1..=10).contains(&c)),
        _ => false,
    }
}

/// Position of the `0x06` byte of a trailer that ends exactly at the end of `t`, preceded by
/// the EOF byte. The JSON must start with `{`.
pub(crate) fn locate_trailer(t: &[u8]) -> Option<usize> {
    let max = usize::try_from(savevm::record::MAX_VMDESC_LEN).unwrap_or(usize::MAX);
    let lowest = t.len().saturating_sub(max.saturating_add(5)).max(1);
    (lowest..t.len().saturating_sub(5)).rev().find(|&p| {
        t[p] == QEMU_VM_VMDESCRIPTION
            && t[p - 1] == QEMU_VM_EOF
            && t.get(p + 5) == Some(&b'{')
            && u32::from_be_bytes([t[p + 1], t[p + 2], t[p + 3], t[p + 4]]) as usize
                == t.len() - p - 5
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_is_found_only_when_its_length_reaches_the_end() {
        let json = br#"{"devices": []}"#;
        let mut t = vec![0x7e, 0, 0, 0, 1, 0x00, 0x06];
        t.extend_from_slice(&(json.len() as u32).to_be_bytes());
        t.extend_from_slice(json);
        assert_eq!(locate_trailer(&t), Some(6));
        t.push(0);
        assert_eq!(locate_trailer(&t), None);
        assert_eq!(locate_trailer(&[]), None);
        assert_eq!(locate_trailer(&[0, 6, 0, 0, 0]), None);
    }

    #[test]
    fn plausible_records() {
        assert!(plausible_record(&[], 0));
        assert!(plausible_record(&[0], 0));
        assert!(plausible_record(&[0, 6], 0));
        assert!(!plausible_record(&[0, 7], 0));
        let mut full = vec![4, 0, 0, 0, 9, 3, b'a', b'b', b'c'];
        full.extend_from_slice(&[0; 8]);
        assert!(plausible_record(&full, 0));
        full[7] = 0x01;
        assert!(!plausible_record(&full, 0));
        assert!(plausible_record(&[8, 0, 2, 0, 4], 0));
        assert!(!plausible_record(&[8, 0, 12, 0, 0], 0));
        assert!(!plausible_record(&[0x42], 0));
    }
}
