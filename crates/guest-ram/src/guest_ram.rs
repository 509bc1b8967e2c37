//! The set of RAM blocks of one guest, in QEMU's migration order.

use std::sync::Arc;

use crate::{Bitmap, RamBlock};

/// All RAM blocks of a guest. Block order is significant: dirty bitmaps passed to
/// [`crate::DirtyLog::sync`] are indexed like [`GuestRam::blocks`].
#[derive(Debug, Clone)]
pub struct GuestRam {
    blocks: Vec<Arc<RamBlock>>,
}

impl GuestRam {
    /// Wraps already allocated blocks.
    pub fn new(blocks: Vec<RamBlock>) -> Self {
        GuestRam {
            blocks: blocks.into_iter().map(Arc::new).collect(),
        }
    }

    /// Wraps blocks that are already shared.
    pub fn from_arcs(blocks: Vec<Arc<RamBlock>>) -> Self {
        GuestRam { blocks }
    }

    /// The blocks, in migration order.
    pub fn blocks(&self) -> &[Arc<RamBlock>] {
        &self.blocks
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
}
