//! [`RamBlock::digest`]: a hash of a block's contents for the `ram-verify` capability.

use super::RamBlock;
use crate::{Bitmap, PAGE_SIZE};

impl RamBlock {
    /// A hash of the whole block's contents (used for the `ram-verify` capability): BLAKE3 over
    /// the BLAKE3 hashes of consecutive 1 MiB chunks, computed on all cores.
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
        let zero = [0u8; PAGE_SIZE as usize];
        let mut hasher = blake3::Hasher::new();
        let mut p = first;
        while p < end {
            if !is_populated(p) {
                hasher.update(&zero);
                p += 1;
                continue;
            }
            // Hash runs of populated pages in one call: BLAKE3 hashes long inputs with SIMD.
            let run_end = (p..end).find(|&q| !is_populated(q)).unwrap_or(end);
            // A concurrent guest store would only make the digest stale, which callers avoid by
            // pausing the guest first.
            let bytes = (*self.memory).as_ref();
            hasher.update(&bytes[(p * PAGE_SIZE) as usize..(run_end * PAGE_SIZE) as usize]);
            p = run_end;
        }
        *hasher.finalize().as_bytes()
    }
}

/// Pages per chunk of [`RamBlock::digest`] (1 MiB).
const DIGEST_CHUNK_PAGES: u64 = 256;

/// BLAKE3 of `pages` zero pages.
fn hash_zero_pages(pages: u64) -> [u8; 32] {
    let zero = [0u8; PAGE_SIZE as usize];
    let mut h = blake3::Hasher::new();
    for _ in 0..pages {
        h.update(&zero);
    }
    *h.finalize().as_bytes()
}
