//! The byte source the walker reads from.
//!
//! The stream is read strictly sequentially (it may be a pipe). Until the first FULL section
//! the source is the caller's reader; from there on the rest of the stream is buffered in
//! memory ([`Source::tail`]) because device bodies can only be delimited once the
//! vmdescription at the very end has been read. Offsets reported by [`Source::offset`] are
//! always absolute stream offsets.

use std::io::{Cursor, Read};
use std::sync::Arc;

use savevm::qemu_file::QemuFileReader;

/// Shared bytes of the buffered tail.
#[derive(Clone)]
pub struct TailBytes(pub Arc<[u8]>);

impl AsRef<[u8]> for TailBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A reader plus the absolute offset of its first byte.
pub struct Source {
    /// The savevm reader.
    pub r: QemuFileReader,
    base: u64,
    tail: Option<TailBytes>,
}

impl Source {
    /// Reads the caller's stream from offset 0.
    pub fn stream(input: Box<dyn Read + Send>) -> Source {
        Source {
            r: QemuFileReader::new(input),
            base: 0,
            tail: None,
        }
    }

    /// Reads buffered bytes that start at absolute offset `base`.
    pub fn buffered(bytes: Arc<[u8]>, base: u64) -> Source {
        let tail = TailBytes(bytes);
        Source {
            r: QemuFileReader::new(Box::new(Cursor::new(tail.clone()))),
            base,
            tail: Some(tail),
        }
    }

    /// Absolute offset of the next unread byte.
    pub fn offset(&self) -> u64 {
        self.base + self.r.bytes_read()
    }

    /// The buffered bytes and the position of the next unread byte in them, in tail mode.
    pub fn tail(&self) -> Option<(&[u8], usize)> {
        let t = self.tail.as_ref()?;
        let pos = usize::try_from(self.r.bytes_read()).ok()?;
        Some((&t.0, pos))
    }
}
