//! The guest of bench case (d), identical on both VMMs: the built-in payload booted on KVM by
//! QEMU 7.2 `-M microvm` or by `livemig run --machine microvm --accel kvm` (which presents the
//! same machine), each a process driven over QMP, with its serial port in a file; and the
//! check that a migrated guest went on where it stopped.
//!
//! Both command lines carry the same values: [`MICROVM`]'s options on QEMU, [`VCPUS`] vCPUs,
//! [`MEMORY_ARG`] of RAM, the same payload ELF file (`-kernel` / `--kernel`) and the same
//! kernel command line. QEMU runs `-cpu host,-arch-capabilities`: livemig's vCPUs get the host
//! model, and QEMU 7.2 cannot set IA32_ARCH_CAPABILITIES under nested KVM. A destination is
//! started with `-incoming defer` (`--incoming defer`) so it can be configured before it
//! listens.
//!
//! **Did the guest go on?** The payload prints `payload start` once per boot, then `count=N`
//! lines, N = 1, 2, 3, … (see [`payload::Output`]). The source's serial output followed by the
//! destination's is one stream when the guest moved live: one boot, a counter without gap or
//! repeat, no failed self-check, no power-off. The two outputs are joined before parsing, since
//! the source may have been stopped in the middle of a line that the destination finishes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use payload::Output;

use super::qemu::{QemuProcess, QemuVm};

/// QEMU's machine, as `livemig run --machine microvm` presents it.
pub(super) const MICROVM: &str = "microvm,x-option-roms=off,rtc=off,acpi=off,isa-serial=on";
/// vCPUs on every side (the payload runs on vCPU 0; vCPU 1 waits for its SIPI, and both
/// vCPUs' state crosses).
pub(super) const VCPUS: u32 = 2;
/// Guest RAM on every side, as both command lines spell it.
pub(super) const MEMORY_ARG: &str = "256M";
/// [`MEMORY_ARG`] in bytes.
pub(super) const MEMORY: u64 = 256 << 20;

/// The guest's parameters: fill 2 MiB, rewrite the first 1 MiB (4 pages a step) for ever, no
/// self-check (verifying the region takes the nested guest seconds, which would stall its
/// counter). Small on purpose: nested KVM runs guest code about 1000 times slower.
pub(super) fn guest() -> payload::Params {
    payload::Params {
        fill: 2 << 20,
        ws: 1 << 20,
        selfcheck: 0,
        ..Default::default()
    }
}

/// Which VMM runs a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Vmm {
    /// `qemu-system-x86_64 -M microvm -accel kvm`.
    Qemu,
    /// `livemig run --machine microvm --accel kvm`.
    Livemig,
}

impl Vmm {
    /// Its name in the table.
    pub(super) fn name(self) -> &'static str {
        match self {
            Vmm::Qemu => "QEMU 7.2",
            Vmm::Livemig => "livemig",
        }
    }
}

/// What a guest's command line holds besides the VMM's own options.
pub(super) struct Launch<'a> {
    /// The program to run (`qemu-system-x86_64`, or this binary for livemig).
    pub(super) program: &'a str,
    /// The payload ELF file.
    pub(super) kernel: &'a Path,
    /// The kernel command line.
    pub(super) cmdline: &'a str,
    /// The file the serial port writes to.
    pub(super) serial: &'a Path,
    /// A destination: waits for `migrate-incoming`.
    pub(super) incoming: bool,
}

/// The full command line (program first, QMP option left out) of `vmm` running `l`.
pub(super) fn argv(vmm: Vmm, l: &Launch) -> Vec<String> {
    let (kernel, serial) = (
        l.kernel.display().to_string(),
        format!("file:{}", l.serial.display()),
    );
    let vcpus = VCPUS.to_string();
    let mut a: Vec<&str> = vec![l.program];
    match vmm {
        Vmm::Qemu => {
            a.extend([
                "-M",
                MICROVM,
                "-accel",
                "kvm",
                "-cpu",
                "host,-arch-capabilities",
            ]);
            a.extend(["-smp", &vcpus, "-m", MEMORY_ARG]);
            a.extend(["-nodefaults", "-no-user-config", "-display", "none"]);
            a.extend(["-kernel", &kernel, "-append", l.cmdline, "-serial", &serial]);
            if l.incoming {
                a.extend(["-incoming", "defer"]);
            }
        }
        Vmm::Livemig => {
            a.extend(["run", "--machine", "microvm", "--accel", "kvm"]);
            a.extend(["--smp", &vcpus, "-m", MEMORY_ARG]);
            a.extend([
                "--kernel", &kernel, "--append", l.cmdline, "--serial", &serial,
            ]);
            if l.incoming {
                a.extend(["--incoming", "defer"]);
            }
        }
    }
    a.into_iter().map(String::from).collect()
}

/// A running guest: its VMM process and QMP connection, and its serial file.
pub(super) struct Guest {
    pub(super) vm: QemuVm,
    serial: PathBuf,
}

impl Guest {
    /// Starts `vmm` named `name` (its QMP socket and serial file in `dir`) booting `kernel`
    /// with `cmdline`, or waiting for a migration when `incoming`.
    pub(super) fn start(
        vmm: Vmm,
        dir: &Path,
        name: &str,
        kernel: &Path,
        cmdline: &str,
        incoming: bool,
    ) -> anyhow::Result<Guest> {
        let exe = std::env::current_exe().context("cannot find this program")?;
        let exe = exe.display().to_string();
        let (program, qmp_flag) = match vmm {
            Vmm::Qemu => ("qemu-system-x86_64", "-qmp"),
            Vmm::Livemig => (exe.as_str(), "--qmp"),
        };
        let serial = dir.join(format!("{name}.serial"));
        let launch = Launch {
            program,
            kernel,
            cmdline,
            serial: &serial,
            incoming,
        };
        let (process, qmp) = QemuProcess::spawn(dir, name, &argv(vmm, &launch), qmp_flag)?;
        Ok(Guest {
            vm: QemuVm { process, qmp },
            serial,
        })
    }

    /// What the guest printed so far (empty before its first byte).
    pub(super) fn output(&self) -> String {
        std::fs::read(&self.serial)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the guest printed `n` counts (it has filled its region and is rewriting
    /// its working set); up to `limit`.
    pub(super) fn wait_counts(&self, n: usize, limit: Duration) -> anyhow::Result<()> {
        let t = Instant::now();
        loop {
            let out = Output::parse(&self.output());
            if out.counts.len() >= n {
                return Ok(());
            }
            if t.elapsed() > limit {
                bail!(
                    "the guest printed {} counts in {limit:?}: {out:?}",
                    out.counts.len()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How far a migrated guest went on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    /// Not yet `more` counts past the source's last.
    Waiting,
    /// It counted on from the source's last count to `last`.
    Continued { source_last: u64, last: u64 },
}

/// Judges the destination's serial output `dst` after the source's `src`: an error when the
/// guest did not go on as one run (rebooted, a gap or repeat in its counter, a failed
/// self-check, powered off or faulted), [`Progress::Continued`] once it counted `more` steps
/// past the source's last count.
pub(super) fn continuation(src: &str, dst: &str, more: u64) -> Result<Progress, String> {
    let source_last = Output::parse(src)
        .last_count()
        .ok_or("the source's guest printed no count")?;
    let all = Output::parse(&format!("{src}{dst}"));
    if all.starts != 1 {
        return Err(format!(
            "the guest booted {} times (the destination rebooted it)",
            all.starts
        ));
    }
    if !all.counts_consecutive() {
        let first_bad = all.counts.iter().zip(1u64..).position(|(&c, i)| c != i);
        let at = first_bad.unwrap_or(0);
        let around = &all.counts[at.saturating_sub(2)..(at + 2).min(all.counts.len())];
        return Err(format!(
            "a gap or a repeat in the counter after step {}: {around:?}",
            source_last
        ));
    }
    if all.any_selfcheck_failed() {
        return Err(format!("a self-check failed: {:?}", all.selfchecks));
    }
    if let Some(step) = all.poweroff.or(all.fault) {
        return Err(format!("the guest stopped at step {step}"));
    }
    let last = all.last_count().unwrap_or(0);
    Ok(if last >= source_last.saturating_add(more) {
        Progress::Continued { source_last, last }
    } else {
        Progress::Waiting
    })
}

/// Waits (up to `limit`) until the guest on `dst` counted `more` steps past `src`'s output,
/// read before the migration ended; fails at the first sign that it did not go on.
pub(super) fn wait_continued(
    src: &Guest,
    dst: &Guest,
    more: u64,
    limit: Duration,
) -> anyhow::Result<(u64, u64)> {
    let t = Instant::now();
    let src_out = src.output();
    loop {
        let dst_out = dst.output();
        match continuation(&src_out, &dst_out, more) {
            Err(e) => bail!("the guest did not go on: {e}"),
            Ok(Progress::Continued { source_last, last }) => return Ok((source_last, last)),
            Ok(Progress::Waiting) if t.elapsed() > limit => bail!(
                "the guest did not count on within {limit:?}: source {:?}, destination {:?}",
                Output::parse(&src_out).last_count(),
                Output::parse(&dst_out)
            ),
            Ok(Progress::Waiting) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(serial: &Path, incoming: bool) -> Launch<'_> {
        Launch {
            program: "prog",
            kernel: Path::new("/k/payload.elf"),
            cmdline: "fill=2097152 ws=1048576",
            serial,
            incoming,
        }
    }

    /// The value after `flag` in `argv`.
    fn value<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
        let i = argv.iter().position(|a| a == flag)?;
        argv.get(i + 1).map(String::as_str)
    }

    #[test]
    fn both_vmms_get_the_same_guest() {
        let serial = Path::new("/s/g.serial");
        let q = argv(Vmm::Qemu, &launch(serial, false));
        let l = argv(Vmm::Livemig, &launch(serial, false));
        assert_eq!(q[0], "prog");
        assert_eq!(&l[..2], ["prog", "run"]);
        assert_eq!(value(&q, "-M"), Some(MICROVM));
        assert_eq!(value(&l, "--machine"), Some("microvm"));
        assert_eq!(value(&q, "-accel"), Some("kvm"));
        assert_eq!(value(&l, "--accel"), Some("kvm"));
        assert_eq!(value(&q, "-cpu"), Some("host,-arch-capabilities"));
        for (qf, lf, want) in [
            ("-smp", "--smp", "2"),
            ("-m", "-m", "256M"),
            ("-kernel", "--kernel", "/k/payload.elf"),
            ("-append", "--append", "fill=2097152 ws=1048576"),
            ("-serial", "--serial", "file:/s/g.serial"),
        ] {
            assert_eq!(value(&q, qf), Some(want), "{q:?}");
            assert_eq!(value(&l, lf), Some(want), "{l:?}");
        }
        assert_eq!(MEMORY, 256 << 20);
        assert!(!q.iter().any(|a| a == "-incoming"), "{q:?}");
        assert!(!l.iter().any(|a| a == "--incoming"), "{l:?}");
    }

    #[test]
    fn a_destination_waits_for_migrate_incoming() {
        let serial = Path::new("/s/d.serial");
        let q = argv(Vmm::Qemu, &launch(serial, true));
        let l = argv(Vmm::Livemig, &launch(serial, true));
        assert_eq!(&q[q.len() - 2..], ["-incoming", "defer"]);
        assert_eq!(&l[l.len() - 2..], ["--incoming", "defer"]);
    }

    #[test]
    fn the_guest_params_fit_in_its_ram() {
        assert!(guest().min_ram() <= MEMORY);
        assert!(guest().cmdline().contains("fill=2097152 ws=1048576"));
    }

    const SRC: &str = "payload start base=0x400000 fill=4096 ws=4096 seed=1\nfilled pages=1\n\
                       count=1\ncount=2\ncount=3\n";

    #[test]
    fn a_guest_that_counts_on_continues() {
        assert_eq!(continuation(SRC, "", 2), Ok(Progress::Waiting));
        assert_eq!(continuation(SRC, "count=4\n", 2), Ok(Progress::Waiting));
        assert_eq!(
            continuation(SRC, "count=4\ncount=5\ncou", 2),
            Ok(Progress::Continued {
                source_last: 3,
                last: 5
            })
        );
        // The source stopped in the middle of a line; the destination finishes it.
        let cut = format!("{SRC}count=");
        assert_eq!(
            continuation(&cut, "4\ncount=5\n", 2),
            Ok(Progress::Continued {
                source_last: 3,
                last: 5
            })
        );
    }

    #[test]
    fn a_guest_that_did_not_go_on_is_an_error() {
        let reboot = "payload start base=0x400000 fill=4096 ws=4096 seed=1\ncount=1\n";
        assert!(continuation(SRC, reboot, 1)
            .unwrap_err()
            .contains("booted 2"));
        assert!(continuation(SRC, "count=5\ncount=6\n", 1)
            .unwrap_err()
            .contains("gap"));
        assert!(continuation(SRC, "count=3\ncount=4\n", 1)
            .unwrap_err()
            .contains("gap"));
        let fail = "count=4\nselfcheck=FAIL addr=0x400008 count=4\ncount=5\n";
        assert!(continuation(SRC, fail, 1)
            .unwrap_err()
            .contains("self-check"));
        assert!(continuation(SRC, "poweroff count=3\n", 0)
            .unwrap_err()
            .contains("stopped"));
        assert!(continuation("payload start\n", "count=1\n", 1)
            .unwrap_err()
            .contains("no count"));
        assert!(continuation("", "", 1).is_err());
        // Garbage on the destination's serial is not a count.
        assert_eq!(
            continuation(SRC, "\u{0}\u{ff}count=x\n\n", 1),
            Ok(Progress::Waiting)
        );
    }
}
