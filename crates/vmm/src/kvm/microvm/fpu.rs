//! QEMU's x87/SSE/AVX register fields ⇄ the legacy XSAVE area (`KVM_SET_XSAVE`) and
//! `struct kvm_fpu`, as QEMU's `x86_cpu_xsave_all_areas` lays them out.
//!
//! ```text
//! XSAVE (standard format, little-endian)     QEMU field
//!   0  u16 FCW                               env.fpuc
//!   2  u16 FSW (TOP in bits 13:11)           env.fpus_vmstate
//!   4  u8  FTW, abridged (bit i = ST(i) valid) env.fptag_vmstate
//!   6  u16 FOP   8 u64 FIP   16 u64 FDP      cpu/fpop_ip_dp (absent = 0)
//!  24  u32 MXCSR  28 u32 MXCSR_MASK (kept)   env.mxcsr
//!  32  ST0..ST7, 16 bytes each (10 used)     env.fpregs[i] (mantissa u64, exponent u16)
//! 160  XMM0..XMM15, 16 bytes each            env.xmm_regs (_q_ZMMReg[0], [1])
//! 512  u64 XSTATE_BV  520 u64 XCOMP_BV = 0   env.xstate_bv
//! 576  YMM0_H..YMM15_H, 16 bytes each        env.xmm_regs ymmh (_q_ZMMReg[2], [3])
//! ```
//!
//! With `fpregs_format_vmstate` = 0 QEMU sends the 80-bit registers as they are (KVM keeps
//! them in ST order), so they are copied without rotation.

use kvm_bindings::kvm_fpu;
use savevm::vmstate::VmStateValue;

use super::fields::{struct_list, strukt, u64_of, uint};
use crate::kvm::state::cpu::XSAVE_BYTES;

const FOP: usize = 6;
const FIP: usize = 8;
const FDP: usize = 16;
const MXCSR: usize = 24;
const ST: usize = 32;
const XMM: usize = 160;
const XSTATE_BV: usize = 512;
const YMMH: usize = 576;

fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    b[at..at + bytes.len()].copy_from_slice(bytes);
}

fn get<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

/// The register state that goes into the XSAVE area.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FpuRegs {
    /// FCW.
    pub fcw: u16,
    /// FSW including TOP.
    pub fsw: u16,
    /// Abridged tag word.
    pub ftw: u8,
    /// Last opcode, instruction and data pointers.
    pub fop: u16,
    /// FIP.
    pub fip: u64,
    /// FDP.
    pub fdp: u64,
    /// MXCSR.
    pub mxcsr: u32,
    /// ST0..ST7: (mantissa, sign+exponent).
    pub st: [(u64, u16); 8],
    /// XMM0..15 low and high quadwords.
    pub xmm: [[u64; 2]; 16],
    /// YMM0..15 upper halves.
    pub ymmh: [[u64; 2]; 16],
    /// XSTATE_BV of the header.
    pub xstate_bv: u64,
}

impl FpuRegs {
    /// The XSAVE area; `template` (the destination vCPU's own area) supplies MXCSR_MASK.
    pub fn to_xsave(&self, template: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; XSAVE_BYTES];
        put(&mut b, 0, &self.fcw.to_le_bytes());
        put(&mut b, 2, &self.fsw.to_le_bytes());
        b[4] = self.ftw;
        put(&mut b, FOP, &self.fop.to_le_bytes());
        put(&mut b, FIP, &self.fip.to_le_bytes());
        put(&mut b, FDP, &self.fdp.to_le_bytes());
        put(&mut b, MXCSR, &self.mxcsr.to_le_bytes());
        if template.len() >= MXCSR + 8 {
            let mask: [u8; 4] = get(template, MXCSR + 4);
            put(&mut b, MXCSR + 4, &mask);
        }
        for (i, (mant, exp)) in self.st.iter().enumerate() {
            put(&mut b, ST + 16 * i, &mant.to_le_bytes());
            put(&mut b, ST + 16 * i + 8, &exp.to_le_bytes());
        }
        for (i, x) in self.xmm.iter().enumerate() {
            put(&mut b, XMM + 16 * i, &x[0].to_le_bytes());
            put(&mut b, XMM + 16 * i + 8, &x[1].to_le_bytes());
        }
        put(&mut b, XSTATE_BV, &self.xstate_bv.to_le_bytes());
        for (i, y) in self.ymmh.iter().enumerate() {
            put(&mut b, YMMH + 16 * i, &y[0].to_le_bytes());
            put(&mut b, YMMH + 16 * i + 8, &y[1].to_le_bytes());
        }
        b
    }

    /// Reads an XSAVE area (at least 832 bytes; the legacy 4 KiB one).
    pub fn from_xsave(b: &[u8]) -> Option<FpuRegs> {
        if b.len() < YMMH + 256 {
            return None;
        }
        let u64_at = |at| u64::from_le_bytes(get(b, at));
        let u16_at = |at| u16::from_le_bytes(get(b, at));
        let mut r = FpuRegs {
            fcw: u16_at(0),
            fsw: u16_at(2),
            ftw: b[4],
            fop: u16_at(FOP),
            fip: u64_at(FIP),
            fdp: u64_at(FDP),
            mxcsr: u32::from_le_bytes(get(b, MXCSR)),
            xstate_bv: u64_at(XSTATE_BV),
            ..Default::default()
        };
        for i in 0..8 {
            r.st[i] = (u64_at(ST + 16 * i), u16_at(ST + 16 * i + 8));
        }
        for i in 0..16 {
            r.xmm[i] = [u64_at(XMM + 16 * i), u64_at(XMM + 16 * i + 8)];
            r.ymmh[i] = [u64_at(YMMH + 16 * i), u64_at(YMMH + 16 * i + 8)];
        }
        Some(r)
    }

    /// The same registers as `struct kvm_fpu` (KVM_SET_FPU), consistent with the XSAVE area.
    pub fn to_kvm_fpu(&self) -> kvm_fpu {
        let mut f = kvm_fpu {
            fcw: self.fcw,
            fsw: self.fsw,
            ftwx: self.ftw,
            last_opcode: self.fop,
            last_ip: self.fip,
            last_dp: self.fdp,
            mxcsr: self.mxcsr,
            ..Default::default()
        };
        for (dst, (mant, exp)) in f.fpr.iter_mut().zip(self.st) {
            dst[..8].copy_from_slice(&mant.to_le_bytes());
            dst[8..10].copy_from_slice(&exp.to_le_bytes());
        }
        for (dst, x) in f.xmm.iter_mut().zip(self.xmm) {
            dst[..8].copy_from_slice(&x[0].to_le_bytes());
            dst[8..].copy_from_slice(&x[1].to_le_bytes());
        }
        f
    }
}

/// Reads the FPU/SSE/AVX fields of QEMU's `cpu` section.
pub fn regs_from_qemu(v: &VmStateValue) -> Result<FpuRegs, String> {
    if u64_of(v, "env.fpregs_format_vmstate")? != 0 {
        return Err("fpregs_format_vmstate is not 0 (80-bit registers)".into());
    }
    let mut r = FpuRegs {
        fcw: uint(v, "env.fpuc")?,
        fsw: uint(v, "env.fpus_vmstate")?,
        ftw: uint(v, "env.fptag_vmstate")?,
        mxcsr: uint(v, "env.mxcsr")?,
        xstate_bv: u64_of(v, "env.xstate_bv")?,
        ..Default::default()
    };
    if let Some(s) = v.subsection("cpu/fpop_ip_dp") {
        r.fop = uint(s, "env.fpop")?;
        r.fip = u64_of(s, "env.fpip")?;
        r.fdp = u64_of(s, "env.fpdp")?;
    }
    for (i, e) in struct_list(v, "env.fpregs", 0, 8)?.into_iter().enumerate() {
        let t = strukt(e, "tmp")?;
        r.st[i] = (u64_of(t, "tmp_mant")?, uint(t, "tmp_exp")?);
    }
    for (i, e) in struct_list(v, "env.xmm_regs", 0, 16)?
        .into_iter()
        .enumerate()
    {
        r.xmm[i] = [u64_of(e, "_q_ZMMReg[0]")?, u64_of(e, "_q_ZMMReg[1]")?];
    }
    for (i, e) in struct_list(v, "env.xmm_regs", 1, 16)?
        .into_iter()
        .enumerate()
    {
        r.ymmh[i] = [u64_of(e, "_q_ZMMReg[2]")?, u64_of(e, "_q_ZMMReg[3]")?];
    }
    Ok(r)
}

/// QEMU's FPU fields → (XSAVE area, `kvm_fpu`); `template` is the destination's own area.
pub fn from_qemu(v: &VmStateValue, template: &[u8]) -> Result<(Vec<u8>, kvm_fpu), String> {
    let r = regs_from_qemu(v)?;
    Ok((r.to_xsave(template), r.to_kvm_fpu()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FpuRegs {
        let mut r = FpuRegs {
            fcw: 0x37f,
            fsw: 0x3800,
            ftw: 0x80,
            fop: 0x7d9,
            fip: 0x1009e7,
            fdp: 0x40_0000,
            mxcsr: 0x1fa0,
            xstate_bv: 0x207,
            ..Default::default()
        };
        r.st[7] = (0xc000_0000_0000_0000, 0x3fff);
        r.xmm[3] = [0x1111, 0x2222];
        r.ymmh[15] = [0x3333, 0x4444];
        r
    }

    #[test]
    fn xsave_layout_round_trips_and_sits_where_the_cpu_reads_it() {
        let r = sample();
        let mut template = vec![0u8; XSAVE_BYTES];
        template[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
        let b = r.to_xsave(&template);
        assert_eq!(b.len(), XSAVE_BYTES);
        assert_eq!(&b[0..2], &0x37fu16.to_le_bytes());
        assert_eq!(b[4], 0x80);
        assert_eq!(&b[28..32], &0xffffu32.to_le_bytes(), "MXCSR_MASK kept");
        assert_eq!(
            &b[32 + 7 * 16 + 8..32 + 7 * 16 + 10],
            &0x3fffu16.to_le_bytes()
        );
        assert_eq!(&b[160 + 3 * 16..160 + 3 * 16 + 8], &0x1111u64.to_le_bytes());
        assert_eq!(
            &b[576 + 15 * 16 + 8..576 + 16 * 16],
            &0x4444u64.to_le_bytes()
        );
        assert_eq!(&b[512..520], &0x207u64.to_le_bytes());
        assert_eq!(FpuRegs::from_xsave(&b), Some(r.clone()));
        crate::kvm::state::check::xsave(&b).unwrap();
        let f = r.to_kvm_fpu();
        assert_eq!(
            (f.fcw, f.fsw, f.ftwx, f.mxcsr, f.last_ip),
            (0x37f, 0x3800, 0x80, 0x1fa0, 0x1009e7)
        );
        assert_eq!(&f.fpr[7][8..10], &0x3fffu16.to_le_bytes());
        assert_eq!(&f.xmm[3][8..], &0x2222u64.to_le_bytes());
        assert_eq!(FpuRegs::from_xsave(&b[..800]), None);
    }
}
