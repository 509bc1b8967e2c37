//! The set of RAM blocks of one guest, in QEMU's migration order.

use std::sync::{Arc, Mutex};

use crate::{Bitmap, DeliveredPages, RamBlock};

/// All RAM blocks of a guest. Block order is significant: dirty bitmaps passed to
/// [`crate::DirtyLog::sync`] are indexed like [`GuestRam::blocks`].
#[derive(Debug, Clone)]
pub struct GuestRam {
    blocks: Vec<Arc<RamBlock>>,
    /// During a postcopy load with `ram-verify`: the pages as delivered.
    delivered: Arc<Mutex<Option<Arc<DeliveredPages>>>>,
}

impl GuestRam {
    /// Wraps already allocated blocks.
    pub fn new(blocks: Vec<RamBlock>) -> Self {
        Self::from_arcs(blocks.into_iter().map(Arc::new).collect())
    }

    /// Wraps blocks that are already shared.
    pub fn from_arcs(blocks: Vec<Arc<RamBlock>>) -> Self {
        GuestRam {
            blocks,
            delivered: Arc::default(),
        }
    }

    /// The blocks, in migration order.
    pub fn blocks(&self) -> &[Arc<RamBlock>] {
        &self.blocks
    }

    /// The index (migration order) of the block named `idstr`, if any.
    pub fn block_index(&self, idstr: &str) -> Option<usize> {
        self.blocks.iter().position(|b| b.idstr() == idstr)
    }

    /// The block named `idstr`, if any.
    pub fn block_by_name(&self, idstr: &str) -> Option<&Arc<RamBlock>> {
        self.blocks.iter().find(|b| b.idstr() == idstr)
    }

    /// Sum of the block sizes in bytes.
    pub fn total_size(&self) -> u64 {
        self.blocks.iter().map(|b| b.len()).sum()
    }

    /// One empty bitmap per block, sized for [`crate::DirtyLog::sync`].
    pub fn new_bitmaps(&self) -> Vec<Bitmap> {
        self.blocks.iter().map(|b| Bitmap::new(b.pages())).collect()
    }

    /// The page hashes of a postcopy load in progress ([`DeliveredPages`]), if one is recorded.
    pub fn delivered(&self) -> Option<Arc<DeliveredPages>> {
        self.delivered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets or clears the page hashes of a postcopy load.
    pub fn set_delivered(&self, d: Option<Arc<DeliveredPages>>) {
        *self.delivered.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }
}
