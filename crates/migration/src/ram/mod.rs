//! The `ram` live handler: guest memory in QEMU 7.2's RAM record format (section `ram`,
//! instance 0, version 4).
//!
//! ```text
//! START ram : be64 total|MEM_SIZE { cstr8 idstr, be64 used_length }*  be64 EOS
//! PART ram  : { be64 offset|flags [cstr8 idstr] body }*  be64 EOS      (guest running)
//! END ram   : { ... every page still dirty ... }         be64 EOS      (guest stopped)
//!   flags: ZERO 0x02 (body: u8 fill), PAGE 0x08 (body: 4096 bytes),
//!          XBZRLE 0x40, EOS 0x10; CONTINUE 0x20 = same block as the previous record
//! ```
//!
//! The source (`save.rs`) keeps one dirty bitmap per block. Setup marks only the pages that exist
//! (the kernel says which were ever touched) — never-touched memory is not read or sent at all,
//! the destination's memory is zero there already. Later passes take the pages the dirty log
//! reports. The destination (`load.rs`) validates every block name, size and offset against its
//! own RAM before writing. With `x-ignore-shared`, blocks in shared memory are not sent at all
//! (`shared.rs`); with `x-local-handover` memfd RAM is handed to the
//! destination process as descriptors (`handover.rs`).

mod handover;
mod load;
pub mod multifd;
mod multifd_recv;
mod save;
pub mod shared;
pub mod xbzrle;

use std::sync::Arc;

use guest_ram::{DirtyLog, GuestRam};
use savevm::qemu_file::{QemuFileReader, QemuFileWriter};
use savevm::record::postcopy::{Advise, Discard, PageRequest};

use crate::error::MigrationError;
use crate::handler::LiveHandler;
use crate::incoming::RpSender;
use crate::postcopy::PostcopyHandler;
use crate::session::{IncomingSession, OutgoingSession};

pub use save::RamSaver;

/// Version of the `ram` section (QEMU accepts only 4).
pub const RAM_SECTION_VERSION: u32 = 4;

/// The `ram` live handler of one VM.
pub struct RamHandler {
    ram: Arc<GuestRam>,
    saver: RamSaver,
    loader: load::RamLoader,
}

impl RamHandler {
    /// A handler over `ram`, tracking the guest's writes with `dirty_log`.
    pub fn new(ram: Arc<GuestRam>, dirty_log: Box<dyn DirtyLog>) -> Self {
        Self {
            saver: RamSaver::new(ram.clone(), dirty_log),
            loader: load::RamLoader::new(ram.clone()),
            ram,
        }
    }

    /// The guest RAM.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }
}

impl LiveHandler for RamHandler {
    fn idstr(&self) -> &str {
        "ram"
    }

    fn version_id(&self) -> u32 {
        RAM_SECTION_VERSION
    }

    fn save_setup(
        &mut self,
        f: &mut QemuFileWriter,
        s: &mut OutgoingSession,
    ) -> Result<(), MigrationError> {
        self.saver.setup(f, s)
    }

    fn pending(&mut self, threshold: u64, s: &mut OutgoingSession) -> Result<u64, MigrationError> {
        self.saver.pending(threshold, s)
    }

    fn iterate(
        &mut self,
        f: &mut QemuFileWriter,
        _s: &mut OutgoingSession,
    ) -> Result<bool, MigrationError> {
        self.saver.iterate(f)
    }

    fn complete(
        &mut self,
        f: &mut QemuFileWriter,
        s: &mut OutgoingSession,
    ) -> Result<(), MigrationError> {
        self.saver.complete(f, s)
    }

    fn backlog(&self) -> u64 {
        self.saver.backlog()
    }

    fn save_cleanup(&mut self) {
        self.saver.cleanup();
    }

    fn load_setup(&mut self, s: &mut IncomingSession) -> Result<(), MigrationError> {
        self.loader.setup(s)
    }

    fn load_complete(&mut self, _s: &mut IncomingSession) -> Result<(), MigrationError> {
        self.loader.finish();
        Ok(())
    }

    fn load_cleanup(&mut self, _failed: bool) {
        self.loader.finish();
    }

    fn postcopy(&mut self) -> Option<&mut dyn PostcopyHandler> {
        Some(self)
    }

    fn load(
        &mut self,
        f: &mut QemuFileReader,
        version: u32,
        _s: &mut IncomingSession,
    ) -> Result<(), MigrationError> {
        if version != RAM_SECTION_VERSION {
            return Err(MigrationError::UnsupportedVersion {
                idstr: "ram".into(),
                version,
                local: RAM_SECTION_VERSION,
            });
        }
        self.loader.load(f)
    }
}

impl PostcopyHandler for RamHandler {
    fn discard_dirty(
        &mut self,
        f: &mut QemuFileWriter,
        s: &mut OutgoingSession,
    ) -> Result<(), MigrationError> {
        self.saver.postcopy_discard(f, s)
    }

    fn queue_request(&mut self, req: PageRequest) -> Result<(), MigrationError> {
        self.saver.postcopy_request(req)
    }

    fn iterate_postcopy(
        &mut self,
        f: &mut QemuFileWriter,
        poll: &mut dyn FnMut() -> Result<Vec<PageRequest>, MigrationError>,
    ) -> Result<bool, MigrationError> {
        self.saver.postcopy_iterate(f, poll)
    }

    fn complete_postcopy(&mut self, f: &mut QemuFileWriter) -> Result<(), MigrationError> {
        self.saver.postcopy_complete(f)
    }

    fn advise(&mut self, a: &Advise, s: &IncomingSession) -> Result<(), MigrationError> {
        self.loader.postcopy_advise(a, s)
    }

    fn discard(&mut self, d: &Discard) -> Result<(), MigrationError> {
        self.loader.postcopy_discard(d)
    }

    fn listen(&mut self, rp: RpSender) -> Result<(), MigrationError> {
        self.loader.postcopy_listen(rp)
    }

    fn run(&mut self, s: &IncomingSession) -> Result<(), MigrationError> {
        self.loader.postcopy_run(s)
    }

    fn recovery_blocks(&self) -> Vec<(String, u64)> {
        self.saver.recovery_blocks()
    }

    fn reload_received(
        &mut self,
        block: &str,
        tail: &savevm::record::recovery::BitmapTail,
    ) -> Result<(), MigrationError> {
        self.saver.reload_received(block, tail)
    }

    fn resume_prepare(&mut self) {
        self.saver.resume_prepare();
    }

    fn pause_incoming(&mut self) {
        self.loader.postcopy_pause();
    }

    fn received_bitmap(&self, block: &str) -> Option<Vec<u64>> {
        self.loader.received_bitmap(block)
    }

    fn resume_incoming(&mut self) {
        self.loader.postcopy_resume();
    }
}
