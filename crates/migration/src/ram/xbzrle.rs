//! Source side of XBZRLE (QEMU's `page_cache.c` + `save_xbzrle_page`): a cache of the last
//! copy of each page sent, and the choice between an XBZRLE delta, a raw page and nothing.
//!
//! ```text
//! cache: entries = xbzrle-cache-size / 4096 (a power of two), slot = (ram_addr / 4096) & (entries - 1)
//!        each slot: ram_addr, age (= dirty-sync-count at the last hit or insert), 4096 bytes
//! hit  : copy the page aside, encode it against the cached copy:
//!        identical -> nothing sent; fits -> XBZRLE record; overflow -> raw page; cache := new copy
//! miss : insert (a slot holding another page is taken only if its age + 2 <= current count),
//!        then send the raw page *from the cached copy*, so what was sent is what is cached
//! ```
//!
//! Like QEMU, XBZRLE is used only after the first complete lap over RAM, the cache is not
//! updated in the last stage (the guest is stopped, nothing will be re-sent), and a zero page
//! sent while XBZRLE is on zeroes its cache slot so a stale copy is never used as a base.

use savevm::ram::{xbzrle, TARGET_PAGE_SIZE};

use crate::error::MigrationError;

const PAGE: usize = TARGET_PAGE_SIZE;
const EMPTY: u64 = u64::MAX;

/// Counters of XBZRLE activity (QEMU's `XBZRLECacheStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XbzrleCounters {
    /// Bytes of XBZRLE records (each record's size minus its 8-byte address word).
    pub bytes: u64,
    /// Cache hits (pages sent as deltas or found unchanged).
    pub pages: u64,
    /// Cache misses.
    pub cache_miss: u64,
    /// Deltas that did not fit in a page (sent raw).
    pub overflow: u64,
    /// Page bytes that were sent as deltas (for the encoding rate).
    pub unencoded: u64,
}

/// `n` copies of `v`, or None when the memory cannot be had.
fn filled<T: Clone>(n: usize, v: T) -> Option<Vec<T>> {
    let mut out = Vec::new();
    out.try_reserve_exact(n).ok()?;
    out.resize(n, v);
    Some(out)
}

/// What to send for a page.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The page is identical to the copy the destination has: send nothing.
    Unchanged,
    /// Send this XBZRLE delta.
    Delta(&'a [u8]),
    /// Send these raw page bytes (a copy taken now).
    Raw(&'a [u8]),
}

/// The source's page cache and encoding buffers.
pub struct XbzrleCache {
    addrs: Vec<u64>,
    ages: Vec<u64>,
    data: Vec<u8>,
    new_page: Box<[u8]>,
    encoded: Box<[u8]>,
    /// Activity counters.
    pub counters: XbzrleCounters,
}

impl XbzrleCache {
    /// A cache of `size` bytes (rounded down to a power of two number of pages, at least one).
    /// The size comes from the operator: memory that cannot be had is an error, never an abort.
    pub fn new(size: u64) -> Result<Self, MigrationError> {
        let entries = (size / PAGE as u64).max(1);
        let entries = 1u64 << (63 - entries.leading_zeros());
        let oom = || MigrationError::OutOfMemory {
            what: "the XBZRLE cache",
            bytes: entries.saturating_mul(PAGE as u64 + 16),
        };
        let entries = usize::try_from(entries).map_err(|_| oom())?;
        let bytes = entries.checked_mul(PAGE).ok_or_else(oom)?;
        Ok(Self {
            addrs: filled(entries, EMPTY).ok_or_else(oom)?,
            ages: filled(entries, 0).ok_or_else(oom)?,
            data: filled(bytes, 0).ok_or_else(oom)?,
            new_page: vec![0; PAGE].into_boxed_slice(),
            encoded: vec![0; PAGE].into_boxed_slice(),
            counters: XbzrleCounters::default(),
        })
    }

    /// Cache size in bytes.
    pub fn size(&self) -> u64 {
        (self.addrs.len() * PAGE) as u64
    }

    fn slot(&self, addr: u64) -> usize {
        ((addr / PAGE as u64) as usize) & (self.addrs.len() - 1)
    }

    fn slot_data(&mut self, slot: usize) -> &mut [u8] {
        &mut self.data[slot * PAGE..(slot + 1) * PAGE]
    }

    /// Forgets a page that was just sent as a zero page.
    pub fn zero_page(&mut self, addr: u64) {
        let slot = self.slot(addr);
        if self.addrs[slot] == addr {
            self.slot_data(slot).fill(0);
        }
    }

    /// Decides how to send the page at global RAM address `addr` whose current bytes are
    /// `page`. `sync_count` is the current dirty-sync count; `last_stage` is true with the guest
    /// stopped.
    pub fn encode(
        &mut self,
        addr: u64,
        page: &[u8],
        sync_count: u64,
        last_stage: bool,
    ) -> Outcome<'_> {
        let slot = self.slot(addr);
        if self.addrs[slot] != addr {
            self.counters.cache_miss += 1;
            let free = self.addrs[slot] == EMPTY || self.ages[slot] + 2 <= sync_count;
            if last_stage || !free {
                self.new_page.copy_from_slice(page);
                return Outcome::Raw(&self.new_page);
            }
            self.addrs[slot] = addr;
            self.ages[slot] = sync_count;
            let data = &mut self.data[slot * PAGE..(slot + 1) * PAGE];
            data.copy_from_slice(page);
            return Outcome::Raw(data);
        }
        self.counters.pages += 1;
        self.ages[slot] = sync_count;
        self.new_page.copy_from_slice(page);
        let old = &self.data[slot * PAGE..(slot + 1) * PAGE];
        match xbzrle::encode(old, &self.new_page, &mut self.encoded) {
            Some(0) => Outcome::Unchanged,
            Some(n) => {
                if !last_stage {
                    self.data[slot * PAGE..(slot + 1) * PAGE].copy_from_slice(&self.new_page);
                }
                // Record size minus the address word: block id aside, u8 flag + be16 + data.
                self.counters.bytes += 3 + n as u64;
                self.counters.unencoded += PAGE as u64;
                Outcome::Delta(&self.encoded[..n])
            }
            None => {
                self.counters.overflow += 1;
                self.counters.bytes += PAGE as u64;
                if !last_stage {
                    self.data[slot * PAGE..(slot + 1) * PAGE].copy_from_slice(&self.new_page);
                }
                Outcome::Raw(&self.new_page)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miss_then_delta_then_unchanged() {
        let mut c = XbzrleCache::new(16 * 4096).unwrap();
        assert_eq!(c.size(), 16 * 4096);
        let mut page = vec![7u8; PAGE];
        assert_eq!(c.encode(0x1000, &page, 1, false), Outcome::Raw(&page[..]));
        assert_eq!(c.counters.cache_miss, 1);
        page[100] = 9;
        let Outcome::Delta(d) = c.encode(0x1000, &page, 2, false) else {
            panic!("no delta")
        };
        let mut applied = vec![7u8; PAGE];
        xbzrle::decode(d, &mut applied).unwrap();
        assert_eq!(applied, page);
        assert_eq!(c.encode(0x1000, &page, 2, false), Outcome::Unchanged);
        assert_eq!(c.counters.pages, 2);
    }

    #[test]
    fn young_slot_is_not_evicted_and_last_stage_does_not_insert() {
        let mut c = XbzrleCache::new(4096).unwrap(); // one slot
        let a = vec![1u8; PAGE];
        let b = vec![2u8; PAGE];
        assert!(matches!(c.encode(0, &a, 5, false), Outcome::Raw(_)));
        // Another address maps to the same slot; the slot is too young to be replaced.
        assert!(matches!(c.encode(4096, &b, 6, false), Outcome::Raw(_)));
        assert!(matches!(c.encode(0, &a, 6, false), Outcome::Unchanged));
        // Old enough: replaced.
        assert!(matches!(c.encode(4096, &b, 9, false), Outcome::Raw(_)));
        assert!(matches!(c.encode(4096, &b, 9, false), Outcome::Unchanged));
        // Last stage never inserts.
        assert!(matches!(c.encode(0, &a, 20, true), Outcome::Raw(_)));
        assert!(matches!(c.encode(4096, &b, 20, false), Outcome::Unchanged));
    }

    #[test]
    fn overflow_sends_raw_and_zero_page_clears_the_copy() {
        let mut c = XbzrleCache::new(4096).unwrap();
        let a: Vec<u8> = (0..PAGE).map(|i| i as u8).collect();
        let b: Vec<u8> = (0..PAGE)
            .map(|i| (i as u8).wrapping_mul(3).wrapping_add(1))
            .collect();
        c.encode(0, &a, 1, false);
        assert_eq!(c.encode(0, &b, 2, false), Outcome::Raw(&b[..]));
        assert_eq!(c.counters.overflow, 1);
        c.zero_page(0);
        let zero = vec![0u8; PAGE];
        assert_eq!(c.encode(0, &zero, 3, false), Outcome::Unchanged);
    }

    #[test]
    fn an_absurd_cache_size_is_an_error_not_an_abort() {
        for size in [1u64 << 62, u64::MAX] {
            match XbzrleCache::new(size) {
                Err(MigrationError::OutOfMemory { what, .. }) => assert!(what.contains("XBZRLE")),
                Err(e) => panic!("unexpected error {e}"),
                Ok(_) => panic!("{size} bytes were allocated"),
            }
        }
    }
}
