//! The sequential walk over a whole stream.
//!
//! ```text
//! be32 "QEVM"  be32 3  [0x07 configuration]
//! { 0x08 command | 0x01/0x02/0x03 live section | 0x04 FULL section }   ; each section: body + footer
//! 0x00                                                                ; EOF
//! [0x06 be32 len json]                                                ; vmdescription
//! ```
//!
//! The input may be a pipe, so the walk never seeks. Live sections (`ram`, `block`) carry
//! self-delimiting record streams and are parsed as they arrive, so gigabytes of RAM pass
//! through with constant memory. FULL device bodies are not self-delimiting: their schema is
//! the vmdescription JSON at the very end of the stream. At the first FULL section the rest
//! of the stream (device state plus trailer, ~100 KiB for a PC) is therefore buffered —
//! capped by [`MAX_TAIL`] — the trailer is located at its end, and the devices are then
//! decoded with it (module `tail`).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use savevm::record::{
    read_footer, read_header, read_record, read_vmdesc, Configuration, Record, SectionHeader,
    QEMU_VM_CONFIGURATION, QEMU_VM_SECTION_FOOTER,
};
use serde_json::Value as Json;

use crate::block::BlockWalker;
use crate::error::AnalyzeError;
use crate::extract::Extractor;
use crate::limits::{Capped, Limits, SectionSummary};
use crate::ram::RamWalker;
use crate::report::{
    CommandInfo, ConfigurationInfo, DeviceReport, Report, SectionInfo, SectionKind, Truncated,
};
use crate::source::Source;

pub use crate::limits::MAX_TAIL;

/// Result of a walk: the report and the raw vmdescription JSON, if any.
pub struct Walked {
    /// The report.
    pub report: Report,
    /// The JSON trailer bytes as found in the stream.
    pub vmdesc: Option<Vec<u8>>,
}

/// Header fields shared by START and FULL sections (PART/END inherit them by id).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub idstr: String,
    pub instance_id: u32,
    pub version: u32,
}

/// State of one walk. Everything that grows with the input is a [`Capped`] list or a
/// summary bounded by [`Limits`].
pub(crate) struct Walker {
    pub report: Report,
    pub limits: Limits,
    pub sections: Capped<SectionInfo>,
    pub summary: SectionSummary,
    pub commands: Capped<CommandInfo>,
    pub devices: Capped<DeviceReport>,
    pub warnings: Capped<String>,
    pub ids: HashMap<u32, Entry>,
    pub ram: Option<RamWalker>,
    pub block: Option<BlockWalker>,
    pub extract: Option<Extractor>,
    pub vmdesc: Option<Vec<u8>>,
    pub desc: Option<Json>,
    pub desc_index: HashMap<(String, u32), usize>,
    /// In tail mode: position (in the tail) of the EOF byte before the located trailer.
    pub tail_limit: Option<usize>,
    /// Whether sections carry footers (learned from the first section).
    pub footers: Option<bool>,
    ignore_shared: bool,
}

/// Walks the whole stream; writes extracted RAM under `extract_dir` when given.
pub fn walk(
    input: Box<dyn Read + Send>,
    extract_dir: Option<&Path>,
    limits: &Limits,
) -> Result<Walked, AnalyzeError> {
    let extract = extract_dir
        .map(|d| Extractor::new(d, limits.page_chunks))
        .transpose()?;
    let mut w = Walker {
        report: Report::default(),
        limits: limits.clone(),
        sections: Capped::new(limits.sections),
        summary: SectionSummary::new(limits.idstrs),
        commands: Capped::new(limits.commands),
        devices: Capped::new(limits.devices),
        warnings: Capped::new(limits.warnings),
        ids: HashMap::new(),
        ram: None,
        block: None,
        extract,
        vmdesc: None,
        desc: None,
        desc_index: HashMap::new(),
        tail_limit: None,
        footers: None,
        ignore_shared: false,
    };
    let mut src = Source::stream(input);
    w.run(&mut src)?;
    let truncated = Truncated {
        sections: w.sections.omitted,
        section_summary: w.summary.by_idstr,
        other_sections: w.summary.other,
        commands: w.commands.omitted,
        devices: w.devices.omitted,
        warnings: w.warnings.omitted,
    };
    let mut report = w.report;
    report.sections = w.sections.items;
    report.commands = w.commands.items;
    report.devices = w.devices.items;
    report.warnings = w.warnings.items;
    if truncated.sections + truncated.commands + truncated.devices + truncated.warnings > 0 {
        report.truncated = Some(truncated);
    }
    if let Some(ram) = w.ram {
        report.ram = Some(ram.finish());
    }
    if let Some(block) = w.block {
        report.block = Some(block.finish());
    }
    Ok(Walked {
        report,
        vmdesc: w.vmdesc,
    })
}

impl Walker {
    fn run(&mut self, src: &mut Source) -> Result<(), AnalyzeError> {
        read_header(&mut src.r).map_err(|e| AnalyzeError::stream(0, e))?;
        self.report.header.version = savevm::record::QEMU_VM_FILE_VERSION;
        let at = src.offset();
        if !at_eof(src, at)? && peek(src, at)? == QEMU_VM_CONFIGURATION {
            src.r.get_u8().map_err(|e| AnalyzeError::stream(at, e))?;
            let cfg =
                Configuration::read_from(&mut src.r).map_err(|e| AnalyzeError::stream(at, e))?;
            self.ignore_shared = cfg.capabilities.iter().any(|c| c == "x-ignore-shared");
            self.report.header.configuration = Some(ConfigurationInfo {
                machine: cfg.machine,
                capabilities: cfg.capabilities,
                uuid: cfg.uuid.map(|u| format_uuid(&u)),
                target_page_bits: cfg.target_page_bits,
            });
        }
        // `src` may be swapped for the buffered tail at the first FULL section.
        let mut tail_src: Option<Source> = None;
        loop {
            let cur = match tail_src.as_mut() {
                Some(t) => t,
                None => &mut *src,
            };
            let at = cur.offset();
            let record = read_record(&mut cur.r).map_err(|e| AnalyzeError::stream(at, e))?;
            let header_bytes = cur.offset() - at;
            match record {
                Record::Eof => {
                    self.report.totals.eof_offset = Some(at);
                    return self.trailer(cur);
                }
                Record::Command { cmd, data } => self.command(cur, at, cmd, &data)?,
                Record::Section(SectionHeader::Full {
                    section_id,
                    idstr,
                    instance_id,
                    version_id,
                }) => {
                    let entry = Entry {
                        idstr,
                        instance_id,
                        version: version_id,
                    };
                    self.remember(section_id, &entry, at)?;
                    if tail_src.is_none() {
                        tail_src = Some(self.enter_tail(src)?);
                    }
                    let Some(t) = tail_src.as_mut() else {
                        continue;
                    };
                    self.full_section(t, at, header_bytes, section_id, &entry)?;
                }
                Record::Section(SectionHeader::Start {
                    section_id,
                    idstr,
                    instance_id,
                    version_id,
                }) => {
                    let entry = Entry {
                        idstr,
                        instance_id,
                        version: version_id,
                    };
                    self.remember(section_id, &entry, at)?;
                    let info = (SectionKind::Start, section_id, at, header_bytes);
                    self.live_section(cur, info, &entry)?;
                }
                Record::Section(SectionHeader::Part { section_id })
                | Record::Section(SectionHeader::End { section_id }) => {
                    let kind = match record {
                        Record::Section(SectionHeader::Part { .. }) => SectionKind::Part,
                        _ => SectionKind::End,
                    };
                    let entry = self.ids.get(&section_id).cloned().ok_or(
                        AnalyzeError::UnknownSectionId {
                            section_id,
                            offset: at,
                        },
                    )?;
                    self.live_section(cur, (kind, section_id, at, header_bytes), &entry)?;
                }
            }
        }
    }

    /// A START/PART/END body of a live handler, then its footer.
    fn live_section(
        &mut self,
        src: &mut Source,
        (kind, section_id, at, header_bytes): (SectionKind, u32, u64, u64),
        entry: &Entry,
    ) -> Result<(), AnalyzeError> {
        let body_start = src.offset();
        match entry.idstr.as_str() {
            "ram" => {
                let ignore_shared = self.ignore_shared;
                let chunks = self.limits.page_chunks;
                let ram = self
                    .ram
                    .get_or_insert_with(|| RamWalker::new(ignore_shared, chunks));
                ram.read_body(src, self.extract.as_mut(), &mut self.warnings)?;
            }
            "block" => {
                let limits = &self.limits;
                self.block
                    .get_or_insert_with(|| BlockWalker::new(limits.drives, limits.progress))
                    .read_body(src)?
            }
            other => {
                return Err(AnalyzeError::UnsupportedSection {
                    idstr: other.to_string(),
                    offset: at,
                })
            }
        }
        let body_bytes = src.offset() - body_start;
        let footer = self.footer(src, section_id)?;
        self.push_section(
            kind,
            section_id,
            entry,
            at,
            header_bytes,
            body_bytes,
            footer,
        );
        Ok(())
    }

    /// Records the entry of a START/FULL header, within [`Limits::section_ids`].
    fn remember(&mut self, section_id: u32, entry: &Entry, at: u64) -> Result<(), AnalyzeError> {
        if self.ids.len() >= self.limits.section_ids && !self.ids.contains_key(&section_id) {
            return Err(AnalyzeError::TooManySectionIds {
                section_id,
                offset: at,
                max: self.limits.section_ids,
            });
        }
        self.ids.insert(section_id, entry.clone());
        Ok(())
    }

    /// Lists a section record, or counts it in the summary once the list is full.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push_section(
        &mut self,
        kind: SectionKind,
        section_id: u32,
        entry: &Entry,
        offset: u64,
        header_bytes: u64,
        body_bytes: u64,
        footer: bool,
    ) {
        if self.sections.items.len() >= self.limits.sections {
            self.sections.omitted += 1;
            self.summary.add(&entry.idstr, body_bytes);
            return;
        }
        self.sections.push(SectionInfo {
            kind,
            section_id,
            idstr: entry.idstr.clone(),
            instance_id: entry.instance_id,
            version: entry.version,
            offset,
            header_bytes,
            body_bytes,
            footer,
        });
    }

    /// Reads the footer after a body. Streams of machine types <= 2.3 have none; that is
    /// learned from the first section and then required consistently.
    pub(crate) fn footer(
        &mut self,
        src: &mut Source,
        section_id: u32,
    ) -> Result<bool, AnalyzeError> {
        let at = src.offset();
        let present = !at_eof(src, at)? && peek(src, at)? == QEMU_VM_SECTION_FOOTER;
        match (self.footers, present) {
            (_, true) => {
                read_footer(&mut src.r, section_id).map_err(|e| AnalyzeError::stream(at, e))?;
                self.footers = Some(true);
                Ok(true)
            }
            (None, false) => {
                self.footers = Some(false);
                self.warnings
                    .push("sections have no footers (send-section-footer=off)".into());
                Ok(false)
            }
            (Some(false), false) => Ok(false),
            (Some(true), false) => {
                // Let savevm produce the precise error (missing marker or EOF).
                read_footer(&mut src.r, section_id).map_err(|e| AnalyzeError::stream(at, e))?;
                Ok(true)
            }
        }
    }

    fn command(
        &mut self,
        src: &mut Source,
        at: u64,
        cmd: u16,
        data: &[u8],
    ) -> Result<(), AnalyzeError> {
        let be32 = |d: &[u8], i: usize| -> Option<u32> {
            Some(u32::from_be_bytes(d.get(i..i + 4)?.try_into().ok()?))
        };
        let be64 = |d: &[u8], i: usize| -> Option<u64> {
            Some(u64::from_be_bytes(d.get(i..i + 8)?.try_into().ok()?))
        };
        let (name, detail) = match cmd {
            1 => ("OPEN_RETURN_PATH", None),
            2 => ("PING", be32(data, 0).map(|v| format!("value {v}"))),
            3 => (
                "POSTCOPY_ADVISE",
                match (be64(data, 0), be64(data, 8)) {
                    (Some(a), Some(b)) => Some(format!(
                        "postcopy-ram: page size summary {a:#x}, target page size {b}"
                    )),
                    _ => Some("dirty-bitmaps only".to_string()),
                },
            ),
            4 => ("POSTCOPY_LISTEN", None),
            5 => ("POSTCOPY_RUN", None),
            6 => ("POSTCOPY_RAM_DISCARD", Some(discard_detail(data))),
            7 => ("PACKAGED", None),
            8 => ("ENABLE_COLO", None),
            9 => ("POSTCOPY_RESUME", None),
            10 => (
                "RECV_BITMAP",
                data.split_first()
                    .map(|(_, name)| format!("block {:?}", String::from_utf8_lossy(name))),
            ),
            _ => ("UNKNOWN", None),
        };
        let mut detail = detail;
        if cmd == 7 {
            let n = be32(data, 0).unwrap_or(0);
            src.r
                .skip(u64::from(n))
                .map_err(|e| AnalyzeError::stream(at, e))?;
            detail = Some(format!("{n} bytes of nested stream (not analysed)"));
            self.warnings.push(format!(
                "PACKAGED command at offset {at}: nested stream skipped"
            ));
        }
        self.commands.push(CommandInfo {
            offset: at,
            cmd,
            name: name.to_string(),
            len: data.len() as u16,
            detail,
        });
        Ok(())
    }

    /// After EOF: the optional vmdescription trailer and anything after it.
    fn trailer(&mut self, src: &mut Source) -> Result<(), AnalyzeError> {
        let at = src.offset();
        match read_vmdesc(&mut src.r).map_err(|e| AnalyzeError::stream(at, e))? {
            Some(bytes) => {
                self.report.totals.vmdesc_offset = Some(at);
                self.report.totals.vmdesc_size = Some(bytes.len() as u64);
                if self.vmdesc.is_none() {
                    self.set_vmdesc(bytes);
                }
            }
            None => {
                if !at_eof(src, at)? {
                    self.warnings.push(format!(
                        "byte after EOF at offset {at} is not a vmdescription"
                    ));
                }
            }
        }
        let mut trailing = 0u64;
        while !at_eof(src, src.offset())? {
            let chunk = src
                .tail()
                .map(|(t, pos)| t.len().saturating_sub(pos))
                .unwrap_or(1);
            let at = src.offset();
            src.r
                .skip(chunk as u64)
                .map_err(|e| AnalyzeError::stream(at, e))?;
            trailing += chunk as u64;
        }
        if trailing > 0 {
            self.warnings
                .push(format!("{trailing} bytes after the end of the stream"));
        }
        self.report.totals.trailing_bytes = trailing;
        self.report.totals.stream_bytes = src.offset();
        Ok(())
    }

    /// Keeps the trailer bytes and indexes its devices by (name, instance_id).
    pub(crate) fn set_vmdesc(&mut self, bytes: Vec<u8>) {
        match serde_json::from_slice::<Json>(&bytes) {
            Ok(json) => {
                if let Some(devices) = json.get("devices").and_then(Json::as_array) {
                    for (i, d) in devices.iter().enumerate() {
                        let name = d.get("name").and_then(Json::as_str);
                        let inst = d.get("instance_id").and_then(Json::as_u64);
                        if let (Some(name), Some(inst)) = (name, inst) {
                            if let Ok(inst) = u32::try_from(inst) {
                                self.desc_index.insert((name.to_string(), inst), i);
                            }
                        }
                    }
                } else {
                    self.warnings
                        .push("vmdescription has no \"devices\" array".into());
                }
                self.desc = Some(json);
            }
            Err(e) => {
                self.warnings
                    .push(format!("vmdescription is not valid JSON: {e}"));
            }
        }
        self.vmdesc = Some(bytes);
    }
}

pub(crate) fn at_eof(src: &mut Source, at: u64) -> Result<bool, AnalyzeError> {
    src.r.is_eof().map_err(|e| AnalyzeError::stream(at, e))
}

pub(crate) fn peek(src: &mut Source, at: u64) -> Result<u8, AnalyzeError> {
    src.r.peek_u8().map_err(|e| AnalyzeError::stream(at, e))
}

fn format_uuid(u: &[u8; 16]) -> String {
    let h = crate::devices::hex(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `u8 version, u8 len, name, u8 0, (be64 start, be64 length)*`.
fn discard_detail(data: &[u8]) -> String {
    let Some(&len) = data.get(1) else {
        return "truncated".into();
    };
    let name_end = 2 + usize::from(len);
    let Some(name) = data.get(2..name_end) else {
        return "truncated".into();
    };
    let ranges = data.len().saturating_sub(name_end + 1) / 16;
    format!(
        "block {:?}, {ranges} range(s)",
        String::from_utf8_lossy(name)
    )
}
