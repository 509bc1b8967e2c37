//! Setup: the multifd connections, then header, configuration, the return-path request and a
//! START section per active live handler.

use savevm::qemu_file::QemuFileWriter;
use savevm::record::postcopy::Advise;
use savevm::record::{self, Configuration, SectionHeader};
use transport::tls::ClientTls;
use transport::{ChannelWriter, MigrationUri};

use crate::cancel::CancelToken;
use crate::capabilities::Capability;
use crate::error::MigrationError;
use crate::registry::{EntryKind, Registry};
use crate::session::OutgoingSession;
use crate::settings::Settings;

/// Connects the `multifd-channels` extra connections (after the main one, which a QEMU 7.2
/// destination takes as the main stream); each is interrupted by a cancel. With `tls`, each
/// runs its own handshake, as in QEMU.
pub(super) fn connect_multifd(
    uri: &MigrationUri,
    settings: &Settings,
    cancel: &CancelToken,
    tls: Option<&ClientTls>,
) -> Result<Vec<ChannelWriter>, MigrationError> {
    if !uri.supports_multiple_channels() {
        return Err(MigrationError::MultifdTransport);
    }
    let n = settings.params.multifd_channels;
    let mut writers = Vec::new();
    for id in 0..usize::from(n) {
        let c = transport::connect(uri, &transport::NoFds)?;
        cancel.register(c.shutdown_handle());
        cancel.check()?;
        let c = match tls {
            Some(tls) => transport::tls::client(c, tls)?,
            None => c,
        };
        let mut w = c.into_split().1;
        crate::ram::multifd::send_hello(&mut w, id)?;
        writers.push(w);
    }
    Ok(writers)
}

/// Header, configuration, the return-path request, and a START section per live handler.
pub(super) fn write_setup(
    machine: &str,
    registry: &mut Registry,
    s: &mut OutgoingSession,
    use_rp: bool,
    f: &mut QemuFileWriter,
) -> Result<(), MigrationError> {
    record::write_header(f);
    // QEMU: the UUID subsection when -uuid was given and validate-uuid is on.
    let settings = s.settings();
    let uuid = settings
        .uuid
        .filter(|_| settings.has(Capability::ValidateUuid))
        .map(|u| u.0);
    Configuration {
        machine: machine.to_string(),
        capabilities: crate::ram::shared::configuration_capabilities(&s.settings().caps),
        uuid,
        ..Default::default()
    }
    .write_to(f);
    if use_rp {
        record::write_command(f, record::MIG_CMD_OPEN_RETURN_PATH, &[]);
    }
    if settings.has(Capability::PostcopyRam) {
        // Every block is in 4 KiB pages: the summary is that one size.
        let page = savevm::ram::TARGET_PAGE_SIZE as u64;
        let advise = Advise {
            page_size_summary: page,
            target_page_size: page,
        };
        record::write_command(f, record::MIG_CMD_POSTCOPY_ADVISE, &advise.encode());
        // Its PONG tells the switch that the destination accepted ADVISE.
        let ping = crate::postcopy::source::ADVISE_PING;
        record::write_command(f, record::MIG_CMD_PING, &ping.to_be_bytes());
    }
    for e in registry.entries_mut() {
        let EntryKind::Live(h) = &mut e.kind else {
            continue;
        };
        if !h.is_active(&s.settings().caps) {
            continue;
        }
        SectionHeader::Start {
            section_id: e.section_id,
            idstr: e.idstr.clone(),
            instance_id: e.instance_id,
            version_id: e.version_id,
        }
        .write_to(f);
        h.save_setup(f, s)?;
        record::write_footer(f, e.section_id);
    }
    Ok(f.flush()?)
}
