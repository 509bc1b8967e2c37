//! One vCPU's KVM state and its `kvm-cpu` section.
//!
//! Section `kvm-cpu`, instance = vCPU index, version 1:
//!
//! ```text
//! be32 index                                   ; must equal the instance
//! be64 rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags   ; KVM_GET_REGS
//! sregs, events, debug registers               ; field by field, see `x86`
//!                  (KVM_GET_SREGS, KVM_GET_VCPU_EVENTS, KVM_GET_DEBUGREGS)
//! be32 xcr_count  be32 xcr_index[xcr_count]  be64 xcr_value[xcr_count]   ; KVM_GET_XCRS
//! be32 msr_count  be32 msr_index[msr_count]  be64 msr_value[msr_count]
//!                  KVM_GET_MSRS over the MSRs KVM reports as saveable and readable here
//! be32 mp_state    KVM_GET_MP_STATE
//! fpu[416]         KVM_GET_FPU       (struct kvm_fpu bytes, x86_64 KVM ABI)
//! xsave[4096]      KVM_GET_XSAVE     (the legacy 4 KiB XSAVE area, as the CPU lays it out)
//! lapic[1024]      KVM_GET_LAPIC     (the APIC register page, as the APIC lays it out)
//! ```
//!
//! Restore order (as QEMU's `kvm_arch_put_registers`): regs, xsave, xcrs, sregs, MSRs,
//! mp_state, LAPIC, events, debug registers.

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use savevm::vmstate::{FieldKind, Value, VmStateDescription, VmStateValue};

use super::{check, x86};
use crate::kvm::error::{kvm, KvmError};
use crate::kvm::pod::{from_bytes, size, to_bytes};

/// Size of the legacy XSAVE area.
pub const XSAVE_BYTES: usize = 4096;

/// Upper bound on the number of XCRs (KVM's `KVM_MAX_XCRS`).
pub const MAX_XCRS: usize = 16;

/// Upper bound on the number of MSRs in a section.
pub const MAX_MSRS: usize = 4096;

const GPRS: [&str; 18] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip", "rflags",
];

/// Everything KVM holds about one vCPU.
#[derive(Clone)]
pub struct VcpuState {
    /// vCPU index.
    pub index: u32,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base, pending interrupt bitmap.
    pub sregs: kvm_sregs,
    /// Legacy FPU state.
    pub fpu: kvm_fpu,
    /// Legacy 4 KiB XSAVE area (`kvm_xsave.region`), little-endian bytes.
    pub xsave: Vec<u8>,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// (index, value) of every saved MSR.
    pub msrs: Vec<(u32, u64)>,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// Pending exceptions, interrupts, NMIs, SIPI vector, interrupt shadow.
    pub events: kvm_vcpu_events,
    /// Multiprocessing state (running, halted, wait-for-SIPI...).
    pub mp_state: u32,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
}

fn gprs(r: &kvm_regs) -> [u64; 18] {
    [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ]
}

fn set_gprs(v: [u64; 18]) -> kvm_regs {
    kvm_regs {
        rax: v[0],
        rbx: v[1],
        rcx: v[2],
        rdx: v[3],
        rsi: v[4],
        rdi: v[5],
        rsp: v[6],
        rbp: v[7],
        r8: v[8],
        r9: v[9],
        r10: v[10],
        r11: v[11],
        r12: v[12],
        r13: v[13],
        r14: v[14],
        r15: v[15],
        rip: v[16],
        rflags: v[17],
    }
}

/// Reads `{prefix}_index` / `{prefix}_value` lists of equal length (at most `max`).
fn pairs(v: &VmStateValue, prefix: &str, max: usize) -> Result<Vec<(u32, u64)>, String> {
    let e = |x: savevm::Error| x.to_string();
    let idx = v.get_list(&format!("{prefix}_index")).map_err(e)?;
    let val = v.get_list(&format!("{prefix}_value")).map_err(e)?;
    if idx.len() != val.len() || idx.len() > max {
        return Err(format!(
            "bad {prefix} list: {} indices, {} values, at most {max}",
            idx.len(),
            val.len()
        ));
    }
    idx.iter()
        .zip(val)
        .map(|(i, d)| {
            let i = i.as_u64().and_then(|i| u32::try_from(i).ok());
            match (i, d.as_u64()) {
                (Some(i), Some(d)) => Ok((i, d)),
                _ => Err(format!("bad {prefix} entry")),
            }
        })
        .collect()
}

fn var_array(elem: FieldKind, len_field: &str) -> FieldKind {
    FieldKind::VarArray {
        elem: Box::new(elem),
        len_field: len_field.into(),
    }
}

/// The `kvm-cpu` description.
pub fn description() -> VmStateDescription {
    let mut d = VmStateDescription::new("kvm-cpu", 1)
        .minimum_version(1)
        .field("index", FieldKind::U32);
    for r in GPRS {
        d = d.field(r, FieldKind::U64);
    }
    x86::fields(d)
        .field("xcr_count", FieldKind::U32)
        .field("xcr_index", var_array(FieldKind::U32, "xcr_count"))
        .field("xcr_value", var_array(FieldKind::U64, "xcr_count"))
        .field("msr_count", FieldKind::U32)
        .field("msr_index", var_array(FieldKind::U32, "msr_count"))
        .field("msr_value", var_array(FieldKind::U64, "msr_count"))
        .field("mp_state", FieldKind::U32)
        .field("fpu", FieldKind::Buffer(size::<kvm_fpu>()))
        .field("xsave", FieldKind::Buffer(XSAVE_BYTES))
        .field("lapic", FieldKind::Buffer(size::<kvm_lapic_state>()))
}

/// Reads MSRs `indices` from `vcpu`; fails unless all of them could be read.
pub(crate) fn get_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, KvmError> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = Msrs::from_entries(&entries).map_err(|e| KvmError::InvalidState {
        what: "MSR list".into(),
        reason: format!("{e:?}"),
    })?;
    let n = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
    if n != indices.len() {
        let bad = indices.get(n).copied().unwrap_or_default();
        return Err(KvmError::InvalidState {
            what: "MSRs".into(),
            reason: format!(
                "KVM read {n} of {} MSRs, stopping at {bad:#x}",
                indices.len()
            ),
        });
    }
    Ok(msrs.as_slice().iter().map(|e| (e.index, e.data)).collect())
}

/// The subset of `candidates` that `vcpu` can read (KVM lists some MSRs it cannot return on
/// this host, e.g. for features the CPU lacks).
pub(crate) fn readable_msrs(vcpu: &VcpuFd, candidates: &[u32]) -> Vec<u32> {
    candidates
        .iter()
        .copied()
        .filter(|&i| get_msrs(vcpu, &[i]).is_ok())
        .collect()
}

/// Every MSR of `msrs` is one this host saves (`known`, the destination's
/// `KVM_GET_MSR_INDEX_LIST` minus what it cannot read): `KVM_SET_MSRS` would stop at any other
/// when the vCPU starts, after the source was told the migration succeeded.
pub fn msrs_known(msrs: &[(u32, u64)], known: &[u32]) -> Result<(), String> {
    let mut sorted = known.to_vec();
    sorted.sort_unstable();
    match msrs.iter().find(|(i, _)| sorted.binary_search(i).is_err()) {
        Some((i, _)) => Err(format!(
            "MSR {i:#x} is not one KVM saves on this host ({} MSRs)",
            known.len()
        )),
        None => Ok(()),
    }
}

impl VcpuState {
    /// Captures vCPU `index` (which must not be in `KVM_RUN`).
    pub fn capture(vcpu: &VcpuFd, index: u32, msr_indices: &[u32]) -> Result<VcpuState, KvmError> {
        Ok(VcpuState {
            index,
            regs: vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            fpu: vcpu.get_fpu().map_err(kvm("KVM_GET_FPU"))?,
            xsave: vcpu
                .get_xsave()
                .map_err(kvm("KVM_GET_XSAVE"))?
                .region
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect(),
            xcrs: vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
            msrs: get_msrs(vcpu, msr_indices)?,
            lapic: vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
            events: vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
            mp_state: vcpu
                .get_mp_state()
                .map_err(kvm("KVM_GET_MP_STATE"))?
                .mp_state,
            debugregs: vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
        })
    }

    /// Writes the state into `vcpu` (not in `KVM_RUN`).
    pub fn apply(&self, vcpu: &VcpuFd) -> Result<(), KvmError> {
        let what = |w: &str| format!("vCPU {} {w}", self.index);
        let fail = |w: &'static str| {
            let what = what(w);
            move |source| KvmError::Restore { what, source }
        };
        vcpu.set_regs(&self.regs).map_err(fail("registers"))?;
        let mut xsave = kvm_xsave::default();
        for (w, b) in xsave.region.iter_mut().zip(self.xsave.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        // SAFETY: `xsave` is a complete legacy 4 KiB kvm_xsave; no XSAVE2 area larger than
        // 4 KiB was enabled on this vCPU (KVM_CAP_XSAVE2 is never enabled), so KVM reads only
        // the struct's fixed part.
        unsafe { vcpu.set_xsave(&xsave) }.map_err(fail("XSAVE"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(fail("XCRs"))?;
        vcpu.set_sregs(&self.sregs)
            .map_err(fail("special registers"))?;
        vcpu.set_fpu(&self.fpu).map_err(fail("FPU"))?;
        let entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|e| KvmError::InvalidState {
            what: what("MSRs"),
            reason: format!("{e:?}"),
        })?;
        let n = vcpu.set_msrs(&msrs).map_err(fail("MSRs"))?;
        if n != entries.len() {
            let bad = entries.get(n).map_or(0, |e| e.index);
            return Err(KvmError::InvalidState {
                what: what("MSRs"),
                reason: format!(
                    "KVM accepted {n} of {} MSRs, rejecting {bad:#x}",
                    entries.len()
                ),
            });
        }
        vcpu.set_mp_state(kvm_mp_state {
            mp_state: self.mp_state,
        })
        .map_err(fail("MP state"))?;
        vcpu.set_lapic(&self.lapic).map_err(fail("LAPIC"))?;
        vcpu.set_vcpu_events(&self.events).map_err(fail("events"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(fail("debug registers"))?;
        Ok(())
    }

    /// The section value.
    pub fn to_value(&self) -> VmStateValue {
        let mut v = VmStateValue::new().with("index", Value::Uint(u64::from(self.index)));
        for (name, r) in GPRS.iter().zip(gprs(&self.regs)) {
            v.set(*name, Value::Uint(r));
        }
        x86::save(&mut v, &self.sregs, &self.events, &self.debugregs);
        let n = (self.xcrs.nr_xcrs as usize).min(MAX_XCRS);
        let xcrs = &self.xcrs.xcrs[..n];
        let uints = |it: &mut dyn Iterator<Item = u64>| Value::List(it.map(Value::Uint).collect());
        v.with("xcr_count", Value::Uint(n as u64))
            .with(
                "xcr_index",
                uints(&mut xcrs.iter().map(|x| u64::from(x.xcr))),
            )
            .with("xcr_value", uints(&mut xcrs.iter().map(|x| x.value)))
            .with("msr_count", Value::Uint(self.msrs.len() as u64))
            .with(
                "msr_index",
                uints(&mut self.msrs.iter().map(|m| u64::from(m.0))),
            )
            .with("msr_value", uints(&mut self.msrs.iter().map(|m| m.1)))
            .with("mp_state", Value::Uint(u64::from(self.mp_state)))
            .with("fpu", Value::Bytes(to_bytes(&self.fpu)))
            .with("xsave", Value::Bytes(self.xsave.clone()))
            .with("lapic", Value::Bytes(to_bytes(&self.lapic)))
    }

    /// Builds and validates a state loaded for vCPU `index` (see [`check`] for
    /// what is checked and why).
    pub fn from_value(v: &VmStateValue, index: u32) -> Result<VcpuState, String> {
        let e = |x: savevm::Error| x.to_string();
        let got = v.get_u32("index").map_err(e)?;
        if got != index {
            return Err(format!("section holds vCPU {got}, expected vCPU {index}"));
        }
        let mut r = [0u64; 18];
        for (slot, name) in r.iter_mut().zip(GPRS) {
            *slot = v.get_u64(name).map_err(e)?;
        }
        let (sregs, events, debugregs) = x86::load(v)?;
        fn buf<T: crate::kvm::pod::Pod>(v: &VmStateValue, name: &str) -> Result<T, String> {
            let b = v.get_bytes(name).map_err(|x| x.to_string())?;
            from_bytes(b).ok_or_else(|| {
                format!(
                    "field {name} is {} bytes, expected {}",
                    b.len(),
                    size::<T>()
                )
            })
        }
        let xcrs = pairs(v, "xcr", MAX_XCRS)?;
        let mut kx = kvm_xcrs {
            nr_xcrs: xcrs.len() as u32,
            ..Default::default()
        };
        for (slot, (i, val)) in kx.xcrs.iter_mut().zip(xcrs) {
            slot.xcr = i;
            slot.value = val;
        }
        let msrs = pairs(v, "msr", MAX_MSRS)?;
        check::msrs_unique(&msrs)?;
        let mp_state = v.get_u32("mp_state").map_err(e)?;
        check::mp_state(mp_state)?;
        let xsave = v.get_bytes("xsave").map_err(e)?;
        if xsave.len() != XSAVE_BYTES {
            return Err(format!(
                "field xsave is {} bytes, expected {XSAVE_BYTES}",
                xsave.len()
            ));
        }
        check::xsave(xsave)?;
        let fpu: kvm_fpu = buf(v, "fpu")?;
        check::fpu_mxcsr(fpu.mxcsr)?;
        check::sregs(&sregs)?;
        check::events(&events, mp_state)?;
        check::debugregs(&debugregs)?;
        check::xcrs(&kx)?;
        Ok(VcpuState {
            index,
            regs: set_gprs(r),
            sregs,
            fpu,
            xsave: xsave.to_vec(),
            xcrs: kx,
            msrs,
            lapic: buf(v, "lapic")?,
            events,
            mp_state,
            debugregs,
        })
    }
}
