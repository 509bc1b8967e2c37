//! Non-trivial initial RAM content for tests and demos: pseudo-random (incompressible) or
//! text-like (words of a 512-word vocabulary separated by spaces, which zlib and zstd at level
//! 1 compress about 3:1, like text files in a page cache).

use guest_ram::{GuestRam, PAGE_SIZE};

use super::state::splitmix64;
use super::Error;

/// What the data pages of [`fill_initial`] hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FillPattern {
    /// Pseudo-random bytes: nothing to compress.
    #[default]
    Random,
    /// Pseudo-random words: compresses about 3:1.
    Text,
}

/// Words of the text pattern: 2 to 10 lowercase letters each.
fn vocabulary(seed: u64) -> Vec<Vec<u8>> {
    (0..512u64)
        .map(|i| {
            let mut x = splitmix64(seed ^ splitmix64(i ^ 0x7e47));
            let len = 2 + (x % 9) as usize;
            (0..len)
                .map(|_| {
                    x = splitmix64(x);
                    b'a' + (x % 26) as u8
                })
                .collect()
        })
        .collect()
}

/// One page of words chosen by `page_seed`.
fn text_page(words: &[Vec<u8>], page_seed: u64, buf: &mut [u8]) {
    let mut x = page_seed;
    let mut at = 0;
    while at < buf.len() {
        x = splitmix64(x);
        let w = &words[(x % words.len() as u64) as usize];
        for &c in w.iter().chain(b" ") {
            if at == buf.len() {
                break;
            }
            buf[at] = c;
            at += 1;
        }
    }
}

/// Fills the first `pattern_bytes` bytes (rounded up to whole pages) of block `block` with
/// data of `pattern` derived from `seed`, leaving one page in four zero: pages with
/// `page % 8 == 3` are never touched (so they stay unpopulated) and pages with `page % 8 == 7`
/// are explicitly written with zeros (populated zero pages). Written as a VMM (loader) write.
pub fn fill_initial(
    ram: &GuestRam,
    block: usize,
    pattern_bytes: u64,
    seed: u64,
    pattern: FillPattern,
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
    let words = match pattern {
        FillPattern::Text => vocabulary(seed),
        FillPattern::Random => Vec::new(),
    };
    for page in 0..pages {
        match page % 8 {
            3 => continue,
            7 => buf.fill(0),
            _ if pattern == FillPattern::Text => {
                text_page(&words, splitmix64(seed ^ splitmix64(page)), &mut buf);
            }
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
