//! The small sections: `serial` (QEMU's 16550 ⇄ vm-superio's), `kvm-tpr-opt`, `cpu_common`,
//! `fw_cfg`, plus the host helpers the loaders need (`KVM_X86_SETUP_MCE`, the monotonic
//! clock the in-kernel PIT counts in).
//!
//! `serial`: QEMU's `divider` is DLL | DLM << 8; `rbr` holds the received byte when LSR's
//! data-ready bit is set (it becomes vm-superio's one-byte input buffer); IIR bits 7:6 (FIFO
//! enabled) are derived from FCR by both models and not stored. QEMU's FIFO / timer
//! subsections are not modelled: a stream with them is refused.
//!
//! `kvm-tpr-opt` (QEMU's TPR-access patching for 32-bit Windows guests) must be inactive
//! (`state` = 0): livemig has no ROM to patch. `fw_cfg`: livemig has no firmware configuration
//! device (the guest booted long before); its selector and offset are kept as received and
//! sent back on the next hop, so QEMU finds them as it left them.

use kvm_ioctls::VcpuFd;
use savevm::vmstate::{Value, VmStateValue};
use vm_superio::serial::SerialState;

use super::desc::SERIAL_BYTES;
use super::fields::{strukt, u64_of, uint};

const LSR_DATA_READY: u8 = 0x01;
const IIR_FIFO_BITS: u8 = 0xc0;

/// QEMU's `serial` section → vm-superio's state.
pub fn serial_from_qemu(v: &VmStateValue) -> Result<SerialState, String> {
    let s = strukt(v, "state")?;
    let divider: u16 = uint(s, "divider")?;
    let b = |f: &str| uint::<u8>(s, f);
    let lsr = b("lsr")?;
    let in_buffer = if lsr & LSR_DATA_READY != 0 {
        vec![b("rbr")?]
    } else {
        Vec::new()
    };
    let state = SerialState {
        baud_divisor_low: divider as u8,
        baud_divisor_high: (divider >> 8) as u8,
        interrupt_enable: b("ier")?,
        interrupt_identification: b("iir")? & !IIR_FIFO_BITS,
        line_control: b("lcr")?,
        line_status: lsr,
        modem_control: b("mcr")?,
        modem_status: b("msr")?,
        scratch: b("scr")?,
        in_buffer,
    };
    crate::kvm::serial::check_registers(&state)?;
    Ok(state)
}

/// vm-superio's state → QEMU's `serial` section value (FIFOs off).
pub fn serial_to_qemu(s: &SerialState) -> VmStateValue {
    let divider = u64::from(s.baud_divisor_low) | u64::from(s.baud_divisor_high) << 8;
    let vals = [
        s.in_buffer.first().copied().unwrap_or(0),
        s.interrupt_enable,
        s.interrupt_identification,
        s.line_control,
        s.modem_control,
        s.line_status,
        s.modem_status,
        s.scratch,
        0,
    ];
    let mut inner = VmStateValue::new().with("divider", Value::Uint(divider));
    for (f, x) in SERIAL_BYTES.iter().zip(vals) {
        inner.set(*f, Value::Uint(x.into()));
    }
    VmStateValue::new().with("state", Value::Struct(inner))
}

/// `kvm-tpr-opt`: only the inactive state is accepted.
pub fn tpr_opt_check(v: &VmStateValue) -> Result<(), String> {
    match u64_of(v, "state")? {
        0 => Ok(()),
        s => Err(format!(
            "the TPR-access optimisation is active (state {s}); livemig does not model it"
        )),
    }
}

/// `cpu_common`: `halted` is a boolean (the vCPU's MP state says the same for KVM).
pub fn cpu_common_check(v: &VmStateValue) -> Result<(), String> {
    let halted = u64_of(v, "halted")?;
    if halted > 1 {
        return Err(format!("halted = {halted}, expected 0 or 1"));
    }
    u64_of(v, "interrupt_request")?;
    Ok(())
}

/// `fw_cfg`: accepted as sent (see the module docs); the fields are validated as numbers.
pub fn fw_cfg_check(v: &VmStateValue) -> Result<(), String> {
    uint::<u16>(v, "cur_entry")?;
    uint::<u32>(v, "cur_offset[1]")?;
    Ok(())
}

/// `fw_cfg` of a guest livemig booted: no entry selected.
pub fn fw_cfg_idle() -> VmStateValue {
    VmStateValue::new()
        .with("cur_entry", Value::Uint(0))
        .with("cur_offset[1]", Value::Uint(0))
}

/// `cpu_common` of a vCPU.
pub fn cpu_common_value(halted: bool) -> VmStateValue {
    VmStateValue::new()
        .with("halted", Value::Uint(halted.into()))
        .with("interrupt_request", Value::Uint(0))
}

/// `kvm-tpr-opt` inactive (QEMU's state when the TPR-access optimisation never ran).
pub fn tpr_opt_inactive() -> VmStateValue {
    let zeros = |n| Value::List(vec![Value::Uint(0); n]);
    let handlers = || {
        Value::Struct(
            VmStateValue::new()
                .with("set_tpr", Value::Uint(0))
                .with("set_tpr_eax", Value::Uint(0))
                .with("get_tpr", zeros(8))
                .with("get_tpr_stack", Value::Uint(0)),
        )
    };
    let mut rom = VmStateValue::new();
    for f in super::desc::TPR_ROM_FIELDS {
        rom.set(f, Value::Uint(0));
    }
    let rom = rom.with("up", handlers()).with("mp", handlers());
    let mut v = VmStateValue::new().with("rom_state", Value::Struct(rom));
    for f in super::desc::TPR_FIELDS {
        v.set(f, Value::Uint(0));
    }
    v
}

mod ioctls {
    #![allow(missing_docs)]
    vmm_sys_util::ioctl_iow_nr!(KVM_X86_SETUP_MCE, kvm_bindings::KVMIO, 0x9c, u64);
}
use ioctls::KVM_X86_SETUP_MCE;

/// `KVM_X86_SETUP_MCE`: gives the vCPU machine-check banks as IA32_MCG_CAP `mcg_cap` says
/// (QEMU does this at vCPU creation; the MCE MSRs are refused without it).
pub(crate) fn setup_mce(vcpu: &VcpuFd, mcg_cap: u64) -> Result<(), kvm_ioctls::Error> {
    // SAFETY: KVM_X86_SETUP_MCE reads one u64 through the pointer, which `&mcg_cap` provides
    // for the duration of the call; the fd is a live vCPU fd.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vcpu, KVM_X86_SETUP_MCE(), &mcg_cap) };
    if ret < 0 {
        return Err(kvm_ioctls::Error::last());
    }
    Ok(())
}

/// CLOCK_MONOTONIC in ns: the clock KVM's in-kernel PIT stamps `count_load_time` with.
pub(crate) fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, valid for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_round_trips_and_moves_a_received_byte() {
        let s = SerialState {
            baud_divisor_low: 0x0c,
            baud_divisor_high: 0,
            interrupt_enable: 1,
            interrupt_identification: 0x04,
            line_control: 3,
            line_status: 0x61,
            modem_control: 8,
            modem_status: 0xb0,
            scratch: 0x5a,
            in_buffer: vec![b'x'],
        };
        let q = serial_to_qemu(&s);
        assert_eq!(
            strukt(&q, "state").unwrap().get_u64("divider").unwrap(),
            0x0c
        );
        assert_eq!(serial_from_qemu(&q).unwrap(), s);
        let mut bad = strukt(&q, "state").unwrap().clone();
        bad.set("msr", Value::Uint(0x10));
        assert!(serial_from_qemu(&VmStateValue::new().with("state", Value::Struct(bad))).is_err());
    }
}
