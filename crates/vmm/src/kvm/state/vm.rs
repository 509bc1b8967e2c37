//! VM-wide KVM device state: the in-kernel PIC pair and IOAPIC, the PIT, and kvmclock.
//!
//! ```text
//! FULL "kvm-irqchip" v1:  pic_master[512]  pic_slave[512]  ioapic[512]
//!                         ; the `chip` union of struct kvm_irqchip from KVM_GET_IRQCHIP
//! FULL "kvm-pit"     v1:  pit[112]     ; struct kvm_pit_state2 (KVM_GET_PIT2)
//! FULL "kvmclock"    v1:  be64 clock   ; KVM_GET_CLOCK, nanoseconds of guest time
//! ```
//!
//! These are applied before the vCPUs' own state (LAPICs reference the IOAPIC routing) and
//! before any vCPU runs.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use savevm::vmstate::{FieldKind, Value, VmStateDescription, VmStateValue};

use super::check;
use crate::kvm::error::{kvm, KvmError};
use crate::kvm::pod::{from_bytes, size, to_bytes};

/// Size of the `chip` union of `kvm_irqchip`.
const CHIP_BYTES: usize = 512;
const CHIPS: [(&str, u32); 3] = [
    ("pic_master", KVM_IRQCHIP_PIC_MASTER),
    ("pic_slave", KVM_IRQCHIP_PIC_SLAVE),
    ("ioapic", KVM_IRQCHIP_IOAPIC),
];

/// Which VM-wide section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmSection {
    /// `kvm-irqchip`.
    Irqchip,
    /// `kvm-pit`.
    Pit,
    /// `kvmclock`.
    Clock,
}

/// Captured VM-wide state, one variant per section.
#[derive(Clone)]
pub enum VmSectionState {
    /// The three irqchips, as raw `kvm_irqchip.chip` bytes.
    Irqchip([Vec<u8>; 3]),
    /// The PIT.
    Pit(kvm_pit_state2),
    /// Guest clock in ns.
    Clock(u64),
}

impl VmSection {
    /// All sections, in restore order.
    pub const ALL: [VmSection; 3] = [VmSection::Clock, VmSection::Pit, VmSection::Irqchip];

    /// Section idstr.
    pub fn idstr(self) -> &'static str {
        match self {
            VmSection::Irqchip => "kvm-irqchip",
            VmSection::Pit => "kvm-pit",
            VmSection::Clock => "kvmclock",
        }
    }

    /// The description.
    pub fn description(self) -> VmStateDescription {
        let d = VmStateDescription::new(self.idstr(), 1).minimum_version(1);
        match self {
            VmSection::Irqchip => CHIPS
                .iter()
                .fold(d, |d, (n, _)| d.field(*n, FieldKind::Buffer(CHIP_BYTES))),
            VmSection::Pit => d.field("pit", FieldKind::Buffer(size::<kvm_pit_state2>())),
            VmSection::Clock => d.field("clock", FieldKind::U64),
        }
    }

    /// Reads the section's state from KVM.
    pub fn capture(self, vm: &VmFd) -> Result<VmSectionState, KvmError> {
        Ok(match self {
            VmSection::Irqchip => {
                let mut out: [Vec<u8>; 3] = Default::default();
                for (slot, (_, id)) in out.iter_mut().zip(CHIPS) {
                    let mut c = kvm_irqchip {
                        chip_id: id,
                        ..Default::default()
                    };
                    vm.get_irqchip(&mut c).map_err(kvm("KVM_GET_IRQCHIP"))?;
                    let b = to_bytes(&c);
                    *slot = b[b.len() - CHIP_BYTES..].to_vec();
                }
                VmSectionState::Irqchip(out)
            }
            VmSection::Pit => VmSectionState::Pit(vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?),
            VmSection::Clock => {
                VmSectionState::Clock(vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?.clock)
            }
        })
    }

    /// The section value of `state`.
    pub fn to_value(self, state: &VmSectionState) -> VmStateValue {
        match state {
            VmSectionState::Irqchip(chips) => {
                let mut v = VmStateValue::new();
                for ((name, _), b) in CHIPS.iter().zip(chips) {
                    v.set(*name, Value::Bytes(b.clone()));
                }
                v
            }
            VmSectionState::Pit(p) => VmStateValue::new().with("pit", Value::Bytes(to_bytes(p))),
            VmSectionState::Clock(c) => VmStateValue::new().with("clock", Value::Uint(*c)),
        }
    }

    /// Validates a loaded value (see [`check`]).
    pub fn from_value(self, v: &VmStateValue) -> Result<VmSectionState, String> {
        let e = |x: savevm::Error| x.to_string();
        Ok(match self {
            VmSection::Irqchip => {
                let mut out: [Vec<u8>; 3] = Default::default();
                for (slot, (name, _)) in out.iter_mut().zip(CHIPS) {
                    let b = v.get_bytes(name).map_err(e)?;
                    if b.len() != CHIP_BYTES {
                        return Err(format!(
                            "{name} is {} bytes, expected {CHIP_BYTES}",
                            b.len()
                        ));
                    }
                    *slot = b.to_vec();
                }
                for (name, chip, mask) in [
                    ("pic_master", &out[0], check::PIC_ELCR_MASKS[0]),
                    ("pic_slave", &out[1], check::PIC_ELCR_MASKS[1]),
                ] {
                    check::pic(name, chip, mask)?;
                }
                check::ioapic(&out[2])?;
                VmSectionState::Irqchip(out)
            }
            VmSection::Pit => {
                let b = v.get_bytes("pit").map_err(e)?;
                let pit = from_bytes(b).ok_or_else(|| format!("pit is {} bytes", b.len()))?;
                check::pit(&pit)?;
                VmSectionState::Pit(pit)
            }
            VmSection::Clock => VmSectionState::Clock(v.get_u64("clock").map_err(e)?),
        })
    }
}

impl VmSectionState {
    /// Writes the state into KVM.
    pub fn apply(&self, vm: &VmFd) -> Result<(), KvmError> {
        let fail = |what: &str| {
            let what = what.to_owned();
            move |source| KvmError::Restore { what, source }
        };
        match self {
            VmSectionState::Irqchip(chips) => {
                for ((name, id), b) in CHIPS.iter().zip(chips) {
                    let mut raw = to_bytes(&kvm_irqchip::default());
                    let start = raw.len() - CHIP_BYTES;
                    raw[start..].copy_from_slice(b);
                    let mut c: kvm_irqchip = from_bytes(&raw).unwrap_or_default();
                    c.chip_id = *id;
                    vm.set_irqchip(&c).map_err(fail(name))?;
                }
            }
            VmSectionState::Pit(p) => vm.set_pit2(p).map_err(fail("PIT"))?,
            VmSectionState::Clock(ns) => {
                let c = kvm_clock_data {
                    clock: *ns,
                    ..Default::default()
                };
                vm.set_clock(&c).map_err(fail("kvmclock"))?;
            }
        }
        Ok(())
    }
}
