//! Migratable KVM state: per-vCPU ([`cpu`]) and VM-wide ([`vm`]) sections, and the
//! [`migration::DeviceState`] adapters that register them.

pub mod check;
pub mod cpu;
pub(crate) mod devices;
pub mod vm;
mod x86;

#[cfg(test)]
mod tests;
