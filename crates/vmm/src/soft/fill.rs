//! Non-trivial initial RAM content for tests and demos.

use guest_ram::{GuestRam, PAGE_SIZE};

use super::state::splitmix64;
use super::Error;

/// Fills the first `pattern_bytes` bytes (rounded up to whole pages) of block `block` with
/// pseudo-random data derived from `seed`, leaving one page in four zero: pages with
/// `page % 8 == 3` are never touched (so they stay unpopulated) and pages with `page % 8 == 7`
/// are explicitly written with zeros (populated zero pages). Written as a VMM (loader) write.
pub fn fill_initial(
    ram: &GuestRam,
    block: usize,
    pattern_bytes: u64,
    seed: u64,
) -> Result<(), Error> {
    let blocks = ram.blocks();
    let b = blocks.get(block).ok_or(Error::NoSuchBlock {
        block,
        blocks: blocks.len(),
    })?;
    let pages = pattern_bytes.div_ceil(PAGE_SIZE);
    if pages > b.pages() {
        return Err(Error::Ram(guest_ram::Error::RangeOutOfBounds {
            idstr: b.idstr().to_owned(),
            offset: 0,
            len: pages * PAGE_SIZE,
            size: b.len(),
        }));
    }
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    for page in 0..pages {
        match page % 8 {
            3 => continue,
            7 => buf.fill(0),
            _ => {
                let page_seed = splitmix64(seed ^ splitmix64(page));
                for (k, chunk) in buf.chunks_exact_mut(8).enumerate() {
                    chunk.copy_from_slice(&splitmix64(page_seed ^ k as u64).to_le_bytes());
                }
            }
        }
        b.write_page(page, &buf)?;
    }
    Ok(())
}
