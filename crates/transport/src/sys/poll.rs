//! `poll(2)`: wait until one of a few descriptors is ready, with a timeout.
//!
//! [`PollFd`] is a `struct pollfd` that borrows its descriptor for as long as it lives, so a
//! descriptor cannot be closed (and its number reused) while it is being polled.

use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// What to wait for. Errors and hang-ups are always reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// `POLLIN`: data (or a connection, or the end of the stream) can be read.
    Read,
    /// `POLLOUT`: data can be written.
    Write,
    /// Nothing but errors and hang-ups (`events = 0`).
    HangUp,
    /// `POLLRDHUP`: the peer shut its sending side (even with unread data still queued).
    PeerClosed,
}

/// One entry of a [`poll`] set.
#[repr(transparent)]
pub struct PollFd<'a> {
    raw: libc::pollfd,
    _fd: PhantomData<&'a ()>,
}

impl<'a> PollFd<'a> {
    /// Polls `fd` (kept borrowed, hence open) for `interest`.
    pub fn new<F: AsRawFd + ?Sized>(fd: &'a F, interest: Interest) -> Self {
        let events = match interest {
            Interest::Read => libc::POLLIN,
            Interest::Write => libc::POLLOUT,
            Interest::HangUp => 0,
            Interest::PeerClosed => libc::POLLRDHUP,
        };
        PollFd {
            raw: libc::pollfd {
                fd: fd.as_raw_fd(),
                events,
                revents: 0,
            },
            _fd: PhantomData,
        }
    }

    /// Whether the last [`poll`] reported anything for this descriptor (readiness, an error,
    /// a hang-up or an invalid descriptor).
    pub fn is_ready(&self) -> bool {
        self.raw.revents != 0
    }

    /// Whether the last [`poll`] reported a hang-up or an error (or, for
    /// [`Interest::PeerClosed`], the peer's shutdown).
    pub fn is_hung_up(&self) -> bool {
        self.raw.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLRDHUP) != 0
    }
}

impl std::fmt::Debug for PollFd<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollFd")
            .field("fd", &self.raw.fd)
            .field("events", &self.raw.events)
            .field("revents", &self.raw.revents)
            .finish()
    }
}

/// Waits until an entry of `fds` is ready or `timeout` passed (`None`: no timeout; a
/// sub-millisecond remainder is rounded up so it does not spin). Returns how many entries
/// are ready (0 on timeout); an interrupted call returns [`io::ErrorKind::Interrupted`].
pub fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    let timeout_ms = match timeout {
        None => -1,
        Some(t) => i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
    };
    for fd in fds.iter_mut() {
        fd.raw.revents = 0;
    }
    // SAFETY: `PollFd` is a transparent `pollfd`, so `fds` is a live, writable array of
    // `fds.len()` pollfd structs for the duration of the call; each descriptor is kept open
    // by the borrow its `PollFd` holds.
    let n = unsafe {
        libc::poll(
            fds.as_mut_ptr().cast(),
            fds.len() as libc::nfds_t,
            timeout_ms,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn readable_timeout_and_hang_up() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut set = [PollFd::new(&b, Interest::Read)];
        assert_eq!(poll(&mut set, Some(Duration::from_millis(1))).unwrap(), 0);
        assert!(!set[0].is_ready());
        a.write_all(b"x").unwrap();
        assert_eq!(poll(&mut set, None).unwrap(), 1);
        assert!(set[0].is_ready() && !set[0].is_hung_up());
        drop(a);
        let mut set = [PollFd::new(&b, Interest::HangUp)];
        assert_eq!(poll(&mut set, Some(Duration::ZERO)).unwrap(), 1);
        assert!(set[0].is_hung_up());
    }
}
