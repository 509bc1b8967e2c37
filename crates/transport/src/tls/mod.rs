//! TLS for migration channels, with QEMU's credentials model (`tls-creds-x509` objects,
//! `tls-hostname`, `authz-simple`) and rustls (ring provider) underneath.
//!
//! A plain socket [`Channel`] is upgraded in place: [`client`] (source) or [`server`]
//! (destination) run the handshake and return a channel whose two halves read and write
//! through one shared [`rustls`] session (see [`session`](self) for how the halves share
//! it, which is what lets the return path run over the main connection as in QEMU). Every
//! multifd connection is upgraded the same way, with its own handshake, as QEMU 7.2 does
//! (`multifd_tls_channel_connect`: same credentials, same hostname as the main channel).
//!
//! ```text
//! source: connect ─▶ tls::client(channel, &ClientTls) ─▶ Channel (halves share the session)
//! dest:   accept  ─▶ tls::server(channel, &ServerTls) ─▶ authz check ─▶ Channel
//! ```
//!
//! Nothing here falls back to plain text: a channel that cannot be upgraded is an error.
//! [`TlsError`]'s messages name the cause (hostname mismatch, unknown CA, expired
//! certificate, missing client certificate, a peer that does not speak TLS).

mod authz;
mod creds;
mod object;
mod session;
mod suites;

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError, ClientConnection, Connection, ServerConnection};

use crate::channel::Half;
use crate::{Channel, TransportError};

pub use authz::{subject_dn, AuthzSimple};
pub use creds::{CredsEndpoint, TlsCreds, X509Options};
pub use object::TlsObject;
pub(crate) use session::TlsSession;

/// What a source needs to open TLS channels: client credentials and the name the
/// destination's certificate must carry.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl ClientTls {
    /// `creds` must be client credentials (QEMU: "Expected TLS credentials for a client
    /// endpoint"); `hostname` is `tls-hostname`, or the host of the `tcp:` URI (an IP
    /// address is checked against the certificate's IP addresses).
    pub fn new(creds: &TlsCreds, hostname: &str) -> Result<ClientTls, TlsError> {
        let config = creds.client_config()?;
        if hostname.is_empty() {
            return Err(TlsError::NoHostname);
        }
        let host = hostname.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| TlsError::BadHostname(hostname.to_string()))?;
        Ok(ClientTls { config, name })
    }
}

/// What a destination needs to accept TLS channels.
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    /// `tls-authz` to check after the handshake (only with `verify-peer=off`; otherwise the
    /// handshake checks it).
    authz_after: Option<AuthzSimple>,
}

impl ServerTls {
    /// `creds` must be server credentials; `authz`, if any, is checked in each handshake
    /// (the refused source receives an `access_denied` alert).
    pub fn new(creds: &TlsCreds, authz: Option<AuthzSimple>) -> Result<ServerTls, TlsError> {
        let (config, check_after) = creds.server_config(authz.as_ref())?;
        Ok(ServerTls {
            config,
            authz_after: authz.filter(|_| check_after),
        })
    }
}

/// Runs the client handshake on a socket channel and returns the encrypted channel.
pub fn client(channel: Channel, tls: &ClientTls) -> Result<Channel, TransportError> {
    let uri = channel.description().to_string();
    let err = |source| TransportError::Tls {
        uri: uri.clone(),
        source,
    };
    let conn = ClientConnection::new(tls.config.clone(), tls.name.clone())
        .map_err(|e| err(TlsError::Config(e)))?;
    channel.upgrade(|ep| {
        let session = Arc::new(TlsSession::new(ep, Connection::Client(conn)));
        session.handshake().map_err(err)?;
        Ok(Half::Tls(session))
    })
}

/// Runs the server handshake on an accepted socket channel, checks `tls-authz`, and returns
/// the encrypted channel.
pub fn server(channel: Channel, tls: &ServerTls) -> Result<Channel, TransportError> {
    let uri = channel.description().to_string();
    let err = |source| TransportError::Tls {
        uri: uri.clone(),
        source,
    };
    let conn = ServerConnection::new(tls.config.clone()).map_err(|e| err(TlsError::Config(e)))?;
    channel.upgrade(|ep| {
        let session = Arc::new(TlsSession::new(ep, Connection::Server(conn)));
        session.handshake().map_err(err)?;
        if let Some(authz) = &tls.authz_after {
            authz
                .check(session.peer_certificate().as_deref())
                .map_err(err)?;
        }
        Ok(Half::Tls(session))
    })
}

/// Whether a read error is a TLS peer closing the connection without `close_notify` (see
/// [`TlsError::Truncated`]).
pub fn is_truncation(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<TlsError>())
        .is_some_and(|t| matches!(t, TlsError::Truncated))
}

/// Why TLS could not be used; messages name the cause for the operator.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A credentials file is missing or unreadable.
    #[error("cannot use {path}: {reason}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// An object property with a value QEMU does not accept (QEMU's text).
    #[error("Parameter '{property}' does not accept value '{value}'")]
    BadProperty {
        /// The property.
        property: &'static str,
        /// The value given.
        value: String,
    },
    /// A text boolean that is not one (QEMU's text).
    #[error("Parameter '{0}' expects 'on' or 'off'")]
    NotOnOff(&'static str),
    /// A QMP member of the wrong JSON type (QEMU's text).
    #[error("Invalid parameter type for '{property}', expected: {expected}")]
    WrongType {
        /// The property.
        property: &'static str,
        /// The JSON type wanted.
        expected: &'static str,
    },
    /// An item without `=` after the first, in `key=value,...` (QEMU's text).
    #[error("Expected '=' after parameter '{0}'")]
    ExpectedEquals(String),
    /// An `id` that is not an identifier (QEMU's text; HMP adds QEMU's hint line).
    #[error("Parameter 'id' expects an identifier")]
    BadId(String),
    /// Client credentials with `verify-peer=off`: livemig does not migrate to a destination
    /// it cannot authenticate.
    #[error("tls-creds '{0}': a client must verify its peer (verify-peer=off is refused)")]
    ClientWithoutVerify(String),
    /// Credentials for the other endpoint (QEMU's text).
    #[error("Expected TLS credentials for a {} endpoint", .0.as_str())]
    WrongEndpoint(CredsEndpoint),
    /// No name to check the destination's certificate against (a `unix:` URI without
    /// `tls-hostname`).
    #[error("no hostname available for TLS: set tls-hostname")]
    NoHostname,
    /// `tls-hostname` is not a DNS name or an IP address.
    #[error("'{0}' is not a valid TLS hostname")]
    BadHostname(String),
    /// rustls refused the configuration.
    #[error("invalid TLS configuration")]
    Config(#[source] rustls::Error),
    /// The destination's certificate does not name the host.
    #[error("the peer's certificate is not valid for the expected hostname")]
    HostnameMismatch(#[source] rustls::Error),
    /// The peer's certificate is not signed by the CA in `ca-cert.pem`.
    #[error("the peer's certificate is signed by an unknown CA")]
    UnknownCa(#[source] rustls::Error),
    /// The peer's certificate has expired (or is not valid yet).
    #[error("the peer's certificate has expired or is not yet valid")]
    Expired(#[source] rustls::Error),
    /// The peer's certificate was refused for another reason.
    #[error("the peer's certificate was refused")]
    BadCertificate(#[source] rustls::Error),
    /// The peer did not present the client certificate this server requires.
    #[error("the client presented no certificate, but this server verifies peers")]
    NoClientCertificate(#[source] rustls::Error),
    /// The peer refused the session with an alert.
    #[error("the peer refused the TLS session ({0:?})")]
    Refused(AlertDescription),
    /// The destination's `tls-authz` does not admit our certificate.
    #[error("the peer denied access: its tls-authz does not admit this certificate ({0:?})")]
    AccessDenied(AlertDescription),
    /// Our `tls-authz` refused the client's certificate (the DN is logged).
    #[error("the client's certificate is not admitted by tls-authz")]
    AuthzRefused(#[source] rustls::Error),
    /// The peer refused our certificate (or our lack of one).
    #[error(
        "the peer refused the TLS session: it requires a client certificate signed by its CA ({0:?})"
    )]
    CertificateRequired(AlertDescription),
    /// The bytes received are not TLS: most likely a peer without TLS configured.
    #[error("the peer does not speak TLS (plain-text peer?)")]
    NotTls(#[source] rustls::Error),
    /// Any other protocol failure.
    #[error("TLS protocol error")]
    Protocol(#[source] rustls::Error),
    /// The peer closed the connection before the handshake finished (e.g. a plain-text
    /// destination that dropped our hello).
    #[error("the peer closed the connection during the TLS handshake (does it use TLS?)")]
    ClosedDuringHandshake,
    /// The peer closed the connection without `close_notify` (a truncation, unless the
    /// protocol above proves the data complete).
    #[error("the peer closed the TLS connection without close_notify")]
    Truncated,
    /// `tls-authz`: the client presented no certificate.
    #[error("TLS authorization failed: the client presented no certificate")]
    AuthzNoCertificate,
    /// `tls-authz`: the client's DN is not the allowed identity (QEMU's text).
    #[error("TLS x509 authz check for {dn} is denied")]
    AuthzDenied {
        /// The client's distinguished name.
        dn: String,
    },
    /// The peer's certificate could not be parsed for authorization.
    #[error("cannot read the peer's certificate: {0}")]
    BadPeerCertificate(String),
    /// TLS needs a socket channel (`tcp:`, `unix:`, a socket `fd:`).
    #[error("TLS needs a socket; this channel is not one")]
    NotASocket,
    /// `--object` / `object-add` with a type livemig does not have (QEMU's text).
    #[error("Parameter 'qom-type' does not accept value '{0}'")]
    UnknownObjectType(String),
    /// A required property is missing (QEMU's text).
    #[error("Parameter '{0}' is missing")]
    MissingProperty(&'static str),
    /// A property the object type does not have (QEMU's text).
    #[error("Parameter '{0}' is unexpected")]
    UnknownProperty(String),
    /// A property without which the object cannot work, as QEMU names it for `dir`.
    #[error("Missing '{0}' property value")]
    MissingValue(&'static str),
    /// `tls-creds-psk`: see the `object` module documentation.
    #[error("tls-creds-psk is not supported: rustls offers no external pre-shared keys for TLS 1.3 (or TLS 1.2 PSK suites); use tls-creds-x509")]
    PskUnsupported,
    /// An object with this id exists already (QEMU's text).
    #[error("attempt to add duplicate property '{0}' to object (type 'container')")]
    DuplicateId(String),
    /// `object-del` of an id that names nothing (QEMU's text).
    #[error("object '{0}' not found")]
    ObjectNotFound(String),
    /// The socket failed during the handshake.
    #[error("I/O error during the TLS handshake")]
    Io(#[source] std::io::Error),
}

impl TlsError {
    /// The TLS error carried by an I/O error, or the I/O error itself.
    pub(crate) fn from_io(e: std::io::Error) -> TlsError {
        if e.get_ref().is_some_and(|i| i.is::<TlsError>()) {
            if let Some(inner) = e.into_inner() {
                if let Ok(tls) = inner.downcast::<TlsError>() {
                    return *tls;
                }
            }
            return TlsError::ClosedDuringHandshake;
        }
        TlsError::Io(e)
    }
}

/// Names the cause of a rustls failure.
pub(crate) fn describe(e: rustls::Error) -> TlsError {
    use rustls::Error as E;
    match &e {
        E::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsError::HostnameMismatch(e)
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                TlsError::UnknownCa(e)
            }
            CertificateError::ApplicationVerificationFailure => TlsError::AuthzRefused(e),
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => TlsError::Expired(e),
            _ => TlsError::BadCertificate(e),
        },
        E::NoCertificatesPresented => TlsError::NoClientCertificate(e),
        E::AlertReceived(
            a @ (AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown),
        ) => TlsError::CertificateRequired(*a),
        E::AlertReceived(a @ AlertDescription::AccessDenied) => TlsError::AccessDenied(*a),
        E::AlertReceived(a) => TlsError::Refused(*a),
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => TlsError::NotTls(e),
        _ => TlsError::Protocol(e),
    }
}
