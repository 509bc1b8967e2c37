//! The machine's vCPUs and run state: [`VmControl`] for the migration engine, and the
//! `soft-cpu` device section that carries each software vCPU's state.
//!
//! ```text
//! FULL "soft-cpu" instance i, v1 : be64 vcpu  be64 generation  be64 rng  be64 position
//! ```

use std::sync::{Arc, Mutex, MutexGuard};

use guest_ram::GuestRam;
use migration::{
    Capabilities, DeviceState, Event, EventBus, MigrationError, RunState, VmControl, VmError,
};
use savevm::vmstate::{FieldKind, Value, VmStateDescription, VmStateValue};

use crate::soft::{SoftCpuState, SoftGuest, WorkloadConfig};

/// The vCPU threads, started lazily: a destination starts them from the received states.
enum Threads {
    /// Not started; the states to start from (filled by incoming `soft-cpu` sections).
    NotStarted(Vec<Option<SoftCpuState>>),
    /// Running or paused threads.
    Started(SoftGuest),
}

/// vCPUs plus run state; shared by the machine, the monitors and the migration thread.
pub struct Vcpus {
    ram: Arc<GuestRam>,
    workload: Option<WorkloadConfig>,
    threads: Mutex<Threads>,
    run_state: Mutex<RunState>,
    events: Arc<EventBus>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Vcpus {
    /// vCPUs for `workload` (None: a guest that does not run any code) in `initial` state.
    pub fn new(
        ram: Arc<GuestRam>,
        workload: Option<WorkloadConfig>,
        initial: RunState,
        events: Arc<EventBus>,
    ) -> Self {
        let n = workload.as_ref().map_or(0, |w| w.vcpus);
        Self {
            ram,
            workload,
            threads: Mutex::new(Threads::NotStarted(vec![None; n])),
            run_state: Mutex::new(initial),
            events,
        }
    }

    /// Number of vCPUs with a workload.
    pub fn count(&self) -> usize {
        self.workload.as_ref().map_or(0, |w| w.vcpus)
    }

    /// Total page writes done by the guest so far in this process.
    pub fn total_writes(&self) -> u64 {
        match &*lock(&self.threads) {
            Threads::Started(g) => g.total_writes(),
            Threads::NotStarted(_) => 0,
        }
    }

    /// Current per-vCPU states (pause first for a consistent view).
    pub fn states(&self) -> Vec<SoftCpuState> {
        match &*lock(&self.threads) {
            Threads::Started(g) => g.save_state().unwrap_or_default(),
            Threads::NotStarted(s) => s
                .iter()
                .enumerate()
                .map(|(i, s)| s.unwrap_or_else(|| self.initial_state(i)))
                .collect(),
        }
    }

    fn initial_state(&self, i: usize) -> SoftCpuState {
        SoftCpuState::initial(self.workload.as_ref().map_or(0, |w| w.seed), i as u64)
    }

    fn start_threads(&self, threads: &mut Threads) -> Result<(), VmError> {
        let Some(cfg) = self.workload.clone() else {
            return Ok(());
        };
        if let Threads::NotStarted(states) = threads {
            let states = states
                .iter()
                .enumerate()
                .map(|(i, s)| s.unwrap_or_else(|| self.initial_state(i)))
                .collect();
            let g = SoftGuest::start_from(self.ram.clone(), cfg, states)
                .map_err(|e| VmError::Start(Box::new(e)))?;
            *threads = Threads::Started(g);
        }
        Ok(())
    }

    /// Stops the threads when the process ends.
    pub fn shutdown(&self) {
        let mut t = lock(&self.threads);
        if let Threads::Started(g) = std::mem::replace(&mut *t, Threads::NotStarted(Vec::new())) {
            g.stop();
        }
        *lock(&self.run_state) = RunState::Shutdown;
    }
}

impl VmControl for Vcpus {
    fn run_state(&self) -> RunState {
        *lock(&self.run_state)
    }

    fn vm_stop(&self, state: RunState) -> Result<bool, VmError> {
        let was_running = {
            let t = lock(&self.threads);
            if let Threads::Started(g) = &*t {
                g.pause();
            }
            let mut rs = lock(&self.run_state);
            let was = rs.is_running();
            *rs = state;
            was
        };
        if was_running {
            self.events.emit(Event::Stop);
        }
        Ok(was_running)
    }

    fn vm_start(&self) -> Result<(), VmError> {
        {
            let mut t = lock(&self.threads);
            self.start_threads(&mut t)?;
            if let Threads::Started(g) = &*t {
                g.resume();
            }
            *lock(&self.run_state) = RunState::Running;
        }
        self.events.emit(Event::Resume);
        Ok(())
    }

    fn set_run_state(&self, state: RunState) {
        *lock(&self.run_state) = state;
    }

    fn set_cpu_throttle(&self, percent: u8) {
        if let Threads::Started(g) = &*lock(&self.threads) {
            g.set_throttle(percent);
        }
    }
}

/// The `soft-cpu` device of vCPU `index`.
pub struct SoftCpuDevice {
    vcpus: Arc<Vcpus>,
    index: usize,
}

impl SoftCpuDevice {
    /// The device for vCPU `index`.
    pub fn new(vcpus: Arc<Vcpus>, index: usize) -> Self {
        Self { vcpus, index }
    }
}

impl DeviceState for SoftCpuDevice {
    fn description(&self) -> VmStateDescription {
        VmStateDescription::new("soft-cpu", 1)
            .minimum_version(1)
            .field("vcpu", FieldKind::U64)
            .field("generation", FieldKind::U64)
            .field("rng", FieldKind::U64)
            .field("position", FieldKind::U64)
    }

    fn needed(&self, _caps: &Capabilities) -> bool {
        true
    }

    fn save(&self) -> VmStateValue {
        let s = self
            .vcpus
            .states()
            .get(self.index)
            .copied()
            .unwrap_or_default();
        VmStateValue::new()
            .with("vcpu", Value::Uint(s.vcpu))
            .with("generation", Value::Uint(s.generation))
            .with("rng", Value::Uint(s.rng))
            .with("position", Value::Uint(s.position))
    }

    fn load(&mut self, v: &VmStateValue, _version: u32) -> Result<(), MigrationError> {
        let err = |reason: String| MigrationError::DeviceLoad {
            idstr: "soft-cpu".into(),
            reason,
        };
        let get = |name: &str| v.get_u64(name).map_err(|e| err(e.to_string()));
        let s = SoftCpuState {
            vcpu: get("vcpu")?,
            generation: get("generation")?,
            rng: get("rng")?,
            position: get("position")?,
        };
        if s.vcpu != self.index as u64 || s.rng == 0 {
            return Err(err(format!(
                "state of vCPU {} is not valid for vCPU {}",
                s.vcpu, self.index
            )));
        }
        // The next page written is `position` within the vCPU's slice of the working set:
        // the vCPU threads refuse to start from anything else, too late for the source.
        if let Some(w) = &self.vcpus.workload {
            let slice = w.slice_of(self.index);
            let pages = slice.end - slice.start;
            if s.position >= pages {
                return Err(err(format!(
                    "invalid value {} for position (vCPU {} writes {pages} pages)",
                    s.position, self.index
                )));
            }
        }
        match &mut *lock(&self.vcpus.threads) {
            Threads::NotStarted(states) => match states.get_mut(self.index) {
                Some(slot) => *slot = Some(s),
                None => return Err(err(format!("no vCPU {}", self.index))),
            },
            Threads::Started(_) => return Err(err("the vCPUs are already running".into())),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use guest_ram::{Backing, RamBlock};

    use super::*;

    /// A position outside the vCPU's slice is refused when loaded, not when the vCPU threads
    /// start (after the source was told the migration succeeded).
    #[test]
    fn a_position_outside_the_slice_is_refused_at_load() {
        let ram = GuestRam::new(vec![
            RamBlock::new("pc.ram", 1 << 20, Backing::Anonymous).unwrap()
        ]);
        let workload = WorkloadConfig {
            vcpus: 2,
            working_set: 256 << 10,
            ..WorkloadConfig::default()
        };
        let vcpus = Arc::new(Vcpus::new(
            Arc::new(ram),
            Some(workload),
            RunState::Paused,
            Arc::new(EventBus::new()),
        ));
        let mut dev = SoftCpuDevice::new(vcpus.clone(), 1);
        let state = |position: u64| {
            VmStateValue::new()
                .with("vcpu", Value::Uint(1))
                .with("generation", Value::Uint(7))
                .with("rng", Value::Uint(99))
                .with("position", Value::Uint(position))
        };
        // 64 pages, 32 per vCPU.
        let e = dev.load(&state(32), 1).unwrap_err().to_string();
        assert!(e.contains("invalid value 32 for position"), "{e}");
        assert!(dev.load(&state(u64::MAX), 1).is_err());
        dev.load(&state(31), 1).unwrap();
        assert_eq!(vcpus.states()[1].position, 31);
    }
}
