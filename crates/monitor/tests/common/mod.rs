//! Shared helpers of the monitor integration tests.

#![allow(dead_code)]

pub mod mock;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use mock::MockBackend;
use monitor::{bind_unix, MonitorServer, Protocol, ServerHandle};

/// A running monitor on a temporary unix socket.
pub struct TestServer {
    pub backend: Arc<MockBackend>,
    pub path: PathBuf,
    pub handle: ServerHandle,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start(protocol: Protocol) -> Self {
        Self::with_backend(Arc::new(MockBackend::new()), protocol)
    }

    pub fn with_backend(backend: Arc<MockBackend>, protocol: Protocol) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mon.sock");
        let listener = bind_unix(&path).unwrap();
        let handle = MonitorServer::new(backend.clone(), protocol)
            .serve_unix(listener)
            .unwrap();
        Self {
            backend,
            path,
            handle,
            _dir: dir,
        }
    }

    pub fn connect(&self) -> Raw {
        Raw::new(UnixStream::connect(&self.path).unwrap())
    }

    pub fn target(&self) -> String {
        self.path.display().to_string()
    }
}

/// A raw connection for checking exact bytes.
pub struct Raw {
    pub stream: UnixStream,
    buf: Vec<u8>,
}

/// Upper bound for any single wait in these tests (a hang fails instead of blocking).
pub const WAIT: Duration = Duration::from_secs(20);

impl Raw {
    pub fn new(stream: UnixStream) -> Self {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).unwrap();
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        let n = self
            .stream
            .read(&mut chunk)
            .expect("read from monitor (timeout?)");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one `\r\n`-terminated line, returned without the terminator.
    pub fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return String::from_utf8(line[..i].to_vec()).unwrap();
            }
            assert!(self.fill() > 0, "connection closed; pending {:?}", self.buf);
        }
    }

    /// Reads one QMP message.
    pub fn json(&mut self) -> Value {
        let l = self.line();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}"))
    }

    /// Reads the next message that is not an event.
    pub fn reply(&mut self) -> Value {
        loop {
            let v = self.json();
            if v.get("event").is_none() {
                return v;
            }
        }
    }

    /// Sends a request and returns the reply.
    pub fn call(&mut self, request: &str) -> Value {
        self.send(request);
        self.send("\n");
        self.reply()
    }

    /// Reads the greeting and negotiates.
    pub fn negotiate(&mut self) -> Value {
        let greeting = self.json();
        assert_eq!(
            self.call(r#"{"execute": "qmp_capabilities"}"#),
            serde_json::json!({"return": {}})
        );
        greeting
    }

    /// HMP: reads everything up to the next prompt and returns it (prompt excluded).
    pub fn until_prompt(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(7).position(|w| w == b"(qemu) ") {
                let out: Vec<u8> = self.buf.drain(..i + 7).collect();
                return String::from_utf8(out[..i].to_vec()).unwrap();
            }
            assert!(
                self.fill() > 0,
                "connection closed; pending {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// HMP: runs a command line and returns its output.
    pub fn hmp(&mut self, line: &str) -> String {
        self.send(line);
        self.send("\n");
        self.until_prompt()
    }

    /// True when the server closed the connection (after consuming remaining bytes).
    pub fn closed(&mut self) -> bool {
        loop {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return false,
            }
        }
    }

    /// Everything buffered so far, as text.
    pub fn buffered(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}
