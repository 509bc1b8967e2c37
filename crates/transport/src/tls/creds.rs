//! TLS credentials as QEMU models them: a `tls-creds-x509` object names a directory holding
//! PEM files with fixed names, and says which end of a connection it is for.
//!
//! | file in `dir` | server endpoint | client endpoint |
//! | --- | --- | --- |
//! | `ca-cert.pem` | required when `verify-peer=on`: the CA client certificates must chain to | required: the CA the server's certificate must chain to |
//! | `server-cert.pem`, `server-key.pem` | required: the server's certificate chain and key | – |
//! | `client-cert.pem`, `client-key.pem` | – | optional (both or neither): presented when the server asks |
//!
//! `verify-peer` defaults to `on`, as in QEMU: a server then requires a client certificate
//! signed by its CA, and a client checks the server's certificate (chain, validity dates,
//! name). A client with `verify-peer=off` is refused here instead of silently accepting any
//! server: livemig never migrates to an unauthenticated destination.
//!
//! Files are read when the object is created (`object-add`, `--object`), as QEMU does, so a
//! missing or broken file is reported to the operator there and not in the middle of a
//! migration. The result holds ready rustls configurations (ring provider, suites ordered
//! by [`suites`](super::suites)).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

use super::{AuthzSimple, TlsError};

/// Which end of a TLS session credentials are for (QEMU's `endpoint` property).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredsEndpoint {
    /// The destination (accepts the connections).
    Server,
    /// The source (connects).
    Client,
}

impl CredsEndpoint {
    /// QEMU's name: `server` or `client`.
    pub fn as_str(self) -> &'static str {
        match self {
            CredsEndpoint::Server => "server",
            CredsEndpoint::Client => "client",
        }
    }
}

impl std::str::FromStr for CredsEndpoint {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        match s {
            "server" => Ok(CredsEndpoint::Server),
            "client" => Ok(CredsEndpoint::Client),
            other => Err(TlsError::BadProperty {
                property: "endpoint",
                value: other.to_string(),
            }),
        }
    }
}

/// The properties of a `tls-creds-x509` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Options {
    /// The object id, what `tls-creds` names.
    pub id: String,
    /// Directory with the PEM files (see the module table).
    pub dir: PathBuf,
    /// Server or client.
    pub endpoint: CredsEndpoint,
    /// Whether the peer's certificate is checked (default on).
    pub verify_peer: bool,
}

/// Loaded `tls-creds-x509` credentials: the rustls configuration for its endpoint.
#[derive(Clone)]
pub struct TlsCreds {
    options: X509Options,
    config: Config,
}

#[derive(Clone)]
enum Config {
    Server(ServerParts),
    Client(Arc<ClientConfig>),
}

/// What a server configuration is built from: `tls-authz` is only known per migration.
#[derive(Clone)]
struct ServerParts {
    certs: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    /// The client verifier (`verify-peer=on`).
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The configuration without `tls-authz`.
    plain: Arc<ServerConfig>,
}

/// The largest PEM file accepted (certificates and keys are a few KiB).
const MAX_PEM_FILE: u64 = 1 << 20;

impl TlsCreds {
    /// Reads the files of `options.dir` and builds the configuration. Errors name the file.
    pub fn load(options: X509Options) -> Result<TlsCreds, TlsError> {
        let provider = super::suites::provider();
        let dir = &options.dir;
        let config = match options.endpoint {
            CredsEndpoint::Server => {
                let certs = read_certs(&dir.join("server-cert.pem"))?;
                let key = Arc::new(read_key(&dir.join("server-key.pem"))?);
                let verifier = if options.verify_peer {
                    let roots = Arc::new(read_roots(&dir.join("ca-cert.pem"))?);
                    let verifier: Arc<dyn ClientCertVerifier> =
                        WebPkiClientVerifier::builder_with_provider(roots, provider)
                            .build()
                            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
                    Some(verifier)
                } else {
                    None
                };
                let plain = server_config(&certs, &key, verifier.clone())?;
                Config::Server(ServerParts {
                    certs,
                    key,
                    verifier,
                    plain,
                })
            }
            CredsEndpoint::Client => {
                if !options.verify_peer {
                    return Err(TlsError::ClientWithoutVerify(options.id.clone()));
                }
                let roots = read_roots(&dir.join("ca-cert.pem"))?;
                let builder = ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(TlsError::Config)?
                    .with_root_certificates(roots);
                let (cert, key) = (dir.join("client-cert.pem"), dir.join("client-key.pem"));
                let mut cfg = match (cert.exists(), key.exists()) {
                    (false, false) => builder.with_no_client_auth(),
                    (true, true) => builder
                        .with_client_auth_cert(read_certs(&cert)?, read_key(&key)?)
                        .map_err(TlsError::Config)?,
                    (false, true) => return Err(missing(&cert)),
                    (true, false) => return Err(missing(&key)),
                };
                cfg.resumption = rustls::client::Resumption::disabled();
                Config::Client(Arc::new(cfg))
            }
        };
        Ok(TlsCreds { options, config })
    }

    /// The object's properties.
    pub fn options(&self) -> &X509Options {
        &self.options
    }

    /// The object id.
    pub fn id(&self) -> &str {
        &self.options.id
    }

    /// The endpoint these credentials are for.
    pub fn endpoint(&self) -> CredsEndpoint {
        self.options.endpoint
    }

    /// The client configuration, or QEMU's error for server credentials.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        match &self.config {
            Config::Client(c) => Ok(c.clone()),
            Config::Server(_) => Err(TlsError::WrongEndpoint(CredsEndpoint::Client)),
        }
    }

    /// The server configuration, or QEMU's error for client credentials. With `authz` and
    /// `verify-peer=on`, the client's certificate is checked against it during the
    /// handshake, so a refused source receives an `access_denied` alert naming the refusal
    /// (`Ok(.., false)`); with `verify-peer=off` the caller checks after the handshake.
    pub(crate) fn server_config(
        &self,
        authz: Option<&AuthzSimple>,
    ) -> Result<(Arc<ServerConfig>, bool), TlsError> {
        let parts = match &self.config {
            Config::Server(parts) => parts,
            Config::Client(_) => return Err(TlsError::WrongEndpoint(CredsEndpoint::Server)),
        };
        match (authz, &parts.verifier) {
            (Some(authz), Some(inner)) => {
                let verifier = Arc::new(AuthzVerifier {
                    inner: inner.clone(),
                    authz: authz.clone(),
                });
                Ok((
                    server_config(&parts.certs, &parts.key, Some(verifier))?,
                    false,
                ))
            }
            (authz, _) => Ok((parts.plain.clone(), authz.is_some())),
        }
    }
}

impl std::fmt::Debug for TlsCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCreds")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn server_config(
    certs: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = super::suites::provider();
    let builder = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs.to_vec(), key.clone_key())
        .map_err(TlsError::Config)?;
    // One session per connection: nothing to resume, no tickets to send.
    cfg.send_tls13_tickets = 0;
    // Our order (see `suites`), whatever the client prefers.
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// The CA check, then `authz-simple`'s DN check, inside the handshake.
#[derive(Debug)]
struct AuthzVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    authz: AuthzSimple,
}

impl ClientCertVerifier for AuthzVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match self.authz.check(Some(end_entity.as_ref())) {
            Ok(()) => Ok(verified),
            Err(e) => {
                tracing::warn!("{e}");
                // Sent to the client as an access_denied alert.
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn missing(path: &Path) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: "the file does not exist".into(),
    }
}

/// Reads a PEM file of bounded size.
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let err = |e: std::io::Error| TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(TlsError::File {
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_PEM_FILE} bytes"),
        });
    }
    Ok(bytes)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: path.to_path_buf(),
            reason: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}
