//! QEMU's `i8259` (×2), `ioapic` and `i8254` sections ⇄ KVM's in-kernel PIC pair, IOAPIC
//! (`KVM_SET_IRQCHIP`, raw `chip` bytes as [`crate::kvm::state::vm`] keeps them) and PIT
//! (`KVM_SET_PIT2`), as QEMU's `kvm_pic_put`, `kvm_ioapic_put` and `kvm_pit_put` do.
//!
//! ```text
//! struct kvm_pic_state (16 bytes): QEMU's 16 fields in order, except that KVM has no
//!   single_mode (QEMU's KVM PIC drops it too) and ends with elcr_mask (kept: this VM's own)
//! struct kvm_ioapic_state: u64 base_address  u32 ioregsel  u32 id  u32 irr  u32 pad
//!                          u64 redirtbl[24]               (little-endian)
//! struct kvm_pit_channel_state (per channel): u32 count  u16 latched_count  10 × u8 as
//!   QEMU's PIT_CHANNEL_BYTES  i64 count_load_time;  kvm_pit_state2.flags: HPET_LEGACY when
//!   channel 0's irq is disabled
//! ```
//!
//! PIT `count_load_time` is QEMU's virtual clock on the wire and the host's monotonic clock
//! in KVM; QEMU converts with the clock offset, livemig with the `timer` section's frozen
//! virtual time: `kvm = now_monotonic − (virtual_now − qemu)`, so the time since the counter
//! was loaded carries over.

use kvm_bindings::{kvm_pit_channel_state, kvm_pit_state2, KVM_PIT_FLAGS_HPET_LEGACY};
use savevm::vmstate::{Value, VmStateValue};

use super::desc::{PIC_FIELDS, PIT_CHANNEL_BYTES};
use super::fields::{i64_of, struct_list, u64_list, u64_of, uint, uints};

const SINGLE_MODE: usize = 14;
/// Guest-physical base of the IOAPIC on microvm (and the PC).
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Redirection entries of the IOAPIC.
pub const IOAPIC_PINS: usize = 24;

/// QEMU's `i8259` section → the first 15 bytes of `kvm_pic_state` written into `chip`
/// (512 bytes); byte 15 (`elcr_mask`) is left as the destination has it.
pub fn pic_from_qemu(v: &VmStateValue, chip: &mut [u8]) -> Result<(), String> {
    let mut out = 0;
    for (i, f) in PIC_FIELDS.iter().enumerate() {
        let b: u8 = uint(v, f)?;
        if i == SINGLE_MODE {
            if b != 0 {
                return Err("the PIC is in single mode, which KVM's PIC does not model".into());
            }
            continue;
        }
        chip[out] = b;
        out += 1;
    }
    Ok(())
}

/// `kvm_pic_state` bytes → QEMU's `i8259` section value.
pub fn pic_to_qemu(chip: &[u8]) -> VmStateValue {
    let mut v = VmStateValue::new();
    let mut k = 0;
    for (i, f) in PIC_FIELDS.iter().enumerate() {
        let b = if i == SINGLE_MODE {
            0
        } else {
            k += 1;
            chip[k - 1]
        };
        v.set(*f, Value::Uint(b.into()));
    }
    v
}

/// QEMU's `ioapic` section → `kvm_ioapic_state` bytes in `chip`.
pub fn ioapic_from_qemu(v: &VmStateValue, chip: &mut [u8]) -> Result<(), String> {
    chip[..24].fill(0);
    chip[..8].copy_from_slice(&IOAPIC_BASE.to_le_bytes());
    chip[8..12].copy_from_slice(&u32::from(uint::<u8>(v, "ioregsel")?).to_le_bytes());
    chip[12..16].copy_from_slice(&u32::from(uint::<u8>(v, "id")?).to_le_bytes());
    chip[16..20].copy_from_slice(&uint::<u32>(v, "irr")?.to_le_bytes());
    for (i, e) in u64_list(v, "ioredtbl", IOAPIC_PINS)?
        .into_iter()
        .enumerate()
    {
        chip[24 + 8 * i..32 + 8 * i].copy_from_slice(&e.to_le_bytes());
    }
    Ok(())
}

/// `kvm_ioapic_state` bytes → QEMU's `ioapic` section value.
pub fn ioapic_to_qemu(chip: &[u8]) -> VmStateValue {
    let u32_at =
        |at: usize| u32::from_le_bytes([chip[at], chip[at + 1], chip[at + 2], chip[at + 3]]);
    let redir = (0..IOAPIC_PINS).map(|i| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&chip[24 + 8 * i..32 + 8 * i]);
        u64::from_le_bytes(b)
    });
    VmStateValue::new()
        .with("id", Value::Uint(u64::from(u32_at(12) & 0xff)))
        .with("ioregsel", Value::Uint(u64::from(u32_at(8) & 0xff)))
        .with("irr", Value::Uint(u32_at(16).into()))
        .with("ioredtbl", uints(redir))
}

/// A channel's byte fields in [`PIT_CHANNEL_BYTES`] order.
fn channel_bytes(c: &mut kvm_pit_channel_state) -> [&mut u8; 10] {
    [
        &mut c.count_latched,
        &mut c.status_latched,
        &mut c.status,
        &mut c.read_state,
        &mut c.write_state,
        &mut c.write_latch,
        &mut c.rw_mode,
        &mut c.mode,
        &mut c.bcd,
        &mut c.gate,
    ]
}

/// QEMU's `i8254` section → `kvm_pit_state2`; `virtual_now` is QEMU's frozen virtual clock
/// (the `timer` section), `host_now` the destination's monotonic clock, both in ns.
pub fn pit_from_qemu(
    v: &VmStateValue,
    virtual_now: i64,
    host_now: i64,
) -> Result<kvm_pit_state2, String> {
    let mut p = kvm_pit_state2::default();
    if u64_of(v, "channels[0].irq_disabled")? != 0 {
        p.flags = KVM_PIT_FLAGS_HPET_LEGACY;
    }
    for (c, e) in p.channels.iter_mut().zip(struct_list(v, "channels", 0, 3)?) {
        let count = i64_of(e, "count")?;
        c.count = u32::try_from(count)
            .map_err(|_| format!("PIT count {count} is negative or too large"))?;
        c.latched_count = uint(e, "latched_count")?;
        for (slot, f) in channel_bytes(c).into_iter().zip(PIT_CHANNEL_BYTES) {
            *slot = uint(e, f)?;
        }
        let loaded = i64_of(e, "count_load_time")?;
        c.count_load_time = host_now.saturating_sub(virtual_now.saturating_sub(loaded));
    }
    crate::kvm::state::check::pit(&p)?;
    Ok(p)
}

/// `kvm_pit_state2` → QEMU's `i8254` section value (inverse of [`pit_from_qemu`]).
pub fn pit_to_qemu(p: &kvm_pit_state2, virtual_now: i64, host_now: i64) -> VmStateValue {
    let chans = p
        .channels
        .iter()
        .map(|c| {
            let mut c = *c;
            let b = channel_bytes(&mut c).map(|x| *x);
            let mut e = VmStateValue::new()
                .with("count", Value::Int(i64::from(c.count)))
                .with("latched_count", Value::Uint(c.latched_count.into()));
            for (f, x) in PIT_CHANNEL_BYTES.iter().zip(b) {
                e.set(*f, Value::Uint(x.into()));
            }
            let qemu = virtual_now.saturating_sub(host_now.saturating_sub(c.count_load_time));
            Value::Struct(
                e.with("count_load_time", Value::Int(qemu))
                    .with("next_transition_time", Value::Int(0)),
            )
        })
        .collect();
    VmStateValue::new()
        .with(
            "channels[0].irq_disabled",
            Value::Uint(u64::from(p.flags & KVM_PIT_FLAGS_HPET_LEGACY != 0)),
        )
        .with("channels", Value::List(chans))
        .with("channels[0].next_transition_time", Value::Int(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pic_round_trips_and_keeps_the_elcr_mask() {
        let mut chip = vec![0u8; 512];
        chip[15] = 0xf8;
        let mut v = VmStateValue::new();
        for (i, f) in PIC_FIELDS.iter().enumerate() {
            let b = match i {
                SINGLE_MODE => 0,
                4 => 3,
                5 => 0x20,
                _ => (i % 2) as u8,
            };
            v.set(*f, Value::Uint(b.into()));
        }
        pic_from_qemu(&v, &mut chip).unwrap();
        assert_eq!(chip[4], 3);
        assert_eq!(chip[5], 0x20);
        assert_eq!(chip[14], 1, "elcr (QEMU's 16th field) lands on byte 14");
        assert_eq!(chip[15], 0xf8, "elcr_mask kept");
        assert_eq!(pic_to_qemu(&chip), v);
        v.set("single_mode", Value::Uint(1));
        assert!(pic_from_qemu(&v, &mut chip).is_err());
    }

    #[test]
    fn ioapic_round_trips() {
        let v = VmStateValue::new()
            .with("id", Value::Uint(2))
            .with("ioregsel", Value::Uint(0x10))
            .with("irr", Value::Uint(1 << 4))
            .with("ioredtbl", uints((0..24).map(|i| 0x10000 | (0x20 + i))));
        let mut chip = vec![0u8; 512];
        ioapic_from_qemu(&v, &mut chip).unwrap();
        assert_eq!(&chip[..8], &IOAPIC_BASE.to_le_bytes());
        crate::kvm::state::check::ioapic(&chip).unwrap();
        assert_eq!(ioapic_to_qemu(&chip), v);
    }

    #[test]
    fn pit_round_trips_with_clock_conversion() {
        let mut chans = Vec::new();
        for i in 0..3i64 {
            let mut e = VmStateValue::new()
                .with("count", Value::Int(0x10000 - i))
                .with("latched_count", Value::Uint(7));
            for (k, f) in PIT_CHANNEL_BYTES.iter().enumerate() {
                let x = match *f {
                    "mode" => 3,
                    "rw_mode" | "read_state" | "write_state" => 3,
                    _ => (k % 2) as u64,
                };
                e.set(*f, Value::Uint(x));
            }
            chans.push(Value::Struct(
                e.with("count_load_time", Value::Int(1_000 + i))
                    .with("next_transition_time", Value::Int(0)),
            ));
        }
        let v = VmStateValue::new()
            .with("channels[0].irq_disabled", Value::Uint(0))
            .with("channels", Value::List(chans))
            .with("channels[0].next_transition_time", Value::Int(0));
        let p = pit_from_qemu(&v, 5_000, 900_000).unwrap();
        assert_eq!(p.channels[0].count_load_time, 900_000 - 4_000);
        assert_eq!(p.channels[0].mode, 3);
        assert_eq!(pit_to_qemu(&p, 5_000, 900_000), v);
    }
}
