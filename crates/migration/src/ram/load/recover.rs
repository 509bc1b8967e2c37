//! The destination's RAM in postcopy recovery: which pages it holds, and the fault thread's
//! behaviour while the link is down.
//!
//! A page counts as received when the source will not need to send it again: every page
//! after ADVISE (pre-copy wrote it in place, or the source never had it), minus the ranges
//! DISCARD dropped, plus every page placed since (or found already there). The bitmap goes to
//! the source block by block on RECV_BITMAP.
//!
//! While paused, the fault thread keeps catching faults but only notes the pages; at RESUME it
//! asks again for every page requested and not received (the requests in flight when the link
//! broke may be lost), starting with a block name since the source forgot the last one.

use std::sync::Mutex;

use guest_ram::missing::MissingPages;
use guest_ram::Bitmap;

use super::RamLoader;
use crate::incoming::RpSender;

/// What recovery tells the fault thread.
#[derive(Debug, Default)]
pub(crate) struct FaultLink {
    /// The link is down: note faults, do not send.
    paused: bool,
    /// RESUME came: the received pages, for the thread to ask again for the others.
    resend: Option<Vec<Bitmap>>,
}

impl FaultLink {
    /// True while requests must wait: paused, or resumed with the requests to send again
    /// not sent yet (they go first, the first one naming its block).
    pub(super) fn is_paused(link: &Mutex<FaultLink>) -> bool {
        let l = link.lock().unwrap_or_else(|p| p.into_inner());
        l.paused || l.resend.is_some()
    }

    pub(super) fn take_resend(link: &Mutex<FaultLink>) -> Option<Vec<Bitmap>> {
        link.lock().unwrap_or_else(|p| p.into_inner()).resend.take()
    }
}

impl RamLoader {
    pub(super) fn mark_received(&mut self, b: usize, page: u64) {
        if let Some(bm) = self.received.get_mut(b) {
            bm.set(page);
        }
    }

    pub(super) fn unreceive(&mut self, b: usize, start: u64, len: u64) {
        let page = super::TARGET_PAGE_SIZE as u64;
        if let Some(bm) = self.received.get_mut(b) {
            for p in start / page..(start + len) / page {
                bm.clear(p);
            }
        }
    }

    /// The link broke: the fault thread stops sending.
    pub(crate) fn postcopy_pause(&mut self) {
        if let Some(p) = &self.placer {
            p.link.lock().unwrap_or_else(|p| p.into_inner()).paused = true;
        }
    }

    /// The received-pages bitmap of `block` as 64-bit words; `None` for a block this
    /// destination does not have.
    pub(crate) fn received_bitmap(&self, block: &str) -> Option<Vec<u64>> {
        let b = self.ram.block_index(block)?;
        Some(self.received.get(b)?.words().to_vec())
    }

    /// RESUME: the fault thread asks again for what it still waits for.
    pub(crate) fn postcopy_resume(&mut self) {
        if let Some(p) = &self.placer {
            let mut link = p.link.lock().unwrap_or_else(|p| p.into_inner());
            link.paused = false;
            link.resend = Some(self.received.clone());
        }
    }
}

/// On the fault thread after RESUME: asks again for every page requested and not received.
pub(super) fn resend(
    missing: &MissingPages,
    rp: &RpSender,
    requested: &[Bitmap],
    received: &[Bitmap],
    last_block: &mut Option<usize>,
) {
    let mut n = 0u64;
    for (b, req) in requested.iter().enumerate() {
        for page in req.iter_ones() {
            if received.get(b).is_some_and(|r| r.test(page)) {
                continue;
            }
            if let Err(e) = super::postcopy::request(missing, rp, b, page, last_block) {
                tracing::warn!(
                    "postcopy recovery: cannot ask again for pages: {}",
                    e.report()
                );
                return;
            }
            n += 1;
        }
    }
    tracing::info!(pages = n, "postcopy recovery: page requests sent again");
}
