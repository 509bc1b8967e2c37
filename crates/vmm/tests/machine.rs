//! Machine-level migrations in one process: a running software guest moves to a destination
//! machine over loopback TCP and keeps running there from where it stopped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use migration::{Capability, MigrationStatus, RunState};
use transport::NoFds;
use vmm::machine::{Machine, MachineConfig, MachineType};
use vmm::soft::{Pattern, WorkloadConfig};

const MIB: u64 = 1 << 20;

fn config(incoming: bool) -> MachineConfig {
    MachineConfig {
        memory: 64 * MIB,
        fill: 16 * MIB,
        incoming,
        workload: Some(WorkloadConfig {
            vcpus: 2,
            working_set: 8 * MIB,
            write_rate: Some(64 * MIB),
            pattern: Pattern::Random,
            seed: 9,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn wait_status(m: &Machine) -> MigrationStatus {
    let t = Instant::now();
    loop {
        let s = m.migration().status();
        if !s.is_running() && s != MigrationStatus::None {
            return s;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "stuck in {s}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn migrate(src: &Arc<Machine>, dst: &Arc<Machine>) {
    dst.migrate_incoming("tcp:127.0.0.1:0", &NoFds).unwrap();
    let uri = dst.incoming_uri().unwrap();
    src.migrate(&uri, &NoFds, None).unwrap();
    assert_eq!(
        wait_status(src),
        MigrationStatus::Completed,
        "{:?}",
        src.migration().info()
    );
    dst.wait(true);
    assert_eq!(dst.incoming_result(), Some(Ok(())));
}

#[test]
fn running_guest_continues_on_the_destination() {
    let src = Machine::new(config(false)).unwrap();
    src.set_capabilities(&[(Capability::RamVerify, true)])
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        src.vcpus().unwrap().total_writes() > 0,
        "guest runs before migration"
    );
    let dst = Machine::new(config(true)).unwrap();
    assert_eq!(dst.run_state(), RunState::Inmigrate);
    migrate(&src, &dst);
    // The source stays paused after success; its vCPU states are what the destination got.
    assert_eq!(src.run_state(), RunState::Postmigrate);
    let src_states = src.vcpus().unwrap().states();
    assert_eq!(dst.run_state(), RunState::Running);
    std::thread::sleep(Duration::from_millis(100));
    let dst_states = dst.vcpus().unwrap().states();
    for (s, d) in src_states.iter().zip(&dst_states) {
        assert!(
            d.generation > s.generation,
            "vCPU {} did not continue: {s:?} -> {d:?}",
            s.vcpu
        );
    }
    // A second migrate from postmigrate is refused, as in QEMU.
    let err = src.migrate("tcp:127.0.0.1:1", &NoFds, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Can't migrate the vm that was paused due to previous migration"
    );
    src.shutdown();
    dst.shutdown();
}

#[test]
fn none_machine_round_trip_keeps_ram() {
    let cfg = |incoming| MachineConfig {
        machine: MachineType::None,
        ..config(incoming)
    };
    let src = Machine::new(cfg(false)).unwrap();
    src.set_capabilities(&[(Capability::RamVerify, true)])
        .unwrap();
    let dst = Machine::new(cfg(true)).unwrap();
    // ram-verify compared every block at switchover (the destination's vCPUs run afterwards).
    migrate(&src, &dst);
    assert_eq!(src.ram().blocks()[0].idstr(), "ram");
    assert_eq!(dst.run_state(), RunState::Running);
    src.shutdown();
    dst.shutdown();
}

#[test]
fn bad_uri_fails_with_qemu_text_and_guest_keeps_running() {
    let src = Machine::new(config(false)).unwrap();
    let err = src.migrate("bogus:thing", &NoFds, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Parameter 'uri' expects a valid migration protocol"
    );
    assert_eq!(src.migration().status(), MigrationStatus::Failed);
    assert_eq!(src.run_state(), RunState::Running);
    let err = src.migrate_incoming("tcp:127.0.0.1:0", &NoFds).unwrap_err();
    assert_eq!(
        err.to_string(),
        "'-incoming' was not specified on the command line"
    );
    src.shutdown();
}

#[test]
fn destination_with_other_vcpu_count_rejects_the_stream() {
    let src = Machine::new(config(false)).unwrap();
    let mut other = config(true);
    if let Some(w) = other.workload.as_mut() {
        w.vcpus = 1;
    }
    let dst = Machine::new(other).unwrap();
    dst.migrate_incoming("tcp:127.0.0.1:0", &NoFds).unwrap();
    src.migrate(&dst.incoming_uri().unwrap(), &NoFds, None)
        .unwrap();
    wait_status(&src);
    dst.wait(true);
    let err = dst.incoming_result().unwrap().unwrap_err();
    assert!(
        err.contains("Unknown savevm section or instance 'soft-cpu' 1"),
        "{err}"
    );
    assert_eq!(dst.migration().status(), MigrationStatus::Failed);
    src.shutdown();
    dst.shutdown();
}
