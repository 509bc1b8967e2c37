//! The `block` live section (block migration, spec §4.2): records per drive.
//!
//! ```text
//! be64 (sector << 9) | 0x01        cstr8 drive  1 MiB data     ; data chunk
//! be64 (sector << 9) | 0x01 | 0x08 cstr8 drive                 ; zero chunk
//! be64 (percent << 9) | 0x04                                   ; progress
//! be64 0x02                                                    ; end of this body
//! ```
//!
//! Headers are parsed by `savevm::block::read_record`; the 1 MiB payloads are skipped
//! without being buffered.

use savevm::block::{BlockRecord, BLK_MIG_CHUNK_SIZE, BLK_MIG_SECTORS_PER_CHUNK};

use crate::error::AnalyzeError;
use crate::report::{BlockDeviceReport, BlockReport};
use crate::source::Source;

/// Walks `block` section bodies and accumulates a [`BlockReport`].
#[derive(Default)]
pub struct BlockWalker {
    report: BlockReport,
}

impl BlockWalker {
    /// The statistics so far.
    pub fn finish(self) -> BlockReport {
        self.report
    }

    fn device(&mut self, name: String) -> &mut BlockDeviceReport {
        let i = match self.report.devices.iter().position(|d| d.name == name) {
            Some(i) => i,
            None => {
                self.report.devices.push(BlockDeviceReport {
                    name,
                    ..Default::default()
                });
                self.report.devices.len() - 1
            }
        };
        &mut self.report.devices[i]
    }

    /// Reads one section body up to and including its EOS record.
    pub fn read_body(&mut self, src: &mut Source) -> Result<(), AnalyzeError> {
        loop {
            let at = src.offset();
            let record =
                savevm::block::read_record(&mut src.r).map_err(|e| AnalyzeError::stream(at, e))?;
            match record {
                BlockRecord::Eos => {
                    self.report.eos += 1;
                    return Ok(());
                }
                BlockRecord::Progress(p) => self.report.progress.push(p),
                BlockRecord::Data { sector, device } => {
                    src.r
                        .skip(BLK_MIG_CHUNK_SIZE as u64)
                        .map_err(|e| AnalyzeError::stream(at, e))?;
                    let d = self.device(device);
                    d.data_chunks += 1;
                    d.data_bytes += BLK_MIG_CHUNK_SIZE as u64;
                    d.sectors_covered = d
                        .sectors_covered
                        .max(sector.saturating_add(BLK_MIG_SECTORS_PER_CHUNK));
                }
                BlockRecord::Zero { sector, device } => {
                    let d = self.device(device);
                    d.zero_chunks += 1;
                    d.sectors_covered = d
                        .sectors_covered
                        .max(sector.saturating_add(BLK_MIG_SECTORS_PER_CHUNK));
                }
            }
        }
    }
}
