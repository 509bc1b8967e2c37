//! The destination's RAM in postcopy: ADVISE checks, discards, and — from LISTEN on — pages
//! placed with userfaultfd while a fault thread asks the source for the pages the running guest
//! touches first.
//!
//! After LISTEN nothing writes guest memory in place: a write or a zero check would itself
//! fault on a missing page, on the one thread that could bring it in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use guest_ram::missing::{self, MissingPages, Placed};
use guest_ram::DeliveredPages;
use savevm::qemu_file::QemuFileReader;
use savevm::ram::{RamDecoder, RamRecord, TARGET_PAGE_SIZE};
use savevm::record::postcopy::{Advise, Discard, PageRequest};
use savevm::record::RpMessage;

use super::recover::FaultLink;
use super::request_clock::RequestClock;
use super::RamLoader;
use crate::capabilities::Capability;
use crate::error::MigrationError;
use crate::incoming::RpSender;
use crate::postcopy::PostcopyError;
use crate::session::IncomingSession;

const PAGE: u64 = TARGET_PAGE_SIZE as u64;

/// How long the fault thread waits for a fault before it looks at its stop flag.
const FAULT_POLL_MS: i32 = 50;

/// RAM registered for MISSING faults and the thread that requests them. Dropping it stops the
/// thread, then unregisters the RAM (faulting threads then retry as ordinary faults).
pub(super) struct Placer {
    /// Recovery's hold on the fault thread (see `recover.rs`).
    pub(super) link: Arc<Mutex<FaultLink>>,
    missing: Arc<MissingPages>,
    clock: Arc<RequestClock>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Placer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl RamLoader {
    /// ADVISE: the capability must be on here, page sizes must match, and this host must be
    /// able to register every block (the check before any guest state moves).
    pub(crate) fn postcopy_advise(
        &mut self,
        a: &Advise,
        s: &IncomingSession,
    ) -> Result<(), MigrationError> {
        if !s.settings().has(Capability::PostcopyRam) {
            return Err(PostcopyError::NotEnabledHere.into());
        }
        if a.target_page_size != PAGE {
            return Err(PostcopyError::TargetPageSize {
                remote: a.target_page_size,
                local: PAGE,
            }
            .into());
        }
        if a.page_size_summary != PAGE {
            return Err(PostcopyError::PageSizes {
                remote: a.page_size_summary,
                local: PAGE,
            }
            .into());
        }
        missing::probe(&self.ram).map_err(PostcopyError::Unavailable)?;
        self.received = self.ram.new_bitmaps();
        self.received
            .iter_mut()
            .for_each(guest_ram::Bitmap::set_all);
        self.advised = true;
        Ok(())
    }

    /// DISCARD: the ranges become missing pages.
    pub(crate) fn postcopy_discard(&mut self, d: &Discard) -> Result<(), MigrationError> {
        self.require_advised("POSTCOPY_RAM_DISCARD")?;
        let b = self
            .ram
            .block_index(&d.block)
            .ok_or_else(|| MigrationError::UnknownRamBlock(d.block.clone()))?;
        let ram = self.ram.clone();
        let block = &ram.blocks()[b];
        for &(start, len) in &d.ranges {
            let bad = || PostcopyError::BadDiscard {
                block: d.block.clone(),
                start,
                len,
            };
            if start % PAGE != 0 || len % PAGE != 0 || len == 0 {
                return Err(bad().into());
            }
            if start.checked_add(len).is_none_or(|e| e > block.len()) {
                return Err(bad().into());
            }
            block.discard_range(start, len)?;
            self.unreceive(b, start, len);
        }
        Ok(())
    }

    /// LISTEN: register the RAM and start the fault thread.
    pub(crate) fn postcopy_listen(&mut self, rp: RpSender) -> Result<(), MigrationError> {
        self.require_advised("POSTCOPY_LISTEN")?;
        let missing =
            Arc::new(MissingPages::register(self.ram.clone()).map_err(PostcopyError::Unavailable)?);
        let stop = Arc::new(AtomicBool::new(false));
        let link = Arc::new(Mutex::new(FaultLink::default()));
        let clock = Arc::new(RequestClock::new(self.counters.clone()));
        let thread = std::thread::Builder::new()
            .name("postcopy/fault".into())
            .spawn({
                let missing = missing.clone();
                let stop = stop.clone();
                let link = link.clone();
                let clock = clock.clone();
                move || fault_loop(&missing, &rp, &stop, &link, &clock)
            })
            .map_err(MigrationError::Spawn)?;
        self.placer = Some(Placer {
            link,
            missing,
            clock,
            stop,
            thread: Some(thread),
        });
        Ok(())
    }

    /// RUN, guest still stopped: with `ram-verify`, hash the pages that are here, then every
    /// page placed from now on ([`DeliveredPages`]).
    pub(crate) fn postcopy_run(&mut self, s: &IncomingSession) -> Result<(), MigrationError> {
        if s.settings().has(Capability::RamVerify) {
            let d = Arc::new(DeliveredPages::snapshot(&self.ram)?);
            self.ram.set_delivered(Some(d.clone()));
            self.delivered = Some(d);
        }
        Ok(())
    }

    /// Loads one section body with every page placed through userfaultfd.
    pub(super) fn load_placed(&mut self, f: &mut QemuFileReader) -> Result<(), MigrationError> {
        let Some((missing, clock)) = self
            .placer
            .as_ref()
            .map(|p| (p.missing.clone(), p.clock.clone()))
        else {
            return Err(MigrationError::UnexpectedRamRecord(
                "postcopy page before LISTEN",
            ));
        };
        loop {
            match self.decoder.read_record(f)? {
                RamRecord::Zero {
                    block,
                    offset,
                    fill,
                } => {
                    let (b, page) = self.target(block, offset, f)?;
                    let placed = if fill == 0 {
                        missing.place_zero(b, page)?
                    } else {
                        self.page_buf.fill(fill);
                        missing.place_page(b, page, &self.page_buf)?
                    };
                    self.after_place(&clock, b, page, placed, fill == 0);
                }
                RamRecord::Page { block, offset } => {
                    let (b, page) = self.target(block, offset, f)?;
                    f.get_buffer(&mut self.page_buf)?;
                    let placed = missing.place_page(b, page, &self.page_buf)?;
                    self.after_place(&clock, b, page, placed, false);
                }
                RamRecord::Eos => return Ok(()),
                RamRecord::MemSize { .. } => {
                    return Err(MigrationError::UnexpectedRamRecord(
                        "block list in postcopy",
                    ))
                }
                RamRecord::Xbzrle { .. } => {
                    return Err(MigrationError::UnexpectedRamRecord(
                        "XBZRLE page in postcopy",
                    ))
                }
                RamRecord::Hook => return Err(MigrationError::UnexpectedRamRecord("RDMA hook")),
            }
        }
    }

    /// After page `page` of block `b` was placed (or found there): it counts as received, a
    /// request for it is timed, and `ram-verify` records what was delivered (zeros, or
    /// `page_buf`).
    fn after_place(
        &mut self,
        clock: &RequestClock,
        b: usize,
        page: u64,
        placed: Placed,
        zero: bool,
    ) {
        self.mark_received(b, page);
        if placed != Placed::Placed {
            return;
        }
        clock.placed(b, page);
        match &self.delivered {
            Some(d) if zero => d.record_zero(b, page),
            Some(d) => d.record(b, page, &self.page_buf),
            None => {}
        }
    }

    fn require_advised(&self, command: &'static str) -> Result<(), MigrationError> {
        if !self.advised || self.placer.is_some() {
            return Err(PostcopyError::OutOfOrder {
                command,
                phase: if self.advised {
                    "listening"
                } else {
                    "not advised"
                },
            }
            .into());
        }
        Ok(())
    }

    /// A fresh decoder for the next stream (the CONTINUE state does not carry over).
    pub(super) fn reset_postcopy(&mut self) {
        if self.delivered.take().is_some() {
            self.ram.set_delivered(None);
        }
        self.placer = None;
        self.received = Vec::new();
        self.advised = false;
        self.decoder = RamDecoder::new();
    }
}

/// The fault thread: each missing page a guest thread touches is asked for once, by name the
/// first time a block comes up (REQ_PAGES_ID) and without afterwards (REQ_PAGES).
/// Each request is timed from the moment its fault was read ([`RequestClock`]).
fn fault_loop(
    missing: &MissingPages,
    rp: &RpSender,
    stop: &AtomicBool,
    link: &Mutex<FaultLink>,
    clock: &RequestClock,
) {
    let mut requested = missing.ram().new_bitmaps();
    let mut last_block = None;
    while !stop.load(Ordering::SeqCst) {
        if let Some(received) = FaultLink::take_resend(link) {
            last_block = None;
            super::recover::resend(missing, rp, &requested, &received, &mut last_block);
        }
        let (fault, read_at) = match missing.next_fault(FAULT_POLL_MS) {
            Ok(Some(fault)) => (fault, Instant::now()),
            Ok(None) => continue,
            Err(e) => {
                tracing::error!("postcopy fault thread: {}", crate::error_report(&e));
                return;
            }
        };
        // While paused the page is only noted: recovery asks for it on the new link.
        if !requested[fault.block].set(fault.page) || FaultLink::is_paused(link) {
            continue;
        }
        clock.requested(fault.block, fault.page, read_at);
        if let Err(e) = request(missing, rp, fault.block, fault.page, &mut last_block) {
            // The link broke: the migration pauses, and recovery asks again.
            tracing::warn!("postcopy: cannot request a page: {}", e.report());
        }
    }
}

/// Asks for one page, by block name when the block differs from the last request's.
pub(super) fn request(
    missing: &MissingPages,
    rp: &RpSender,
    block: usize,
    page: u64,
    last_block: &mut Option<usize>,
) -> Result<(), MigrationError> {
    let req = PageRequest {
        block: (*last_block != Some(block))
            .then(|| missing.ram().blocks()[block].idstr().to_string()),
        start: page * PAGE,
        len: PAGE as u32,
    };
    let Some((kind, data)) = req.encode() else {
        return Ok(());
    };
    rp.send(&RpMessage::Other { kind, data })?;
    *last_block = Some(block);
    Ok(())
}
