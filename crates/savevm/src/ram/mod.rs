//! RAM records of the `ram` live section (spec §3.1–3.3, 3.9, 3.11).
//!
//! Every record starts with a be64 *address word*: the page-aligned offset inside the RAM
//! block ORed with flags in the low 12 bits.
//!
//! | record | layout after the be64 |
//! | --- | --- |
//! | `MEM_SIZE` (0x04) | offset bits = total bytes; then per block: cstr8 idstr, be64 used_length |
//! | `ZERO` (0x02) | [cstr8 block] u8 fill |
//! | `PAGE` (0x08) | [cstr8 block] 4096 raw bytes |
//! | `XBZRLE` (0x40) | [cstr8 block] u8 0x01, be16 len, len bytes |
//! | `EOS` (0x10) | nothing: end of this section body |
//! | `HOOK` (0x80) | nothing (RDMA) |
//!
//! The block name is present iff `CONTINUE` (0x20) is clear. The sender ([`RamEncoder`]) sets
//! CONTINUE when the page belongs to the block of the previous record on this channel; the
//! receiver ([`RamDecoder`]) must fail on CONTINUE when no block was named before.
//!
//! ```text
//! sender                      receiver
//! reset() -> last = none      new() -> last = none
//! page(b0) -> name written    Page{block: Some(b0)}   last = b0
//! page(b0) -> CONTINUE        Page{block: None}       (= b0)
//! page(b1) -> name written    Page{block: Some(b1)}   last = b1
//! ```

mod mem_size;
pub mod xbzrle;

pub use mem_size::{write_mem_size, write_mem_size_ext, BlockExtras, MemSizeLayout};

use std::sync::Arc;

use crate::error::Error;
use crate::qemu_file::{QemuFileReader, QemuFileWriter};

/// Target page size (x86).
pub const TARGET_PAGE_SIZE: usize = 4096;
/// Mask of the flag bits in the address word.
pub const TARGET_PAGE_MASK: u64 = !(TARGET_PAGE_SIZE as u64 - 1);

/// Obsolete, never sent.
pub const RAM_SAVE_FLAG_FULL: u64 = 0x001;
/// Zero page (u8 fill follows).
pub const RAM_SAVE_FLAG_ZERO: u64 = 0x002;
/// Setup block list.
pub const RAM_SAVE_FLAG_MEM_SIZE: u64 = 0x004;
/// Raw page.
pub const RAM_SAVE_FLAG_PAGE: u64 = 0x008;
/// End of section body.
pub const RAM_SAVE_FLAG_EOS: u64 = 0x010;
/// Same block as the previous record: name omitted.
pub const RAM_SAVE_FLAG_CONTINUE: u64 = 0x020;
/// XBZRLE-encoded page.
pub const RAM_SAVE_FLAG_XBZRLE: u64 = 0x040;
/// RDMA hook.
pub const RAM_SAVE_FLAG_HOOK: u64 = 0x080;
/// zlib-compressed page (7.2 `compress` capability; rejected by this implementation).
pub const RAM_SAVE_FLAG_COMPRESS_PAGE: u64 = 0x100;
/// The encoding byte of XBZRLE records.
pub const ENCODING_FLAG_XBZRLE: u8 = 0x01;

/// Cap on the number of blocks in a MEM_SIZE list.
pub const MAX_RAM_BLOCKS: usize = 4096;

/// A RAM block as announced in the setup record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBlockInfo {
    /// Block name, e.g. `pc.ram`.
    pub idstr: String,
    /// Bytes in use.
    pub used_length: u64,
}

/// True when every byte of `buf` is zero (QEMU's `buffer_is_zero`), checked 16 bytes at a
/// time; used by senders to choose a ZERO record.
pub fn buffer_is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(16);
    for c in &mut chunks {
        let mut a = [0u8; 16];
        a.copy_from_slice(c);
        if u128::from_ne_bytes(a) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// Writes an EOS record.
pub fn put_eos(w: &mut QemuFileWriter) {
    w.put_be64(RAM_SAVE_FLAG_EOS);
}

/// Sender side: writes page records and tracks the last block for CONTINUE.
///
/// Blocks are identified by a caller-chosen small index (e.g. the position in the RAM block
/// list) so that the per-page "same block?" test is an integer compare; the name is only
/// written when the index changes. Call [`reset`](Self::reset) whenever QEMU resets
/// `last_sent_block` (migration start, RAM list change, ...).
#[derive(Debug, Default, Clone)]
pub struct RamEncoder {
    last_sent_block: Option<usize>,
}

impl RamEncoder {
    /// A fresh encoder: the first record names its block.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the last block: the next record names its block.
    pub fn reset(&mut self) {
        self.last_sent_block = None;
    }

    /// The index of the block named or continued by the last record.
    pub fn last_sent_block(&self) -> Option<usize> {
        self.last_sent_block
    }

    #[inline]
    fn header(&mut self, w: &mut QemuFileWriter, block: usize, name: &str, addr: u64) {
        if self.last_sent_block == Some(block) {
            w.put_be64(addr | RAM_SAVE_FLAG_CONTINUE);
        } else {
            w.put_be64(addr);
            w.put_counted_string(name);
            self.last_sent_block = Some(block);
        }
    }

    /// Writes a PAGE record with `data` (must be [`TARGET_PAGE_SIZE`] bytes; `offset` must be
    /// page aligned).
    pub fn put_page(
        &mut self,
        w: &mut QemuFileWriter,
        block_index: usize,
        block_name: &str,
        offset: u64,
        data: &[u8],
    ) {
        debug_assert_eq!(data.len(), TARGET_PAGE_SIZE);
        debug_assert_eq!(offset & !TARGET_PAGE_MASK, 0);
        self.header(w, block_index, block_name, offset | RAM_SAVE_FLAG_PAGE);
        w.put_buffer(data);
    }

    /// Like [`put_page`](Self::put_page), but the page is bytes `offset..offset + 4096` of
    /// `block_memory` (the block's memory), queued in place with
    /// [`QemuFileWriter::put_external`] instead of being copied into the buffer.
    pub fn put_page_external<T>(
        &mut self,
        w: &mut QemuFileWriter,
        block_index: usize,
        block_name: &str,
        offset: u64,
        block_memory: &Arc<T>,
    ) where
        T: AsRef<[u8]> + Send + Sync + 'static,
    {
        debug_assert_eq!(offset & !TARGET_PAGE_MASK, 0);
        self.header(w, block_index, block_name, offset | RAM_SAVE_FLAG_PAGE);
        let start = usize::try_from(offset).unwrap_or(usize::MAX - TARGET_PAGE_SIZE);
        w.put_external(block_memory, start..start + TARGET_PAGE_SIZE);
    }

    /// Writes a ZERO record with fill byte 0.
    pub fn put_zero(
        &mut self,
        w: &mut QemuFileWriter,
        block_index: usize,
        block_name: &str,
        offset: u64,
    ) {
        debug_assert_eq!(offset & !TARGET_PAGE_MASK, 0);
        self.header(w, block_index, block_name, offset | RAM_SAVE_FLAG_ZERO);
        w.put_u8(0);
    }

    /// Writes an XBZRLE record with `encoded` (from [`xbzrle::encode`], 1..=4096 bytes).
    pub fn put_xbzrle(
        &mut self,
        w: &mut QemuFileWriter,
        block_index: usize,
        block_name: &str,
        offset: u64,
        encoded: &[u8],
    ) {
        debug_assert!(encoded.len() <= TARGET_PAGE_SIZE);
        debug_assert_eq!(offset & !TARGET_PAGE_MASK, 0);
        self.header(w, block_index, block_name, offset | RAM_SAVE_FLAG_XBZRLE);
        w.put_u8(ENCODING_FLAG_XBZRLE);
        w.put_be16(encoded.len() as u16);
        w.put_buffer(encoded);
    }

    /// Writes an EOS record (same as [`put_eos`]).
    pub fn put_eos(&self, w: &mut QemuFileWriter) {
        put_eos(w);
    }
}

/// One decoded RAM record header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RamRecord {
    /// The setup block list; `total` equals the sum of the lengths.
    MemSize {
        /// Announced total.
        total: u64,
        /// Blocks in stream order.
        blocks: Vec<RamBlockInfo>,
    },
    /// A page filled with `fill`.
    Zero {
        /// Block name when on the wire; None = same block as the previous record.
        block: Option<String>,
        /// Page-aligned offset in the block.
        offset: u64,
        /// Fill byte (0 from QEMU).
        fill: u8,
    },
    /// A raw page; the caller must read [`TARGET_PAGE_SIZE`] bytes next.
    Page {
        /// Block name when on the wire; None = same block as the previous record.
        block: Option<String>,
        /// Page-aligned offset in the block.
        offset: u64,
    },
    /// An XBZRLE page; the caller must read `len` bytes next and decode them in place.
    Xbzrle {
        /// Block name when on the wire; None = same block as the previous record.
        block: Option<String>,
        /// Page-aligned offset in the block.
        offset: u64,
        /// Encoded length (1..=4096).
        len: u16,
    },
    /// End of the section body.
    Eos,
    /// RDMA hook (no payload).
    Hook,
}

/// Receiver side: decodes record headers and checks CONTINUE.
#[derive(Debug, Default, Clone)]
pub struct RamDecoder {
    last_block: Option<String>,
    layout: MemSizeLayout,
    extras: Vec<BlockExtras>,
}

impl RamDecoder {
    /// A fresh decoder: CONTINUE is invalid until a block is named.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets which optional per-block fields the receiver expects in MEM_SIZE lists (both
    /// sides must agree; see [`MemSizeLayout`]). The default expects none.
    pub fn set_mem_size_layout(&mut self, layout: MemSizeLayout) {
        self.layout = layout;
    }

    /// Optional per-block fields of the last MEM_SIZE record, one per block (all `None`
    /// with the default layout).
    pub fn mem_size_extras(&self) -> &[BlockExtras] {
        &self.extras
    }

    /// Forgets the last block (a following CONTINUE record is then an error).
    pub fn reset(&mut self) {
        self.last_block = None;
    }

    /// The block named most recently on this channel.
    pub fn last_block(&self) -> Option<&str> {
        self.last_block.as_deref()
    }

    fn block(
        &mut self,
        r: &mut QemuFileReader,
        flags: u64,
        rec: u64,
    ) -> Result<Option<String>, Error> {
        if flags & RAM_SAVE_FLAG_CONTINUE != 0 {
            if self.last_block.is_none() {
                return Err(Error::ContinueWithoutBlock { offset: rec });
            }
            return Ok(None);
        }
        let offset = r.bytes_read();
        let name = r.get_counted_string()?;
        if name.is_empty() {
            return Err(Error::EmptyBlockName { offset });
        }
        match &mut self.last_block {
            Some(last) => {
                last.clear();
                last.push_str(&name);
            }
            None => self.last_block = Some(name.clone()),
        }
        Ok(Some(name))
    }

    /// Reads one record header (and the small fixed parts of its body: zero fill byte,
    /// XBZRLE encoding byte and length, the MEM_SIZE block list).
    pub fn read_record(&mut self, r: &mut QemuFileReader) -> Result<RamRecord, Error> {
        let rec = r.bytes_read();
        let word = r.get_be64()?;
        let flags = word & !TARGET_PAGE_MASK;
        let addr = word & TARGET_PAGE_MASK;
        match flags & !RAM_SAVE_FLAG_CONTINUE {
            RAM_SAVE_FLAG_MEM_SIZE => {
                let (blocks, extras) = mem_size::read_blocks(r, addr, &self.layout)?;
                self.extras = extras;
                Ok(RamRecord::MemSize {
                    total: addr,
                    blocks,
                })
            }
            RAM_SAVE_FLAG_ZERO => {
                let block = self.block(r, flags, rec)?;
                let fill = r.get_u8()?;
                Ok(RamRecord::Zero {
                    block,
                    offset: addr,
                    fill,
                })
            }
            RAM_SAVE_FLAG_PAGE => {
                let block = self.block(r, flags, rec)?;
                Ok(RamRecord::Page {
                    block,
                    offset: addr,
                })
            }
            RAM_SAVE_FLAG_XBZRLE => {
                let block = self.block(r, flags, rec)?;
                let enc_offset = r.bytes_read();
                let encoding = r.get_u8()?;
                if encoding != ENCODING_FLAG_XBZRLE {
                    return Err(Error::XbzrleEncoding {
                        encoding,
                        offset: enc_offset,
                    });
                }
                let len_offset = r.bytes_read();
                let len = r.get_be16()?;
                if usize::from(len) > TARGET_PAGE_SIZE {
                    return Err(Error::LengthTooLarge {
                        what: "XBZRLE data",
                        len: u64::from(len),
                        max: TARGET_PAGE_SIZE as u64,
                        offset: len_offset,
                    });
                }
                Ok(RamRecord::Xbzrle {
                    block,
                    offset: addr,
                    len,
                })
            }
            RAM_SAVE_FLAG_EOS => Ok(RamRecord::Eos),
            RAM_SAVE_FLAG_COMPRESS_PAGE => Err(Error::UnexpectedCompressedPage { offset: rec }),
            f if f & RAM_SAVE_FLAG_HOOK != 0 => Ok(RamRecord::Hook),
            _ => Err(Error::UnknownRamFlags { flags, offset: rec }),
        }
    }
}
