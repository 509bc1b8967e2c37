//! The MEM_SIZE block list of the `ram` setup section (spec §3.3).
//!
//! ```text
//! be64  total | MEM_SIZE          ; total = sum of used_length over the listed blocks
//! per block:
//!   cstr8 idstr
//!   be64  used_length
//!   [be64 page_size]              ; postcopy-ram on and the block is a hugepage block
//!   [be64 mr_addr]                ; x-ignore-shared on: guest physical base of the block
//! ```
//!
//! The optional fields are not self-describing: both sides must agree on them
//! ([`MemSizeLayout`] on the receiver, [`BlockExtras`] on the sender). The receiver reads
//! blocks until the running total reaches exactly zero.

use super::{RamBlockInfo, MAX_RAM_BLOCKS, RAM_SAVE_FLAG_MEM_SIZE};
use crate::error::Error;
use crate::qemu_file::{QemuFileReader, QemuFileWriter};

/// Optional per-block fields of a MEM_SIZE list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockExtras {
    /// The block's page size (postcopy-ram with a hugepage block).
    pub page_size: Option<u64>,
    /// The block's guest physical base (x-ignore-shared).
    pub mr_addr: Option<u64>,
}

/// Which optional per-block fields the receiver expects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemSizeLayout {
    /// x-ignore-shared is on: every block carries `mr_addr`.
    pub ignore_shared: bool,
    /// postcopy-ram is on: these (hugepage) blocks carry `page_size`.
    pub hugepage_blocks: Vec<String>,
}

/// Writes the setup block list: be64 `total | MEM_SIZE`, then cstr8 idstr + be64 length per
/// block. No EOS is written (the caller adds hooks/sync then [`put_eos`](super::put_eos)).
pub fn write_mem_size(w: &mut QemuFileWriter, blocks: &[RamBlockInfo]) {
    write_mem_size_ext(w, blocks, &[]);
}

/// Like [`write_mem_size`], with optional fields: `extras[i]` belongs to `blocks[i]`
/// (missing entries mean no optional fields).
pub fn write_mem_size_ext(w: &mut QemuFileWriter, blocks: &[RamBlockInfo], extras: &[BlockExtras]) {
    let total: u64 = blocks.iter().map(|b| b.used_length).sum();
    w.put_be64(total | RAM_SAVE_FLAG_MEM_SIZE);
    for (i, b) in blocks.iter().enumerate() {
        w.put_counted_string(&b.idstr);
        w.put_be64(b.used_length);
        let x = extras.get(i).copied().unwrap_or_default();
        if let Some(ps) = x.page_size {
            w.put_be64(ps);
        }
        if let Some(addr) = x.mr_addr {
            w.put_be64(addr);
        }
    }
}

/// Reads the block list after the address word (`total` = its offset bits).
pub(super) fn read_blocks(
    r: &mut QemuFileReader,
    total: u64,
    layout: &MemSizeLayout,
) -> Result<(Vec<RamBlockInfo>, Vec<BlockExtras>), Error> {
    let mut remaining = total;
    let mut blocks = Vec::new();
    let mut extras = Vec::new();
    while remaining > 0 {
        if blocks.len() >= MAX_RAM_BLOCKS {
            return Err(Error::LengthTooLarge {
                what: "RAM block list",
                len: blocks.len() as u64 + 1,
                max: MAX_RAM_BLOCKS as u64,
                offset: r.bytes_read(),
            });
        }
        let offset = r.bytes_read();
        let idstr = r.get_counted_string()?;
        if idstr.is_empty() {
            return Err(Error::EmptyBlockName { offset });
        }
        let used_length = r.get_be64()?;
        let mut x = BlockExtras::default();
        if layout.hugepage_blocks.contains(&idstr) {
            x.page_size = Some(r.get_be64()?);
        }
        if layout.ignore_shared {
            x.mr_addr = Some(r.get_be64()?);
        }
        if used_length > remaining {
            return Err(Error::MemSizeMismatch {
                block: idstr,
                length: used_length,
                remaining,
            });
        }
        remaining -= used_length;
        blocks.push(RamBlockInfo { idstr, used_length });
        extras.push(x);
    }
    Ok((blocks, extras))
}
