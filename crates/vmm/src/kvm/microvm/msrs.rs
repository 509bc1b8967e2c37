//! The MSR images in QEMU's `cpu` section → the `KVM_SET_MSRS` list QEMU's `kvm_put_msrs`
//! writes at full level. Order matters: the TSC goes first (the TSC deadline is relative
//! to it), the MCE banks after IA32_MCG_CAP was set up (`KVM_X86_SETUP_MCE`, see `mce`).
//!
//! | MSR | index | QEMU field |
//! | --- | --- | --- |
//! | IA32_TSC | 0x10 | `env.tsc` |
//! | SYSENTER_CS/ESP/EIP | 0x174–0x176 | `env.sysenter_*` |
//! | PAT | 0x277 | `env.pat` |
//! | STAR LSTAR CSTAR FMASK | 0xc0000081–84 | `env.star` ... |
//! | KERNEL_GS_BASE, TSC_AUX | 0xc0000102, 0xc0000103 | `env.kernelgsbase`, `env.tsc_aux` |
//! | SMBASE | 0x9e | `env.smbase` |
//! | KVM system time / wall clock (new) | 0x4b564d01, 0x4b564d00 | `env.system_time_msr`, `env.wall_clock_msr` |
//! | MTRRdefType, fixed, variable | 0x2ff, 0x250/58/59/68–6f, 0x200+2i / 0x201+2i | `env.mtrr_*` (masks cut to the host's physical address bits, as QEMU does) |
//! | MCG_STATUS, MCG_CTL, MCi_* | 0x17a, 0x17b, 0x400+ | `env.mcg_status`, `env.mcg_ctl`, `env.mce_banks` (4 × banks of `mcg_cap`) |
//! | MISC_ENABLE | 0x1a0 | `cpu/msr_ia32_misc_enable` (absent = 1, fast strings) |
//! | TSC_ADJUST, TSC_DEADLINE, FEATURE_CONTROL, XSS | 0x3b, 0x6e0, 0x3a, 0xda0 | their subsections (absent = 0) |

use savevm::vmstate::VmStateValue;

use super::fields::{struct_list, u64_list, u64_of};

/// IA32_TSC.
pub const MSR_TSC: u32 = 0x10;
/// MTRR fixed-range MSRs in QEMU's `mtrr_fixed[11]` order.
pub const MTRR_FIXED: [u32; 11] = [
    0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
];
/// IA32_MISC_ENABLE's reset value in QEMU (fast strings).
pub const MISC_ENABLE_DEFAULT: u64 = 1;
/// IA32_MCG_CAP values QEMU 7.2 gives a KVM vCPU (`-cpu host`, no LMCE), the first KVM
/// accepts wins: MCG_SER_P | MCG_CTL_P | 10 banks, else without MCG_SER_P.
pub const QEMU_MCG_CAP: [u64; 2] = [0x100_010a, 0x10a];
/// IA32_MCG_CAP (read-only for the guest; KVM returns what `KVM_X86_SETUP_MCE` set).
pub const MSR_MCG_CAP: u32 = 0x179;
/// IA32_MC0_CTL.
pub const MSR_MC0_CTL: u32 = 0x400;
/// Largest bank count QEMU's `mce_banks[40]` holds.
pub const MAX_BANKS: u64 = 10;

fn sub(v: &VmStateValue, name: &str, field: &str, absent: u64) -> Result<u64, String> {
    match v.subsection(name) {
        Some(s) => u64_of(s, field),
        None => Ok(absent),
    }
}

/// The MSRs (index, value) QEMU's `cpu` section defines; `phys_bits` is the destination's
/// physical address width (variable MTRR masks are cut to it).
pub fn from_qemu(v: &VmStateValue, phys_bits: u32) -> Result<Vec<(u32, u64)>, String> {
    let mut m: Vec<(u32, u64)> = vec![(MSR_TSC, u64_of(v, "env.tsc")?)];
    for (i, f) in [
        (0x174, "env.sysenter_cs"),
        (0x175, "env.sysenter_esp"),
        (0x176, "env.sysenter_eip"),
        (0x277, "env.pat"),
        (0xc000_0081, "env.star"),
        (0xc000_0082, "env.lstar"),
        (0xc000_0083, "env.cstar"),
        (0xc000_0084, "env.fmask"),
        (0xc000_0102, "env.kernelgsbase"),
        (0xc000_0103, "env.tsc_aux"),
        (0x9e, "env.smbase"),
        (0x4b56_4d01, "env.system_time_msr"),
        (0x4b56_4d00, "env.wall_clock_msr"),
        (0x2ff, "env.mtrr_deftype"),
    ] {
        m.push((i, u64_of(v, f)?));
    }
    for (i, val) in MTRR_FIXED.iter().zip(u64_list(v, "env.mtrr_fixed", 11)?) {
        m.push((*i, val));
    }
    let phys_mask = if phys_bits >= 64 {
        u64::MAX
    } else {
        (1u64 << phys_bits) - 1
    };
    for (i, e) in struct_list(v, "env.mtrr_var", 0, 8)?
        .into_iter()
        .enumerate()
    {
        let i = i as u32;
        m.push((0x200 + 2 * i, u64_of(e, "base")?));
        m.push((0x201 + 2 * i, u64_of(e, "mask")? & phys_mask));
    }
    m.push((
        0x1a0,
        sub(
            v,
            "cpu/msr_ia32_misc_enable",
            "env.msr_ia32_misc_enable",
            MISC_ENABLE_DEFAULT,
        )?,
    ));
    m.push((0x3b, sub(v, "cpu/msr_tsc_adjust", "env.tsc_adjust", 0)?));
    m.push((0x6e0, sub(v, "cpu/msr_tscdeadline", "env.tsc_deadline", 0)?));
    if let Some(fc) = v.subsection("cpu/msr_ia32_feature_control") {
        m.push((0x3a, u64_of(fc, "env.msr_ia32_feature_control")?));
    }
    if let Some(x) = v.subsection("cpu/xss") {
        m.push((0xda0, u64_of(x, "env.xss")?));
    }
    let mcg_cap = u64_of(v, "env.mcg_cap")?;
    if mcg_cap != 0 {
        let banks = mcg_cap & 0xff;
        if banks > MAX_BANKS {
            return Err(format!(
                "mcg_cap {mcg_cap:#x} has {banks} banks, at most {MAX_BANKS}"
            ));
        }
        m.push((0x17a, u64_of(v, "env.mcg_status")?));
        if mcg_cap & (1 << 8) != 0 {
            m.push((0x17b, u64_of(v, "env.mcg_ctl")?));
        }
        let regs = u64_list(v, "env.mce_banks", 40)?;
        for (i, val) in regs.iter().take(banks as usize * 4).enumerate() {
            m.push((MSR_MC0_CTL + i as u32, *val));
        }
    }
    Ok(m)
}

/// Whether `index` is one of the machine-check MSRs, which KVM saves once
/// `KVM_X86_SETUP_MCE` gave the vCPU banks (they are absent from the list read before).
fn is_mce(index: u32) -> bool {
    matches!(index, 0x17a | 0x17b)
        || (MSR_MC0_CTL..MSR_MC0_CTL + 4 * MAX_BANKS as u32).contains(&index)
}

/// Keeps the MSRs this host's KVM saves (`known`: `KVM_GET_MSR_INDEX_LIST` minus what it
/// cannot read) and the MCE MSRs; an MSR outside both is dropped when it holds its reset
/// value (QEMU sends images of MSRs the host may lack, e.g. SMBASE without SMM) and refused
/// otherwise, naming it.
pub fn host_subset(msrs: Vec<(u32, u64)>, known: &[u32]) -> Result<Vec<(u32, u64)>, String> {
    let mut out = Vec::with_capacity(msrs.len());
    for (i, v) in msrs {
        if known.contains(&i) || is_mce(i) {
            out.push((i, v));
            continue;
        }
        let reset = match i {
            0x9e => 0x30000,
            0x1a0 => MISC_ENABLE_DEFAULT,
            _ => 0,
        };
        if v != reset {
            return Err(format!(
                "MSR {i:#x} = {v:#x}, but this host's KVM does not save MSR {i:#x}: \
                 start QEMU with a -cpu model this host covers"
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_subset_drops_reset_values_and_refuses_others() {
        let known = [0x10, 0x174];
        let kept = host_subset(
            vec![
                (0x10, 5),
                (0x9e, 0x30000),
                (0x17a, 0),
                (0x401, 1),
                (0xc000_0103, 0),
            ],
            &known,
        )
        .unwrap();
        assert_eq!(kept, vec![(0x10, 5), (0x17a, 0), (0x401, 1)]);
        let e = host_subset(vec![(0xc000_0103, 7)], &known).unwrap_err();
        assert!(e.contains("0xc0000103"), "{e}");
    }
}
