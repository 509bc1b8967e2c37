//! A sparse set of page numbers.
//!
//! RAM block lengths come from the stream, so a dense bitmap sized by `used_length` would be
//! an allocation sized by an unchecked wire value. This set allocates 64-byte chunks (512
//! pages each) only for regions that actually received records, so memory grows with the
//! input, not with what the input claims.

use std::collections::HashMap;

const PAGES_PER_CHUNK: u64 = 512;

/// Sparse bitmap of page numbers.
#[derive(Debug, Default, Clone)]
pub struct PageSet {
    chunks: HashMap<u64, [u64; 8]>,
    len: u64,
}

impl PageSet {
    /// Inserts `page`; returns true when it was not present.
    pub fn insert(&mut self, page: u64) -> bool {
        let chunk = self.chunks.entry(page / PAGES_PER_CHUNK).or_insert([0; 8]);
        let bit = page % PAGES_PER_CHUNK;
        let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
        let fresh = chunk[word] & mask == 0;
        chunk[word] |= mask;
        if fresh {
            self.len += 1;
        }
        fresh
    }

    /// Whether `page` is present.
    pub fn contains(&self, page: u64) -> bool {
        let bit = page % PAGES_PER_CHUNK;
        self.chunks
            .get(&(page / PAGES_PER_CHUNK))
            .is_some_and(|c| c[(bit / 64) as usize] & (1u64 << (bit % 64)) != 0)
    }

    /// Number of pages present.
    pub fn len(&self) -> u64 {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_and_contains_across_chunks() {
        let mut s = PageSet::default();
        assert!(s.insert(0));
        assert!(!s.insert(0));
        assert!(s.insert(513));
        assert!(s.insert(u64::MAX / 4096));
        assert!(s.contains(513) && s.contains(0) && !s.contains(1));
        assert_eq!(s.len(), 3);
    }
}
