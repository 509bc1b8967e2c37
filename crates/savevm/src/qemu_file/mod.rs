//! Buffered big-endian byte stream in the style of QEMU's `QEMUFile`.
//!
//! Everything in the savevm stream is built from a handful of primitives:
//!
//! | primitive | bytes |
//! | --- | --- |
//! | `u8` | 1 |
//! | `be16` / `be32` / `be64` | 2 / 4 / 8, most significant byte first |
//! | counted string (`cstr8`) | `u8 len` + `len` bytes, no NUL, `len <= 255` |
//! | buffer | raw bytes |
//!
//! [`QemuFileWriter`] batches puts in an internal buffer (256 KiB by default) and issues one
//! `write_all` per full buffer; a put never allocates. Like QEMU it latches the first error:
//! puts return `()`, later puts are dropped, and callers poll [`QemuFileWriter::error`] or get the
//! error from [`QemuFileWriter::flush`]. It also carries QEMU's per-file rate limiter: every put
//! adds to `rate_limit_used`, and the migration thread resets it every 100 ms window.
//!
//! [`QemuFileReader`] reads through a buffer that also serves [`QemuFileReader::peek`] (needed to
//! detect VMState subsections without consuming them). A short read is
//! [`Error::UnexpectedEof`](crate::Error::UnexpectedEof) with the stream offset; consuming reads
//! latch errors too.

mod memory;
mod reader;
mod writer;

pub use memory::SharedBuffer;

pub use reader::{QemuFileReader, DEFAULT_READ_BUFFER};
pub use writer::{ExternalBytes, QemuFileWriter, DEFAULT_WRITE_BUFFER};

/// A writer over a fresh [`SharedBuffer`], and the buffer to read the bytes back from.
pub fn memory_writer() -> (QemuFileWriter, SharedBuffer) {
    let buf = SharedBuffer::new();
    (QemuFileWriter::new(Box::new(buf.clone())), buf)
}

/// A reader over an in-memory byte vector.
pub fn memory_reader(bytes: Vec<u8>) -> QemuFileReader {
    QemuFileReader::new(Box::new(std::io::Cursor::new(bytes)))
}
