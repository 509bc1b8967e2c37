//! The source's RAM in postcopy: the discard list at the switch, the page-request queue and
//! the background pages, requested pages first.
//!
//! Requests are served whatever the dirty bitmap says: a page the source never populated is
//! not in any bitmap, but the destination faults on it like on any other missing page and gets
//! a ZERO record. A request for a page already sent is answered again (the destination finds
//! it present and drops the copy). Pages go out raw (no XBZRLE, no multifd) on the main
//! channel, each whole, so the destination can place them atomically.

use std::collections::VecDeque;
use std::time::Instant;

use guest_ram::Bitmap;
use savevm::qemu_file::QemuFileWriter;
use savevm::ram;
use savevm::record::postcopy::{Discard, PageRequest, MAX_DISCARDS_PER_COMMAND};
use savevm::record::{self, MIG_CMD_POSTCOPY_RAM_DISCARD};

use super::{is_zero, RamSaver, MAX_ITERATION_TIME, PAGE};
use crate::counters::RamCounters;
use crate::error::MigrationError;
use crate::postcopy::PostcopyError;
use crate::session::OutgoingSession;

/// Postcopy state of the saver.
#[derive(Debug, Default)]
pub(super) struct SourcePostcopy {
    /// After the discard: bytes count as postcopy bytes.
    pub(super) active: bool,
    /// Requested pages not sent yet: (block, page).
    queue: VecDeque<(usize, u64)>,
    /// Per block, the pages in `queue` (so a repeated request does not grow it).
    queued: Vec<Bitmap>,
    /// The block of the last REQ_PAGES_ID.
    last_block: Option<usize>,
}

impl SourcePostcopy {
    /// Recovery: the queued requests went to a destination that will ask again.
    pub(super) fn forget_requests(&mut self) {
        self.queue.clear();
        for q in &mut self.queued {
            q.clear_all();
        }
        self.last_block = None;
    }
}

impl RamSaver {
    /// The switch: final sync, then the runs of pages still to send as DISCARD commands.
    pub(crate) fn postcopy_discard(
        &mut self,
        f: &mut QemuFileWriter,
        s: &mut OutgoingSession,
    ) -> Result<(), MigrationError> {
        self.in_downtime = true;
        self.sync(s)?;
        self.in_downtime = false;
        let bytes0 = f.total_transferred();
        for (b, bm) in self.bitmaps.iter().enumerate() {
            if self.is_ignored(b) {
                continue;
            }
            let name = self.ram.blocks()[b].idstr().to_string();
            let mut ranges = Vec::with_capacity(MAX_DISCARDS_PER_COMMAND);
            for run in runs(bm) {
                ranges.push(run);
                if ranges.len() == MAX_DISCARDS_PER_COMMAND {
                    write_discard(f, &name, std::mem::take(&mut ranges));
                }
            }
            if !ranges.is_empty() {
                write_discard(f, &name, ranges);
            }
        }
        // QEMU: the first page after the discard phase names its block again.
        self.encoder.reset();
        self.postcopy.active = true;
        self.postcopy.queued = self.ram.new_bitmaps();
        self.postcopy.queue.clear();
        self.postcopy.last_block = None;
        self.account(f.total_transferred() - bytes0);
        Ok(())
    }

    /// Queues the pages of one request, after checking it against the RAM.
    pub(crate) fn postcopy_request(&mut self, req: PageRequest) -> Result<(), MigrationError> {
        let b = match &req.block {
            Some(name) => {
                let b = self
                    .ram
                    .block_index(name)
                    .ok_or_else(|| MigrationError::UnknownRamBlock(name.clone()))?;
                self.postcopy.last_block = Some(b);
                b
            }
            None => self
                .postcopy
                .last_block
                .ok_or(PostcopyError::RequestWithoutBlock)?,
        };
        let block = &self.ram.blocks()[b];
        let bad = |why| PostcopyError::BadRequest {
            block: block.idstr().to_string(),
            start: req.start,
            len: req.len,
            why,
        };
        if self.is_ignored(b) {
            return Err(bad("the block is not migrated").into());
        }
        let len = u64::from(req.len);
        if len == 0 || req.start % PAGE != 0 || len % PAGE != 0 {
            return Err(bad("not whole pages").into());
        }
        if req
            .start
            .checked_add(len)
            .is_none_or(|end| end > block.len())
        {
            return Err(bad("outside the block").into());
        }
        if !self.postcopy.active {
            return Err(bad("no postcopy running").into());
        }
        RamCounters::add(&self.counters.postcopy_requests, 1);
        let first = req.start / PAGE;
        for page in first..first + len / PAGE {
            if self.postcopy.queued[b].set(page) {
                self.postcopy.queue.push_back((b, page));
            }
        }
        Ok(())
    }

    /// One PART body of the background phase: requested pages first (each flushed at once),
    /// then dirty pages until the rate limit or 50 ms. True when no dirty page is left.
    pub(crate) fn postcopy_iterate(
        &mut self,
        f: &mut QemuFileWriter,
        poll: &mut dyn FnMut() -> Result<Vec<PageRequest>, MigrationError>,
    ) -> Result<bool, MigrationError> {
        let start = Instant::now();
        let bytes0 = f.total_transferred();
        let mut done = false;
        let mut n = 0u64;
        loop {
            for req in poll()? {
                self.postcopy_request(req)?;
            }
            if let Some((b, page)) = self.postcopy.queue.pop_front() {
                self.postcopy.queued[b].clear(page);
                self.send_raw(f, b, page)?;
                f.flush()?;
                continue;
            }
            if f.is_rate_limited() {
                break;
            }
            let Some((b, page)) = self.next_dirty() else {
                done = true;
                break;
            };
            self.send_raw(f, b, page)?;
            n += 1;
            if n % 64 == 0 && start.elapsed() > MAX_ITERATION_TIME {
                break;
            }
        }
        ram::put_eos(f);
        f.flush()?;
        self.account(f.total_transferred() - bytes0);
        RamCounters::set(&self.counters.remaining, self.dirty_pages * PAGE);
        Ok(done)
    }

    /// The END body: nothing is left but the EOS.
    pub(crate) fn postcopy_complete(
        &mut self,
        f: &mut QemuFileWriter,
    ) -> Result<(), MigrationError> {
        let bytes0 = f.total_transferred();
        while let Some((b, page)) = self.next_dirty() {
            self.send_raw(f, b, page)?;
        }
        ram::put_eos(f);
        if let Some(e) = f.error() {
            return Err(e.into());
        }
        self.account(f.total_transferred() - bytes0);
        RamCounters::set(&self.counters.remaining, 0);
        Ok(())
    }

    /// One page as a ZERO or PAGE record, whether it is dirty or not.
    fn send_raw(
        &mut self,
        f: &mut QemuFileWriter,
        b: usize,
        page: u64,
    ) -> Result<(), MigrationError> {
        self.dirty_log.arm(b, page)?;
        if self.bitmaps[b].test_and_clear(page) {
            self.dirty_pages -= 1;
        }
        let block = &self.ram.blocks()[b];
        let offset = page * PAGE;
        if is_zero(block.page(page)?) {
            self.encoder.put_zero(f, b, block.idstr(), offset);
            RamCounters::add(&self.counters.duplicate, 1);
        } else {
            self.encoder
                .put_page_external(f, b, block.idstr(), offset, block.memory());
            RamCounters::add(&self.counters.normal, 1);
        }
        Ok(())
    }
}

/// The runs of set bits of `bm` as (start byte, length in bytes).
fn runs(bm: &Bitmap) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut from = 0;
    std::iter::from_fn(move || {
        let first = bm.next_set(from)?;
        let mut end = first + 1;
        while end < bm.len() && bm.test(end) {
            end += 1;
        }
        from = end;
        Some((first * PAGE, (end - first) * PAGE))
    })
}

fn write_discard(f: &mut QemuFileWriter, block: &str, ranges: Vec<(u64, u64)>) {
    let d = Discard {
        block: block.to_string(),
        ranges,
    };
    // Block names are 1..=255 bytes (guest_ram checks) and ranges ≤ 12: always encodable.
    if let Some(payload) = d.encode() {
        record::write_command(f, MIG_CMD_POSTCOPY_RAM_DISCARD, &payload);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use guest_ram::{Backing, FullDirtyLog, GuestRam, RamBlock};

    use super::*;

    /// A saver over one 64-page block `pc.ram`, switched to postcopy.
    fn saver() -> RamSaver {
        let block = RamBlock::new("pc.ram", 64 * PAGE, Backing::Anonymous).unwrap();
        let ram = Arc::new(GuestRam::new(vec![block]));
        let mut s = RamSaver::new(ram.clone(), Box::new(FullDirtyLog::new(ram.clone())));
        s.ignored = vec![false];
        s.postcopy.queued = ram.new_bitmaps();
        s.postcopy.active = true;
        s
    }

    fn req(block: Option<&str>, start: u64, len: u32) -> PageRequest {
        PageRequest {
            block: block.map(str::to_string),
            start,
            len,
        }
    }

    #[test]
    fn hostile_page_requests_are_typed_errors() {
        let mut s = saver();
        let bad = |s: &mut RamSaver, r| match s.postcopy_request(r) {
            Err(MigrationError::Postcopy(e)) => e,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            bad(&mut s, req(None, 0, 4096)),
            PostcopyError::RequestWithoutBlock
        ));
        assert!(matches!(
            s.postcopy_request(req(Some("nosuch"), 0, 4096)),
            Err(MigrationError::UnknownRamBlock(_))
        ));
        for (start, len) in [
            (64 * PAGE, 4096),
            (63 * PAGE, 8192),
            (u64::MAX - 4095, 4096),
            (0, u32::MAX),
            (1, 4096),
            (0, 0),
        ] {
            assert!(
                matches!(
                    bad(&mut s, req(Some("pc.ram"), start, len)),
                    PostcopyError::BadRequest { .. }
                ),
                "{start:#x}+{len:#x}"
            );
        }
        // Valid, then the same pages again: queued once.
        s.postcopy_request(req(Some("pc.ram"), 0, 3 * 4096))
            .unwrap();
        s.postcopy_request(req(None, 4096, 4096)).unwrap();
        assert_eq!(s.postcopy.queue.len(), 3);
        // Before the switch nothing is served.
        s.postcopy.active = false;
        assert!(matches!(
            bad(&mut s, req(Some("pc.ram"), 0, 4096)),
            PostcopyError::BadRequest { .. }
        ));
    }

    /// Recovery: what is left to send is exactly what the destination did not receive; the
    /// queued requests are dropped; a bitmap for another block, of another size or with a bad
    /// end marker is refused.
    #[test]
    fn recovery_rebuilds_what_is_left_from_the_received_bitmap() {
        use savevm::record::recovery::{BitmapTail, RECV_BITMAP_END};
        let mut s = saver();
        s.bitmaps = s.ram.new_bitmaps();
        s.postcopy_request(req(Some("pc.ram"), 0, 4096)).unwrap();
        assert_eq!(s.recovery_blocks(), vec![("pc.ram".to_string(), 8)]);
        let tail = |words: Vec<u64>, end| BitmapTail { words, end };
        // Pages 0..4 and 63 not received.
        let received = !0b1111u64 & !(1 << 63);
        s.reload_received("pc.ram", &tail(vec![received], RECV_BITMAP_END))
            .unwrap();
        s.resume_prepare();
        assert_eq!(s.dirty_pages, 5);
        assert_eq!(
            s.bitmaps[0].iter_ones().collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 63]
        );
        assert!(s.postcopy.queue.is_empty());
        let err = |s: &mut RamSaver, block, t| match s.reload_received(block, &t) {
            Err(MigrationError::Postcopy(e)) => e,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            err(&mut s, "nosuch", tail(vec![0], RECV_BITMAP_END)),
            PostcopyError::RecvBitmapBlock(_)
        ));
        assert!(matches!(
            err(&mut s, "pc.ram", tail(vec![0, 0], RECV_BITMAP_END)),
            PostcopyError::RecvBitmapSize {
                got: 16,
                want: 8,
                ..
            }
        ));
        assert!(matches!(
            err(&mut s, "pc.ram", tail(vec![0], 0)),
            PostcopyError::RecvBitmapEnd { found: 0, .. }
        ));
        // Refused bitmaps changed nothing.
        assert_eq!(s.dirty_pages, 5);
    }

    #[test]
    fn runs_of_dirty_pages() {
        let mut bm = Bitmap::new(200);
        for p in [0, 1, 2, 5, 64, 65, 199] {
            bm.set(p);
        }
        let r: Vec<_> = runs(&bm).collect();
        assert_eq!(
            r,
            vec![
                (0, 3 * PAGE),
                (5 * PAGE, PAGE),
                (64 * PAGE, 2 * PAGE),
                (199 * PAGE, PAGE)
            ]
        );
        assert_eq!(runs(&Bitmap::new(10)).count(), 0);
    }
}
