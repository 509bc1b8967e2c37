//! The `ram` live section: page statistics per block and (optionally) extraction.
//!
//! Each START/PART/END body of `ram` is a run of records ending with EOS (spec §3.1):
//!
//! ```text
//! be64 addr_word = page_offset | flags
//!   MEM_SIZE (0x04)  total in the offset bits; per block: cstr8 idstr, be64 used_length,
//!                    [be64 mr_addr iff x-ignore-shared]
//!   ZERO     (0x02)  [cstr8 block] u8 fill
//!   PAGE     (0x08)  [cstr8 block] 4096 bytes
//!   XBZRLE   (0x40)  [cstr8 block] u8 0x01 be16 len, len bytes
//!   EOS      (0x10)  end of this body
//!   CONTINUE (0x20)  modifier: block name omitted, same block as the previous record
//! ```
//!
//! Record headers are parsed by `savevm::ram::RamDecoder` (which enforces CONTINUE rules and
//! length caps); this module resolves block names against the MEM_SIZE list, rejects pages
//! outside a block (as QEMU does: "Illegal RAM offset"), counts pages by kind and feeds the
//! [`Extractor`]. The MEM_SIZE list of an `x-ignore-shared` stream carries an extra be64
//! per block that the generic decoder does not know, so it is parsed here.

use std::collections::HashMap;

use savevm::ram::{
    RamDecoder, RamRecord, MAX_RAM_BLOCKS, RAM_SAVE_FLAG_MEM_SIZE, TARGET_PAGE_MASK,
    TARGET_PAGE_SIZE,
};

use crate::error::AnalyzeError;
use crate::extract::Extractor;
use crate::limits::Capped;
use crate::pages::PageSet;
use crate::report::{RamBlockReport, RamReport};
use crate::source::Source;

const TPS: u64 = TARGET_PAGE_SIZE as u64;

/// Walks `ram` section bodies and accumulates a [`RamReport`].
pub struct RamWalker {
    decoder: RamDecoder,
    report: RamReport,
    index: HashMap<String, usize>,
    current: Option<usize>,
    distinct: Vec<PageSet>,
    max_chunks: usize,
    ignore_shared: bool,
    have_list: bool,
    page: Vec<u8>,
    encoded: Vec<u8>,
}

/// What a record did, for the statistics.
enum Kind {
    Normal,
    Zero(u8),
    Xbzrle(u64),
}

impl RamWalker {
    /// A walker; `ignore_shared` when the configuration announced `x-ignore-shared`;
    /// distinct pages are counted in at most `max_chunks` chunks per block.
    pub fn new(ignore_shared: bool, max_chunks: usize) -> RamWalker {
        RamWalker {
            decoder: RamDecoder::new(),
            report: RamReport::default(),
            index: HashMap::new(),
            current: None,
            distinct: Vec::new(),
            max_chunks,
            ignore_shared,
            have_list: false,
            page: vec![0u8; TARGET_PAGE_SIZE],
            encoded: vec![0u8; TARGET_PAGE_SIZE],
        }
    }

    /// The statistics so far.
    pub fn finish(mut self) -> RamReport {
        for (b, d) in self.report.blocks.iter_mut().zip(&self.distinct) {
            b.distinct_pages = d.len();
            b.distinct_pages_lower_bound = d.saturated();
        }
        self.report
    }

    /// Reads one section body up to and including its EOS record.
    pub fn read_body(
        &mut self,
        src: &mut Source,
        mut extract: Option<&mut Extractor>,
        warnings: &mut Capped<String>,
    ) -> Result<(), AnalyzeError> {
        let body_start = src.offset();
        loop {
            let rec_offset = src.offset();
            if self.ignore_shared && self.next_is_mem_size(src, rec_offset)? {
                let list = read_mem_size_with_addr(src, rec_offset)?;
                self.set_block_list(list, extract.as_deref_mut(), warnings)?;
                continue;
            }
            let record = self
                .decoder
                .read_record(&mut src.r)
                .map_err(|e| AnalyzeError::stream(rec_offset, e))?;
            let (b, page, kind) = match record {
                RamRecord::Eos => break,
                RamRecord::Hook => {
                    self.report.hooks += 1;
                    continue;
                }
                RamRecord::MemSize { total, blocks } => {
                    let list = blocks
                        .into_iter()
                        .map(|b| (b.idstr, b.used_length, None))
                        .collect();
                    self.set_block_list((total, list), extract.as_deref_mut(), warnings)?;
                    continue;
                }
                RamRecord::Zero {
                    block,
                    offset,
                    fill,
                } => {
                    let b = self.resolve(block, offset, rec_offset)?;
                    if let Some(x) = extract.as_deref_mut() {
                        x.zero(b, offset, fill)?;
                    }
                    (b, offset, Kind::Zero(fill))
                }
                RamRecord::Page { block, offset } => {
                    let b = self.resolve(block, offset, rec_offset)?;
                    src.r
                        .get_buffer(&mut self.page)
                        .map_err(|e| AnalyzeError::stream(rec_offset, e))?;
                    if let Some(x) = extract.as_deref_mut() {
                        x.page(b, offset, &self.page)?;
                    }
                    (b, offset, Kind::Normal)
                }
                RamRecord::Xbzrle { block, offset, len } => {
                    let b = self.resolve(block, offset, rec_offset)?;
                    // len <= TARGET_PAGE_SIZE is checked by the decoder.
                    let data = &mut self.encoded[..usize::from(len)];
                    src.r
                        .get_buffer(data)
                        .map_err(|e| AnalyzeError::stream(rec_offset, e))?;
                    let applied = match extract.as_deref_mut() {
                        Some(x) => x.xbzrle(b, offset, data)?,
                        // Without the previous page content the delta cannot be applied;
                        // still check that it is well-formed, over a zero page.
                        None => {
                            self.page.fill(0);
                            savevm::ram::xbzrle::decode(data, &mut self.page)
                        }
                    };
                    if let Err(source) = applied {
                        return Err(AnalyzeError::Xbzrle {
                            block: self.report.blocks[b].idstr.clone(),
                            page: offset,
                            offset: rec_offset,
                            source: Box::new(source),
                        });
                    }
                    (b, offset, Kind::Xbzrle(u64::from(len)))
                }
            };
            let stats = &mut self.report.blocks[b];
            match kind {
                Kind::Normal => stats.normal_pages += 1,
                Kind::Zero(fill) => {
                    stats.zero_pages += 1;
                    if fill != 0 {
                        stats.nonzero_fill_pages += 1;
                    }
                }
                Kind::Xbzrle(len) => {
                    stats.xbzrle_pages += 1;
                    stats.xbzrle_bytes += len;
                }
            }
            stats.wire_bytes += src.offset() - rec_offset;
            self.distinct[b].insert(page / TPS);
        }
        self.report.passes += 1;
        self.report.body_bytes += src.offset() - body_start;
        Ok(())
    }

    fn next_is_mem_size(&mut self, src: &mut Source, at: u64) -> Result<bool, AnalyzeError> {
        let word = src.r.peek(8).map_err(|e| AnalyzeError::stream(at, e))?;
        let word = u64::from_be_bytes([
            word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
        ]);
        Ok(word & !TARGET_PAGE_MASK == RAM_SAVE_FLAG_MEM_SIZE)
    }

    fn set_block_list(
        &mut self,
        (total, list): MemSizeList,
        extract: Option<&mut Extractor>,
        warnings: &mut Capped<String>,
    ) -> Result<(), AnalyzeError> {
        if self.have_list {
            warnings.push("a second MEM_SIZE block list was ignored".to_string());
            return Ok(());
        }
        self.have_list = true;
        self.report.total = total;
        let mut extract = extract;
        for (idstr, used_length, mr_addr) in list {
            if let Some(x) = extract.as_deref_mut() {
                x.add_block(&idstr, used_length)?;
            }
            self.index.insert(idstr.clone(), self.report.blocks.len());
            self.report.blocks.push(RamBlockReport {
                idstr,
                used_length,
                mr_addr,
                ..Default::default()
            });
            self.distinct.push(PageSet::new(self.max_chunks));
        }
        Ok(())
    }

    /// Resolves the record's block (named or CONTINUE) and checks the page is inside it.
    fn resolve(
        &mut self,
        block: Option<String>,
        page: u64,
        offset: u64,
    ) -> Result<usize, AnalyzeError> {
        if !self.have_list {
            return Err(AnalyzeError::RamBeforeBlockList { offset });
        }
        let b = match block {
            Some(name) => match self.index.get(&name) {
                Some(&b) => b,
                None => {
                    return Err(AnalyzeError::UnknownRamBlock {
                        block: name,
                        offset,
                    })
                }
            },
            // The decoder rejects CONTINUE without a named block, and every named block
            // was resolved here first.
            None => self
                .current
                .ok_or(AnalyzeError::RamBeforeBlockList { offset })?,
        };
        self.current = Some(b);
        let info = &self.report.blocks[b];
        if page
            .checked_add(TPS)
            .is_none_or(|end| end > info.used_length)
        {
            return Err(AnalyzeError::RamOffsetOutOfRange {
                block: info.idstr.clone(),
                page,
                used_length: info.used_length,
                offset,
            });
        }
        Ok(b)
    }
}

/// Announced total and (idstr, used_length, mr_addr) per block.
type MemSizeList = (u64, Vec<(String, u64, Option<u64>)>);

/// MEM_SIZE list of an `x-ignore-shared` stream: each block also carries its guest
/// physical base address.
fn read_mem_size_with_addr(src: &mut Source, at: u64) -> Result<MemSizeList, AnalyzeError> {
    let s = |e| AnalyzeError::stream(at, e);
    let total = src.r.get_be64().map_err(s)? & TARGET_PAGE_MASK;
    let mut remaining = total;
    let mut blocks = Vec::new();
    while remaining > 0 {
        if blocks.len() >= MAX_RAM_BLOCKS {
            return Err(s(savevm::Error::LengthTooLarge {
                what: "RAM block list",
                len: blocks.len() as u64 + 1,
                max: MAX_RAM_BLOCKS as u64,
                offset: src.offset(),
            }));
        }
        let name_offset = src.offset();
        let idstr = src.r.get_counted_string().map_err(s)?;
        if idstr.is_empty() {
            return Err(s(savevm::Error::EmptyBlockName {
                offset: name_offset,
            }));
        }
        let used_length = src.r.get_be64().map_err(s)?;
        let mr_addr = src.r.get_be64().map_err(s)?;
        if used_length > remaining {
            return Err(s(savevm::Error::MemSizeMismatch {
                block: idstr,
                length: used_length,
                remaining,
            }));
        }
        remaining -= used_length;
        blocks.push((idstr, used_length, Some(mr_addr)));
    }
    Ok((total, blocks))
}
