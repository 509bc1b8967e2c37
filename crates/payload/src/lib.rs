//! The livemig guest payload: a tiny PVH-bootable x86_64 ELF used as the guest of KVM tests and
//! benchmarks, and bootable unchanged under QEMU 7.2 `-M microvm`, so both VMMs run the
//! identical guest.
//!
//! The guest is C + assembly in `guest/`, compiled by `build.rs` with the system `gcc` and `ld`
//! (no bare-metal Rust target needed). What it does, in order:
//!
//! 1. enters at the PVH 32-bit entry (`XEN_ELFNOTE_PHYS32_ENTRY` note), switches to long mode
//!    with an identity map of the first 4 GiB;
//! 2. reads its parameters from the PVH start-info command line ([`Params::cmdline`]);
//! 3. fills `fill` bytes at `base` with a pseudo-random pattern;
//! 4. loops forever: rewrites `burst` pages of the first `ws` bytes, prints `count=N`, every
//!    `selfcheck` steps verifies the whole region and prints `selfcheck=ok` or
//!    `selfcheck=FAIL addr=0x...`; after step `max` (if non-zero) it powers off (16-bit write of
//!    `0x2000` to port `0x604`); at step `fault` (if non-zero) it triple-faults instead.
//!
//! Serial output (COM1 at 0x3f8, one line each; [`Output::parse`] reads it back):
//!
//! ```text
//! payload start base=0x400000 fill=1048576 ws=262144 seed=1
//! filled pages=256
//! count=1
//! count=2
//! selfcheck=ok count=2
//! poweroff count=2
//! ```
//!
//! Memory: the ELF loads at 1 MiB (under 64 KiB of image + 16 KiB stack); the region starts at
//! `base` (default 4 MiB) and is followed by one u32 generation per page. The guest needs
//! `base + fill + fill/1024` bytes of RAM below 4 GiB.
//!
//! ```
//! let p = payload::Params { fill: 1 << 20, ws: 64 << 10, max: 3, ..Default::default() };
//! assert_eq!(p.cmdline(), "base=0x400000 fill=1048576 ws=65536 burst=4 seed=1 selfcheck=0 max=3 delay=0 fault=0");
//! assert!(payload::PAYLOAD_ELF.starts_with(b"\x7fELF"));
//! ```

#![deny(missing_docs)]

/// The payload ELF image.
pub const PAYLOAD_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/payload.elf"));

/// Path of the payload ELF as built (inside cargo's target directory), for tools such as QEMU
/// that want a file.
pub const PAYLOAD_ELF_PATH: &str = concat!(env!("OUT_DIR"), "/payload.elf");

/// I/O port the payload writes [`POWEROFF_VALUE`] to (16-bit) to power off.
pub const POWEROFF_PORT: u16 = 0x604;
/// Value written to [`POWEROFF_PORT`].
pub const POWEROFF_VALUE: u16 = 0x2000;
/// I/O port of the serial port (COM1) the payload prints on.
pub const SERIAL_PORT: u16 = 0x3f8;

/// The guest's parameters, passed on the PVH command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Guest-physical start of the test region (at least 2 MiB, page aligned).
    pub base: u64,
    /// Bytes filled with the pattern.
    pub fill: u64,
    /// Bytes (from `base`) rewritten continuously; clamped to `fill` by the guest.
    pub ws: u64,
    /// Pages rewritten per counter step.
    pub burst: u64,
    /// Pattern seed.
    pub seed: u64,
    /// Verify the region every this many steps; 0 = never.
    pub selfcheck: u64,
    /// Power off after this step; 0 = run forever.
    pub max: u64,
    /// `pause` iterations between steps (slows the guest down).
    pub delay: u64,
    /// Triple-fault at this step (tests a VMM's crash path); 0 = never.
    pub fault: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            base: 0x40_0000,
            fill: 1 << 20,
            ws: 256 << 10,
            burst: 4,
            seed: 1,
            selfcheck: 0,
            max: 0,
            delay: 0,
            fault: 0,
        }
    }
}

impl Params {
    /// The kernel command line the payload parses.
    pub fn cmdline(&self) -> String {
        format!(
            "base={:#x} fill={} ws={} burst={} seed={} selfcheck={} max={} delay={} fault={}",
            self.base,
            self.fill,
            self.ws,
            self.burst,
            self.seed,
            self.selfcheck,
            self.max,
            self.delay,
            self.fault
        )
    }

    /// Smallest guest RAM size (bytes, rounded up to 1 MiB) that holds the region and its
    /// generation table.
    pub fn min_ram(&self) -> u64 {
        let gen = (self.fill / 4096 * 4).next_multiple_of(4096);
        (self.base + self.fill + gen).next_multiple_of(1 << 20)
    }
}

/// The result of one self-check, as printed by the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfCheck {
    /// The whole region matched at counter step `count`.
    Ok {
        /// Counter step.
        count: u64,
    },
    /// The word at `addr` did not match at counter step `count`.
    Fail {
        /// Guest-physical address of the first bad word.
        addr: u64,
        /// Counter step.
        count: u64,
    },
}

/// What the guest printed, parsed from (possibly partial) serial output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// `payload start` lines seen (boots).
    pub starts: usize,
    /// Counter values in order.
    pub counts: Vec<u64>,
    /// Self-check results in order.
    pub selfchecks: Vec<SelfCheck>,
    /// The step at which the guest powered off, if it did.
    pub poweroff: Option<u64>,
    /// The step at which the guest triple-faulted on purpose, if it did.
    pub fault: Option<u64>,
}

fn num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

impl Output {
    /// Parses complete lines of `text`; a trailing line without `\n` is ignored (the guest may
    /// be in the middle of printing it).
    pub fn parse(text: &str) -> Output {
        let mut out = Output::default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..i],
            None => "",
        };
        for line in complete.lines() {
            if line.starts_with("payload start") {
                out.starts += 1;
            } else if let Some(n) = line.strip_prefix("count=").and_then(num) {
                out.counts.push(n);
            } else if line.starts_with("selfcheck=ok") {
                if let Some(count) = field(line, "count").and_then(num) {
                    out.selfchecks.push(SelfCheck::Ok { count });
                }
            } else if line.starts_with("selfcheck=FAIL") {
                let addr = field(line, "addr").and_then(num);
                let count = field(line, "count").and_then(num);
                if let (Some(addr), Some(count)) = (addr, count) {
                    out.selfchecks.push(SelfCheck::Fail { addr, count });
                }
            } else if let Some(n) = line.strip_prefix("poweroff count=").and_then(num) {
                out.poweroff = Some(n);
            } else if let Some(n) = line.strip_prefix("fault count=").and_then(num) {
                out.fault = Some(n);
            }
        }
        out
    }

    /// The last counter value printed.
    pub fn last_count(&self) -> Option<u64> {
        self.counts.last().copied()
    }

    /// True if the counter values are 1, 2, 3, ... without gaps or repeats.
    pub fn counts_consecutive(&self) -> bool {
        self.counts.iter().zip(1u64..).all(|(&c, i)| c == i)
    }

    /// True if any self-check failed.
    pub fn any_selfcheck_failed(&self) -> bool {
        self.selfchecks
            .iter()
            .any(|s| matches!(s, SelfCheck::Fail { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_has_pvh_note_and_x86_64_header() {
        let elf = PAYLOAD_ELF;
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 2, "ELFCLASS64");
        assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 62, "EM_X86_64");
        // The note: namesz 4, descsz 4, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), "Xen\0".
        let note = [4u32.to_le_bytes(), 4u32.to_le_bytes(), 18u32.to_le_bytes()].concat();
        let pos = elf.windows(12).position(|w| w == note.as_slice());
        let pos = pos.expect("PVH note present");
        assert_eq!(&elf[pos + 12..pos + 16], b"Xen\0");
        let entry =
            u32::from_le_bytes([elf[pos + 16], elf[pos + 17], elf[pos + 18], elf[pos + 19]]);
        assert_eq!(entry, 0x10_0000);
    }

    #[test]
    fn parses_output_and_ignores_partial_line() {
        let text = "payload start base=0x400000 fill=4096 ws=4096 seed=1\nfilled pages=1\n\
                    count=1\ncount=2\nselfcheck=ok count=2\ncount=3\n\
                    selfcheck=FAIL addr=0x401238 count=3\npoweroff count=3\ncou";
        let o = Output::parse(text);
        assert_eq!(o.starts, 1);
        assert_eq!(o.counts, vec![1, 2, 3]);
        assert!(o.counts_consecutive());
        assert_eq!(
            o.selfchecks,
            vec![
                SelfCheck::Ok { count: 2 },
                SelfCheck::Fail {
                    addr: 0x401238,
                    count: 3
                }
            ]
        );
        assert!(o.any_selfcheck_failed());
        assert_eq!(o.poweroff, Some(3));
        assert_eq!(o.last_count(), Some(3));
    }

    #[test]
    fn gaps_are_not_consecutive() {
        assert!(!Output::parse("count=1\ncount=3\n").counts_consecutive());
        assert!(!Output::parse("count=2\n").counts_consecutive());
    }

    #[test]
    fn min_ram_covers_region_and_generations() {
        let p = Params {
            base: 4 << 20,
            fill: 4 << 20,
            ..Default::default()
        };
        assert_eq!(p.min_ram(), 9 << 20);
    }
}
