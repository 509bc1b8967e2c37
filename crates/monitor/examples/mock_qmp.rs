//! Serves QMP (or HMP) on a unix socket with the test mock backend, for manual checks with
//! other clients (e.g. Python's `qemu.qmp`). Exits when a client runs `quit`.
//!
//! ```text
//! cargo run -p monitor --example mock_qmp -- /tmp/qmp.sock [qmp|hmp]
//! ```

#[path = "../tests/common/mock.rs"]
mod mock;

use std::sync::Arc;
use std::time::Duration;

use monitor::{bind_unix, MonitorServer, Protocol};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: mock_qmp SOCKET [qmp|hmp]")?;
    let protocol = match args.next().as_deref() {
        None | Some("qmp") => Protocol::Qmp,
        Some("hmp") => Protocol::Hmp,
        Some(other) => return Err(format!("unknown protocol {other}").into()),
    };
    let backend = Arc::new(mock::MockBackend::new());
    let handle =
        MonitorServer::new(backend.clone(), protocol).serve_unix(bind_unix(path.as_ref())?)?;
    println!("serving {protocol:?} on {}", handle.description());
    while backend.state().quits == 0 {
        std::thread::sleep(Duration::from_millis(100));
    }
    handle.shutdown();
    Ok(())
}
