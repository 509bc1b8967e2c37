//! The `block` live handler: the VM's disks in QEMU 7.2's block-migration format (section
//! `block`, instance 0, version 1), for `migrate -b` (full copy) and `migrate -i` (incremental
//! over a shared base).
//!
//! ```text
//! START block : be64 EOS                                          (dirty tracking starts)
//! PART block  : { record }* be64 EOS                              (guest running)
//! END block   : { record }* progress(100) be64 EOS                (guest stopped)
//!   record = be64 (sector << 9 | 0x01)        cstr8 drive  1 MiB data   DATA chunk
//!          | be64 (sector << 9 | 0x01 | 0x08) cstr8 drive              ZERO chunk
//!          | be64 (percent << 9 | 0x04)                                PROGRESS
//! ```
//!
//! Phases and receiver rules are in [`BlockSaver`] and [`BlockLoader`]; records are
//! `savevm::block`.
//!
//! Choices (where QEMU's behaviour is not the only reasonable one):
//! * **Zero chunks** are always sent as ZERO records, whatever the `zero-blocks` capability
//!   says (QEMU sends them only with it). A QEMU 7.2 receiver handles the flag regardless of
//!   its own capabilities, so the stream stays loadable by QEMU, and `-b` does not copy the
//!   empty parts of a disk. `zero-blocks` can be switched on for compatibility; it changes
//!   nothing.
//! * **Validation.** QEMU's stream does not announce drive sizes or formats, and an extra
//!   record would break QEMU peers. So the destination validates every record before it
//!   writes: known drive name, chunk inside the local drive. Formats are local (`--drive
//!   format=`) and checked when the image is opened (a qcow2 header given as raw is refused).
//!   A destination drive *larger* than the source's cannot be detected from the stream.
//! * **Failure on the destination.** Nothing is written to a destination image during the
//!   load: the first record of a drive switches it to a sparse staging copy next to the image,
//!   `load_complete` renames the copies over the images. If the load fails the images are
//!   untouched; the copies are removed by the next `load_setup`, by [`abort_incoming`] (which
//!   the VMM calls when the load failed), or when the drives are dropped.
//! * **`-i` allocation.** The destination skips clusters whose content it already has (see
//!   [`BlockLoader`]), so its overlay holds the clusters the source's overlay holds rather than whole
//!   1 MiB chunks.
//!
//! `migrate -b`/`-i` set capability `block` (and parameter `block-incremental`) for one
//! migration: [`BlockMigrationOptions::apply`] before starting it; the handler's cleanup
//! clears them again (QEMU's `must_remove_block_options`).
//!
//! Wiring into a VMM:
//!
//! ```text
//! both sides   drives = DriveSpec::parse_all(--drive ...); disks = Arc<Disk>::open each
//!              registry: [timer (none machine)] BlockHandler::new(disks, state) RamHandler ...
//!                        (block before ram; never as section id 0, see QEMU's PART lookup)
//!              guest: a DiskWriter per disk; vm_stop → pause() (returns with no write in
//!                     flight), vm_start → resume()
//! migrate -b/-i  BlockMigrationOptions { incremental }.apply(&state)?; outgoing::start(..)
//!                (if start fails: clear_block_options(&state))
//! incoming     run_incoming(..); on error: abort_incoming(&disks)
//! ```

mod error;
mod load;
mod save;
mod stats;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use block::Disk;
use savevm::qemu_file::{QemuFileReader, QemuFileWriter};

use crate::capabilities::{Capabilities, Capability};
use crate::error::MigrationError;
use crate::handler::LiveHandler;
use crate::state::MigrationState;

pub use error::BlockMigrationError;
pub use load::BlockLoader;
pub use save::BlockSaver;
pub use stats::DiskCounters;

/// Section idstr.
pub const IDSTR: &str = "block";

/// Section version (QEMU 7.2's `block` is version 1).
pub const BLOCK_SECTION_VERSION: u32 = 1;

/// Oldest accepted section version.
pub const BLOCK_SECTION_MIN_VERSION: u32 = 1;

/// The `block` live handler of one VM. Register it before the `ram` handler, so the block
/// section precedes RAM in every phase (QEMU's order), and register it on every VM, with or
/// without drives, so a destination accepts a source's block section.
pub struct BlockHandler {
    disks: Vec<Arc<Disk>>,
    state: Arc<MigrationState>,
    saver: Option<BlockSaver>,
    loader: BlockLoader,
}

impl BlockHandler {
    /// A handler over the VM's drives (in `--drive` order), reporting into `state`.
    pub fn new(disks: Vec<Arc<Disk>>, state: Arc<MigrationState>) -> Self {
        Self {
            loader: BlockLoader::new(disks.clone()),
            disks,
            state,
            saver: None,
        }
    }

    /// The drives.
    pub fn disks(&self) -> &[Arc<Disk>] {
        &self.disks
    }

    fn incremental(&self) -> bool {
        self.state.lock().params.block_incremental
    }
}

impl LiveHandler for BlockHandler {
    fn idstr(&self) -> &str {
        IDSTR
    }

    fn version_id(&self) -> u32 {
        BLOCK_SECTION_VERSION
    }

    fn is_active(&self, caps: &Capabilities) -> bool {
        caps.get(Capability::Block)
    }

    fn save_setup(&mut self, f: &mut QemuFileWriter) -> Result<(), MigrationError> {
        let incremental = self.incremental();
        tracing::info!(
            drives = self.disks.len(),
            incremental,
            "block migration: setup"
        );
        self.saver = Some(BlockSaver::new(
            &self.disks,
            incremental,
            self.state.disk.clone(),
        ));
        savevm::block::write_eos(f);
        Ok(())
    }

    fn pending(&mut self, threshold: u64) -> Result<u64, MigrationError> {
        Ok(self.saver.as_ref().map_or(0, |s| s.pending(threshold)))
    }

    fn iterate(&mut self, f: &mut QemuFileWriter) -> Result<bool, MigrationError> {
        match self.saver.as_mut() {
            Some(s) => s.iterate(f).map_err(BlockMigrationError::on_save)?,
            None => savevm::block::write_eos(f),
        }
        if let Some(e) = f.error() {
            return Err(e.into());
        }
        // Like QEMU's block_save_iterate (it returns 1 once it wrote anything, EOS included):
        // RAM gets its turn in the same round.
        Ok(true)
    }

    fn complete(&mut self, f: &mut QemuFileWriter) -> Result<(), MigrationError> {
        match self.saver.as_mut() {
            Some(s) => s.complete(f).map_err(BlockMigrationError::on_save)?,
            None => {
                savevm::block::write_progress(f, 100);
                savevm::block::write_eos(f);
            }
        }
        if let Some(e) = f.error() {
            return Err(e.into());
        }
        Ok(())
    }

    fn save_cleanup(&mut self) {
        if let Some(mut s) = self.saver.take() {
            s.cleanup();
        }
        if self
            .state
            .disk
            .remove_block_options
            .swap(false, Ordering::SeqCst)
        {
            clear_block_options(&self.state);
        }
    }

    fn load_setup(&mut self) -> Result<(), MigrationError> {
        self.loader.setup().map_err(BlockMigrationError::on_load)
    }

    fn load(&mut self, f: &mut QemuFileReader, version: u32) -> Result<(), MigrationError> {
        if version < BLOCK_SECTION_MIN_VERSION {
            return Err(MigrationError::UnsupportedVersion {
                idstr: IDSTR.into(),
                version,
                local: BLOCK_SECTION_VERSION,
            });
        }
        self.loader.load(f)
    }

    fn load_complete(&mut self) -> Result<(), MigrationError> {
        self.loader.commit().map_err(BlockMigrationError::on_load)
    }
}

impl Drop for BlockHandler {
    fn drop(&mut self) {
        if let Err(e) = self.loader.abort() {
            tracing::error!("cannot discard incoming block data: {}", e.report());
        }
    }
}

/// `migrate -b` (`incremental: false`) or `migrate -i` (`incremental: true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockMigrationOptions {
    /// `-i`: only what the top images hold; the destination has the same base images.
    pub incremental: bool,
}

impl BlockMigrationOptions {
    /// Turns capability `block` on (and parameter `block-incremental` for `-i`) for the next
    /// migration only; the block handler's `save_cleanup` turns them off again. Fails, like
    /// QEMU, when either is already on. Call it right before `outgoing::start`; if `start`
    /// fails, call [`clear_block_options`].
    pub fn apply(self, state: &MigrationState) -> Result<(), BlockMigrationError> {
        let mut s = state.lock();
        if s.caps.get(Capability::Block) || s.params.block_incremental {
            return Err(BlockMigrationError::IncompatibleOptions);
        }
        let s = &mut *s;
        s.caps
            .apply(&[(Capability::Block, true)], &s.params)
            .map_err(|e| BlockMigrationError::Enable(e.to_string()))?;
        s.params.block_incremental = self.incremental;
        state
            .disk
            .remove_block_options
            .store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// Turns capability `block` and parameter `block-incremental` off (what the cleanup of a
/// `migrate -b`/`-i` migration does).
pub fn clear_block_options(state: &MigrationState) {
    state
        .disk
        .remove_block_options
        .store(false, Ordering::SeqCst);
    let mut s = state.lock();
    s.caps.set(Capability::Block, false);
    s.params.block_incremental = false;
}

/// Discards what a failed incoming migration wrote: every drive's staging copy is deleted and
/// the image, untouched, is used again. Call it when `incoming::run_incoming` fails.
pub fn abort_incoming(disks: &[Arc<Disk>]) -> Result<(), BlockMigrationError> {
    let mut first = None;
    for d in disks {
        if let Err(e) = d.abort_incoming() {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), |e| Err(e.into()))
}
