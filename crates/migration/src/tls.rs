//! [`TlsObjects`]: the TLS objects a VM has (`tls-creds-x509`, `authz-simple`), handed to each
//! migration by value in [`Outgoing`](crate::outgoing::Outgoing) and
//! [`Incoming`](crate::incoming::Incoming). The `tls-creds` and `tls-authz` parameters name
//! objects by id; resolving them here (and not through a global table) keeps the migration
//! thread's inputs explicit.
//!
//! With `tls-creds` set, every channel of the migration is TLS or the migration fails: an id
//! that names nothing fails with QEMU's "No TLS credentials with id 'x'", and nothing ever
//! falls back to plain text.
//!
//! | side | hostname checked in the destination's certificate |
//! | --- | --- |
//! | source, `tls-hostname` set | `tls-hostname` |
//! | source, `tcp:HOST:PORT` | `HOST` (`localhost` when empty, as the connect does) |
//! | source, other URIs | none: `tls-hostname` is required |
//!
//! Multifd channels use the same credentials and hostname as the main channel, as QEMU 7.2
//! (`multifd_tls_channel_connect` takes the migration's hostname).

use transport::tls::{AuthzSimple, ClientTls, ServerTls, TlsCreds, TlsError, TlsObject};
use transport::MigrationUri;

use crate::error::MigrationError;
use crate::params::MigrationParameters;

/// The TLS objects of a VM, by id.
#[derive(Clone, Debug, Default)]
pub struct TlsObjects {
    /// `tls-creds-x509` objects.
    pub creds: Vec<TlsCreds>,
    /// `authz-simple` objects.
    pub authz: Vec<AuthzSimple>,
}

impl TlsObjects {
    /// `object-add` / `--object`: loads credentials (reading their files now, as QEMU) and
    /// adds the object. Ids are unique across both kinds.
    pub fn add(&mut self, object: TlsObject) -> Result<(), TlsError> {
        if self.contains(object.id()) {
            return Err(TlsError::DuplicateId(object.id().to_string()));
        }
        match object {
            TlsObject::X509(options) => self.creds.push(TlsCreds::load(options)?),
            TlsObject::Authz(a) => self.authz.push(a),
        }
        Ok(())
    }

    /// `object-del`. A migration that already started keeps its own copy.
    pub fn remove(&mut self, id: &str) -> Result<(), TlsError> {
        if !self.contains(id) {
            return Err(TlsError::ObjectNotFound(id.to_string()));
        }
        self.creds.retain(|c| c.id() != id);
        self.authz.retain(|a| a.id != id);
        Ok(())
    }

    /// Whether an object has this id.
    pub fn contains(&self, id: &str) -> bool {
        self.creds.iter().any(|c| c.id() == id) || self.authz.iter().any(|a| a.id == id)
    }

    fn creds(&self, id: &str) -> Result<&TlsCreds, MigrationError> {
        self.creds
            .iter()
            .find(|c| c.id() == id)
            .ok_or_else(|| MigrationError::TlsCredsNotFound(id.to_string()))
    }

    /// The source's TLS setup, `None` when `tls-creds` is empty.
    pub(crate) fn client(
        &self,
        params: &MigrationParameters,
        uri: &MigrationUri,
    ) -> Result<Option<ClientTls>, MigrationError> {
        if !params.uses_tls() {
            return Ok(None);
        }
        let creds = self.creds(&params.tls_creds)?;
        let host = match uri {
            _ if !params.tls_hostname.is_empty() => params.tls_hostname.as_str(),
            MigrationUri::Tcp { host, .. } if host.is_empty() => "localhost",
            MigrationUri::Tcp { host, .. } => host.as_str(),
            _ => "",
        };
        Ok(Some(
            ClientTls::new(creds, host).map_err(MigrationError::Tls)?,
        ))
    }

    /// The destination's TLS setup, `None` when `tls-creds` is empty.
    pub(crate) fn server(
        &self,
        params: &MigrationParameters,
    ) -> Result<Option<ServerTls>, MigrationError> {
        if !params.uses_tls() {
            return Ok(None);
        }
        let creds = self.creds(&params.tls_creds)?;
        let authz = match params.tls_authz.as_str() {
            "" => None,
            id => Some(
                self.authz
                    .iter()
                    .find(|a| a.id == id)
                    .cloned()
                    .ok_or_else(|| MigrationError::TlsAuthzNotFound(id.to_string()))?,
            ),
        };
        Ok(Some(
            ServerTls::new(creds, authz).map_err(MigrationError::Tls)?,
        ))
    }
}
