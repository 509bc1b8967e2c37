//! The sending half of the stream layer.

use std::io::{IoSlice, Write};
use std::ops::Range;
use std::sync::Arc;

use crate::error::Error;

/// Pending iovec entries that force a write (Linux's IOV_MAX; QEMU uses 64, but larger
/// vectored writes cost fewer system calls per page).
const MAX_IOV: usize = 1024;

/// Memory that [`QemuFileWriter::put_external`] sends in place: shared, so the writer can hold it
/// until it has written it (guest RAM, for instance, is such a handle on the mapping).
pub type ExternalBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A piece of the pending output: part of the internal buffer, or a range of an external
/// source queued by [`QemuFileWriter::put_external`] (an index into `sources`).
#[derive(Debug, Clone)]
enum Segment {
    Buf { start: usize, end: usize },
    Ext { source: usize, range: Range<usize> },
}

/// Default size of the writer's internal buffer.
pub const DEFAULT_WRITE_BUFFER: usize = 256 * 1024;

/// Buffered big-endian writer with a sticky error and QEMU's rate-limit counters.
///
/// ```
/// use savevm::qemu_file::QemuFileWriter;
/// use std::io::Write;
///
/// let mut w = QemuFileWriter::new(Box::new(Vec::new()));
/// w.put_be32(0x5145_564d);
/// w.put_counted_string("ram");
/// assert_eq!(w.total_transferred(), 8);
/// w.flush().unwrap();
/// ```
pub struct QemuFileWriter {
    inner: Box<dyn Write + Send>,
    buf: Vec<u8>,
    cap: usize,
    /// Bytes handed to the inner writer so far.
    flushed: u64,
    error: Option<Error>,
    rate_limit_max: u64,
    rate_limit_used: u64,
    /// Output queued since the last drain when external memory is in use, in stream order.
    iov: Vec<Segment>,
    /// Start of the part of `buf` not yet in `iov`.
    seg_start: usize,
    /// Bytes of external memory in `iov`.
    ext_pending: u64,
    /// The sources `iov` refers to, held until the drain has written them; consecutive pages of
    /// one source share one entry, so queueing a page costs no reference count.
    sources: Vec<ExternalBytes>,
}

impl std::fmt::Debug for QemuFileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuFileWriter")
            .field("buffered", &self.buf.len())
            .field("flushed", &self.flushed)
            .field("error", &self.error)
            .field("rate_limit_max", &self.rate_limit_max)
            .field("rate_limit_used", &self.rate_limit_used)
            .finish()
    }
}

impl QemuFileWriter {
    /// Wraps `inner` with the default 256 KiB buffer.
    pub fn new(inner: Box<dyn Write + Send>) -> Self {
        Self::with_capacity(inner, DEFAULT_WRITE_BUFFER)
    }

    /// Wraps `inner` with a buffer of `bytes` (at least 64 bytes).
    pub fn with_capacity(inner: Box<dyn Write + Send>, bytes: usize) -> Self {
        let cap = bytes.max(64);
        QemuFileWriter {
            inner,
            buf: Vec::with_capacity(cap),
            cap,
            flushed: 0,
            error: None,
            rate_limit_max: 0,
            rate_limit_used: 0,
            iov: Vec::with_capacity(MAX_IOV + 1),
            seg_start: 0,
            ext_pending: 0,
            sources: Vec::new(),
        }
    }

    /// Writes the buffered bytes to the inner writer (no `flush` of the inner writer).
    fn drain(&mut self) {
        if !self.iov.is_empty() {
            self.drain_vectored();
            return;
        }
        if self.buf.is_empty() || self.error.is_some() {
            return;
        }
        match self.inner.write_all(&self.buf) {
            Ok(()) => {
                self.flushed += self.buf.len() as u64;
                self.buf.clear();
            }
            Err(e) => self.error = Some(e.into()),
        }
    }

    /// Writes the queued segments with vectored writes, in order.
    fn drain_vectored(&mut self) {
        if self.seg_start < self.buf.len() {
            self.iov.push(Segment::Buf {
                start: self.seg_start,
                end: self.buf.len(),
            });
        }
        let result = {
            let (buf, sources) = (&self.buf, &self.sources);
            // `put_external` checked every range against its source.
            let mut slices: Vec<IoSlice<'_>> = self
                .iov
                .iter()
                .map(|seg| match seg {
                    Segment::Buf { start, end } => IoSlice::new(&buf[*start..*end]),
                    Segment::Ext { source, range } => {
                        IoSlice::new(&(*sources[*source]).as_ref()[range.clone()])
                    }
                })
                .collect();
            write_all_vectored(&mut *self.inner, &mut slices)
        };
        let written = self.buf.len() as u64 + self.ext_pending;
        self.iov.clear();
        self.sources.clear();
        self.buf.clear();
        self.seg_start = 0;
        self.ext_pending = 0;
        match result {
            Ok(()) => self.flushed += written,
            Err(e) => {
                if self.error.is_none() {
                    self.error = Some(e.into());
                }
            }
        }
    }

    /// Queues bytes `range` of `source` to be written in place, without copying them into the
    /// buffer (QEMU's `qemu_put_buffer_async`): the migration hot path sends guest pages this
    /// way, and the kernel copies them straight from guest memory. The writer keeps `source`
    /// alive until it has written the bytes (any later put may do so, as do `flush`,
    /// `into_inner` and drop); their content may change meanwhile, and what is sent is the
    /// content at the time of the write.
    ///
    /// Consecutive calls with the same `source` (say, the pages of one RAM block) share one
    /// reference to it. A range outside the source latches [`Error::ExternalRange`].
    pub fn put_external<T>(&mut self, source: &Arc<T>, range: Range<usize>)
    where
        T: AsRef<[u8]> + Send + Sync + 'static,
    {
        if self.error.is_some() || range.is_empty() {
            return;
        }
        let available = (**source).as_ref().len();
        if range.end > available {
            self.error = Some(Error::ExternalRange {
                start: range.start,
                end: range.end,
                available,
            });
            return;
        }
        if self.seg_start < self.buf.len() {
            self.iov.push(Segment::Buf {
                start: self.seg_start,
                end: self.buf.len(),
            });
            self.seg_start = self.buf.len();
        }
        let same = self
            .sources
            .last()
            .is_some_and(|s| std::ptr::addr_eq(Arc::as_ptr(s), Arc::as_ptr(source)));
        if !same {
            self.sources.push(source.clone());
        }
        let len = range.len() as u64;
        self.iov.push(Segment::Ext {
            source: self.sources.len() - 1,
            range,
        });
        self.ext_pending += len;
        self.rate_limit_used += len;
        if self.iov.len() >= MAX_IOV || self.ext_pending + self.buf.len() as u64 >= self.cap as u64
        {
            self.drain();
        }
    }

    #[inline]
    fn put_small(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if self.buf.len() + bytes.len() > self.cap {
            self.drain();
            if self.error.is_some() {
                return;
            }
        }
        self.buf.extend_from_slice(bytes);
        self.rate_limit_used += bytes.len() as u64;
    }

    /// Writes one byte.
    #[inline]
    pub fn put_u8(&mut self, v: u8) {
        self.put_small(&[v]);
    }

    /// Writes a big-endian u16.
    #[inline]
    pub fn put_be16(&mut self, v: u16) {
        self.put_small(&v.to_be_bytes());
    }

    /// Writes a big-endian u32.
    #[inline]
    pub fn put_be32(&mut self, v: u32) {
        self.put_small(&v.to_be_bytes());
    }

    /// Writes a big-endian u64.
    #[inline]
    pub fn put_be64(&mut self, v: u64) {
        self.put_small(&v.to_be_bytes());
    }

    /// Writes a big-endian i64 (two's complement).
    #[inline]
    pub fn put_be_i64(&mut self, v: i64) {
        self.put_small(&v.to_be_bytes());
    }

    /// Writes raw bytes. Buffers at least as large as the internal buffer bypass it.
    pub fn put_buffer(&mut self, data: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if data.len() < self.cap && self.iov.is_empty() {
            self.put_small(data);
            return;
        }
        self.drain();
        if self.error.is_some() {
            return;
        }
        match self.inner.write_all(data) {
            Ok(()) => {
                self.flushed += data.len() as u64;
                self.rate_limit_used += data.len() as u64;
            }
            Err(e) => self.error = Some(e.into()),
        }
    }

    /// Writes a counted string (`u8 len` + bytes). Strings over 255 bytes latch
    /// [`Error::StringTooLong`] and write nothing.
    pub fn put_counted_string(&mut self, s: &str) {
        self.put_counted_bytes(s.as_bytes());
    }

    /// Like [`put_counted_string`](Self::put_counted_string) for raw bytes.
    pub fn put_counted_bytes(&mut self, s: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let Ok(len) = u8::try_from(s.len()) else {
            self.error = Some(Error::StringTooLong { len: s.len() });
            return;
        };
        if self.buf.len() + 1 + s.len() > self.cap {
            self.drain();
            if self.error.is_some() {
                return;
            }
        }
        self.buf.push(len);
        self.buf.extend_from_slice(s);
        self.rate_limit_used += 1 + s.len() as u64;
    }

    /// Writes out the buffer and flushes the inner writer; returns the latched error, if any.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.drain();
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if let Err(e) = self.inner.flush() {
            let e: Error = e.into();
            self.error = Some(e.clone());
            return Err(e);
        }
        Ok(())
    }

    /// The latched error, if any.
    pub fn error(&self) -> Option<Error> {
        self.error.clone()
    }

    /// Latches `e` unless an error is already latched (the first error wins).
    pub fn set_error(&mut self, e: Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Bytes put so far, including bytes still in the buffer.
    pub fn total_transferred(&self) -> u64 {
        self.flushed + self.buf.len() as u64 + self.ext_pending
    }

    /// Bytes actually handed to the inner writer.
    pub fn total_flushed(&self) -> u64 {
        self.flushed
    }

    /// Sets the byte budget per rate-limit window (0 = unlimited).
    pub fn set_rate_limit(&mut self, bytes_per_window: u64) {
        self.rate_limit_max = bytes_per_window;
    }

    /// The byte budget per window (0 = unlimited).
    pub fn rate_limit(&self) -> u64 {
        self.rate_limit_max
    }

    /// Bytes put since the last [`reset_rate_limit`](Self::reset_rate_limit).
    pub fn rate_limit_used(&self) -> u64 {
        self.rate_limit_used
    }

    /// Adds bytes sent elsewhere (e.g. multifd channels) to the window's usage.
    pub fn rate_limit_account(&mut self, bytes: u64) {
        self.rate_limit_used = self.rate_limit_used.saturating_add(bytes);
    }

    /// Starts a new window: used := 0.
    pub fn reset_rate_limit(&mut self) {
        self.rate_limit_used = 0;
    }

    /// True when an error is latched or the window's budget is exhausted.
    pub fn is_rate_limited(&self) -> bool {
        self.error.is_some()
            || (self.rate_limit_max > 0 && self.rate_limit_used > self.rate_limit_max)
    }

    /// Flushes (best effort; call [`flush`](Self::flush) first to see errors) and returns the
    /// inner writer.
    pub fn into_inner(mut self) -> Box<dyn Write + Send> {
        let _ = self.flush();
        std::mem::replace(&mut self.inner, Box::new(std::io::sink()))
    }
}

impl Drop for QemuFileWriter {
    fn drop(&mut self) {
        // Like fclose: push out what is buffered; errors can only be observed via flush().
        self.drain();
    }
}

/// `write_all` for vectored output: retries partial writes, advancing over what was written.
fn write_all_vectored(w: &mut dyn Write, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match w.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
