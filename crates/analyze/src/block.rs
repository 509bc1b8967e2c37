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
//! without being buffered. Drives beyond [`crate::Limits::drives`] are only counted
//! (`untracked_chunks`), progress records beyond [`crate::Limits::progress`] too.

use std::collections::HashMap;

use savevm::block::{BlockRecord, BLK_MIG_CHUNK_SIZE, BLK_MIG_SECTORS_PER_CHUNK};

use crate::error::AnalyzeError;
use crate::report::{BlockDeviceReport, BlockReport};
use crate::source::Source;

/// Walks `block` section bodies and accumulates a [`BlockReport`].
pub struct BlockWalker {
    report: BlockReport,
    index: HashMap<String, usize>,
    max_drives: usize,
    max_progress: usize,
}

impl BlockWalker {
    /// A walker keeping at most `max_drives` drives and `max_progress` progress records.
    pub fn new(max_drives: usize, max_progress: usize) -> BlockWalker {
        BlockWalker {
            report: BlockReport::default(),
            index: HashMap::new(),
            max_drives,
            max_progress,
        }
    }

    /// The statistics so far.
    pub fn finish(self) -> BlockReport {
        self.report
    }

    /// The drive's statistics; `None` (and counted as untracked) past the drive limit.
    fn device(&mut self, name: String) -> Option<&mut BlockDeviceReport> {
        let i = match self.index.get(&name) {
            Some(&i) => i,
            None if self.report.devices.len() < self.max_drives => {
                let i = self.report.devices.len();
                self.index.insert(name.clone(), i);
                self.report.devices.push(BlockDeviceReport {
                    name,
                    ..Default::default()
                });
                i
            }
            None => {
                self.report.untracked_chunks += 1;
                return None;
            }
        };
        self.report.devices.get_mut(i)
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
                BlockRecord::Progress(p) => {
                    if self.report.progress.len() < self.max_progress {
                        self.report.progress.push(p);
                    } else {
                        self.report.progress_omitted += 1;
                    }
                }
                BlockRecord::Data { sector, device } => {
                    src.r
                        .skip(BLK_MIG_CHUNK_SIZE as u64)
                        .map_err(|e| AnalyzeError::stream(at, e))?;
                    let Some(d) = self.device(device) else {
                        continue;
                    };
                    d.data_chunks += 1;
                    d.data_bytes += BLK_MIG_CHUNK_SIZE as u64;
                    d.sectors_covered = d
                        .sectors_covered
                        .max(sector.saturating_add(BLK_MIG_SECTORS_PER_CHUNK));
                }
                BlockRecord::Zero { sector, device } => {
                    let Some(d) = self.device(device) else {
                        continue;
                    };
                    d.zero_chunks += 1;
                    d.sectors_covered = d
                        .sectors_covered
                        .max(sector.saturating_add(BLK_MIG_SECTORS_PER_CHUNK));
                }
            }
        }
    }
}
