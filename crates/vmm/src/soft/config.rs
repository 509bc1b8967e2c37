//! What the software guest's vCPUs do.

use guest_ram::{GuestRam, PAGE_SIZE};

use super::Error;

/// The order in which a vCPU visits the pages of its slice of the working set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Pattern {
    /// Page after page, wrapping around: every page of the slice is rewritten once per lap.
    #[default]
    Sequential,
    /// Uniformly random pages of the slice (xorshift64*, reproducible from the seed).
    Random,
}

/// Configuration of a [`super::SoftGuest`] workload.
///
/// The working set `offset..offset + working_set` of block `block` is cut into `vcpus` contiguous
/// slices of whole pages; vCPU `i` only writes slice `i`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadConfig {
    /// Number of vCPU threads.
    pub vcpus: usize,
    /// Bytes of guest RAM the vCPUs write (a multiple of 4096, at least one page per vCPU).
    pub working_set: u64,
    /// Dirtying rate per vCPU in bytes/s, counting 4096 bytes per page write; `None` = as fast
    /// as possible.
    pub write_rate: Option<u64>,
    /// Page visiting order.
    pub pattern: Pattern,
    /// Seed of the data and of the random pattern.
    pub seed: u64,
    /// Index of the RAM block in [`GuestRam::blocks`].
    pub block: usize,
    /// Start of the working set within the block (a multiple of 4096).
    pub offset: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            vcpus: 1,
            working_set: 16 << 20,
            write_rate: None,
            pattern: Pattern::Sequential,
            seed: 0,
            block: 0,
            offset: 0,
        }
    }
}

impl WorkloadConfig {
    /// Checks the configuration against `ram`.
    pub fn validate(&self, ram: &GuestRam) -> Result<(), Error> {
        if self.vcpus == 0 {
            return Err(Error::NoVcpus);
        }
        if self.write_rate == Some(0) {
            return Err(Error::ZeroWriteRate);
        }
        let blocks = ram.blocks();
        let block = blocks.get(self.block).ok_or(Error::NoSuchBlock {
            block: self.block,
            blocks: blocks.len(),
        })?;
        let fits = self
            .offset
            .checked_add(self.working_set)
            .is_some_and(|end| end <= block.len());
        let pages = self.working_set / PAGE_SIZE;
        if !fits
            || self.offset % PAGE_SIZE != 0
            || self.working_set % PAGE_SIZE != 0
            || pages < self.vcpus as u64
        {
            return Err(Error::BadWorkingSet {
                idstr: block.idstr().to_owned(),
                offset: self.offset,
                working_set: self.working_set,
                size: block.len(),
            });
        }
        Ok(())
    }

    /// The pages (absolute page numbers within the block) of vCPU `vcpu`'s slice.
    pub fn slice_of(&self, vcpu: usize) -> std::ops::Range<u64> {
        let pages = self.working_set / PAGE_SIZE;
        let n = self.vcpus.max(1) as u64;
        let base = self.offset / PAGE_SIZE;
        let i = vcpu as u64;
        base + pages * i / n..base + pages * (i + 1) / n
    }
}
