//! `query-status`, `stop` and `cont`.
//!
//! `query-status` → `{"status": <RunState>, "singlestep": false, "running": <bool>}`.

use serde_json::{json, Value};

use crate::backend::CommandError;
use crate::session::Session;

/// The `query-status` reply.
pub fn query_status(s: &Session) -> Value {
    let st = s.backend.run_state();
    json!({ "status": st.as_str(), "singlestep": false, "running": st.is_running() })
}

/// Stops the vCPUs.
pub fn stop(s: &Session) -> Result<(), CommandError> {
    s.backend.stop()
}

/// Resumes the vCPUs.
pub fn cont(s: &Session) -> Result<(), CommandError> {
    s.backend.cont()
}
