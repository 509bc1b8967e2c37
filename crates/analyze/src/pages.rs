//! A sparse set of page numbers.
//!
//! RAM block lengths come from the stream, so a dense bitmap sized by `used_length` would be
//! an allocation sized by an unchecked wire value. This set allocates 64-byte chunks (512
//! pages each) only for regions that actually received records, so memory grows with the
//! input, not with what the input claims — and only up to a number of chunks fixed at
//! construction ([`crate::Limits::page_chunks`]). A page that would need one more chunk is
//! not recorded; the set is then *saturated*: [`PageSet::len`] is a lower bound and
//! [`PageSet::may_contain`] answers yes for every page outside the recorded chunks.

use std::collections::HashMap;

const PAGES_PER_CHUNK: u64 = 512;

/// Sparse bitmap of page numbers.
#[derive(Debug, Clone)]
pub struct PageSet {
    chunks: HashMap<u64, [u64; 8]>,
    len: u64,
    max_chunks: usize,
    saturated: bool,
}

impl PageSet {
    /// An empty set that allocates at most `max_chunks` chunks.
    pub fn new(max_chunks: usize) -> PageSet {
        PageSet {
            chunks: HashMap::new(),
            len: 0,
            max_chunks,
            saturated: false,
        }
    }

    /// Inserts `page`; returns true when it was not present and is now recorded.
    pub fn insert(&mut self, page: u64) -> bool {
        let key = page / PAGES_PER_CHUNK;
        if self.chunks.len() >= self.max_chunks && !self.chunks.contains_key(&key) {
            self.saturated = true;
            return false;
        }
        let chunk = self.chunks.entry(key).or_insert([0; 8]);
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

    /// Whether `page` was inserted, or may have been (saturated set).
    pub fn may_contain(&self, page: u64) -> bool {
        self.contains(page)
            || (self.saturated && !self.chunks.contains_key(&(page / PAGES_PER_CHUNK)))
    }

    /// Number of pages recorded (a lower bound when [`saturated`](Self::saturated)).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether some insert was dropped for lack of chunks.
    pub fn saturated(&self) -> bool {
        self.saturated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_and_contains_across_chunks() {
        let mut s = PageSet::new(8);
        assert!(s.insert(0));
        assert!(!s.insert(0));
        assert!(s.insert(513));
        assert!(s.insert(u64::MAX / 4096));
        assert!(s.contains(513) && s.contains(0) && !s.contains(1));
        assert_eq!(s.len(), 3);
        assert!(!s.saturated() && !s.may_contain(1));
    }

    #[test]
    fn saturates_at_the_chunk_limit() {
        let mut s = PageSet::new(1);
        assert!(s.insert(1));
        assert!(!s.insert(512));
        assert!(s.saturated());
        assert!(!s.contains(512) && s.may_contain(512));
        // Inside a recorded chunk the answer stays exact.
        assert!(!s.may_contain(2) && s.may_contain(1));
        assert_eq!(s.len(), 1);
    }
}
