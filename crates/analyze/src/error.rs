//! The error type of the analyzer.
//!
//! Every variant that concerns the stream carries the byte offset (from the start of the
//! stream) where the problem was found, so a corrupt capture can be inspected with a hex
//! dump at that position.

use std::path::PathBuf;

/// Why analysing a stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnalyzeError {
    /// The savevm layer rejected the bytes at `offset` (bad magic, truncated record, bad
    /// RAM flags, …).
    #[error("malformed migration stream at offset {offset}")]
    Stream {
        /// Offset of the record that could not be parsed.
        offset: u64,
        /// What the savevm parser reported.
        #[source]
        source: Box<savevm::Error>,
    },
    /// A PART/END section or footer names a section id never opened by a START.
    #[error("section id {section_id} at offset {offset} was never started")]
    UnknownSectionId {
        /// The id found.
        section_id: u32,
        /// Offset of the section record.
        offset: u64,
    },
    /// A live section whose body format is not known (e.g. `dirty-bitmap`, vfio).
    #[error("no parser for live section \"{idstr}\" at offset {offset}")]
    UnsupportedSection {
        /// Section name.
        idstr: String,
        /// Offset of the section record.
        offset: u64,
    },
    /// A RAM record refers to a block absent from the MEM_SIZE list.
    #[error("RAM record at offset {offset} names unknown block \"{block}\"")]
    UnknownRamBlock {
        /// Block named by the record.
        block: String,
        /// Offset of the record.
        offset: u64,
    },
    /// A RAM record addresses a page outside its block.
    #[error("RAM record at offset {offset}: page {page:#x} is outside block \"{block}\" of {used_length:#x} bytes")]
    RamOffsetOutOfRange {
        /// Block name.
        block: String,
        /// Page offset inside the block.
        page: u64,
        /// The block's used length.
        used_length: u64,
        /// Offset of the record.
        offset: u64,
    },
    /// A RAM page record arrived before any MEM_SIZE block list.
    #[error("RAM page record at offset {offset} before the block list")]
    RamBeforeBlockList {
        /// Offset of the record.
        offset: u64,
    },
    /// An XBZRLE page could not be decoded.
    #[error("XBZRLE page {page:#x} of block \"{block}\" (record at offset {offset}) is malformed")]
    Xbzrle {
        /// Block name.
        block: String,
        /// Page offset inside the block.
        page: u64,
        /// Offset of the record.
        offset: u64,
        /// Decoder failure.
        #[source]
        source: Box<savevm::Error>,
    },
    /// The part of the stream holding device sections is larger than the analyzer buffers.
    #[error("device-state part of the stream starting at offset {offset} exceeds {max} bytes")]
    TailTooLarge {
        /// Offset of the first FULL section body.
        offset: u64,
        /// Cap in bytes.
        max: u64,
    },
    /// More distinct live section ids were started than [`crate::Limits::section_ids`].
    #[error("section id {section_id} at offset {offset} exceeds the limit of {max} distinct live section ids")]
    TooManySectionIds {
        /// The id that did not fit.
        section_id: u32,
        /// Offset of its header.
        offset: u64,
        /// The limit.
        max: usize,
    },
    /// The end of a FULL section could be found neither with the description nor by its
    /// footer.
    #[error("cannot find the end of device section \"{idstr}\" (body at offset {offset})")]
    DeviceUndelimited {
        /// Section name.
        idstr: String,
        /// Offset of the body.
        offset: u64,
    },
    /// `--desc` was asked but the stream has no VMDESCRIPTION trailer.
    #[error("the stream has no vmdescription trailer")]
    NoVmdesc,
    /// A RAM block name cannot be turned into a file name under the extract directory.
    #[error("RAM block name \"{block}\" cannot be extracted safely")]
    UnsafeBlockName {
        /// The offending name.
        block: String,
    },
    /// Creating or writing an extracted file failed.
    #[error("cannot write extracted RAM file {}", path.display())]
    Extract {
        /// File being written.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the report to the output failed.
    #[error("cannot write the report")]
    Output(#[source] std::io::Error),
}

impl AnalyzeError {
    /// Wraps a savevm error with the offset of the record being parsed.
    pub(crate) fn stream(offset: u64, source: savevm::Error) -> Self {
        AnalyzeError::Stream {
            offset,
            source: Box::new(source),
        }
    }
}
