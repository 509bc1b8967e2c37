//! Memory bounds of an analysis.
//!
//! A stream can be arbitrarily long (a pipe that never ends, a file of ten million empty
//! sections), so nothing the walker keeps may grow with the number of records:
//!
//! | kept | in full up to | beyond the limit |
//! | --- | --- | --- |
//! | section records | [`Limits::sections`] | counts and body bytes per idstr ([`IdstrSummary`], at most [`Limits::idstrs`] names, the rest in one "other" bucket) |
//! | command records | [`Limits::commands`] | a count |
//! | decoded devices | [`Limits::devices`] | a count (their sections are in the summary) |
//! | warnings | [`Limits::warnings`] | a count |
//! | block-migration drives / progress records | [`Limits::drives`] / [`Limits::progress`] | chunk counts / a count |
//! | distinct RAM pages (statistics, `--extract` holes) | [`Limits::page_chunks`] chunks of 512 pages per set | a lower bound; extraction writes zero pages explicitly instead of relying on a hole |
//! | live section ids | [`Limits::section_ids`] | an error ([`crate::AnalyzeError::TooManySectionIds`]) |
//! | device-state tail | [`Limits::tail`] bytes | an error ([`crate::AnalyzeError::TailTooLarge`]) |
//!
//! What was cut is recorded in [`crate::report::Truncated`] (`"truncated"` in `--json`) and
//! said in the text summary ("… N more sections summarised").

use std::collections::HashMap;

use crate::report::IdstrSummary;

/// Most bytes buffered from the first FULL section to the end of the stream (the default of
/// [`Limits::tail`]).
pub const MAX_TAIL: u64 = 256 * 1024 * 1024;

/// Limits on what an analysis keeps in detail. The defaults keep a whole real migration
/// (a PC with a few hundred devices and thousands of RAM passes) in detail and stay within
/// a few tens of MiB on any input.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Section records listed one by one.
    pub sections: usize,
    /// Distinct idstrs summarised by name once `sections` is reached.
    pub idstrs: usize,
    /// Command records listed one by one.
    pub commands: usize,
    /// FULL sections whose decoded state is kept.
    pub devices: usize,
    /// Warnings kept.
    pub warnings: usize,
    /// Block-migration drives with their own statistics.
    pub drives: usize,
    /// Block-migration progress records kept.
    pub progress: usize,
    /// 512-page chunks per distinct-page set (64 Ki chunks = 128 GiB of 4 KiB pages).
    pub page_chunks: usize,
    /// Live section ids remembered at once (QEMU numbers its handlers from 0; a PC has a
    /// few hundred).
    pub section_ids: usize,
    /// Bytes buffered from the first FULL section to the end of the stream.
    pub tail: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sections: 10_000,
            idstrs: 256,
            commands: 10_000,
            devices: 4_096,
            warnings: 100,
            drives: 256,
            progress: 1_000,
            page_chunks: 1 << 16,
            section_ids: 65_536,
            tail: MAX_TAIL,
        }
    }
}

/// A list kept up to `cap` items, then only counted.
#[derive(Debug)]
pub(crate) struct Capped<T> {
    pub items: Vec<T>,
    pub omitted: u64,
    cap: usize,
}

impl<T> Capped<T> {
    pub fn new(cap: usize) -> Self {
        Capped {
            items: Vec::new(),
            omitted: 0,
            cap,
        }
    }

    /// Keeps `item` when there is room; returns whether it was kept.
    pub fn push(&mut self, item: T) -> bool {
        if self.items.len() < self.cap {
            self.items.push(item);
            true
        } else {
            self.omitted += 1;
            false
        }
    }
}

/// Per-idstr counts of the sections beyond [`Limits::sections`].
#[derive(Debug)]
pub(crate) struct SectionSummary {
    pub by_idstr: Vec<IdstrSummary>,
    index: HashMap<String, usize>,
    pub other: IdstrSummary,
    cap: usize,
}

impl SectionSummary {
    pub fn new(cap: usize) -> Self {
        SectionSummary {
            by_idstr: Vec::new(),
            index: HashMap::new(),
            other: IdstrSummary::default(),
            cap,
        }
    }

    pub fn add(&mut self, idstr: &str, body_bytes: u64) {
        let s = match self.index.get(idstr) {
            Some(&i) => &mut self.by_idstr[i],
            None if self.by_idstr.len() < self.cap => {
                self.index.insert(idstr.to_string(), self.by_idstr.len());
                self.by_idstr.push(IdstrSummary {
                    idstr: idstr.to_string(),
                    ..Default::default()
                });
                let last = self.by_idstr.len() - 1;
                &mut self.by_idstr[last]
            }
            None => &mut self.other,
        };
        s.sections += 1;
        s.body_bytes += body_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_counts_what_it_drops() {
        let mut c = Capped::new(2);
        assert!(c.push(1) && c.push(2) && !c.push(3));
        assert_eq!((c.items, c.omitted), (vec![1, 2], 1));
    }

    #[test]
    fn summary_buckets_extra_names() {
        let mut s = SectionSummary::new(1);
        s.add("ram", 8);
        s.add("ram", 8);
        s.add("block", 1);
        assert_eq!(s.by_idstr.len(), 1);
        assert_eq!((s.by_idstr[0].sections, s.by_idstr[0].body_bytes), (2, 16));
        assert_eq!((s.other.sections, s.other.body_bytes), (1, 1));
    }
}
