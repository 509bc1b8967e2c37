//! Postcopy (QEMU 7.2 wire, spec §2.6, §2.8, §9.4): after some pre-copy the guest moves to the
//! destination at once, and the pages it touches that have not arrived yet are fetched on
//! demand over the return path.
//!
//! ```text
//! source                                             destination
//! header, config, OPEN_RETURN_PATH, POSTCOPY_ADVISE ▶ checks page sizes, probes userfaultfd
//! pre-copy PART sections ...                        ▶ written in place as usual
//! migrate-start-postcopy: [postcopy-active]
//!   stop guest, END of non-postcopy handlers
//!   final sync, POSTCOPY_RAM_DISCARD × n            ▶ MADV_DONTNEED / punch hole: pages missing
//!   PACKAGED { LISTEN, FULL devices, PING 3, RUN }  ▶ LISTEN: register MISSING, fault thread
//!                                                     devices loaded, RUN: guest starts
//!                                                     [postcopy-active]
//!   PART ram { requested pages first, then the     ◀ REQ_PAGES_ID / REQ_PAGES (fault thread)
//!              remaining dirty pages }             ▶ UFFDIO_COPY / UFFDIO_ZEROPAGE
//!   END ram (EOS), EOF                              ▶ unregister, [completed]
//!   wait for SHUT 0 [completed]                    ◀ SHUT 0
//! ```
//!
//! | file | concern |
//! | --- | --- |
//! | `source.rs` | the source's switch and background phase on the migration thread |
//! | `rp_reader.rs` | the source's return-path reader thread (page requests, SHUT) |
//! | `dest.rs` | the destination's commands: ADVISE, DISCARD, LISTEN, PACKAGED, RUN |
//! | `error.rs` | [`PostcopyError`] |
//! | `pause.rs` | `postcopy-paused`: which failures pause, the operator's commands |
//! | `recover_source.rs` | the source's pause and resume handshake |
//! | `recover_dest.rs` | the destination's pause, new connection, RECV_BITMAP and RESUME |
//!
//! The RAM handler does the RAM part through [`PostcopyHandler`] (`ram/save/postcopy.rs`,
//! `ram/load/postcopy.rs`); the userfaultfd code is `guest_ram::missing`.
//!
//! Once the destination runs the guest, the source no longer holds the only complete copy: a
//! failure after RUN never restarts the source's guest. A broken link pauses both sides
//! (`postcopy-paused`, the guest still running on the destination) until the operator
//! recovers it over a new connection (`pause.rs`); any other failure ends the migration, the
//! source's guest paused and the destination's stopped, its RAM incomplete.

mod dest;
mod error;
mod pause;
mod recover_dest;
mod recover_source;
pub(crate) mod rp_reader;
pub(crate) mod source;

pub(crate) use dest::{handle_command, is_postcopy_command, Flow};
pub use error::PostcopyError;
pub(crate) use pause::Recovery;
pub(crate) use recover_dest::pause_until_recovered;

use savevm::qemu_file::QemuFileWriter;
use savevm::record::postcopy::{Advise, Discard, PageRequest};
use savevm::record::recovery::BitmapTail;

use crate::error::MigrationError;
use crate::incoming::RpSender;
use crate::session::{IncomingSession, OutgoingSession};

/// Where the destination's postcopy is (QEMU's `PostcopyState`, the part livemig uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PostcopyPhase {
    /// No ADVISE received.
    #[default]
    None,
    /// ADVISE accepted; pre-copy continues (and may end as a plain pre-copy).
    Advised,
    /// LISTEN: RAM registered, fault thread running; device state is loading.
    Listening,
    /// RUN: the guest runs here; RAM still arrives.
    Running,
    /// The guest runs here; the link broke and a new one is being set up (`postcopy-paused`,
    /// `postcopy-recover`): RECV_BITMAP and RESUME are expected.
    Recovering,
}

/// The postcopy part of a live handler that keeps sending after the switch (QEMU's
/// `has_postcopy`): only RAM.
pub trait PostcopyHandler {
    /// Source, guest stopped: final dirty sync, then one POSTCOPY_RAM_DISCARD command per
    /// (≤ 12) ranges of pages still to send.
    fn discard_dirty(
        &mut self,
        f: &mut QemuFileWriter,
        s: &mut OutgoingSession,
    ) -> Result<(), MigrationError>;

    /// Source: queues a page request from the destination (checked against the RAM).
    fn queue_request(&mut self, req: PageRequest) -> Result<(), MigrationError>;

    /// Source: one PART body of the background phase, requested pages first; `poll` returns
    /// requests that arrived meanwhile. Returns true when nothing is left.
    fn iterate_postcopy(
        &mut self,
        f: &mut QemuFileWriter,
        poll: &mut dyn FnMut() -> Result<Vec<PageRequest>, MigrationError>,
    ) -> Result<bool, MigrationError>;

    /// Source: the END body after the last page.
    fn complete_postcopy(&mut self, f: &mut QemuFileWriter) -> Result<(), MigrationError>;

    /// Destination: checks ADVISE against the local RAM and host (userfaultfd).
    fn advise(&mut self, a: &Advise, s: &IncomingSession) -> Result<(), MigrationError>;

    /// Destination: drops received pages the source will send again.
    fn discard(&mut self, d: &Discard) -> Result<(), MigrationError>;

    /// Destination: RUN, with the guest still stopped (e.g. hash what `ram-verify` will check).
    fn run(&mut self, s: &IncomingSession) -> Result<(), MigrationError>;

    /// Destination: registers RAM for MISSING faults and starts the fault thread, which asks
    /// for pages on `rp`. From now on pages are placed, never written in place.
    fn listen(&mut self, rp: RpSender) -> Result<(), MigrationError>;

    /// Source, recovery: the blocks to ask the destination about, with their bitmap sizes.
    fn recovery_blocks(&self) -> Vec<(String, u64)>;

    /// Source, recovery: the destination's received-pages bitmap of `block` becomes the
    /// complement of what is left to send.
    fn reload_received(&mut self, block: &str, tail: &BitmapTail) -> Result<(), MigrationError>;

    /// Source, recovery: before the background phase goes on over the new link.
    fn resume_prepare(&mut self);

    /// Destination: the link broke; page requests wait for recovery.
    fn pause_incoming(&mut self);

    /// Destination, recovery: the received-pages bitmap of `block` (None: no such block).
    fn received_bitmap(&self, block: &str) -> Option<Vec<u64>>;

    /// Destination, RESUME: ask again for the pages still waited for.
    fn resume_incoming(&mut self);
}
