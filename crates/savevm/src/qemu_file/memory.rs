//! In-memory sink for tests, nested streams and tools.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

/// A cloneable `Write` sink backed by a shared `Vec<u8>`, so the bytes written through a
/// [`QemuFileWriter`](super::QemuFileWriter) (which owns its writer) can be read back.
#[derive(Debug, Clone, Default)]
pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock cannot leave the Vec inconsistent; keep going.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the bytes written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    /// Takes the bytes written so far, leaving the buffer empty.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.lock())
    }

    /// Number of bytes written so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
