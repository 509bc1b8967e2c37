//! The VMM side of livemig: guests whose RAM is migrated.
//!
//! * [`soft`]: a software guest — vCPU threads that write a deterministic pattern into guest RAM,
//!   with pause/resume and a migratable per-vCPU state. Needs no KVM.

#![deny(missing_docs)]

pub mod kvm;
pub mod machine;
pub mod soft;
