//! The crate-wide error type.
//!
//! Every failure of the stream layer, the record grammar, the RAM/block record codecs and the
//! VMState engine is a variant of [`Error`], so callers can match on *which* check failed.
//! Offsets are stream offsets (bytes from the start of the stream as seen by the reader) where
//! they help to locate a corrupt byte.
//!
//! `Error` is `Clone` because the stream wrappers latch the first error (like QEMU's
//! `qemu_file_set_error`) and hand out copies of it on every later call; I/O errors are kept in
//! an `Arc` for that reason.

use std::sync::Arc;

/// Errors of the savevm stream format.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The underlying reader or writer failed.
    #[error("I/O error on the migration stream")]
    Io(#[source] Arc<std::io::Error>),
    /// The stream ended before a complete item could be read.
    #[error("unexpected end of the migration stream at offset {offset}")]
    UnexpectedEof {
        /// Offset of the first byte that could not be read.
        offset: u64,
    },
    /// A counted string longer than 255 bytes was to be written.
    #[error("counted string of {len} bytes does not fit in a one-byte length")]
    StringTooLong {
        /// Length of the rejected string.
        len: usize,
    },
    /// A string read from the stream is not valid UTF-8.
    #[error("string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Offset of the string's first byte.
        offset: u64,
    },
    /// A peek asked for more bytes than the reader's buffer can hold.
    #[error("cannot peek {requested} bytes: the read buffer holds {capacity}")]
    PeekTooLarge {
        /// Bytes requested.
        requested: usize,
        /// Buffer capacity.
        capacity: usize,
    },
    /// Bytes to be sent in place lie outside the memory they were taken from.
    #[error("bytes {start}..{end} to send in place lie outside their source of {available} bytes")]
    ExternalRange {
        /// First byte of the range.
        start: usize,
        /// End of the range (exclusive).
        end: usize,
        /// Length of the source.
        available: usize,
    },
    /// The first four bytes are not `QEVM`.
    #[error("not a migration stream (magic {magic:#010x})")]
    NotAMigrationStream {
        /// The be32 found instead of the magic.
        magic: u32,
    },
    /// Stream version 2, which QEMU no longer accepts either.
    #[error("SaveVM v2 format is obsolete")]
    ObsoleteVersion,
    /// A stream version other than 3.
    #[error("unsupported migration stream version {version}")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// The configuration record (`0x07`) was expected but another byte was found.
    #[error("configuration section missing (found byte {found:#04x} at offset {offset})")]
    ConfigurationMissing {
        /// Byte found instead.
        found: u8,
        /// Its offset.
        offset: u64,
    },
    /// A length read from the stream exceeds the cap for that item.
    #[error("{what} length {len} at offset {offset} exceeds the limit of {max}")]
    LengthTooLarge {
        /// What was being read.
        what: &'static str,
        /// Length found on the wire.
        len: u64,
        /// Limit.
        max: u64,
        /// Offset of the length field.
        offset: u64,
    },
    /// A record type byte that is not valid at this point of the stream.
    #[error("unknown savevm section type {byte:#04x} at offset {offset}")]
    UnknownRecordType {
        /// The byte found.
        byte: u8,
        /// Its offset.
        offset: u64,
    },
    /// A section header carries an empty idstr.
    #[error("empty section idstr at offset {offset}")]
    EmptyIdstr {
        /// Offset of the length byte.
        offset: u64,
    },
    /// The byte after a section body is not the footer marker `0x7e`.
    #[error(
        "missing section footer for section {section_id} (found {found:#04x} at offset {offset})"
    )]
    MissingFooter {
        /// Section whose footer was expected.
        section_id: u32,
        /// Byte found instead.
        found: u8,
        /// Its offset.
        offset: u64,
    },
    /// The footer names another section than the one just loaded.
    #[error(
        "mismatched section id in footer: expected {expected}, found {found} at offset {offset}"
    )]
    MismatchedFooter {
        /// Section id expected.
        expected: u32,
        /// Section id found.
        found: u32,
        /// Offset of the be32 id.
        offset: u64,
    },
    /// After the destination's report, something other than livemig's switchover commit.
    #[error("expected the source's switchover commit at offset {offset}")]
    BadCommit {
        /// Offset of the bytes read instead.
        offset: u64,
    },
    /// A command record with an invalid command number.
    #[error("MIG_CMD {cmd:#x} unknown (offset {offset})")]
    InvalidCommand {
        /// Command number found.
        cmd: u16,
        /// Offset of the command number.
        offset: u64,
    },
    /// A fixed-length command with a wrong length.
    #[error("MIG_CMD {cmd} has length {len}, expected {expected}")]
    CommandLength {
        /// Command number.
        cmd: u16,
        /// Length found.
        len: u16,
        /// Length required by the command.
        expected: &'static str,
    },
    /// A subsection of the configuration record that this implementation does not know.
    #[error("unknown configuration subsection \"{name}\"")]
    UnknownConfigSubsection {
        /// Name found.
        name: String,
    },
    /// A RAM record with CONTINUE set although no block was named before on this channel.
    #[error("RAM record at offset {offset} continues a block, but no block was named before")]
    ContinueWithoutBlock {
        /// Offset of the record's address word.
        offset: u64,
    },
    /// A RAM record with an unknown combination of flags.
    #[error("unknown combination of migration flags: {flags:#x} (offset {offset})")]
    UnknownRamFlags {
        /// The flag bits.
        flags: u64,
        /// Offset of the record's address word.
        offset: u64,
    },
    /// A compressed RAM page (7.2 `compress` capability), which is not supported.
    #[error("received an unexpected compressed page at offset {offset}")]
    UnexpectedCompressedPage {
        /// Offset of the record's address word.
        offset: u64,
    },
    /// A RAM block name of zero length.
    #[error("empty RAM block name at offset {offset}")]
    EmptyBlockName {
        /// Offset of the length byte.
        offset: u64,
    },
    /// The MEM_SIZE block list does not add up to the announced total.
    #[error("RAM block \"{block}\" of {length:#x} bytes overshoots the announced total (remaining {remaining:#x})")]
    MemSizeMismatch {
        /// Block whose length overshot.
        block: String,
        /// Its length.
        length: u64,
        /// What was left of the total before it.
        remaining: u64,
    },
    /// An XBZRLE record with an encoding byte other than 0x01.
    #[error("wrong XBZRLE encoding {encoding:#04x} at offset {offset}")]
    XbzrleEncoding {
        /// Encoding byte found.
        encoding: u8,
        /// Its offset.
        offset: u64,
    },
    /// Malformed XBZRLE data.
    #[error("malformed XBZRLE data at input position {position}: {reason}")]
    XbzrleDecode {
        /// Position in the encoded buffer.
        position: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A block-migration record with unknown flags.
    #[error("unknown block migration flags: {flags:#x} (offset {offset})")]
    UnknownBlockFlags {
        /// The flag bits.
        flags: u64,
        /// Offset of the record's be64.
        offset: u64,
    },
    /// The stream carries a newer version of a VMState than we know.
    #[error("{name}: incoming version {version} is too new (we support up to {max})")]
    VersionTooNew {
        /// VMSD name.
        name: String,
        /// Incoming version.
        version: u32,
        /// Our version.
        max: u32,
    },
    /// The stream carries an older version of a VMState than we accept.
    #[error("{name}: incoming version {version} is too old (we need at least {min})")]
    VersionTooOld {
        /// VMSD name.
        name: String,
        /// Incoming version.
        version: u32,
        /// Minimum accepted version.
        min: u32,
    },
    /// A subsection addressed to this VMState that it does not declare.
    #[error("{parent}: unknown subsection \"{name}\"")]
    UnknownSubsection {
        /// Parent VMSD name.
        parent: String,
        /// Subsection name found.
        name: String,
    },
    /// A value lacks a field required by its description.
    #[error("{vmsd}: field \"{field}\" is missing")]
    FieldMissing {
        /// VMSD name (or "value" for a bare getter).
        vmsd: String,
        /// Field name.
        field: String,
    },
    /// A value has the wrong shape for its field.
    #[error("field \"{field}\" should hold {expected}")]
    FieldType {
        /// Field name.
        field: String,
        /// Expected shape.
        expected: &'static str,
    },
    /// An integer value does not fit its field.
    #[error("field \"{field}\" value {value} does not fit its type")]
    ValueOutOfRange {
        /// Field name.
        field: String,
        /// Offending value (as i128 so both signed and unsigned fit).
        value: i128,
    },
    /// A buffer or array of the wrong size.
    #[error("field \"{field}\" has {actual} elements/bytes, expected {expected}")]
    SizeMismatch {
        /// Field name.
        field: String,
        /// Expected size.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// An `equal`/`le` check against the local value failed.
    #[error("field \"{field}\": received {received}, local value {local} ({check})")]
    CheckFailed {
        /// Field name.
        field: String,
        /// Value received.
        received: i128,
        /// Local value.
        local: i128,
        /// Which check ("must be equal", "must be 0 <= x <= local").
        check: &'static str,
    },
    /// A VMState description that cannot be used (e.g. a var-array length field that does not
    /// precede the array).
    #[error("invalid VMState description {vmsd}: {reason}")]
    InvalidDescription {
        /// VMSD name.
        vmsd: String,
        /// What is wrong.
        reason: String,
    },
    /// A malformed qtailq/list element marker.
    #[error("field \"{field}\": bad list marker {marker:#04x} at offset {offset}")]
    BadListMarker {
        /// Field name.
        field: String,
        /// Byte found.
        marker: u8,
        /// Its offset.
        offset: u64,
    },
    /// A postcopy command or page request is malformed.
    #[error("malformed postcopy {what}: {why}")]
    BadPostcopyCommand {
        /// Which message.
        what: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A multifd hello or packet header is malformed.
    #[error("{0}")]
    Multifd(String),
    /// A multifd packet could not be compressed or decompressed.
    #[error(transparent)]
    MultifdCodec(#[from] crate::multifd_codec::CodecError),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
