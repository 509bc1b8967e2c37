//! livemig's test kit: what the crates' tests would otherwise write again and again. Used only
//! as a `[dev-dependencies]` entry.
//!
//! | module | what |
//! | --- | --- |
//! | [`skip`] | visible `SKIP:` lines and "is this available here" checks (KVM, QEMU, qemu-img, Python `qemu.qmp`) |
//! | [`wait`] | polling with a timeout instead of fixed sleeps |
//! | [`net`] | temporary Unix socket paths and TCP ports for tests |
//! | [`fake_vm`] | [`FakeVm`], a [`migration::VmControl`] without a guest |
//! | [`pair`] | [`Side`]: one end of an in-process migration driven through the engine's public API |
//! | [`relay`] | [`FaultRelay`]: a TCP relay that stops a migration stream at a byte count or a pattern, for kills, cancels and cuts in one chosen phase |
//! | [`tls`] | a throw-away CA and QEMU-style credential directories (`ca-cert.pem`, `server-cert.pem`, …) |
//! | [`conformance`] | the checks every [`migration::DeviceState`] must pass, stamped onto a type by [`device_state_conformance!`] |
//!
//! The three test tiers (STYLE practice 16) meet here: unit tests need nothing, tests that
//! need KVM or QEMU call a `require_*` check and return after a visible SKIP line when it
//! fails.
//!
//! ```
//! use std::time::Duration;
//!
//! if !testkit::require_kvm("doc example") {
//!     return; // "SKIP: /dev/kvm not usable (doc example)" is on stderr
//! }
//! assert!(testkit::wait_until(Duration::from_secs(1), || true));
//! ```

pub mod conformance;
pub mod fake_vm;
pub mod net;
pub mod pair;
pub mod relay;
pub mod skip;
pub mod tls;
pub mod wait;

pub use fake_vm::FakeVm;
pub use net::{bound_tcp_listener, free_tcp_port, TempSocket};
pub use pair::{ram_registry, ram_vm, RamVm, Side, MACHINE};
pub use relay::{FaultRelay, Trigger};
pub use skip::{
    find_program, kvm_usable, print_skip, python_qmp_available, require_kvm, require_python_qmp,
    require_qemu_img, require_qemu_system, QEMU_IMG, QEMU_SYSTEM,
};
pub use wait::{poll, wait_for, wait_until};
