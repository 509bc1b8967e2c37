//! `object-add`: create a TLS credentials (`tls-creds-x509`) or authorization
//! (`authz-simple`) object, the objects `tls-creds` and `tls-authz` name.
//!
//! QMP (QEMU 7.2, flat properties): `{"execute": "object-add", "arguments": {"qom-type":
//! "tls-creds-x509", "id": "tls0", "dir": "/etc/pki/qemu", "endpoint": "server",
//! "verify-peer": true}}` → `{}`. The credential files are read now; errors keep QEMU's texts
//! ("attempt to add duplicate property 'tls0' to object (type 'container')").

use serde_json::Value;
use transport::tls::TlsObject;

use super::args::Args;
use crate::backend::CommandError;
use crate::session::Session;

/// Arguments of `object-add`: the parsed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectAdd(pub TlsObject);

impl ObjectAdd {
    /// Parses QMP arguments (every member is a property).
    pub fn parse(a: &mut Args) -> Result<Self, CommandError> {
        let mut map = a.take_all();
        // QEMU also accepts the properties nested in "props" (deprecated, still in 7.2).
        if let Some(Value::Object(props)) = map.remove("props") {
            map.extend(props);
        }
        TlsObject::from_qmp(map)
            .map(ObjectAdd)
            .map_err(|e| CommandError::generic(e.to_string()))
    }

    /// Asks the backend to create the object.
    pub fn run(&self, s: &Session) -> Result<(), CommandError> {
        s.backend.object_add(self.0.clone())
    }
}
