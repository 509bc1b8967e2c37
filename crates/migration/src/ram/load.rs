//! Destination side of RAM migration: applies RAM records to local guest memory after
//! validating block names, sizes and offsets.

mod postcopy;
mod recover;
mod request_clock;

use std::sync::Arc;

use guest_ram::GuestRam;
use savevm::qemu_file::QemuFileReader;
use savevm::ram::{xbzrle, BlockExtras, MemSizeLayout, RamDecoder, RamRecord, TARGET_PAGE_SIZE};

use super::multifd::{self, MultifdReceiver};
use super::shared;
use crate::capabilities::Capability;
use crate::error::MigrationError;
use crate::session::IncomingSession;

/// Destination-side RAM state for one incoming stream.
pub struct RamLoader {
    ram: Arc<GuestRam>,
    multifd: Option<MultifdReceiver>,
    decoder: RamDecoder,
    current: Option<usize>,
    page_buf: Box<[u8]>,
    xbzrle_buf: Box<[u8]>,
    /// `x-ignore-shared` is on for this stream.
    ignore_shared: bool,
    /// Postcopy ADVISE accepted.
    advised: bool,
    /// Postcopy LISTEN: pages are placed through userfaultfd.
    placer: Option<postcopy::Placer>,
    /// Postcopy with `ram-verify`: the pages as delivered.
    delivered: Option<Arc<guest_ram::DeliveredPages>>,
    /// Postcopy: the pages this destination holds (recovery's received-pages bitmaps).
    received: Vec<guest_ram::Bitmap>,
    /// This stream's statistics (postcopy request latency).
    counters: Arc<crate::counters::RamCounters>,
}

impl RamLoader {
    /// A loader writing into `ram`.
    pub fn new(ram: Arc<GuestRam>) -> Self {
        Self {
            ram,
            multifd: None,
            decoder: RamDecoder::new(),
            current: None,
            page_buf: vec![0u8; TARGET_PAGE_SIZE].into_boxed_slice(),
            xbzrle_buf: vec![0u8; TARGET_PAGE_SIZE].into_boxed_slice(),
            ignore_shared: false,
            advised: false,
            placer: None,
            delivered: None,
            received: Vec::new(),
            counters: Arc::default(),
        }
    }

    /// Prepares for a new stream: forgets the previous block and starts the multifd receivers
    /// if the incoming side accepted multifd channels.
    pub fn setup(&mut self, s: &mut IncomingSession) -> Result<(), MigrationError> {
        super::handover::take_over(&self.ram, s)?;
        self.counters = s.runtime().ram.clone();
        self.decoder = RamDecoder::new();
        self.ignore_shared = s.settings().has(Capability::XIgnoreShared);
        self.decoder.set_mem_size_layout(MemSizeLayout {
            ignore_shared: self.ignore_shared,
            hugepage_blocks: Vec::new(),
        });
        self.current = None;
        let readers = s.take_multifd_channels();
        self.multifd = if readers.is_empty() {
            None
        } else {
            Some(multifd::start_receiver(
                self.ram.clone(),
                readers,
                multifd::compression(&s.settings().params),
                s.runtime().cancel_token().clone(),
                self.ignore_shared,
            )?)
        };
        Ok(())
    }

    /// Ends the multifd receivers after the stream.
    pub fn finish(&mut self) {
        self.multifd = None;
        self.reset_postcopy();
    }

    fn check_mem_size(
        &self,
        blocks: &[savevm::ram::RamBlockInfo],
        extras: &[BlockExtras],
    ) -> Result<(), MigrationError> {
        let bases = shared::block_bases(&self.ram);
        for (i, info) in blocks.iter().enumerate() {
            let idx = self
                .ram
                .block_index(&info.idstr)
                .ok_or_else(|| MigrationError::UnknownRamBlock(info.idstr.clone()))?;
            let local = &self.ram.blocks()[idx];
            if local.len() != info.used_length {
                return Err(MigrationError::RamBlockSize {
                    name: info.idstr.clone(),
                    remote: info.used_length,
                    local: local.len(),
                });
            }
            if !shared::is_ignored(local, self.ignore_shared) {
                continue;
            }
            if !local.is_reachable_from_other_processes() {
                return Err(MigrationError::SharedBlockNotReachable(info.idstr.clone()));
            }
            let remote = extras.get(i).and_then(|x| x.mr_addr);
            let local_addr = bases[idx];
            if let Some(remote) = remote.filter(|&a| a != local_addr) {
                return Err(MigrationError::SharedBlockAddress {
                    block: info.idstr.clone(),
                    remote,
                    local: local_addr,
                });
            }
        }
        Ok(())
    }

    /// Resolves the block of a record and checks the offset; returns (block, page).
    fn target(
        &mut self,
        block: Option<String>,
        offset: u64,
        r: &QemuFileReader,
    ) -> Result<(usize, u64), MigrationError> {
        if let Some(name) = block {
            let idx = self
                .ram
                .block_index(&name)
                .ok_or(MigrationError::UnknownRamBlock(name))?;
            self.current = Some(idx);
        }
        let idx = self
            .current
            .ok_or(MigrationError::NoRamBlock(r.bytes_read()))?;
        let b = &self.ram.blocks()[idx];
        if shared::is_ignored(b, self.ignore_shared) {
            return Err(MigrationError::IgnoredBlockPage(b.idstr().to_string()));
        }
        if offset >= b.len() {
            return Err(MigrationError::IllegalRamOffset {
                block: b.idstr().to_string(),
                offset,
            });
        }
        Ok((idx, offset / TARGET_PAGE_SIZE as u64))
    }

    /// Loads one section body: records up to and including EOS.
    pub fn load(&mut self, f: &mut QemuFileReader) -> Result<(), MigrationError> {
        if self.placer.is_some() {
            return self.load_placed(f);
        }
        loop {
            match self.decoder.read_record(f)? {
                RamRecord::MemSize { blocks, .. } => {
                    let extras = self.decoder.mem_size_extras().to_vec();
                    self.check_mem_size(&blocks, &extras)?;
                }
                RamRecord::Zero {
                    block,
                    offset,
                    fill,
                } => {
                    let (b, page) = self.target(block, offset, f)?;
                    let blk = &self.ram.blocks()[b];
                    if fill == 0 {
                        blk.zero_page(page)?;
                    } else {
                        self.page_buf.fill(fill);
                        blk.write_page(page, &self.page_buf)?;
                    }
                }
                RamRecord::Page { block, offset } => {
                    let (b, page) = self.target(block, offset, f)?;
                    // Read in place; the destination's vCPUs do not run while RAM is loaded.
                    self.ram.blocks()[b].fill_page(page, |p| f.get_buffer(p))??;
                }
                RamRecord::Xbzrle { block, offset, len } => {
                    let (b, page) = self.target(block, offset, f)?;
                    let len = usize::from(len);
                    if len > TARGET_PAGE_SIZE {
                        return Err(MigrationError::UnexpectedRamRecord("oversized XBZRLE page"));
                    }
                    f.get_buffer(&mut self.xbzrle_buf[..len])?;
                    let blk = &self.ram.blocks()[b];
                    blk.copy_page_to(page, &mut self.page_buf)?;
                    xbzrle::decode(&self.xbzrle_buf[..len], &mut self.page_buf)?;
                    blk.write_page(page, &self.page_buf)?;
                }
                RamRecord::Eos => {
                    // Every multifd channel delivered this section's pages (QEMU 7.2: a SYNC
                    // per channel at each EOS).
                    if let Some(m) = &self.multifd {
                        m.sync()?;
                    }
                    return Ok(());
                }
                RamRecord::Hook => return Err(MigrationError::UnexpectedRamRecord("RDMA hook")),
            }
        }
    }
}
