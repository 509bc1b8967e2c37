//! The destination side: load a stream into the local registry, then start the guest.
//!
//! ```text
//! listen ─▶ [setup] accept ─▶ [active] header ─ configuration (machine type check)
//!   loop: START/FULL id idstr instance version ─ find entry ─ check version ─ bind id ─ body ─ footer
//!         PART/END id ─ entry bound to id ─ body ─ footer
//!         EOF ─ VMDESCRIPTION (skipped)
//! ─▶ [completed] guest started if the source was running and no -S; else paused
//! any error ─▶ [failed] (the caller discards the partial VM and exits non-zero)
//! ```
//!
//! Every record is validated before it is applied: unknown sections, versions newer than ours,
//! RAM blocks of another name or size, offsets outside a block, and footers that do not match
//! are typed errors.

use std::io::{Read, Write};
use std::sync::Arc;

use savevm::qemu_file::QemuFileReader;
use savevm::record::{self, Configuration, Record, RpMessage, SectionHeader};
use savevm::vmstate;
use transport::Listener;

use crate::capabilities::Capability;
use crate::error::MigrationError;
use crate::global_state::GlobalState;
use crate::registry::{EntryKind, Registry, SaveStateEntry};
use crate::state::MigrationState;
use crate::status::{MigrationStatus, RunState};
use crate::vm::VmControl;

/// The destination's side of the return path: opened when the source asks for it
/// (`OPEN_RETURN_PATH`), answers `PING`s and ends with `SHUT` (0 = loaded, 1 = failed).
pub struct ReturnPath {
    writer: Option<Box<dyn Write + Send>>,
    open: bool,
}

impl ReturnPath {
    /// A return path over `writer` (None: the transport has no reverse direction).
    pub fn new(writer: Option<Box<dyn Write + Send>>) -> Self {
        Self {
            writer,
            open: false,
        }
    }

    fn open(&mut self) -> Result<(), MigrationError> {
        if self.writer.is_none() {
            return Err(MigrationError::Protocol(
                "the source asked for a return path, but this transport has none".into(),
            ));
        }
        self.open = true;
        Ok(())
    }

    fn send(&mut self, msg: RpMessage) -> Result<(), MigrationError> {
        match (&mut self.writer, self.open) {
            (Some(w), true) => Ok(record::write_rp(w.as_mut(), &msg)?),
            _ => Err(MigrationError::Protocol(
                "received PING but no return path is open".into(),
            )),
        }
    }

    /// Tells the source how loading ended (if it opened a return path).
    pub fn shut(&mut self, ok: bool) {
        if self.open {
            if let Err(e) = self.send(RpMessage::Shut(u32::from(!ok))) {
                tracing::warn!("could not report to the source: {}", e.report());
            }
        }
    }
}

/// Loads a whole stream from `reader` into `registry`. `machine` is the local machine type.
pub fn load_stream(
    reader: Box<dyn Read + Send>,
    registry: &mut Registry,
    machine: &str,
    rp: &mut ReturnPath,
) -> Result<(), MigrationError> {
    let mut f = QemuFileReader::with_capacity(reader, 1 << 20);
    record::read_header(&mut f)?;
    let offset = f.bytes_read();
    let b = f.get_u8()?;
    if b != record::QEMU_VM_CONFIGURATION {
        return Err(savevm::Error::ConfigurationMissing { found: b, offset }.into());
    }
    let cfg = Configuration::read_from(&mut f)?;
    if !machine.starts_with(&cfg.machine) || cfg.machine.is_empty() {
        return Err(MigrationError::MachineMismatch {
            remote: cfg.machine,
            local: machine.into(),
        });
    }
    if let Some(cap) = cfg.capabilities.first() {
        return Err(MigrationError::CapabilityMismatch(cap.clone()));
    }
    registry.reset_load_ids();
    for e in registry.entries_mut() {
        if let EntryKind::Live(h) = &mut e.kind {
            h.load_setup()?;
        }
    }
    loop {
        match record::read_record(&mut f)? {
            Record::Section(h) => load_section(&mut f, registry, h)?,
            Record::Command {
                cmd: record::MIG_CMD_OPEN_RETURN_PATH,
                ..
            } => rp.open()?,
            Record::Command {
                cmd: record::MIG_CMD_PING,
                data,
            } => {
                let v = <[u8; 4]>::try_from(data.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| {
                        MigrationError::Protocol("PING command without a 4-byte value".into())
                    })?;
                rp.send(RpMessage::Pong(v))?;
            }
            Record::Command { cmd, .. } => {
                return Err(MigrationError::Protocol(format!(
                    "migration command {cmd} is not supported by livemig"
                )))
            }
            Record::Eof => break,
        }
    }
    if record::read_vmdesc(&mut f)?.is_none() {
        tracing::info!("stream has no VMDESCRIPTION trailer");
    }
    for e in registry.entries_mut() {
        if let EntryKind::Live(h) = &mut e.kind {
            h.load_complete()?;
        }
    }
    Ok(())
}

fn load_section(
    f: &mut QemuFileReader,
    registry: &mut Registry,
    h: SectionHeader,
) -> Result<(), MigrationError> {
    let (id, entry, version): (u32, &mut SaveStateEntry, u32) = match h {
        SectionHeader::Start {
            section_id,
            idstr,
            instance_id,
            version_id,
        }
        | SectionHeader::Full {
            section_id,
            idstr,
            instance_id,
            version_id,
        } => {
            let e =
                registry
                    .find_mut(&idstr, instance_id)
                    .ok_or(MigrationError::UnknownSection {
                        idstr: idstr.clone(),
                        instance_id,
                    })?;
            if version_id > e.version_id {
                return Err(MigrationError::UnsupportedVersion {
                    idstr,
                    version: version_id,
                    local: e.version_id,
                });
            }
            e.load_section_id = Some(section_id);
            (section_id, e, version_id)
        }
        SectionHeader::Part { section_id } | SectionHeader::End { section_id } => {
            let e = registry
                .find_by_load_id(section_id)
                .ok_or(MigrationError::UnknownSectionId(section_id))?;
            let v = e.version_id;
            (section_id, e, v)
        }
    };
    match &mut entry.kind {
        EntryKind::Live(handler) => handler.load(f, version)?,
        EntryKind::Device(dev) => {
            let desc = dev.description();
            let value = vmstate::load(&desc, version, f)?;
            dev.load(&value, version)?;
        }
    }
    record::read_footer(f, id)?;
    Ok(())
}

/// Everything the destination needs.
pub struct IncomingJob {
    /// Bound listener for the migration URI.
    pub listener: Listener,
    /// Local machine type.
    pub machine: String,
    /// Migration state of this VM.
    pub state: Arc<MigrationState>,
    /// The VM to start afterwards.
    pub vm: Arc<dyn VmControl>,
    /// Received `globalstate`.
    pub global_state: GlobalState,
    /// Start the guest after loading (no `-S`).
    pub autostart: bool,
}

/// Accepts one connection, loads it and starts the guest. On error the status is `failed`
/// with the error text; the caller decides what to do with the process.
pub fn run_incoming(job: IncomingJob, registry: &mut Registry) -> Result<(), MigrationError> {
    let result = accept_and_load(&job, registry);
    if let Err(e) = &result {
        let msg = e.report();
        tracing::error!("load of migration failed: {msg}");
        job.state.lock().error = Some(msg);
        job.state.set_status_from_any(MigrationStatus::Failed);
    }
    result
}

/// Starts the guest if the source was running (and no `-S`), else adopts its run state.
fn start_guest(job: &IncomingJob) -> Result<(), MigrationError> {
    match job.global_state.get().as_deref() {
        None | Some("running") if job.autostart => job.vm.vm_start().map_err(MigrationError::Vm),
        None | Some("running") => {
            job.vm.set_run_state(RunState::Paused);
            Ok(())
        }
        Some(other) => {
            job.vm
                .set_run_state(other.parse().unwrap_or(RunState::Paused));
            Ok(())
        }
    }
}

fn accept_and_load(job: &IncomingJob, registry: &mut Registry) -> Result<(), MigrationError> {
    let channel = job.listener.accept_next()?;
    let (multifd, n) = {
        let s = job.state.lock();
        (s.caps.get(Capability::Multifd), s.params.multifd_channels)
    };
    if multifd {
        // QEMU 7.2: the first connection is the main stream, then one per multifd channel.
        let mut readers = Vec::new();
        for _ in 0..n {
            readers.push(job.listener.accept_next()?.into_split().0);
        }
        let readers = crate::ram::multifd::accept_channels(readers)?;
        job.state
            .multifd_channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1 = readers;
    }
    let start = std::time::Instant::now();
    job.state.lock().timings.start = Some(start);
    job.state
        .set_status(MigrationStatus::Setup, MigrationStatus::Active);
    let bidirectional = channel.is_bidirectional();
    let (reader, writer) = channel.into_split();
    let rp_writer = bidirectional.then(|| Box::new(writer) as Box<dyn Write + Send>);
    let mut rp = ReturnPath::new(rp_writer);
    let loaded = load_stream(Box::new(reader), registry, &job.machine, &mut rp)
        .and_then(|()| start_guest(job));
    rp.shut(loaded.is_ok());
    loaded?;
    {
        let mut s = job.state.lock();
        s.timings.total_time = Some(start.elapsed().as_millis() as u64);
    }
    job.state
        .set_status(MigrationStatus::Active, MigrationStatus::Completed);
    Ok(())
}
