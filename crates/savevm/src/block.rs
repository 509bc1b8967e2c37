//! Block-migration records of the `block` live section (spec §4.1–4.2).
//!
//! Every record starts with a be64 whose low 9 bits are flags and whose upper bits are a
//! sector number (512-byte sectors) or a percentage:
//!
//! | record | layout |
//! | --- | --- |
//! | data chunk | be64 `sector << 9 \| 0x01`, cstr8 device, **exactly 1 MiB** of data |
//! | zero chunk | be64 `sector << 9 \| 0x01 \| 0x08`, cstr8 device (no data) |
//! | progress | be64 `percent << 9 \| 0x04` |
//! | end of section | be64 `0x02` |
//!
//! The data payload is always [`BLK_MIG_CHUNK_SIZE`] bytes, even for a final partial chunk.

use crate::error::Error;
use crate::qemu_file::{QemuFileReader, QemuFileWriter};

/// Sector size shift.
pub const BDRV_SECTOR_BITS: u32 = 9;
/// Sector size.
pub const BDRV_SECTOR_SIZE: u64 = 512;
/// Chunk size: every data record carries exactly this many bytes.
pub const BLK_MIG_CHUNK_SIZE: usize = 1 << 20;
/// Sectors per chunk.
pub const BLK_MIG_SECTORS_PER_CHUNK: u64 = (BLK_MIG_CHUNK_SIZE as u64) >> BDRV_SECTOR_BITS;
/// Data (or zero) chunk.
pub const BLK_MIG_FLAG_DEVICE_BLOCK: u64 = 0x01;
/// End of section body.
pub const BLK_MIG_FLAG_EOS: u64 = 0x02;
/// Progress record.
pub const BLK_MIG_FLAG_PROGRESS: u64 = 0x04;
/// Zero chunk modifier.
pub const BLK_MIG_FLAG_ZERO_BLOCK: u64 = 0x08;

const FLAG_MASK: u64 = BDRV_SECTOR_SIZE - 1;

/// A decoded block record header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockRecord {
    /// A data chunk; the caller must read [`BLK_MIG_CHUNK_SIZE`] bytes next.
    Data {
        /// First sector.
        sector: u64,
        /// Device (drive) name.
        device: String,
    },
    /// A zero chunk (no payload).
    Zero {
        /// First sector.
        sector: u64,
        /// Device (drive) name.
        device: String,
    },
    /// Progress in percent.
    Progress(u64),
    /// End of the section body.
    Eos,
}

/// Writes a data chunk: header, device name, and `data` which must be exactly 1 MiB.
pub fn write_data(w: &mut QemuFileWriter, sector: u64, device: &str, data: &[u8]) {
    debug_assert_eq!(data.len(), BLK_MIG_CHUNK_SIZE);
    w.put_be64((sector << BDRV_SECTOR_BITS) | BLK_MIG_FLAG_DEVICE_BLOCK);
    w.put_counted_string(device);
    w.put_buffer(data);
}

/// Writes a zero chunk.
pub fn write_zero(w: &mut QemuFileWriter, sector: u64, device: &str) {
    w.put_be64((sector << BDRV_SECTOR_BITS) | BLK_MIG_FLAG_DEVICE_BLOCK | BLK_MIG_FLAG_ZERO_BLOCK);
    w.put_counted_string(device);
}

/// Writes a progress record.
pub fn write_progress(w: &mut QemuFileWriter, percent: u64) {
    w.put_be64((percent << BDRV_SECTOR_BITS) | BLK_MIG_FLAG_PROGRESS);
}

/// Writes the end-of-section record.
pub fn write_eos(w: &mut QemuFileWriter) {
    w.put_be64(BLK_MIG_FLAG_EOS);
}

impl BlockRecord {
    /// Writes this record; for `Data` the caller writes the 1 MiB payload next.
    pub fn write_header(&self, w: &mut QemuFileWriter) {
        match self {
            BlockRecord::Data { sector, device } => {
                w.put_be64((sector << BDRV_SECTOR_BITS) | BLK_MIG_FLAG_DEVICE_BLOCK);
                w.put_counted_string(device);
            }
            BlockRecord::Zero { sector, device } => write_zero(w, *sector, device),
            BlockRecord::Progress(p) => write_progress(w, *p),
            BlockRecord::Eos => write_eos(w),
        }
    }
}

/// Reads one record header; a data payload is left for the caller.
///
/// Only the flag combinations QEMU sends are accepted (0x01, 0x09, 0x04, 0x02).
pub fn read_record(r: &mut QemuFileReader) -> Result<BlockRecord, Error> {
    let offset = r.bytes_read();
    let word = r.get_be64()?;
    let flags = word & FLAG_MASK;
    let value = word >> BDRV_SECTOR_BITS;
    match flags {
        BLK_MIG_FLAG_DEVICE_BLOCK => Ok(BlockRecord::Data {
            sector: value,
            device: r.get_counted_string()?,
        }),
        f if f == BLK_MIG_FLAG_DEVICE_BLOCK | BLK_MIG_FLAG_ZERO_BLOCK => Ok(BlockRecord::Zero {
            sector: value,
            device: r.get_counted_string()?,
        }),
        BLK_MIG_FLAG_PROGRESS => Ok(BlockRecord::Progress(value)),
        BLK_MIG_FLAG_EOS if value == 0 => Ok(BlockRecord::Eos),
        _ => Err(Error::UnknownBlockFlags {
            flags: word & FLAG_MASK,
            offset,
        }),
    }
}
