//! [`FakeVm`]: a [`VmControl`] with no guest behind it, for engine tests. It keeps the run
//! state, a "vCPUs running" flag that simulated guest writers check, counters of stops and
//! starts, the last throttle, and hooks run on stop and start (e.g. pausing a disk writer).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use migration::{RunState, VmControl, VmError};

type Hook = Box<dyn Fn() + Send + Sync>;

/// A VM without vCPUs. See the [module docs](self).
pub struct FakeVm {
    state: Mutex<RunState>,
    running: Arc<AtomicBool>,
    stops: AtomicU32,
    starts: AtomicU32,
    throttle: AtomicU8,
    fail_start: Mutex<Option<String>>,
    on_stop: Mutex<Vec<Hook>>,
    on_start: Mutex<Vec<Hook>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeVm {
    /// A VM in run state `running` (`true`) or `paused`.
    pub fn new(running: bool) -> FakeVm {
        FakeVm {
            state: Mutex::new(if running {
                RunState::Running
            } else {
                RunState::Paused
            }),
            running: Arc::new(AtomicBool::new(running)),
            stops: AtomicU32::new(0),
            starts: AtomicU32::new(0),
            throttle: AtomicU8::new(0),
            fail_start: Mutex::new(None),
            on_stop: Mutex::new(Vec::new()),
            on_start: Mutex::new(Vec::new()),
        }
    }

    /// The "vCPUs running" flag: true between `vm_start` and `vm_stop`. A simulated guest
    /// writes only while it is set.
    pub fn running_flag(&self) -> Arc<AtomicBool> {
        self.running.clone()
    }

    /// Runs `f` in every `vm_stop`, after the flag is cleared and before it returns (so `f`
    /// can wait for simulated writers to quiesce).
    pub fn on_stop(&self, f: impl Fn() + Send + Sync + 'static) {
        lock(&self.on_stop).push(Box::new(f));
    }

    /// Runs `f` in every successful `vm_start`, before the flag is set.
    pub fn on_start(&self, f: impl Fn() + Send + Sync + 'static) {
        lock(&self.on_start).push(Box::new(f));
    }

    /// Makes the next `vm_start` fail with `reason`.
    pub fn fail_next_start(&self, reason: &str) {
        *lock(&self.fail_start) = Some(reason.to_string());
    }

    /// Number of `vm_stop` calls.
    pub fn stops(&self) -> u32 {
        self.stops.load(Ordering::SeqCst)
    }

    /// Number of successful `vm_start` calls.
    pub fn starts(&self) -> u32 {
        self.starts.load(Ordering::SeqCst)
    }

    /// The last throttle percentage set (0: not throttled).
    pub fn throttle(&self) -> u8 {
        self.throttle.load(Ordering::SeqCst)
    }
}

impl VmControl for FakeVm {
    fn run_state(&self) -> RunState {
        *lock(&self.state)
    }

    fn vm_stop(&self, state: RunState) -> Result<bool, VmError> {
        let was = self.running.swap(false, Ordering::SeqCst);
        for f in lock(&self.on_stop).iter() {
            f();
        }
        self.stops.fetch_add(1, Ordering::SeqCst);
        *lock(&self.state) = state;
        Ok(was)
    }

    fn vm_start(&self) -> Result<(), VmError> {
        if let Some(reason) = lock(&self.fail_start).take() {
            return Err(VmError::Start(reason.into()));
        }
        for f in lock(&self.on_start).iter() {
            f();
        }
        self.starts.fetch_add(1, Ordering::SeqCst);
        self.running.store(true, Ordering::SeqCst);
        *lock(&self.state) = RunState::Running;
        Ok(())
    }

    fn set_run_state(&self, state: RunState) {
        *lock(&self.state) = state;
    }

    fn set_cpu_throttle(&self, percent: u8) {
        self.throttle.store(percent, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_and_start_follow_the_vm_control_contract() {
        let vm = FakeVm::new(true);
        let flag = vm.running_flag();
        let seen = Arc::new(AtomicBool::new(true));
        let s = seen.clone();
        let f = flag.clone();
        vm.on_stop(move || s.store(f.load(Ordering::SeqCst), Ordering::SeqCst));
        assert!(vm.vm_stop(RunState::FinishMigrate).unwrap());
        assert!(
            !seen.load(Ordering::SeqCst),
            "hook ran before the flag was cleared"
        );
        assert_eq!(vm.run_state(), RunState::FinishMigrate);
        assert!(!vm.vm_stop(RunState::Paused).unwrap());
        assert_eq!(vm.stops(), 2);

        vm.fail_next_start("no vCPUs today");
        let e = vm.vm_start().unwrap_err();
        assert_eq!(
            migration::error_report(&e),
            "cannot start the guest: no vCPUs today"
        );
        assert!(!flag.load(Ordering::SeqCst));
        assert_eq!((vm.starts(), vm.run_state()), (0, RunState::Paused));
        vm.vm_start().unwrap();
        assert!(flag.load(Ordering::SeqCst));
        assert_eq!((vm.starts(), vm.run_state()), (1, RunState::Running));

        vm.set_cpu_throttle(30);
        assert_eq!(vm.throttle(), 30);
        vm.set_run_state(RunState::Postmigrate);
        assert_eq!(vm.run_state(), RunState::Postmigrate);
    }
}
