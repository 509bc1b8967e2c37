//! Multifd compression (QEMU 7.2 `multifd-compression` zlib / zstd, spec §3.12): the payload
//! of a packet with pages is one chunk of a compressed stream that lives as long as the
//! channel.
//!
//! ```text
//! channel i, whole migration:  [deflate or zstd stream ..............................]
//!   packet #k payload:          pages p0 p1 … pn (each TPS bytes) compressed, then a flush
//!                               (zlib: Z_NO_FLUSH for p0..pn-1, Z_SYNC_FLUSH after pn;
//!                                zstd: ZSTD_e_continue, then ZSTD_e_flush)
//!   header.next_packet_size  =  the compressed bytes of this packet (≤ 1 MiB, QEMU's buffer)
//!   header.flags bits 1..3   =  1 zlib, 2 zstd — set only on packets that carry pages
//! ```
//!
//! The stream is never reset: a packet can only be decoded after every earlier packet of its
//! channel, and a flush makes each packet end on a byte boundary with all its input decodable,
//! so the receiver turns exactly `normal_pages × TPS` bytes out of exactly `next_packet_size`
//! bytes in. The zlib stream has the zlib header (QEMU uses `deflateInit`/`inflateInit`); the
//! zstd stream is one frame that is never ended.
//!
//! The receiver decodes page by page straight into the destination page
//! ([`Decompressor::decompress_page`]) and never allocates by a size from the wire: the page
//! count is bounded by the header checks (≤ 128), the compressed size by
//! [`MULTIFD_COMPRESSED_MAX`], and the zstd window by [`ZSTD_WINDOW_LOG_MAX`]. A packet that
//! inflates to fewer or more bytes than its pages, a stream that ends, or bytes left over after
//! the last page are [`CodecError`]s.

use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};
use zstd::stream::raw::{Decoder, Encoder, InBuffer, Operation, OutBuffer};
use zstd::zstd_safe::DParameter;

use crate::multifd::MULTIFD_FLAG_COMPRESSION_MASK;

/// Compression bits of a zlib packet.
pub const MULTIFD_FLAG_ZLIB: u32 = 1 << 1;
/// Compression bits of a zstd packet.
pub const MULTIFD_FLAG_ZSTD: u32 = 2 << 1;
/// Largest compressed payload of one packet: QEMU 7.2's per-channel buffer, twice the
/// 512 KiB of pages (a sender whose output does not fit fails, as QEMU's does).
pub const MULTIFD_COMPRESSED_MAX: usize = 2 * 512 * 1024;
/// Largest zstd window the receiver accepts: 2^25 = 32 MiB, what zstd's level 20 (the
/// highest `multifd-zstd-level` QEMU 7.2 and livemig allow) uses. A frame asking for more
/// would make the decoder allocate it (the fuzzer found a 96 MiB request under zstd's own
/// 2^27 default), so it is refused.
pub const ZSTD_WINDOW_LOG_MAX: i32 = 25;

/// The compression method of a channel and its level, as set by the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Pages are sent as they are.
    #[default]
    None,
    /// zlib at `multifd-zlib-level` (0–9).
    Zlib(u8),
    /// zstd at `multifd-zstd-level` (0–20; 0 is zstd's default level).
    Zstd(u8),
}

impl Compression {
    /// The compression bits its packets carry in `flags` (0 for none).
    pub fn flag(self) -> u32 {
        match self {
            Self::None => 0,
            Self::Zlib(_) => MULTIFD_FLAG_ZLIB,
            Self::Zstd(_) => MULTIFD_FLAG_ZSTD,
        }
    }

    /// Checks the compression bits of a packet with pages against this channel's method
    /// (QEMU: "flags received %x flags expected %x").
    pub fn check_flags(self, flags: u32) -> Result<(), CodecError> {
        let received = flags & MULTIFD_FLAG_COMPRESSION_MASK;
        if received != self.flag() {
            return Err(CodecError::WrongMethod {
                received,
                expected: self.flag(),
            });
        }
        Ok(())
    }
}

/// Failures of multifd compression and decompression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The packet's compression bits are not this channel's method.
    #[error("multifd packet compression flags {received:#x}, expected {expected:#x}")]
    WrongMethod {
        /// Bits received.
        received: u32,
        /// Bits of the local `multifd-compression`.
        expected: u32,
    },
    /// The level is out of the codec's range.
    #[error("multifd {codec} level {level} is out of range")]
    Level {
        /// `zlib` or `zstd`.
        codec: &'static str,
        /// The level asked for.
        level: u8,
    },
    /// The codec library could not set up its stream.
    #[error("multifd {codec} stream setup failed: {reason}")]
    Setup {
        /// `zlib` or `zstd`.
        codec: &'static str,
        /// The library's message.
        reason: String,
    },
    /// A packet's compressed size exceeds [`MULTIFD_COMPRESSED_MAX`].
    #[error("multifd compressed packet of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Size sent or announced.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The buffer for the compressed bytes could not be allocated.
    #[error("cannot allocate {0} bytes for a multifd compressed packet")]
    OutOfMemory(usize),
    /// The library reported corrupt data or an internal failure.
    #[error("multifd {codec} stream is corrupt: {reason}")]
    Corrupt {
        /// `zlib` or `zstd`.
        codec: &'static str,
        /// The library's message.
        reason: String,
    },
    /// The zlib stream was ended (`Z_STREAM_END`) by the sender.
    #[error("multifd zlib stream ended in the middle of the migration")]
    StreamEnded,
    /// The packet's bytes ran out before its pages were complete.
    #[error("multifd packet decompresses to {got} bytes of page {page}, expected {expected}")]
    ShortPage {
        /// Index of the page in the packet.
        page: usize,
        /// Bytes produced.
        got: usize,
        /// Page size.
        expected: usize,
    },
    /// Bytes of the packet are left, or decode to data, after its last page.
    #[error("multifd packet has {0} bytes left after its last page")]
    TrailingData(usize),
}

fn zstd_error(codec: &'static str, e: std::io::Error) -> CodecError {
    CodecError::Corrupt {
        codec,
        reason: e.to_string(),
    }
}

/// The sending half of a channel's stream.
pub enum Compressor {
    /// A deflate stream with the zlib header.
    Zlib(Box<Compress>),
    /// One zstd frame.
    Zstd(Box<Encoder<'static>>),
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Zlib(_) => "Compressor::Zlib",
            Self::Zstd(_) => "Compressor::Zstd",
        })
    }
}

impl Compressor {
    /// The stream for `method`; `None` when pages travel uncompressed.
    pub fn new(method: Compression) -> Result<Option<Self>, CodecError> {
        Ok(Some(match method {
            Compression::None => return Ok(None),
            Compression::Zlib(level) if level <= 9 => Self::Zlib(Box::new(Compress::new(
                flate2::Compression::new(u32::from(level)),
                true,
            ))),
            Compression::Zlib(level) => {
                return Err(CodecError::Level {
                    codec: "zlib",
                    level,
                })
            }
            Compression::Zstd(level) if level <= 20 => {
                Self::Zstd(Box::new(Encoder::new(i32::from(level)).map_err(|e| {
                    CodecError::Setup {
                        codec: "zstd",
                        reason: e.to_string(),
                    }
                })?))
            }
            Compression::Zstd(level) => {
                return Err(CodecError::Level {
                    codec: "zstd",
                    level,
                })
            }
        }))
    }

    /// The compression bits of its packets.
    pub fn flag(&self) -> u32 {
        match self {
            Self::Zlib(_) => MULTIFD_FLAG_ZLIB,
            Self::Zstd(_) => MULTIFD_FLAG_ZSTD,
        }
    }

    /// Compresses `pages` (in packet order) as one packet into `out`, which is cleared first;
    /// ends with the stream flush. More than [`MULTIFD_COMPRESSED_MAX`] bytes is an error.
    pub fn compress(&mut self, pages: &[&[u8]], out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.clear();
        if out.capacity() < MULTIFD_COMPRESSED_MAX {
            out.try_reserve_exact(MULTIFD_COMPRESSED_MAX)
                .map_err(|_| CodecError::OutOfMemory(MULTIFD_COMPRESSED_MAX))?;
        }
        match self {
            Self::Zlib(z) => zlib_compress(z, pages, out)?,
            Self::Zstd(z) => zstd_compress(z, pages, out)?,
        }
        if out.len() > MULTIFD_COMPRESSED_MAX {
            return Err(too_large(out.len()));
        }
        Ok(())
    }
}

fn too_large(size: usize) -> CodecError {
    CodecError::TooLarge {
        size,
        max: MULTIFD_COMPRESSED_MAX,
    }
}

/// Deflates into the spare capacity of `out` (`compress_vec` never grows it).
fn zlib_compress(z: &mut Compress, pages: &[&[u8]], out: &mut Vec<u8>) -> Result<(), CodecError> {
    for (i, page) in pages.iter().enumerate() {
        let flush = if i + 1 == pages.len() {
            FlushCompress::Sync
        } else {
            FlushCompress::None
        };
        let mut input = *page;
        loop {
            let (before_in, before_out) = (z.total_in(), out.len());
            z.compress_vec(input, out, flush)
                .map_err(|e| CodecError::Corrupt {
                    codec: "zlib",
                    reason: e.to_string(),
                })?;
            let read = (z.total_in() - before_in) as usize;
            input = &input[read..];
            let spare = out.capacity() - out.len();
            // zlib: a flush is complete when deflate returns with output space left.
            if input.is_empty() && (flush == FlushCompress::None || spare > 0) {
                break;
            }
            if spare == 0 || (read == 0 && out.len() == before_out) {
                return Err(too_large(out.len() + 1));
            }
        }
    }
    Ok(())
}

fn zstd_compress(
    z: &mut Encoder<'static>,
    pages: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let full = || too_large(MULTIFD_COMPRESSED_MAX + 1);
    let mut dst = OutBuffer::around(out);
    for page in pages {
        let mut src = InBuffer::around(page);
        while src.pos() < page.len() {
            if dst.pos() >= MULTIFD_COMPRESSED_MAX {
                return Err(full());
            }
            z.run(&mut src, &mut dst)
                .map_err(|e| zstd_error("zstd", e))?;
        }
    }
    // ZSTD_e_flush: keep calling until nothing is left in the stream's buffers.
    loop {
        if dst.pos() >= MULTIFD_COMPRESSED_MAX {
            return Err(full());
        }
        if z.flush(&mut dst).map_err(|e| zstd_error("zstd", e))? == 0 {
            return Ok(());
        }
    }
}

/// The receiving half of a channel's stream.
pub enum Decompressor {
    /// An inflate stream expecting the zlib header.
    Zlib(Box<Decompress>),
    /// One zstd frame.
    Zstd(Box<Decoder<'static>>),
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Zlib(_) => "Decompressor::Zlib",
            Self::Zstd(_) => "Decompressor::Zstd",
        })
    }
}

impl Decompressor {
    /// The stream for `method`; `None` when pages travel uncompressed (levels do not matter
    /// to the receiver).
    pub fn new(method: Compression) -> Result<Option<Self>, CodecError> {
        Ok(Some(match method {
            Compression::None => return Ok(None),
            Compression::Zlib(_) => Self::Zlib(Box::new(Decompress::new(true))),
            Compression::Zstd(_) => {
                let setup = |e: std::io::Error| CodecError::Setup {
                    codec: "zstd",
                    reason: e.to_string(),
                };
                let mut d = Decoder::new().map_err(setup)?;
                d.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX as u32))
                    .map_err(setup)?;
                Self::Zstd(Box::new(d))
            }
        }))
    }

    /// Decodes page number `index` of a packet whose compressed bytes are `input`, from
    /// `input[*pos..]` into `page` (exactly `page.len()` bytes), advancing `*pos`. After the
    /// last page call [`finish_packet`](Self::finish_packet).
    pub fn decompress_page(
        &mut self,
        input: &[u8],
        pos: &mut usize,
        index: usize,
        page: &mut [u8],
    ) -> Result<(), CodecError> {
        let mut filled = 0;
        while filled < page.len() {
            let (read, wrote) = self.step(&input[*pos..], &mut page[filled..])?;
            *pos += read;
            filled += wrote;
            if read == 0 && wrote == 0 {
                return Err(CodecError::ShortPage {
                    page: index,
                    got: filled,
                    expected: page.len(),
                });
            }
        }
        Ok(())
    }

    /// Checks that the packet's bytes after its last page decode to nothing (the flush) and
    /// are all consumed, so the next packet starts where QEMU's sender started it.
    pub fn finish_packet(&mut self, input: &[u8], pos: &mut usize) -> Result<(), CodecError> {
        let mut probe = [0u8; 1];
        while *pos < input.len() {
            let (read, wrote) = self.step(&input[*pos..], &mut probe)?;
            *pos += read;
            if wrote != 0 || read == 0 {
                return Err(CodecError::TrailingData(input.len() - *pos + read));
            }
        }
        // zstd may hold decoded bytes it has not handed out yet: they belong to no page.
        if let Self::Zstd(_) = self {
            let (_, wrote) = self.step(&[], &mut probe)?;
            if wrote != 0 {
                return Err(CodecError::TrailingData(0));
            }
        }
        Ok(())
    }

    /// One library call: bytes read, bytes written.
    fn step(&mut self, input: &[u8], output: &mut [u8]) -> Result<(usize, usize), CodecError> {
        match self {
            Self::Zlib(z) => {
                let (in0, out0) = (z.total_in(), z.total_out());
                let status = z
                    .decompress(input, output, FlushDecompress::None)
                    .map_err(|e| CodecError::Corrupt {
                        codec: "zlib",
                        reason: e.to_string(),
                    })?;
                if status == Status::StreamEnd {
                    return Err(CodecError::StreamEnded);
                }
                Ok((
                    (z.total_in() - in0) as usize,
                    (z.total_out() - out0) as usize,
                ))
            }
            Self::Zstd(z) => {
                let mut src = InBuffer::around(input);
                let mut dst = OutBuffer::around(output);
                z.run(&mut src, &mut dst)
                    .map_err(|e| zstd_error("zstd", e))?;
                Ok((src.pos(), dst.pos()))
            }
        }
    }
}

/// Decodes a whole packet into `pages` (each one page long): the receiver's loop, for tests
/// and tools that hold the pages in memory.
pub fn decompress_packet(
    d: &mut Decompressor,
    input: &[u8],
    pages: &mut [&mut [u8]],
) -> Result<(), CodecError> {
    let mut pos = 0;
    for (i, page) in pages.iter_mut().enumerate() {
        d.decompress_page(input, &mut pos, i, page)?;
    }
    d.finish_packet(input, &mut pos)
}

#[cfg(test)]
#[path = "multifd_codec_tests.rs"]
mod tests;
