//! [`RamBlock::digest`]: a hash of a block's contents for the `ram-verify` capability.
//!
//! ```text
//! page hash  = BLAKE3(4096 bytes)
//! chunk hash = BLAKE3(page hash ‖ page hash ‖ …)      256 pages (1 MiB), the last may be shorter
//! digest     = BLAKE3(chunk hash ‖ chunk hash ‖ …)
//! ```
//!
//! Built from page hashes so that a postcopy destination, whose guest runs before all of its
//! RAM is there, can compute the same digest from the pages as they arrived
//! ([`digest_of_page_hashes`], kept up to date by `delivered::DeliveredPages`).

use super::RamBlock;
use crate::{Bitmap, PAGE_SIZE};

impl RamBlock {
    /// A hash of the whole block's contents (used for the `ram-verify` capability), see the
    /// module docs; chunks are hashed on all cores.
    ///
    /// Never-populated pages are hashed as the zeros they read as without touching them, which
    /// keeps a sparse guest's digest fast and does not fault in memory (reading a shmem hole
    /// would allocate it). Meant for a paused guest; with vCPUs running the result is some mix of
    /// old and new contents.
    pub fn digest(&self) -> [u8; 32] {
        let populated = self.populated_pages().ok();
        let pages = self.pages();
        let chunks = pages.div_ceil(DIGEST_CHUNK_PAGES) as usize;
        let mut hashes = vec![[0u8; 32]; chunks];
        let zero_chunk = hash_zero_pages(DIGEST_CHUNK_PAGES);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8);
        let per_thread = chunks.div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for (t, part) in hashes.chunks_mut(per_thread).enumerate() {
                let populated = populated.as_ref();
                s.spawn(move || {
                    for (i, h) in part.iter_mut().enumerate() {
                        let chunk = (t * per_thread + i) as u64;
                        *h = self.hash_chunk(chunk, pages, populated, &zero_chunk);
                    }
                });
            }
        });
        let mut top = blake3::Hasher::new();
        for h in &hashes {
            top.update(h);
        }
        *top.finalize().as_bytes()
    }

    /// BLAKE3 of chunk `chunk` (pages never populated hash as zeros without being read).
    fn hash_chunk(
        &self,
        chunk: u64,
        pages: u64,
        populated: Option<&Bitmap>,
        zero_chunk: &[u8; 32],
    ) -> [u8; 32] {
        let first = chunk * DIGEST_CHUNK_PAGES;
        let end = (first + DIGEST_CHUNK_PAGES).min(pages);
        let is_populated = |p: u64| populated.is_none_or(|bm| bm.test(p));
        let full = end - first == DIGEST_CHUNK_PAGES;
        if full && !(first..end).any(is_populated) {
            return *zero_chunk;
        }
        let zero = zero_page_hash();
        let bytes = (*self.memory).as_ref();
        let mut hasher = blake3::Hasher::new();
        for p in first..end {
            if is_populated(p) {
                // A concurrent guest store would only make the digest stale, which callers
                // avoid by pausing the guest first.
                hasher.update(&page_hash(
                    &bytes[(p * PAGE_SIZE) as usize..((p + 1) * PAGE_SIZE) as usize],
                ));
            } else {
                hasher.update(&zero);
            }
        }
        *hasher.finalize().as_bytes()
    }
}

/// Pages per chunk of [`RamBlock::digest`] (1 MiB).
const DIGEST_CHUNK_PAGES: u64 = 256;

/// The chunk hash of `pages` zero pages.
fn hash_zero_pages(pages: u64) -> [u8; 32] {
    let zero = zero_page_hash();
    let mut h = blake3::Hasher::new();
    for _ in 0..pages {
        h.update(&zero);
    }
    *h.finalize().as_bytes()
}

/// The hash of one page's bytes.
pub fn page_hash(page: &[u8]) -> [u8; 32] {
    *blake3::hash(page).as_bytes()
}

/// The hash of a zero page.
pub fn zero_page_hash() -> [u8; 32] {
    page_hash(&[0u8; PAGE_SIZE as usize])
}

/// The block digest of pages with these hashes, in page order: equals [`RamBlock::digest`] of
/// a block holding those pages.
pub fn digest_of_page_hashes(hashes: &[[u8; 32]]) -> [u8; 32] {
    let mut top = blake3::Hasher::new();
    for chunk in hashes.chunks(DIGEST_CHUNK_PAGES as usize) {
        let mut h = blake3::Hasher::new();
        for page in chunk {
            h.update(page);
        }
        top.update(h.finalize().as_bytes());
    }
    *top.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backing, RamBlock};

    #[test]
    fn digest_equals_digest_of_page_hashes() {
        // 300 pages: one full chunk and a short one; some pages never touched.
        let b = RamBlock::new("t", 300 * PAGE_SIZE, Backing::Anonymous).unwrap();
        let mut hashes = vec![zero_page_hash(); 300];
        for p in (0..300).step_by(7) {
            let page = [p as u8 ^ 0x5a; PAGE_SIZE as usize];
            b.write_page(p, &page).unwrap();
            hashes[p as usize] = page_hash(&page);
        }
        assert_eq!(b.digest(), digest_of_page_hashes(&hashes));
        hashes[1] = page_hash(&[1u8; PAGE_SIZE as usize]);
        assert_ne!(b.digest(), digest_of_page_hashes(&hashes));
    }
}
