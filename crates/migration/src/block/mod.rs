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
//! * **Failure on the destination.** The first record of a drive journals its image (an undo
//!   journal next to it) and the load then writes the image in place, so it keeps its inode,
//!   owner, mode and links; `load_complete` drops the journals. If the load fails the images
//!   are put back as they were by the handler's `load_cleanup` (the engine calls it when the
//!   load failed), when the drives are dropped, or by the next open of a killed destination's
//!   image.
//! * **`-i` allocation.** The destination skips clusters whose content it already has (see
//!   [`BlockLoader`]), so its overlay holds the clusters the source's overlay holds rather than whole
//!   1 MiB chunks.
//!
//! `migrate -b`/`-i` set capability `block` (and parameter `block-incremental`) for one
//! migration ([`BlockMigrationOptions`], applied and cleared by `outgoing::start`, QEMU's
//! `must_remove_block_options`). The handler is registered on both sides, before `ram` and never
//! as section id 0 (see QEMU's PART lookup); a failed load discards the staged images through
//! [`LiveHandler::load_cleanup`]. A VM's disk writers must pause with its vCPUs.

pub(crate) mod error;
mod load;
mod save;
pub mod verify;

use std::sync::Arc;

use block::Disk;
use savevm::qemu_file::{QemuFileReader, QemuFileWriter};

use crate::capabilities::{Capabilities, Capability};
use crate::error::MigrationError;
use crate::handler::LiveHandler;
use crate::session::{IncomingSession, OutgoingSession};
use crate::settings::Settings;

pub use error::BlockMigrationError;
pub use load::BlockLoader;
pub use save::BlockSaver;
pub use verify::DiskVerify;

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
    saver: Option<BlockSaver>,
    loader: BlockLoader,
}

impl BlockHandler {
    /// A handler over the VM's drives (in `--drive` order).
    pub fn new(disks: Vec<Arc<Disk>>) -> Self {
        Self {
            loader: BlockLoader::new(disks.clone()),
            disks,
            saver: None,
        }
    }

    /// The drives.
    pub fn disks(&self) -> &[Arc<Disk>] {
        &self.disks
    }
}

fn incremental(settings: &Settings) -> bool {
    settings.params.block_incremental
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

    fn save_setup(
        &mut self,
        f: &mut QemuFileWriter,
        s: &mut OutgoingSession,
    ) -> Result<(), MigrationError> {
        let incremental = incremental(s.settings());
        tracing::info!(
            drives = self.disks.len(),
            incremental,
            "block migration: setup"
        );
        self.saver = Some(BlockSaver::new(
            &self.disks,
            incremental,
            s.runtime().disk.clone(),
        ));
        savevm::block::write_eos(f);
        Ok(())
    }

    fn pending(&mut self, threshold: u64, _s: &mut OutgoingSession) -> Result<u64, MigrationError> {
        Ok(self.saver.as_ref().map_or(0, |s| s.pending(threshold)))
    }

    fn iterate(
        &mut self,
        f: &mut QemuFileWriter,
        _s: &mut OutgoingSession,
    ) -> Result<bool, MigrationError> {
        match self.saver.as_mut() {
            Some(s) => s.iterate(f).map_err(MigrationError::BlockSave)?,
            None => savevm::block::write_eos(f),
        }
        if let Some(e) = f.error() {
            return Err(e.into());
        }
        // Like QEMU's block_save_iterate (it returns 1 once it wrote anything, EOS included):
        // RAM gets its turn in the same round.
        Ok(true)
    }

    fn complete(
        &mut self,
        f: &mut QemuFileWriter,
        _s: &mut OutgoingSession,
    ) -> Result<(), MigrationError> {
        match self.saver.as_mut() {
            Some(s) => s.complete(f).map_err(MigrationError::BlockSave)?,
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
    }

    fn load_setup(&mut self, _s: &mut IncomingSession) -> Result<(), MigrationError> {
        self.loader.setup().map_err(MigrationError::BlockLoad)
    }

    fn load(
        &mut self,
        f: &mut QemuFileReader,
        version: u32,
        _s: &mut IncomingSession,
    ) -> Result<(), MigrationError> {
        if version < BLOCK_SECTION_MIN_VERSION {
            return Err(MigrationError::UnsupportedVersion {
                idstr: IDSTR.into(),
                version,
                local: BLOCK_SECTION_VERSION,
            });
        }
        self.loader.load(f)
    }

    fn load_complete(&mut self, _s: &mut IncomingSession) -> Result<(), MigrationError> {
        self.loader.prepare().map_err(MigrationError::BlockLoad)
    }

    fn load_commit(&mut self) -> Result<(), MigrationError> {
        self.loader.commit().map_err(MigrationError::BlockLoad)
    }

    fn load_cleanup(&mut self, failed: bool) {
        if !failed {
            return;
        }
        // Never leave half-written destination images behind.
        if let Err(e) = self.loader.abort() {
            tracing::error!("cannot discard the incoming disk images: {}", e.report());
        }
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
    /// Turns capability `block` on (and parameter `block-incremental` for `-i`) in `settings`.
    /// Fails, like QEMU, when either is already on.
    pub fn apply_to(self, settings: &mut Settings) -> Result<(), BlockMigrationError> {
        if settings.has(Capability::Block) || incremental(settings) {
            return Err(BlockMigrationError::IncompatibleOptions);
        }
        settings
            .caps
            .apply(&[(Capability::Block, true)], &settings.params)
            .map_err(|e| BlockMigrationError::Enable(e.to_string()))?;
        settings.params.block_incremental = self.incremental;
        Ok(())
    }

    /// Turns capability `block` and parameter `block-incremental` off again.
    pub fn clear(settings: &mut Settings) {
        settings.caps.set(Capability::Block, false);
        settings.params.block_incremental = false;
    }
}
