//! `livemig run`: one VM process, source or (with `--incoming`) destination of a migration,
//! driven through QMP / HMP monitors like QEMU.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use transport::tls::TlsObject;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use guest_ram::Backing;
use vmm::kvm::KernelImage;
use vmm::machine::{Accel, DiskWorkload, Machine, MachineConfig, MachineType, SerialTarget};
use vmm::soft::{Pattern, WorkloadConfig};

use crate::backend::MachineBackend;
use crate::size::parse_size;

/// Machine types on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MachineArg {
    /// livemig's software machine (RAM block `pc.ram`, a `soft-cpu` section per vCPU).
    Soft,
    /// What QEMU's `-M none` presents (RAM block `ram`), for interop with QEMU.
    None,
    /// What QEMU 7.2's `-M microvm,x-option-roms=off,rtc=off,acpi=off,isa-serial=on -accel
    /// kvm` presents (KVM only): a running QEMU guest migrates into it.
    Microvm,
}

/// Accelerators on the command line.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum AccelArg {
    /// KVM when /dev/kvm is usable, the software guest otherwise.
    Auto,
    /// A KVM VM booting a kernel (the built-in guest payload by default).
    Kvm,
    /// Software vCPU threads writing guest RAM.
    Soft,
}

/// Write patterns on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PatternArg {
    /// Page after page.
    Sequential,
    /// Random pages.
    Random,
}

/// What `--fill` writes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FillArg {
    /// Pseudo-random bytes (incompressible).
    Random,
    /// Pseudo-random words (compresses about 3:1, like text).
    Text,
}

/// Arguments of `livemig run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Guest RAM size (e.g. 256M, 1G).
    #[arg(short = 'm', long = "memory", default_value = "256M", value_parser = parse_size)]
    pub memory: u64,
    /// Machine type presented on the wire.
    #[arg(long = "machine", short = 'M', value_enum, default_value = "soft")]
    pub machine: MachineArg,
    /// RAM backing: `anon`, `memfd`, or `file:PATH` (shared file mapping).
    #[arg(long, default_value = "anon")]
    pub backing: String,
    /// Number of vCPUs of the software guest (0: no vCPU runs).
    #[arg(long = "smp", visible_alias = "vcpus", default_value_t = 1)]
    pub vcpus: usize,
    /// Bytes of RAM the guest keeps rewriting.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pub working_set: u64,
    /// Dirtying rate per vCPU in bytes/s (e.g. 64M); unlimited when absent.
    #[arg(long, value_parser = parse_size)]
    pub write_rate: Option<u64>,
    /// Page order of the workload.
    #[arg(long, value_enum, default_value = "sequential")]
    pub pattern: PatternArg,
    /// Seed of the workload's data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Bytes of RAM filled with pseudo-random data and zero pages at boot.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub fill: u64,
    /// What `--fill` writes.
    #[arg(long, value_enum, default_value = "random")]
    pub fill_pattern: FillArg,
    /// Wait for an incoming migration on URI (`tcp:HOST:PORT`, `unix:PATH`, `exec:CMD`,
    /// `file:PATH`, `fd:N`, or `defer` for `migrate-incoming`).
    #[arg(long)]
    pub incoming: Option<String>,
    /// The VM's UUID, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (like QEMU's -uuid): reported by
    /// `query-uuid`, and checked by a destination with capability `validate-uuid`.
    #[arg(long)]
    pub uuid: Option<migration::uuid::VmUuid>,
    /// A TLS object, QEMU style: `tls-creds-x509,id=ID,dir=DIR,endpoint=server|client
    /// [,verify-peer=on|off]` or `authz-simple,id=ID,identity=DN`. May be repeated; the
    /// `tls-creds` / `tls-authz` migration parameters name them.
    #[arg(long, value_parser = parse_object)]
    pub object: Vec<TlsObject>,
    /// Do not start the vCPUs (like QEMU's -S).
    #[arg(short = 'S')]
    pub start_paused: bool,
    /// Allocate all guest RAM at start (like QEMU's -mem-prealloc): a destination then pays
    /// page allocation before the migration instead of during it, and holds all its memory.
    #[arg(long)]
    pub mem_prealloc: bool,
    /// QMP monitor endpoint, QEMU style: `unix:PATH,server=on,wait=off`, `tcp:HOST:PORT,...`,
    /// `stdio`. May be repeated.
    #[arg(long)]
    pub qmp: Vec<String>,
    /// HMP monitor endpoint (same syntax as --qmp). May be repeated.
    #[arg(long)]
    pub monitor: Vec<String>,
    /// Write the incoming listen URI (with the real port) to this file once listening.
    #[arg(long)]
    pub incoming_uri_file: Option<PathBuf>,
    /// Accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// KVM: PVH ELF kernel to boot (default: the built-in guest payload).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// KVM: kernel command line (default: the payload's defaults, e.g.
    /// `fill=1048576 ws=262144 selfcheck=0`).
    #[arg(long)]
    pub append: Option<String>,
    /// KVM: serial port output: `null`, `stdout`, `file:PATH` or `unix:PATH` (a socket to
    /// connect to).
    #[arg(long, default_value = "null")]
    pub serial: String,
    /// A disk: `file=PATH,format=raw|qcow2[,id=NAME]`. May be repeated.
    #[arg(long)]
    pub drive: Vec<String>,
    /// Disk writes (4 KiB) per second by the guest's disk writer, per disk (0 = no writer).
    #[arg(long, default_value_t = 0)]
    pub disk_write_rate: u64,
    /// Bytes at the start of each disk that the disk writer rewrites.
    #[arg(long, default_value = "8M", value_parser = parse_size)]
    pub disk_working_set: u64,
    /// Block order of the disk writer.
    #[arg(long, value_enum, default_value = "random")]
    pub disk_pattern: PatternArg,
}

impl RunArgs {
    /// The machine configuration these arguments describe.
    pub fn machine_config(&self) -> anyhow::Result<MachineConfig> {
        let backing = match self.backing.as_str() {
            "anon" | "anonymous" => Backing::Anonymous,
            "memfd" => Backing::Memfd,
            s => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Backing::File {
                    path: p.into(),
                    share: true,
                },
                _ => bail!("invalid --backing '{s}': expected anon, memfd or file:PATH"),
            },
        };
        let workload = (self.vcpus > 0).then_some(WorkloadConfig {
            vcpus: self.vcpus,
            working_set: self.working_set,
            write_rate: self.write_rate,
            pattern: match self.pattern {
                PatternArg::Sequential => Pattern::Sequential,
                PatternArg::Random => Pattern::Random,
            },
            seed: self.seed,
            block: 0,
            offset: 0,
        });
        let none = matches!(self.machine, MachineArg::None);
        let accel = match self.accel {
            // QEMU's none machine has no CPUs: KVM vCPU state would be sections QEMU rejects.
            AccelArg::Kvm if none => bail!("--machine none runs the software guest (--accel soft)"),
            AccelArg::Soft | AccelArg::Auto
                if matches!(self.machine, MachineArg::Microvm) && !vmm::kvm::kvm_available() =>
            {
                bail!("--machine microvm needs KVM (--accel kvm and a usable /dev/kvm)")
            }
            AccelArg::Soft if matches!(self.machine, MachineArg::Microvm) => {
                bail!("--machine microvm needs --accel kvm")
            }
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Soft => Accel::Soft,
            AccelArg::Auto if !none && vmm::kvm::kvm_available() => Accel::Kvm,
            AccelArg::Auto => Accel::Soft,
        };
        let serial = match self.serial.as_str() {
            "null" | "none" => SerialTarget::Null,
            "stdout" | "stdio" => SerialTarget::Stdout,
            s => match (s.strip_prefix("file:"), s.strip_prefix("unix:")) {
                (Some(p), _) if !p.is_empty() => SerialTarget::File(p.into()),
                (_, Some(p)) if !p.is_empty() => SerialTarget::Unix(p.into()),
                _ => bail!("invalid --serial '{s}': expected null, stdout, file:PATH or unix:PATH"),
            },
        };
        let drives = block::DriveSpec::parse_all(&self.drive).context("invalid --drive")?;
        let disk_workload = (self.disk_write_rate > 0).then_some(DiskWorkload {
            region: self.disk_working_set,
            rate: self.disk_write_rate,
            random: matches!(self.disk_pattern, PatternArg::Random),
        });
        Ok(MachineConfig {
            accel,
            kernel: self
                .kernel
                .clone()
                .map_or(KernelImage::Payload, KernelImage::Path),
            cmdline: self.append.clone(),
            serial,
            drives,
            disk_workload,
            machine: match self.machine {
                MachineArg::Soft => MachineType::Soft,
                MachineArg::None => MachineType::None,
                MachineArg::Microvm => MachineType::Microvm,
            },
            memory: self.memory,
            backing,
            workload,
            fill: self.fill,
            fill_pattern: match self.fill_pattern {
                FillArg::Random => vmm::soft::FillPattern::Random,
                FillArg::Text => vmm::soft::FillPattern::Text,
            },
            start_paused: self.start_paused,
            incoming: self.incoming.is_some(),
            uuid: self.uuid,
            prealloc: self.mem_prealloc,
        })
    }
}

/// Runs the VM until `quit` (or, for a destination, until a failed incoming migration).
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let machine = Machine::new(args.machine_config()?).context("cannot start the VM")?;
    for object in &args.object {
        machine
            .object_add(object.clone())
            .with_context(|| format!("cannot create object '{}'", object.id()))?;
    }
    let backend = Arc::new(MachineBackend::new(machine.clone()));
    let _monitors = crate::cmd_monitor::start_servers(&args.qmp, &args.monitor, backend)?;
    if let Some(uri) = args.incoming.as_deref().filter(|u| *u != "defer") {
        machine
            .migrate_incoming(uri, &transport::NoFds)
            .with_context(|| format!("cannot listen for an incoming migration on {uri}"))?;
        if let (Some(path), Some(real)) = (&args.incoming_uri_file, machine.incoming_uri()) {
            // Written aside and renamed, so a reader never sees a half-written file.
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, real)
                .and_then(|()| std::fs::rename(&tmp, path))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    loop {
        machine.wait(args.incoming.is_some());
        if machine.quit_requested() {
            break;
        }
        if let Some(Err(e)) = machine.incoming_result() {
            // As QEMU: a destination whose load failed discards the partial VM and exits.
            eprintln!("livemig: load of migration failed: {e}");
            machine.shutdown();
            return Ok(ExitCode::FAILURE);
        }
        // Incoming migration completed: keep running as the VM until quit.
        machine.wait(false);
        if machine.quit_requested() {
            break;
        }
    }
    machine.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// `--object`: parsed once here into a typed object.
fn parse_object(s: &str) -> Result<TlsObject, String> {
    TlsObject::parse_cli(s).map_err(|e| e.to_string())
}
