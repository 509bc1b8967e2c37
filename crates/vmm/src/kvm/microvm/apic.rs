//! QEMU's `apic` section (v3) ⇄ the in-kernel LAPIC's register page (`KVM_SET_LAPIC`), as
//! QEMU's `kvm_put_apic_state` / `kvm_get_apic_state` do. Register *n* sits at byte 16·n
//! of the 1 KiB page (little-endian u32), the APIC's own MMIO layout:
//!
//! ```text
//! 0x020 ID (id << 24)     0x080 TPR            0x0d0 LDR (log_dest << 24)
//! 0x0e0 DFR (dest_mode << 28 | 0x0fffffff)     0x0f0 SVR (spurious_vec)
//! 0x100 ISR[8]  0x180 TMR[8]  0x200 IRR[8]     0x280 ESR
//! 0x300 ICR low  0x310 ICR high                0x320 LVT timer, thermal, perf, LINT0, LINT1, error
//! 0x380 timer initial count                    0x3e0 divide configuration
//! ```
//!
//! `apicbase` is IA32_APIC_BASE, written through `kvm_sregs.apic_base`; CR8 is TPR bits 7:4.
//! The timer's QEMU-side fields (`initial_count_load_time`, `next_time`, `timer_expiry`)
//! belong to QEMU's user-space APIC; with KVM the in-kernel timer restarts from the
//! initial count and divide configuration, as it does under QEMU.

use kvm_bindings::kvm_lapic_state;
use savevm::vmstate::{Value, VmStateValue};

use super::fields::{i64_of, u64_list, u64_of, uint, uints};

/// IA32_APIC_BASE bit 10: x2APIC mode (livemig does not model it: QEMU's `id` is 8 bits).
pub const APICBASE_EXTD: u64 = 1 << 10;

/// The fields of QEMU's `apic` section that KVM holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApicRegs {
    /// IA32_APIC_BASE.
    pub apicbase: u64,
    /// xAPIC ID.
    pub id: u8,
    /// TPR.
    pub tpr: u8,
    /// SVR.
    pub spurious_vec: u32,
    /// LDR bits 31:24.
    pub log_dest: u8,
    /// DFR bits 31:28.
    pub dest_mode: u8,
    /// ISR, TMR, IRR.
    pub isr: [u32; 8],
    /// TMR.
    pub tmr: [u32; 8],
    /// IRR.
    pub irr: [u32; 8],
    /// LVT timer, thermal, performance, LINT0, LINT1, error.
    pub lvt: [u32; 6],
    /// ESR.
    pub esr: u32,
    /// ICR low, high.
    pub icr: [u32; 2],
    /// Divide configuration.
    pub divide_conf: u32,
    /// Timer initial count.
    pub initial_count: u32,
}

fn set(k: &mut kvm_lapic_state, reg: usize, v: u32) {
    for (d, b) in k.regs[reg * 16..reg * 16 + 4]
        .iter_mut()
        .zip(v.to_le_bytes())
    {
        *d = b as _;
    }
}

fn reg(k: &kvm_lapic_state, reg: usize) -> u32 {
    let b = &k.regs[reg * 16..reg * 16 + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn arr8(l: Vec<u64>) -> Result<[u32; 8], String> {
    let mut out = [0u32; 8];
    for (o, v) in out.iter_mut().zip(l) {
        *o = u32::try_from(v).map_err(|_| format!("APIC register {v:#x} exceeds 32 bits"))?;
    }
    Ok(out)
}

impl ApicRegs {
    /// Reads QEMU's section.
    pub fn from_qemu(v: &VmStateValue) -> Result<ApicRegs, String> {
        let apicbase = u64_of(v, "apicbase")?;
        if apicbase & APICBASE_EXTD != 0 {
            return Err("the APIC is in x2APIC mode, which livemig does not model".into());
        }
        let lvt = u64_list(v, "lvt", 6)?;
        let icr = u64_list(v, "icr", 2)?;
        let mut r = ApicRegs {
            apicbase,
            id: uint(v, "id")?,
            tpr: uint(v, "tpr")?,
            spurious_vec: uint(v, "spurious_vec")?,
            log_dest: uint(v, "log_dest")?,
            dest_mode: uint(v, "dest_mode")?,
            isr: arr8(u64_list(v, "isr", 8)?)?,
            tmr: arr8(u64_list(v, "tmr", 8)?)?,
            irr: arr8(u64_list(v, "irr", 8)?)?,
            esr: uint(v, "esr")?,
            divide_conf: uint(v, "divide_conf")?,
            initial_count: uint(v, "initial_count")?,
            ..Default::default()
        };
        for (o, x) in r.lvt.iter_mut().zip(lvt) {
            *o = u32::try_from(x).map_err(|_| "LVT entry exceeds 32 bits".to_string())?;
        }
        for (o, x) in r.icr.iter_mut().zip(icr) {
            *o = u32::try_from(x).map_err(|_| "ICR exceeds 32 bits".to_string())?;
        }
        if r.dest_mode > 0xf {
            return Err(format!("dest_mode {:#x} exceeds 4 bits", r.dest_mode));
        }
        if let Some(s) = v.subsection("apic/sipi") {
            i64_of(s, "sipi_vector")?;
        }
        Ok(r)
    }

    /// QEMU's section value (the QEMU-side timer fields as QEMU's KVM APIC leaves them).
    pub fn to_qemu(&self) -> VmStateValue {
        let v = self.divide_conf;
        let shift = ((v & 3) | ((v >> 1) & 4)) + 1;
        VmStateValue::new()
            .with("apicbase", Value::Uint(self.apicbase))
            .with("id", Value::Uint(self.id.into()))
            .with("arb_id", Value::Uint(0))
            .with("tpr", Value::Uint(self.tpr.into()))
            .with("spurious_vec", Value::Uint(self.spurious_vec.into()))
            .with("log_dest", Value::Uint(self.log_dest.into()))
            .with("dest_mode", Value::Uint(self.dest_mode.into()))
            .with("isr", uints(self.isr.map(u64::from)))
            .with("tmr", uints(self.tmr.map(u64::from)))
            .with("irr", uints(self.irr.map(u64::from)))
            .with("lvt", uints(self.lvt.map(u64::from)))
            .with("esr", Value::Uint(self.esr.into()))
            .with("icr", uints(self.icr.map(u64::from)))
            .with("divide_conf", Value::Uint(v.into()))
            .with("count_shift", Value::Int(i64::from(shift & 7)))
            .with("initial_count", Value::Uint(self.initial_count.into()))
            .with("initial_count_load_time", Value::Int(0))
            .with("next_time", Value::Int(0))
            .with("timer_expiry", Value::Int(-1))
    }

    /// Writes the registers into `k` (the destination LAPIC's page; other registers kept).
    pub fn to_kvm(&self, k: &mut kvm_lapic_state) {
        set(k, 0x2, u32::from(self.id) << 24);
        set(k, 0x8, self.tpr.into());
        set(k, 0xd, u32::from(self.log_dest) << 24);
        set(k, 0xe, u32::from(self.dest_mode) << 28 | 0x0fff_ffff);
        set(k, 0xf, self.spurious_vec);
        for i in 0..8 {
            set(k, 0x10 + i, self.isr[i]);
            set(k, 0x18 + i, self.tmr[i]);
            set(k, 0x20 + i, self.irr[i]);
        }
        set(k, 0x28, self.esr);
        set(k, 0x30, self.icr[0]);
        set(k, 0x31, self.icr[1]);
        for (i, l) in self.lvt.iter().enumerate() {
            set(k, 0x32 + i, *l);
        }
        set(k, 0x38, self.initial_count);
        set(k, 0x3e, self.divide_conf);
    }

    /// Reads the registers from a LAPIC page and IA32_APIC_BASE.
    pub fn from_kvm(k: &kvm_lapic_state, apicbase: u64) -> ApicRegs {
        let mut r = ApicRegs {
            apicbase,
            id: (reg(k, 0x2) >> 24) as u8,
            tpr: reg(k, 0x8) as u8,
            log_dest: (reg(k, 0xd) >> 24) as u8,
            dest_mode: (reg(k, 0xe) >> 28) as u8,
            spurious_vec: reg(k, 0xf),
            esr: reg(k, 0x28),
            icr: [reg(k, 0x30), reg(k, 0x31)],
            initial_count: reg(k, 0x38),
            divide_conf: reg(k, 0x3e),
            ..Default::default()
        };
        for i in 0..8 {
            r.isr[i] = reg(k, 0x10 + i);
            r.tmr[i] = reg(k, 0x18 + i);
            r.irr[i] = reg(k, 0x20 + i);
        }
        for (i, l) in r.lvt.iter_mut().enumerate() {
            *l = reg(k, 0x32 + i);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apic_registers_round_trip_qemu_kvm_qemu() {
        let mut r = ApicRegs {
            apicbase: 0xfee0_0900,
            id: 3,
            tpr: 0x20,
            spurious_vec: 0x1ff,
            log_dest: 1,
            dest_mode: 0xf,
            esr: 0,
            icr: [0x4_00fe, 0x0300_0000],
            divide_conf: 0xb,
            initial_count: 123_456,
            ..Default::default()
        };
        r.isr[1] = 1 << 3;
        r.irr[7] = 1 << 31;
        r.tmr[0] = 5;
        r.lvt = [0x2_00ef, 0x10000, 0x10000, 0x700, 0x400, 0xfe];
        let mut k = kvm_lapic_state::default();
        r.to_kvm(&mut k);
        assert_eq!(reg(&k, 0x2), 3 << 24);
        assert_eq!(reg(&k, 0xe), 0xffff_ffff);
        assert_eq!(reg(&k, 0x32), 0x2_00ef, "LVT timer at 0x320");
        assert_eq!(ApicRegs::from_kvm(&k, 0xfee0_0900), r);
        let q = r.to_qemu();
        assert_eq!(ApicRegs::from_qemu(&q).unwrap(), r);
        assert_eq!(
            q.get_i64("count_shift").unwrap(),
            0,
            "divide by 1 (0xb) → shift 0"
        );
        let mut x2 = r.to_qemu();
        x2.set("apicbase", Value::Uint(0xfee0_0d00));
        assert!(ApicRegs::from_qemu(&x2).unwrap_err().contains("x2APIC"));
    }
}
