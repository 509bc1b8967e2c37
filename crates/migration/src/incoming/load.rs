//! Loading one stream into the registry: every record is validated before it is applied —
//! unknown sections, versions newer than ours, RAM blocks of another name or size, offsets
//! outside a block, and footers that do not match are typed errors.
//!
//! ```text
//! header ─ configuration (machine type check)
//! loop: START/FULL id idstr instance version ─ find entry ─ check version ─ bind id ─ body ─ footer
//!       PART/END id ─ entry bound to id ─ body ─ footer
//!       COMMAND OPEN_RETURN_PATH | PING | postcopy (ADVISE, DISCARD, PACKAGED { LISTEN .. RUN })
//!       EOF ─ VMDESCRIPTION (skipped)
//! ```

use std::io::Read;

use savevm::qemu_file::QemuFileReader;
use savevm::record::{self, Configuration, Record, RpMessage, SectionHeader};
use savevm::vmstate;

use super::ReturnPath;
use crate::capabilities::Capability;
use crate::error::MigrationError;
use crate::postcopy::{self, Flow, PostcopyPhase};
use crate::registry::{EntryKind, Registry, SaveStateEntry};
use crate::session::IncomingSession;
use crate::settings::Settings;
use crate::uuid::VmUuid;

/// Loads a whole stream from `reader` into `registry`. `machine` is the local machine type.
/// QEMU's `vmstate_uuid_post_load`: a received UUID must be ours; without a UUID of our own
/// it is only reported.
fn check_uuid(remote: Option<VmUuid>, local: Option<VmUuid>) -> Result<(), MigrationError> {
    match (remote, local) {
        (Some(remote), None) => {
            tracing::warn!("UUID is received {remote}, but local uuid isn't set");
            Ok(())
        }
        (Some(remote), Some(local)) if remote != local => {
            Err(MigrationError::UuidMismatch { remote, local })
        }
        _ => Ok(()),
    }
}

/// The caller runs the handlers' `load_cleanup` afterwards, whatever the outcome.
pub fn load_stream(
    reader: Box<dyn Read + Send>,
    registry: &mut Registry,
    machine: &str,
    rp: &mut ReturnPath,
    s: &mut IncomingSession,
) -> Result<(), MigrationError> {
    let mut f = QemuFileReader::with_capacity(reader, 1 << 20);
    let mut stage = load_from(&mut f, registry, machine, rp, s)?;
    // Without a VM to start, a postcopy stream just goes on after RUN.
    while let Stage::PostcopyRun = stage {
        stage = load_rest(&mut f, registry, rp, s)?;
    }
    commit_load(registry)
}

/// Every handler's [`LiveHandler::load_commit`](crate::LiveHandler::load_commit).
pub(super) fn commit_load(registry: &mut Registry) -> Result<(), MigrationError> {
    for e in registry.entries_mut() {
        if let EntryKind::Live(h) = &mut e.kind {
            h.load_commit()?;
        }
    }
    Ok(())
}

/// Where loading stopped.
pub(super) enum Stage {
    /// The whole stream is loaded.
    Done(Loaded),
    /// Postcopy RUN: the guest must start now; [`load_rest`] loads the rest of the RAM.
    PostcopyRun,
}

/// Why [`load_records`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoadEnd {
    /// `QEMU_VM_EOF`.
    Eof,
    /// Postcopy RUN.
    Run,
}

/// What the end of a loaded stream said.
pub(super) struct Loaded {
    /// The source announced its switchover commit (`savevm::record::write_commit`).
    pub commit_announced: bool,
}

/// [`load_stream`] on a reader the caller keeps (to read the source's commit afterwards).
pub(super) fn load_from(
    f: &mut QemuFileReader,
    registry: &mut Registry,
    machine: &str,
    rp: &mut ReturnPath,
    s: &mut IncomingSession,
) -> Result<Stage, MigrationError> {
    let f = &mut *f;
    record::read_header(f)?;
    let offset = f.bytes_read();
    let b = f.get_u8()?;
    if b != record::QEMU_VM_CONFIGURATION {
        return Err(savevm::Error::ConfigurationMissing { found: b, offset }.into());
    }
    let cfg = Configuration::read_from(f)?;
    if !machine.starts_with(&cfg.machine) || cfg.machine.is_empty() {
        return Err(MigrationError::MachineMismatch {
            remote: cfg.machine,
            local: machine.into(),
        });
    }
    crate::ram::shared::check_configuration_capabilities(&cfg.capabilities, &s.settings().caps)?;
    check_uuid(cfg.uuid.map(VmUuid), s.settings().uuid)?;
    registry.reset_load_ids();
    for e in registry.entries_mut() {
        if let EntryKind::Live(h) = &mut e.kind {
            h.load_setup(s)?;
        }
    }
    load_rest(f, registry, rp, s)
}

/// Loads records up to EOF (or a postcopy RUN), then finishes the stream: the VMDESCRIPTION
/// trailer (none after a postcopy), the ram-verify check, every handler's `load_complete`.
pub(super) fn load_rest(
    f: &mut QemuFileReader,
    registry: &mut Registry,
    rp: &mut ReturnPath,
    s: &mut IncomingSession,
) -> Result<Stage, MigrationError> {
    if load_records(f, registry, rp, s, false)? == LoadEnd::Run {
        return Ok(Stage::PostcopyRun);
    }
    // QEMU ends a postcopy stream at EOF (it has sent its device description long before).
    let vmdesc = if s.postcopy_phase() == PostcopyPhase::Running {
        None
    } else {
        record::read_vmdesc(f)?
    };
    if vmdesc.is_none() {
        tracing::info!("stream has no VMDESCRIPTION trailer");
    }
    // Before load_complete commits anything (disk images).
    require_verify(s.settings(), registry)?;
    for e in registry.entries_mut() {
        if let EntryKind::Live(h) = &mut e.kind {
            h.load_complete(s)?;
        }
    }
    Ok(Stage::Done(Loaded {
        commit_announced: vmdesc.is_some_and(|d| record::announces_commit(&d)),
    }))
}

/// Loads sections and commands until EOF or, with `nested` (a postcopy package), RUN. A RUN
/// in the main stream also returns, so the caller can start the guest.
pub(crate) fn load_records(
    f: &mut QemuFileReader,
    registry: &mut Registry,
    rp: &mut ReturnPath,
    s: &mut IncomingSession,
    nested: bool,
) -> Result<LoadEnd, MigrationError> {
    loop {
        match record::read_record(f)? {
            Record::Section(h) => load_section(f, registry, h, s)?,
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
                    .map_err(|_| MigrationError::BadPing)?;
                rp.send(RpMessage::Pong(v))?;
            }
            Record::Command { cmd, data } if postcopy::is_postcopy_command(cmd) => {
                if postcopy::handle_command(cmd, &data, f, registry, rp, s, nested)? == Flow::Run {
                    return Ok(LoadEnd::Run);
                }
            }
            Record::Command { cmd, .. } => return Err(MigrationError::UnsupportedCommand(cmd)),
            Record::Eof => return Ok(LoadEnd::Eof),
        }
    }
}

fn load_section(
    f: &mut QemuFileReader,
    registry: &mut Registry,
    h: SectionHeader,
    s: &mut IncomingSession,
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
        EntryKind::Live(handler) => handler.load(f, version, s)?,
        EntryKind::Device(dev) => {
            let desc = dev.description();
            let value = vmstate::load(&desc, version, f)?;
            dev.load(&value, version)?;
        }
    }
    record::read_footer(f, id)?;
    Ok(())
}

/// With `ram-verify` on, the destination refuses a stream that did not prove its RAM (and, when
/// it copied disks, its disks): a source that leaves a digest out cannot slip a change through.
fn require_verify(settings: &Settings, registry: &Registry) -> Result<(), MigrationError> {
    if !settings.has(Capability::RamVerify) {
        return Ok(());
    }
    let loaded = |idstr: &str| {
        registry
            .entries()
            .iter()
            .any(|e| e.idstr == idstr && e.load_section_id.is_some())
    };
    if !loaded(crate::verify::IDSTR) {
        return Err(MigrationError::VerifyMissing);
    }
    if loaded(crate::block::IDSTR) && !loaded(crate::block::verify::IDSTR) {
        return Err(MigrationError::DiskVerifyMissing);
    }
    Ok(())
}
