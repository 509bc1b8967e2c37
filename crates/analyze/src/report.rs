//! The analysis result: everything `livemig analyze` knows about a stream, as plain
//! serde-serializable data (the `--json` output). The text summary is rendered from it by
//! [`crate::text`].

use serde::Serialize;

use crate::devices::StructValue;

/// The full report on one stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Magic, version and configuration record.
    pub header: HeaderInfo,
    /// Section records in stream order, up to [`crate::Limits::sections`]; the rest are
    /// summarised in [`Report::truncated`].
    pub sections: Vec<SectionInfo>,
    /// Command records in stream order, up to [`crate::Limits::commands`].
    pub commands: Vec<CommandInfo>,
    /// The `ram` live section, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram: Option<RamReport>,
    /// The `block` live section, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<BlockReport>,
    /// Non-live device sections (FULL), decoded with the stream's vmdescription.
    pub devices: Vec<DeviceReport>,
    /// Offsets and sizes of the stream as a whole.
    pub totals: Totals,
    /// Oddities that did not stop the analysis.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What the [`crate::Limits`] cut from the detail; absent when nothing was cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncated>,
}

impl Report {
    /// Section records in the stream, listed or summarised.
    pub fn section_count(&self) -> u64 {
        self.sections.len() as u64 + self.truncated.as_ref().map_or(0, |t| t.sections)
    }
}

/// Records seen but not kept in detail because a [`crate::Limits`] was reached.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Truncated {
    /// Section records not listed in [`Report::sections`].
    pub sections: u64,
    /// Those sections per idstr, in order of first appearance.
    pub section_summary: Vec<IdstrSummary>,
    /// Sections whose idstr did not fit in `section_summary`.
    #[serde(skip_serializing_if = "IdstrSummary::is_empty")]
    pub other_sections: IdstrSummary,
    /// Command records not listed.
    pub commands: u64,
    /// FULL sections not decoded into [`Report::devices`].
    pub devices: u64,
    /// Warnings not listed.
    pub warnings: u64,
}

/// How many sections of one idstr were summarised and their body bytes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdstrSummary {
    /// Entry name (empty for the "other" bucket).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub idstr: String,
    /// Section records.
    pub sections: u64,
    /// Bytes of their bodies.
    pub body_bytes: u64,
}

impl IdstrSummary {
    /// True when it counts nothing.
    pub fn is_empty(&self) -> bool {
        self.sections == 0
    }
}

/// Stream header and configuration record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderInfo {
    /// Stream version (3).
    pub version: u32,
    /// The configuration record, when the sender wrote one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configuration: Option<ConfigurationInfo>,
}

/// Contents of the `0x07` configuration record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigurationInfo {
    /// Resolved machine type, e.g. `pc-i440fx-7.2`.
    pub machine: String,
    /// `configuration/capabilities`: validated capabilities that were on.
    pub capabilities: Vec<String>,
    /// `configuration/uuid`, formatted 8-4-4-4-12.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// `configuration/target-page-bits`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_page_bits: Option<u32>,
}

/// The four section record types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SectionKind {
    /// `0x01`: first chunk of a live section.
    #[serde(rename = "START")]
    Start,
    /// `0x02`: middle chunk.
    #[serde(rename = "PART")]
    Part,
    /// `0x03`: last chunk.
    #[serde(rename = "END")]
    End,
    /// `0x04`: complete non-live device state.
    #[serde(rename = "FULL")]
    Full,
}

impl SectionKind {
    /// The upper-case name used by QEMU and in the report.
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Start => "START",
            SectionKind::Part => "PART",
            SectionKind::End => "END",
            SectionKind::Full => "FULL",
        }
    }
}

/// One section record.
#[derive(Debug, Clone, Serialize)]
pub struct SectionInfo {
    /// Record type.
    pub kind: SectionKind,
    /// Section id from the header.
    pub section_id: u32,
    /// Entry name (from the START header for PART/END).
    pub idstr: String,
    /// Instance id (from the START header for PART/END).
    pub instance_id: u32,
    /// Version id (from the START header for PART/END).
    pub version: u32,
    /// Offset of the record's type byte.
    pub offset: u64,
    /// Bytes of the header including the type byte.
    pub header_bytes: u64,
    /// Bytes of the body (between header and footer).
    pub body_bytes: u64,
    /// Whether a `0x7e` footer with the right id followed the body.
    pub footer: bool,
}

/// One command record.
#[derive(Debug, Clone, Serialize)]
pub struct CommandInfo {
    /// Offset of the `0x08` byte.
    pub offset: u64,
    /// Command number.
    pub cmd: u16,
    /// QEMU's name for it (`PING`, `OPEN_RETURN_PATH`, …).
    pub name: String,
    /// Payload length.
    pub len: u16,
    /// Decoded payload, when meaningful (ping value, advise sizes, package length, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The `ram` section as a whole.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RamReport {
    /// Total announced in the MEM_SIZE record.
    pub total: u64,
    /// Blocks in MEM_SIZE order, with per-block page statistics.
    pub blocks: Vec<RamBlockReport>,
    /// EOS records seen (one per START/PART/END body: the number of passes over RAM
    /// sections, setup included).
    pub passes: u64,
    /// Bytes of all `ram` section bodies.
    pub body_bytes: u64,
    /// RDMA hook records.
    pub hooks: u64,
}

/// One RAM block.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RamBlockReport {
    /// Block name (`pc.ram`, `/rom@etc/acpi/tables`).
    pub idstr: String,
    /// Used length announced in MEM_SIZE.
    pub used_length: u64,
    /// Guest physical base (`x-ignore-shared` streams only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mr_addr: Option<u64>,
    /// PAGE records (raw 4 KiB pages).
    pub normal_pages: u64,
    /// ZERO records.
    pub zero_pages: u64,
    /// ZERO records whose fill byte was not 0.
    pub nonzero_fill_pages: u64,
    /// XBZRLE records.
    pub xbzrle_pages: u64,
    /// Encoded XBZRLE payload bytes.
    pub xbzrle_bytes: u64,
    /// All stream bytes of this block's records (headers, names and payloads).
    pub wire_bytes: u64,
    /// Distinct pages that received at least one record.
    pub distinct_pages: u64,
    /// `distinct_pages` is only a lower bound: the page set reached
    /// [`crate::Limits::page_chunks`].
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub distinct_pages_lower_bound: bool,
}

impl RamBlockReport {
    /// Records of all kinds for this block.
    pub fn records(&self) -> u64 {
        self.normal_pages + self.zero_pages + self.xbzrle_pages
    }
}

/// The `block` (block migration) section as a whole.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BlockReport {
    /// Per drive statistics, in order of first appearance.
    pub devices: Vec<BlockDeviceReport>,
    /// Progress percentages in stream order, up to [`crate::Limits::progress`].
    pub progress: Vec<u64>,
    /// Progress records beyond the limit.
    #[serde(skip_serializing_if = "is_zero")]
    pub progress_omitted: u64,
    /// Chunks of drives beyond [`crate::Limits::drives`] (not in `devices`).
    #[serde(skip_serializing_if = "is_zero")]
    pub untracked_chunks: u64,
    /// EOS records.
    pub eos: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Block-migration records of one drive.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BlockDeviceReport {
    /// Drive name (e.g. `drv0`).
    pub name: String,
    /// Data chunks (1 MiB payload each).
    pub data_chunks: u64,
    /// Zero chunks (no payload).
    pub zero_chunks: u64,
    /// Payload bytes.
    pub data_bytes: u64,
    /// Highest sector + chunk seen: a lower bound of the device size in sectors.
    pub sectors_covered: u64,
}

/// A FULL section and its decoded state.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// Section idstr.
    pub name: String,
    /// Instance id.
    pub instance_id: u32,
    /// Section id.
    pub section_id: u32,
    /// Version in the section header.
    pub version: u32,
    /// Offset of the body.
    pub offset: u64,
    /// Bytes of the body.
    pub body_bytes: u64,
    /// Bytes consumed by decoding the described fields (equals `body_bytes` when the
    /// description matched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoded_bytes: Option<u64>,
    /// Decoded state (fields and subsections), when a description was available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<StructValue>,
    /// Hex of the first bytes of the body when it could not be decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_preview: Option<String>,
    /// Why decoding failed or was not attempted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Offsets and sizes of the stream as a whole.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Offset of the `0x00` EOF byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eof_offset: Option<u64>,
    /// Offset of the `0x06` vmdescription byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmdesc_offset: Option<u64>,
    /// Bytes of the vmdescription JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmdesc_size: Option<u64>,
    /// Bytes in the whole stream.
    pub stream_bytes: u64,
    /// Bytes after the trailer (QEMU writes none).
    pub trailing_bytes: u64,
}
