//! `exec:CMD` children: `/bin/sh -c CMD` with the stream on a pipe.
//!
//! | direction | child stdin | child stdout | child stderr |
//! | --- | --- | --- | --- |
//! | outgoing (`migrate exec:…`) | the stream (pipe from us) | `/dev/null` | inherited |
//! | incoming (`migrate-incoming exec:…`) | `/dev/null` | the stream (pipe to us) | inherited |
//!
//! This matches QEMU's `qio_channel_command_new_spawn`, which points the unused standard
//! stream at `/dev/null` (so a command like `exec:cat > f` cannot scribble on our stdout).
//!
//! The child is the leader of its own process group, so that cancelling a migration kills
//! a whole pipeline (`exec:gzip | ssh …`), not just the shell. A child is always reaped:
//! by [`ChildSlot::wait`] from `finish`, or killed and reaped when the channel is dropped
//! without finishing. While it is unreaped its pid (and group id) cannot be reused, which
//! is what makes killing it from another thread safe; `wait` therefore first waits with
//! `WNOWAIT` and only reaps under the lock.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;

use crate::shutdown::CancelHook;
use crate::sys::process;

/// Which end of the child carries the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// We write to the child's stdin.
    ToChild,
    /// We read the child's stdout.
    FromChild,
}

/// Starts `/bin/sh -c cmd` in its own process group; the stream pipe is left in the
/// returned `Child` (`stdin` or `stdout`).
pub(crate) fn spawn(cmd: &str, direction: Direction) -> io::Result<Child> {
    let mut command = Command::new("/bin/sh");
    command.arg("-c").arg(cmd).process_group(0);
    match direction {
        Direction::ToChild => command.stdin(Stdio::piped()).stdout(Stdio::null()),
        Direction::FromChild => command.stdin(Stdio::null()).stdout(Stdio::piped()),
    };
    command.spawn()
}

/// A child that must be reaped exactly once, killable from any thread until then.
pub(crate) struct ChildSlot {
    child: Mutex<Option<Child>>,
    pid: libc::pid_t,
}

impl ChildSlot {
    pub(crate) fn new(child: Child) -> io::Result<ChildSlot> {
        let pid = libc::pid_t::try_from(child.id())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "child pid out of range"))?;
        Ok(ChildSlot {
            child: Mutex::new(Some(child)),
            pid,
        })
    }

    /// Kills the child's process group if the child has not been reaped yet.
    pub(crate) fn kill(&self) {
        let guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_some() {
            // The group leader `pid` is our unreaped child (we hold the lock that reaping
            // needs), so the group id cannot belong to anyone else.
            let _ = process::kill_process_group(self.pid);
        }
    }

    /// Waits for the child to exit and reaps it. `Ok(None)` if it was already reaped.
    pub(crate) fn wait(&self) -> io::Result<Option<ExitStatus>> {
        if self.lock().is_none() {
            return Ok(None);
        }
        // Wait without reaping, so `kill` from another thread stays safe meanwhile.
        // `pid` is our child, unreaped: only this function reaps, under the lock below.
        loop {
            match process::wait_exited_unreaped(self.pid) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        match self.lock().take() {
            Some(mut child) => child.wait().map(Some),
            None => Ok(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl CancelHook for ChildSlot {
    fn on_cancel(&self) {
        self.kill();
    }
}

impl Drop for ChildSlot {
    fn drop(&mut self) {
        let slot = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = slot.take() {
            // Dropped without `finish`: the stream was abandoned, so stop the command.
            // The child is unreaped, so its group id is ours.
            let _ = process::kill_process_group(self.pid);
            let _ = child.wait();
        }
    }
}
