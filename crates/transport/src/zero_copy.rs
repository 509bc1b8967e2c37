//! Zero-copy sending (`zero-copy-send`, QEMU 7.1+): a multifd socket whose page payloads the
//! kernel sends straight from guest memory (`MSG_ZEROCOPY`), so the source saves one copy per
//! page. The kernel reads the pages after `sendmsg` returned; it reports on the socket's error
//! queue when it is done with each call, and [`ZeroCopyWriter::flush`] waits for every call
//! made so far. The caller keeps the memory it sent from alive until then (QEMU flushes at
//! each multifd sync; so does livemig).
//!
//! ```text
//! write_zero_copy(iov) → sendmsg #0, #1, … (sent = n)     memory must stay mapped
//! flush()              → read error-queue ranges [first, last] until done == sent
//!                        → whether the kernel copied instead (loopback always does)
//! ```
//!
//! Only TCP sockets can do it: on anything else [`ZeroCopyWriter::new`] fails, and the
//! migration refuses with QEMU's "Zero copy send feature not detected in host kernel".

use std::io::{self, IoSlice, Write};

use crate::sys::{self, Interest};
use crate::ChannelWriter;

/// A [`ChannelWriter`] on a socket with `SO_ZEROCOPY` on.
pub struct ZeroCopyWriter {
    w: ChannelWriter,
    /// `sendmsg` calls made with `MSG_ZEROCOPY`.
    sent: u64,
    /// Calls the kernel reported done.
    done: u64,
    /// Whether a completion since the last flush said the kernel copied.
    copied: bool,
}

/// The writer could not send zero-copy (not a TCP socket, or an old kernel); it is handed
/// back unchanged.
pub struct ZeroCopyUnsupported {
    /// The writer, usable for ordinary writes.
    pub writer: ChannelWriter,
    /// Why `SO_ZEROCOPY` could not be set.
    pub source: io::Error,
}

impl std::fmt::Display for ZeroCopyUnsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} cannot send zero-copy", self.writer.description())
    }
}

impl std::fmt::Debug for ZeroCopyUnsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZeroCopyUnsupported")
            .field("writer", &self.writer.description())
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for ZeroCopyUnsupported {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl ZeroCopyWriter {
    /// Turns zero-copy sending on for `w`'s socket.
    pub fn new(w: ChannelWriter) -> Result<ZeroCopyWriter, Box<ZeroCopyUnsupported>> {
        let enabled = match w.endpoint() {
            Some(ep) if ep.is_socket() => ep.with_fd(sys::zerocopy::enable),
            _ => Err(io::Error::from(io::ErrorKind::Unsupported)),
        };
        match enabled {
            Ok(()) => Ok(ZeroCopyWriter {
                w,
                sent: 0,
                done: 0,
                copied: false,
            }),
            Err(source) => Err(Box::new(ZeroCopyUnsupported { writer: w, source })),
        }
    }

    /// The writer, for ordinary (copied) writes such as packet headers.
    pub fn writer(&mut self) -> &mut ChannelWriter {
        &mut self.w
    }

    /// Sends all of `bufs` zero-copy. The memory behind them must stay mapped until
    /// [`flush`](Self::flush) returns (guest pages may change meanwhile: what the kernel
    /// reads then is what goes out, as for any page the guest dirties while it is sent).
    pub fn write_all_zero_copy(&mut self, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
        let ep = self
            .w
            .endpoint()
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::Unsupported))?;
        while !bufs.is_empty() {
            let r = ep.socket_call(Interest::Write, |fd| sys::zerocopy::send_vectored(fd, bufs));
            match r {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.sent += 1;
                    IoSlice::advance_slices(&mut bufs, n);
                }
                // Too much memory pinned by sends in flight: let some complete, then retry.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) && self.done < self.sent => {
                    self.wait_one()?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads one completion, waiting for it.
    fn wait_one(&mut self) -> io::Result<()> {
        let ep = self
            .w
            .endpoint()
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::Unsupported))?;
        let mut got = None;
        ep.socket_call(
            Interest::HangUp,
            |fd| match sys::zerocopy::read_completion(fd)? {
                Some(c) => {
                    got = Some(c);
                    Ok(1)
                }
                None => Err(io::ErrorKind::WouldBlock.into()),
            },
        )?;
        if let Some(c) = got {
            self.done += u64::from(c.last.wrapping_sub(c.first)) + 1;
            self.copied |= c.copied;
        }
        Ok(())
    }

    /// Waits until the kernel is done with every zero-copy send so far; returns whether it
    /// copied any of them after all (QEMU's `dirty-sync-missed-zero-copy` counts those).
    pub fn flush(&mut self) -> io::Result<bool> {
        while self.done < self.sent {
            self.wait_one()?;
        }
        Ok(std::mem::take(&mut self.copied))
    }
}

impl Write for ZeroCopyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.w.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::{connect, listen, MigrationUri, NoFds};

    fn pair(uri: &str) -> (ChannelWriter, crate::ChannelReader) {
        let uri: MigrationUri = uri.parse().unwrap();
        let listener = listen(&uri, &NoFds).unwrap();
        let addr: MigrationUri = listener.local_description().parse().unwrap();
        let out = connect(&addr, &NoFds).unwrap();
        let inc = listener.accept_next().unwrap();
        (out.into_split().1, inc.into_split().0)
    }

    #[test]
    fn tcp_sends_zero_copy_and_flush_waits_for_every_send() {
        let (w, mut r) = pair("tcp:127.0.0.1:0");
        let mut zc = ZeroCopyWriter::new(w).unwrap();
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            got
        });
        zc.writer().write_all(b"head").unwrap();
        for chunk in data.chunks(64 << 10) {
            zc.write_all_zero_copy(&mut [IoSlice::new(chunk)]).unwrap();
        }
        assert!(zc.sent >= 16);
        // Loopback always copies: the kernel says so in the completions.
        assert!(zc.flush().unwrap());
        assert_eq!(zc.done, zc.sent);
        assert!(!zc.flush().unwrap());
        drop(zc);
        let got = reader.join().unwrap();
        assert_eq!(&got[..4], b"head");
        assert_eq!(&got[4..], &data[..]);
    }

    #[test]
    fn unix_sockets_cannot_send_zero_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _r) = pair(&format!("unix:{}", dir.path().join("s").display()));
        let e = ZeroCopyWriter::new(w).err().unwrap();
        assert!(e.to_string().contains("cannot send zero-copy"), "{e}");
        // The writer comes back usable.
        let mut w = e.writer;
        w.write_all(b"still works").unwrap();
    }
}
