//! Process-group kill and non-reaping wait for `exec:` children, which `std::process::Child`
//! cannot do (it kills one process and always reaps).
//!
//! Both take a pid; they are only sound against pid reuse while the caller keeps the child
//! unreaped (see `exec::ChildSlot`), which is a logical, not a memory-safety, condition.

use std::io;

/// `killpg(pid, SIGKILL)`: kills the process group led by `pid`.
pub fn kill_process_group(pid: libc::pid_t) -> io::Result<()> {
    // SAFETY: plain syscall; no memory involved.
    if unsafe { libc::killpg(pid, libc::SIGKILL) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until child `pid` has exited, leaving it unreaped (`waitid` with `WNOWAIT`), so
/// its pid and process group id stay ours. An interrupted wait returns
/// [`io::ErrorKind::Interrupted`].
pub fn wait_exited_unreaped(pid: libc::pid_t) -> io::Result<()> {
    // SAFETY: `siginfo_t` is plain old data; all-zero is valid and waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a live, writable siginfo_t for the call.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
