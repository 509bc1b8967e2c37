//! The source's RAM in postcopy recovery: after the link broke, whatever was written to it may
//! be lost, so the pages to send are rebuilt from what the destination says it received
//! (QEMU's `ram_dirty_bitmap_reload`): the to-send bitmap of a block becomes the complement of
//! its received-pages bitmap. The request queue is dropped (the destination asks again for
//! the pages its vCPUs still wait for) and the next page names its block again.

use savevm::record::recovery::{bitmap_size, BitmapTail, RECV_BITMAP_END};

use super::RamSaver;
use crate::error::MigrationError;
use crate::postcopy::PostcopyError;

impl RamSaver {
    /// The migrated blocks (those the destination is asked about) with their bitmap sizes in
    /// bytes.
    pub(crate) fn recovery_blocks(&self) -> Vec<(String, u64)> {
        self.ram
            .blocks()
            .iter()
            .enumerate()
            .filter(|(b, _)| !self.is_ignored(*b))
            .map(|(_, block)| (block.idstr().to_string(), bitmap_size(block.pages())))
            .collect()
    }

    /// Takes the destination's received-pages bitmap of `block` (checked: a block we migrate,
    /// its exact size, the end marker).
    pub(crate) fn reload_received(
        &mut self,
        block: &str,
        tail: &BitmapTail,
    ) -> Result<(), MigrationError> {
        let b = self
            .ram
            .block_index(block)
            .filter(|&b| !self.is_ignored(b))
            .ok_or_else(|| PostcopyError::RecvBitmapBlock(block.to_string()))?;
        let want = bitmap_size(self.ram.blocks()[b].pages());
        let got = tail.words.len() as u64 * 8;
        if got != want {
            return Err(PostcopyError::RecvBitmapSize {
                block: block.to_string(),
                got,
                want,
            }
            .into());
        }
        if tail.end != RECV_BITMAP_END {
            return Err(PostcopyError::RecvBitmapEnd {
                block: block.to_string(),
                found: tail.end,
            }
            .into());
        }
        let bm = &mut self.bitmaps[b];
        for (w, received) in bm.words_mut().iter_mut().zip(&tail.words) {
            *w = !received;
        }
        bm.trim();
        self.dirty_pages = self.bitmaps.iter().map(guest_ram::Bitmap::count_ones).sum();
        Ok(())
    }

    /// Before the background phase goes on over the new link.
    pub(crate) fn resume_prepare(&mut self) {
        self.postcopy.forget_requests();
        self.encoder.reset();
        tracing::info!(
            pages = self.dirty_pages,
            "postcopy recovery: pages left to send"
        );
    }
}
