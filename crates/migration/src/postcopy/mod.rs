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
//!
//! The RAM handler does the RAM part through [`PostcopyHandler`] (`ram/save/postcopy.rs`,
//! `ram/load/postcopy.rs`); the userfaultfd code is `guest_ram::missing`.
//!
//! Once the destination runs the guest, the source no longer holds the only complete copy: a
//! failure after RUN never restarts the source's guest (it stays paused in `postmigrate`), and
//! the destination stops its own guest, whose RAM is then incomplete.

mod dest;
mod error;
pub(crate) mod rp_reader;
pub(crate) mod source;

pub(crate) use dest::{handle_command, is_postcopy_command, Flow};
pub use error::PostcopyError;

use savevm::qemu_file::QemuFileWriter;
use savevm::record::postcopy::{Advise, Discard, PageRequest};

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
}
