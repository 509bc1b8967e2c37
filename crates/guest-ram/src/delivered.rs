//! [`DeliveredPages`]: the page hashes of a postcopy destination's RAM *as the source delivered
//! it*, for `ram-verify`.
//!
//! A postcopy destination runs its guest before all pages are there, and the guest then writes
//! RAM, so hashing RAM at the end proves nothing. Instead: when the guest is about to start,
//! every page that is present is hashed (what it holds came from the source; missing pages
//! count as zero pages until they arrive), then each page placed afterwards is hashed from the
//! buffer that is placed. [`DeliveredPages::digest`] combines them exactly like
//! [`RamBlock::digest`](crate::RamBlock::digest), so the source's digest of its final RAM must
//! equal it.
//!
//! The table costs 32 bytes per guest page (8 MiB per GiB of guest RAM), allocated fallibly.

use std::sync::Mutex;

use crate::block::{digest_of_page_hashes, page_hash, zero_page_hash};
use crate::{Error, GuestRam};

/// Page hashes per block of a postcopy destination (see the module docs).
#[derive(Debug)]
pub struct DeliveredPages {
    blocks: Mutex<Vec<Vec<[u8; 32]>>>,
}

impl DeliveredPages {
    /// Hashes every present page of `ram` (guest stopped; pages that are not present are not
    /// touched, which on userfaultfd-registered memory would wait for them).
    pub fn snapshot(ram: &GuestRam) -> Result<DeliveredPages, Error> {
        let zero = zero_page_hash();
        let mut blocks = Vec::new();
        for b in ram.blocks() {
            let populated = b.populated_pages()?;
            let n =
                usize::try_from(b.pages()).map_err(|_| Error::DigestTable { pages: b.pages() })?;
            let mut hashes = Vec::new();
            hashes
                .try_reserve_exact(n)
                .map_err(|_| Error::DigestTable { pages: b.pages() })?;
            for p in 0..b.pages() {
                hashes.push(if populated.test(p) {
                    page_hash(b.page(p)?)
                } else {
                    zero
                });
            }
            blocks.push(hashes);
        }
        Ok(DeliveredPages {
            blocks: Mutex::new(blocks),
        })
    }

    /// Records the bytes placed at `page` of block `block` (out-of-range pages are ignored:
    /// placement checked them already).
    pub fn record(&self, block: usize, page: u64, data: &[u8]) {
        self.set(block, page, page_hash(data));
    }

    /// Records a zero page placed at `page` of block `block`.
    pub fn record_zero(&self, block: usize, page: u64) {
        self.set(block, page, zero_page_hash());
    }

    fn set(&self, block: usize, page: u64, h: [u8; 32]) {
        let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = blocks
            .get_mut(block)
            .and_then(|b| b.get_mut(usize::try_from(page).ok()?))
        {
            *slot = h;
        }
    }

    /// The digest of block `block` as delivered.
    pub fn digest(&self, block: usize) -> Option<[u8; 32]> {
        let blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        blocks.get(block).map(|h| digest_of_page_hashes(h))
    }
}
