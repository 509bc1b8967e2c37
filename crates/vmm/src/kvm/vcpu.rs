//! vCPU threads: the `KVM_RUN` loop, port I/O dispatch, and pause/resume with a signal kick.
//!
//! ```text
//!            resume()                      pause()
//!   Parked ----------> Running (KVM_RUN) ----------> Parked
//!     ^                   |  guest powers off / triple fault / KVM error
//!     |                   v
//!     +---------------- Stopped(reason): every vCPU parks, resume() is refused
//! ```
//!
//! `pause()` sets the command to `Pause` and then, until every thread reports parked,
//! re-sends a real-time signal to each thread every millisecond. The signal handler does
//! nothing; its only effect is that `KVM_RUN` returns `EINTR` (a signal that lands just before
//! a thread enters `KVM_RUN` is lost, which the resend covers). Before parking, a thread runs
//! `KVM_RUN` once with `immediate_exit = 1`, which completes a pending port/MMIO read without
//! entering the guest, so the registers read while parked are architecturally consistent.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::error::KvmError;
use super::serial::{SerialPort, SERIAL_BASE, SERIAL_PORTS};

/// I/O port whose 16-bit write of [`POWEROFF_VALUE`] powers the VM off.
pub const POWEROFF_PORT: u16 = 0x604;
/// Value to write to [`POWEROFF_PORT`].
pub const POWEROFF_VALUE: u16 = 0x2000;

/// Why the guest stopped on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote the power-off value to the power-off port (or KVM reported a
    /// `SYSTEM_EVENT_SHUTDOWN`).
    PowerOff,
    /// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault,
    /// The guest asked for a reset, which this VMM does not do.
    Reset,
    /// `KVM_RUN` failed or exited in a way the VMM cannot handle.
    Error(String),
}

const INTERNAL_ERROR: &str = "KVM internal error";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Run,
    Pause,
    Exit,
}

struct Ctl {
    cmd: Cmd,
    parked: usize,
    exited: usize,
    stop: Option<StopReason>,
    tids: Vec<Option<libc::pthread_t>>,
}

pub(crate) struct Control {
    ctl: Mutex<Ctl>,
    cv: Condvar,
    n: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn kick_signal() -> i32 {
    SIGRTMIN() + 2
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() -> Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.to_string()))
        .clone()
}

impl Control {
    fn kick_all(&self, ctl: &Ctl) {
        for tid in ctl.tids.iter().flatten() {
            // SAFETY: `tid` belongs to a vCPU thread whose JoinHandle the Runner still holds
            // (threads are joined only after `Exit`), so the pthread_t is valid; the signal has
            // a no-op handler installed, so delivery cannot kill or corrupt the thread.
            unsafe {
                libc::pthread_kill(*tid, kick_signal());
            }
        }
    }

    /// The reason the guest stopped, if it did.
    pub(crate) fn stop_reason(&self) -> Option<StopReason> {
        lock(&self.ctl).stop.clone()
    }

    /// Waits up to `timeout` for the guest to stop on its own.
    pub(crate) fn wait_stopped(&self, timeout: Duration) -> Option<StopReason> {
        let g = lock(&self.ctl);
        let (g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |c| c.stop.is_none())
            .unwrap_or_else(|p| p.into_inner());
        g.stop.clone()
    }
}

/// The vCPU threads of one VM.
pub(crate) struct Runner {
    control: Arc<Control>,
    threads: Vec<JoinHandle<()>>,
}

impl Runner {
    /// Spawns one thread per vCPU, all parked.
    pub(crate) fn spawn(
        vcpus: &[Arc<Mutex<VcpuFd>>],
        serial: Arc<SerialPort>,
    ) -> Result<Runner, KvmError> {
        install_kick_handler().map_err(|e| KvmError::Thread {
            index: 0,
            source: std::io::Error::other(format!(
                "cannot install the vCPU kick signal handler: {e}"
            )),
        })?;
        let n = vcpus.len();
        let control = Arc::new(Control {
            ctl: Mutex::new(Ctl {
                cmd: Cmd::Pause,
                parked: 0,
                exited: 0,
                stop: None,
                tids: vec![None; n],
            }),
            cv: Condvar::new(),
            n,
        });
        let mut runner = Runner {
            control: control.clone(),
            threads: Vec::new(),
        };
        for (index, vcpu) in vcpus.iter().enumerate() {
            let (vcpu, serial, control) = (vcpu.clone(), serial.clone(), control.clone());
            let h = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || vcpu_thread(index, &vcpu, &serial, &control))
                .map_err(|source| KvmError::Thread { index, source })?;
            runner.threads.push(h);
        }
        runner.wait_all_parked();
        Ok(runner)
    }

    pub(crate) fn control(&self) -> &Arc<Control> {
        &self.control
    }

    fn wait_all_parked(&self) {
        let c = &self.control;
        let mut g = lock(&c.ctl);
        while g.parked + g.exited < c.n {
            c.kick_all(&g);
            g =
                c.cv.wait_timeout(g, Duration::from_millis(1))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
        }
    }

    /// Lets the vCPUs run. Fails if the guest stopped on its own.
    pub(crate) fn resume(&self) -> Result<(), StopReason> {
        let mut g = lock(&self.control.ctl);
        if let Some(r) = &g.stop {
            return Err(r.clone());
        }
        g.cmd = Cmd::Run;
        self.control.cv.notify_all();
        Ok(())
    }

    /// Stops every vCPU and returns once all of them are parked outside `KVM_RUN`.
    pub(crate) fn pause(&self) {
        {
            let mut g = lock(&self.control.ctl);
            if g.cmd == Cmd::Run {
                g.cmd = Cmd::Pause;
            }
        }
        self.wait_all_parked();
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        {
            let mut g = lock(&self.control.ctl);
            g.cmd = Cmd::Exit;
            self.control.cv.notify_all();
        }
        loop {
            let g = lock(&self.control.ctl);
            if g.exited == self.control.n {
                break;
            }
            self.control.kick_all(&g);
            let _ = self.control.cv.wait_timeout(g, Duration::from_millis(1));
        }
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

/// Completes a pending I/O read (so the registers are consistent) without entering the guest.
fn flush_pending_io(vcpu: &mut VcpuFd, index: usize, serial: &SerialPort) -> Option<StopReason> {
    vcpu.set_kvm_immediate_exit(1);
    let mut r = match vcpu.run() {
        Ok(exit) => handle_exit(exit, serial),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
        Err(e) => Some(StopReason::Error(format!("KVM_RUN (flush) failed: {e}"))),
    };
    if r == Some(StopReason::Error(INTERNAL_ERROR.into())) {
        r = Some(internal_error(vcpu, index));
    }
    vcpu.set_kvm_immediate_exit(0);
    r
}

fn vcpu_thread(index: usize, vcpu: &Mutex<VcpuFd>, serial: &SerialPort, control: &Control) {
    {
        let mut g = lock(&control.ctl);
        if let Some(slot) = g.tids.get_mut(index) {
            // SAFETY: pthread_self has no preconditions.
            *slot = Some(unsafe { libc::pthread_self() });
        }
    }
    let mut need_flush = false;
    loop {
        {
            let mut g = lock(&control.ctl);
            if g.cmd != Cmd::Run {
                if need_flush {
                    drop(g);
                    let r = flush_pending_io(&mut lock(vcpu), index, serial);
                    g = lock(&control.ctl);
                    if let Some(r) = r {
                        stop_guest(control, &mut g, r);
                    }
                }
                g.parked += 1;
                control.cv.notify_all();
                while g.cmd == Cmd::Pause {
                    g = control.cv.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                g.parked -= 1;
                if g.cmd == Cmd::Exit {
                    g.exited += 1;
                    control.cv.notify_all();
                    return;
                }
            }
        }
        let mut fd = lock(vcpu);
        need_flush = true;
        let mut stop = match fd.run() {
            Ok(exit) => handle_exit(exit, serial),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(StopReason::Error(format!(
                "KVM_RUN failed on vCPU {index}: {e}"
            ))),
        };
        if stop == Some(StopReason::Error(INTERNAL_ERROR.into())) {
            stop = Some(internal_error(&mut fd, index));
        }
        drop(fd);
        if let Some(r) = stop {
            tracing::info!(vcpu = index, reason = ?r, "guest stopped");
            let mut g = lock(&control.ctl);
            stop_guest(control, &mut g, r);
        }
    }
}

/// Describes the `KVM_EXIT_INTERNAL_ERROR` that `fd` just returned.
fn internal_error(fd: &mut VcpuFd, index: usize) -> StopReason {
    let run = fd.get_kvm_run();
    // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, for which KVM fills the `internal`
    // member of the exit union; it is plain integers.
    let (sub, n, data) = unsafe {
        let i = &run.__bindgen_anon_1.internal;
        (i.suberror, i.ndata, i.data)
    };
    let data = &data[..(n as usize).min(data.len())];
    StopReason::Error(format!(
        "{INTERNAL_ERROR} on vCPU {index}: suberror {sub}, data {data:x?}"
    ))
}

fn stop_guest(control: &Control, g: &mut Ctl, reason: StopReason) {
    if g.stop.is_none() {
        g.stop = Some(reason);
    }
    if g.cmd == Cmd::Run {
        g.cmd = Cmd::Pause;
    }
    control.kick_all(g);
    control.cv.notify_all();
}

fn handle_exit(exit: VcpuExit<'_>, serial: &SerialPort) -> Option<StopReason> {
    let serial_range = SERIAL_BASE..SERIAL_BASE + SERIAL_PORTS;
    match exit {
        VcpuExit::IoOut(port, data) => {
            if serial_range.contains(&port) {
                if let Some(&b) = data.first() {
                    serial.write((port - SERIAL_BASE) as u8, b);
                }
            } else if port == POWEROFF_PORT && data == POWEROFF_VALUE.to_le_bytes() {
                return Some(StopReason::PowerOff);
            }
            None
        }
        VcpuExit::IoIn(port, data) => {
            if serial_range.contains(&port) {
                let v = serial.read((port - SERIAL_BASE) as u8);
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    *b = v;
                }
            } else {
                data.fill(0xff);
            }
            None
        }
        VcpuExit::MmioRead(_, data) => {
            data.fill(0xff);
            None
        }
        VcpuExit::MmioWrite(..) | VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => None,
        VcpuExit::Shutdown => Some(StopReason::TripleFault),
        VcpuExit::SystemEvent(kind, _) => Some(match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => StopReason::PowerOff,
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => StopReason::Reset,
            k => StopReason::Error(format!("unhandled KVM system event {k}")),
        }),
        VcpuExit::FailEntry(reason, cpu) => Some(StopReason::Error(format!(
            "VM entry failed on host CPU {cpu}, hardware reason {reason:#x}"
        ))),
        VcpuExit::InternalError => Some(StopReason::Error(INTERNAL_ERROR.into())),
        other => Some(StopReason::Error(format!("unhandled vCPU exit {other:?}"))),
    }
}
