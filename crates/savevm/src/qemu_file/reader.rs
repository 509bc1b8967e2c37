//! The receiving half of the stream layer.

use std::io::{ErrorKind, Read};

use crate::error::Error;

/// Default size of the reader's buffer (also the largest possible peek).
pub const DEFAULT_READ_BUFFER: usize = 64 * 1024;

/// Buffered big-endian reader with peek, a stream offset and a sticky error.
///
/// ```
/// use savevm::qemu_file::QemuFileReader;
///
/// let mut r = QemuFileReader::new(Box::new(std::io::Cursor::new(vec![0x03, b'r', b'a', b'm'])));
/// assert_eq!(r.peek_u8().unwrap(), 3);
/// assert_eq!(r.get_counted_string().unwrap(), "ram");
/// assert!(r.is_eof().unwrap());
/// ```
pub struct QemuFileReader {
    inner: Box<dyn Read + Send>,
    buf: Box<[u8]>,
    /// Next unread byte in `buf`.
    pos: usize,
    /// End of valid data in `buf`.
    end: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// The inner reader returned 0.
    inner_eof: bool,
    error: Option<Error>,
}

impl std::fmt::Debug for QemuFileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuFileReader")
            .field("offset", &self.bytes_read())
            .field("buffered", &(self.end - self.pos))
            .field("error", &self.error)
            .finish()
    }
}

impl QemuFileReader {
    /// Wraps `inner` with the default 64 KiB buffer.
    pub fn new(inner: Box<dyn Read + Send>) -> Self {
        Self::with_capacity(inner, DEFAULT_READ_BUFFER)
    }

    /// Wraps `inner` with a buffer of `bytes` (at least 512 bytes, so that any counted string
    /// header can be peeked).
    pub fn with_capacity(inner: Box<dyn Read + Send>, bytes: usize) -> Self {
        QemuFileReader {
            inner,
            buf: vec![0u8; bytes.max(512)].into_boxed_slice(),
            pos: 0,
            end: 0,
            base: 0,
            inner_eof: false,
            error: None,
        }
    }

    /// Offset of the next unread byte from the start of the stream.
    pub fn bytes_read(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// The latched error, if any.
    pub fn error(&self) -> Option<Error> {
        self.error.clone()
    }

    /// Latches `e` unless an error is already latched.
    pub fn set_error(&mut self, e: Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn check(&self) -> Result<(), Error> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn fail<T>(&mut self, e: Error) -> Result<T, Error> {
        self.set_error(e.clone());
        Err(e)
    }

    /// Makes at least `n` bytes (n <= capacity) available unless the stream ends first;
    /// returns how many are available. I/O errors are returned but not latched here.
    fn fill(&mut self, n: usize) -> Result<usize, Error> {
        debug_assert!(n <= self.buf.len());
        if self.end - self.pos >= n {
            return Ok(self.end - self.pos);
        }
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.base += self.pos as u64;
            self.end -= self.pos;
            self.pos = 0;
        }
        while self.end < n && !self.inner_eof {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => self.inner_eof = true,
                Ok(k) => self.end += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.end - self.pos)
    }

    /// Consuming read of exactly `N` bytes.
    #[inline]
    fn get_array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        if self.error.is_none() && self.end - self.pos >= N {
            let mut a = [0u8; N];
            a.copy_from_slice(&self.buf[self.pos..self.pos + N]);
            self.pos += N;
            return Ok(a);
        }
        self.check()?;
        match self.fill(N) {
            Ok(avail) if avail >= N => {
                let mut a = [0u8; N];
                a.copy_from_slice(&self.buf[self.pos..self.pos + N]);
                self.pos += N;
                Ok(a)
            }
            Ok(_) => {
                let offset = self.base + self.end as u64;
                self.fail(Error::UnexpectedEof { offset })
            }
            Err(e) => self.fail(e),
        }
    }

    /// Reads one byte.
    #[inline]
    pub fn get_u8(&mut self) -> Result<u8, Error> {
        Ok(self.get_array::<1>()?[0])
    }

    /// Reads a big-endian u16.
    #[inline]
    pub fn get_be16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.get_array()?))
    }

    /// Reads a big-endian u32.
    #[inline]
    pub fn get_be32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.get_array()?))
    }

    /// Reads a big-endian u64.
    #[inline]
    pub fn get_be64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.get_array()?))
    }

    /// Reads a big-endian i64.
    #[inline]
    pub fn get_be_i64(&mut self) -> Result<i64, Error> {
        Ok(i64::from_be_bytes(self.get_array()?))
    }

    /// Fills `out` completely from the stream.
    pub fn get_buffer(&mut self, out: &mut [u8]) -> Result<(), Error> {
        self.check()?;
        let mut done = 0;
        // Buffered bytes first.
        let avail = (self.end - self.pos).min(out.len());
        out[..avail].copy_from_slice(&self.buf[self.pos..self.pos + avail]);
        self.pos += avail;
        done += avail;
        while done < out.len() {
            let rest = out.len() - done;
            if rest >= self.buf.len() {
                // Large read: bypass the buffer. The buffer is empty here, so keep `base`
                // consistent by treating the bytes as consumed directly.
                if self.inner_eof {
                    let offset = self.bytes_read();
                    return self.fail(Error::UnexpectedEof { offset });
                }
                match self.inner.read(&mut out[done..]) {
                    Ok(0) => self.inner_eof = true,
                    Ok(k) => {
                        done += k;
                        self.base += (self.pos + k) as u64;
                        self.pos = 0;
                        self.end = 0;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return self.fail(e.into()),
                }
            } else {
                match self.fill(rest) {
                    Ok(avail) => {
                        let k = avail.min(rest);
                        out[done..done + k].copy_from_slice(&self.buf[self.pos..self.pos + k]);
                        self.pos += k;
                        done += k;
                        if k < rest {
                            let offset = self.bytes_read();
                            return self.fail(Error::UnexpectedEof { offset });
                        }
                    }
                    Err(e) => return self.fail(e),
                }
            }
        }
        Ok(())
    }

    /// Discards `n` bytes.
    pub fn skip(&mut self, n: u64) -> Result<(), Error> {
        self.check()?;
        let mut left = n;
        while left > 0 {
            if self.pos == self.end {
                let want = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                match self.fill(want) {
                    Ok(0) => {
                        let offset = self.bytes_read();
                        return self.fail(Error::UnexpectedEof { offset });
                    }
                    Ok(_) => {}
                    Err(e) => return self.fail(e),
                }
            }
            let k = ((self.end - self.pos) as u64).min(left);
            // k <= end - pos, so it fits in usize.
            self.pos += k as usize;
            left -= k;
        }
        Ok(())
    }

    /// Reads a counted string (`u8 len` + bytes) as raw bytes into `out`, returning the length.
    pub fn get_counted_bytes<'a>(&mut self, out: &'a mut [u8; 255]) -> Result<&'a [u8], Error> {
        let len = usize::from(self.get_u8()?);
        self.get_buffer(&mut out[..len])?;
        Ok(&out[..len])
    }

    /// Reads a counted string; non-UTF-8 content is [`Error::InvalidUtf8`].
    pub fn get_counted_string(&mut self) -> Result<String, Error> {
        let offset = self.bytes_read();
        let mut tmp = [0u8; 255];
        let bytes = self.get_counted_bytes(&mut tmp)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => self.fail(Error::InvalidUtf8 { offset }),
        }
    }

    /// Returns the next byte without consuming it.
    pub fn peek_u8(&mut self) -> Result<u8, Error> {
        Ok(self.peek(1)?[0])
    }

    /// Returns the next `n` bytes without consuming them (`n` <= buffer capacity).
    ///
    /// Running into the end of the stream is reported as [`Error::UnexpectedEof`] but not
    /// latched, since nothing was consumed.
    pub fn peek(&mut self, n: usize) -> Result<&[u8], Error> {
        self.check()?;
        if n > self.buf.len() {
            return Err(Error::PeekTooLarge {
                requested: n,
                capacity: self.buf.len(),
            });
        }
        match self.fill(n) {
            Ok(avail) if avail >= n => Ok(&self.buf[self.pos..self.pos + n]),
            Ok(_) => Err(Error::UnexpectedEof {
                offset: self.base + self.end as u64,
            }),
            Err(e) => self.fail(e),
        }
    }

    /// True when the stream has no more bytes.
    pub fn is_eof(&mut self) -> Result<bool, Error> {
        self.check()?;
        match self.fill(1) {
            Ok(avail) => Ok(avail == 0),
            Err(e) => self.fail(e),
        }
    }

    /// Returns the inner reader; buffered but unread bytes are lost.
    pub fn into_inner(self) -> Box<dyn Read + Send> {
        self.inner
    }
}
