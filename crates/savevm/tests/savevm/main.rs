//! Integration tests of the savevm stream format (one binary, one module per area).

mod block;
mod qemu_capture;
mod qemu_file;
mod ram;
mod record;
mod stream;
mod vmstate;

use savevm::qemu_file::{memory_reader, memory_writer, QemuFileReader, QemuFileWriter};

/// A predicate on an expected error.
pub type ErrCheck = fn(&savevm::Error) -> bool;

/// Runs `f` on a fresh writer and returns the flushed bytes.
pub fn bytes_of(f: impl FnOnce(&mut QemuFileWriter)) -> Vec<u8> {
    let (mut w, buf) = memory_writer();
    f(&mut w);
    w.flush().expect("flush");
    buf.contents()
}

/// A reader over `bytes`.
pub fn reader(bytes: &[u8]) -> QemuFileReader {
    memory_reader(bytes.to_vec())
}

/// Builds bytes from pieces: u8 / be32 / be64 / strings.
#[derive(Default)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    /// Appends a byte.
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    /// Appends a be16.
    pub fn be16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Appends a be32.
    pub fn be32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Appends a be64.
    pub fn be64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Appends raw bytes.
    pub fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    /// Appends a counted string.
    pub fn cstr(self, s: &str) -> Self {
        self.u8(s.len() as u8).raw(s.as_bytes())
    }
}
