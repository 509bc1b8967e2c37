//! HMP `object_add` / `object_del` over the HMP sockets of two running livemig processes:
//! credentials and an `authz-simple` (whose DN needs QEMU's `,,` escape) created from HMP on
//! both sides carry a TLS migration; QEMU's texts for malformed objects, duplicate and
//! unknown ids; `object_del` frees an id for reuse; the help lines.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::{Vm, SMALL};
use serde_json::{json, Value};
use testkit::tls::{Leaf, TestCa};

struct Hmp(UnixStream);

impl Hmp {
    fn connect(path: &Path) -> Hmp {
        let s = common::retry_connect(|| UnixStream::connect(path));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut h = Hmp(s);
        assert!(h.read_prompt().contains("monitor - type 'help'"));
        h
    }

    /// Reads until the `(qemu) ` prompt; returns what came before it.
    fn read_prompt(&mut self) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !out.ends_with(b"(qemu) ") {
            let n = self.0.read(&mut buf).unwrap();
            assert!(n > 0, "HMP closed: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out[..out.len() - 7]).replace("\r\n", "\n")
    }

    fn run(&mut self, line: &str) -> String {
        self.0.write_all(format!("{line}\n").as_bytes()).unwrap();
        self.read_prompt()
    }

    /// Runs a command that must print nothing.
    fn ok(&mut self, line: &str) {
        assert_eq!(self.run(line), "", "{line}");
    }
}

/// `livemig run` with an HMP socket next to its QMP one.
fn start(dir: &Path, name: &str, extra: &[&str]) -> (Vm, Hmp) {
    let path = dir.join(format!("{name}.hmp"));
    let spec = format!("unix:{},server=on,wait=off", path.display());
    let mut args = SMALL.to_vec();
    args.extend(extra);
    args.extend(["--monitor", &spec]);
    let vm = Vm::start(dir, name, &args);
    (vm, Hmp::connect(&path))
}

#[test]
fn hmp_object_add_errors_as_qemu_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_vm, mut hmp) = start(dir.path(), "vm", &[]);
    assert_eq!(
        hmp.run("help object_add"),
        "object_add [qom-type=]type,id=str[,prop=value][,...] -- create QOM object\n"
    );
    assert_eq!(
        hmp.run("help object_del"),
        "object_del id -- destroy QOM object\n"
    );
    for (line, expected) in [
        (
            "object_add",
            "object_add: string expected\nTry \"help object_add\" for more information\n",
        ),
        (
            "object_add tls-creds-x509,id=tls0",
            "Error: Missing 'dir' property value\n",
        ),
        (
            "object_add tls-creds-x509,dir=/x",
            "Error: Parameter 'id' is missing\n",
        ),
        (
            "object_add foo,id=x",
            "Error: Parameter 'qom-type' does not accept value 'foo'\n",
        ),
        (
            "object_add tls-creds-x509,id=t,dir=/x,endpoint=bogus",
            "Error: Parameter 'endpoint' does not accept value 'bogus'\n",
        ),
        (
            "object_add tls-creds-x509,id=t,dir=/x,verify-peer=maybe",
            "Error: Parameter 'verify-peer' expects 'on' or 'off'\n",
        ),
        (
            "object_add authz-simple,id=a,identity=x,bogus=1",
            "Error: Parameter 'bogus' is unexpected\n",
        ),
        (
            "object_add tls-creds-x509,id=t,dir",
            "Error: Expected '=' after parameter 'dir'\n",
        ),
        (
            "object_add authz-simple,id=5a,identity=x",
            "Error: Parameter 'id' expects an identifier\nIdentifiers consist of letters, \
             digits, '-', '.', '_', starting with a letter.\n",
        ),
        (
            "object_add authz-simple,id=a",
            "Error: Parameter 'identity' is missing\n",
        ),
        ("object_del nosuch", "Error: object 'nosuch' not found\n"),
        (
            "object_del",
            "object_del: string expected\nTry \"help object_del\" for more information\n",
        ),
        (
            "object_del a b",
            "object_del: extraneous characters at the end of line\nTry \"help object_del\" \
             for more information\n",
        ),
    ] {
        assert_eq!(hmp.run(line), expected, "{line}");
    }
    let missing = hmp.run("object_add tls-creds-x509,id=t,dir=/nonexistent,endpoint=client");
    assert!(
        missing.starts_with("Error: ") && missing.contains("/nonexistent/ca-cert.pem"),
        "{missing}"
    );
    assert_eq!(
        hmp.run("object_add help"),
        "List of user creatable objects:\n  authz-simple\n  tls-creds-x509\n"
    );
    // A failed object_add leaves nothing behind: the ids are free.
    hmp.ok("object_add authz-simple,id=a,identity=CN=x");
    assert_eq!(
        hmp.run("object_add qom-type=authz-simple,id=a,identity=CN=y"),
        "Error: attempt to add duplicate property 'a' to object (type 'container')\n"
    );
    hmp.ok("object_del a");
    hmp.ok("object_add authz-simple,id=a,identity=CN=y");
}

#[test]
fn hmp_created_credentials_carry_a_tls_migration() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("livemig HMP CA");
    let (server, client) = (dir.path().join("pki-server"), dir.path().join("pki-client"));
    let source = Leaf::localhost("source");
    ca.write_server_dir(&server, &Leaf::localhost("destination"));
    ca.write_client_dir(&client, Some(&source));

    let (mut dst, mut dst_hmp) = start(dir.path(), "dst", &["--incoming", "defer"]);
    dst_hmp.ok(&format!(
        "object_add tls-creds-x509,id=tls0,dir={},endpoint=server",
        server.display()
    ));
    // The source's DN has a comma: QEMU's `,,` keeps it inside the value.
    let identity = source.dn().replace(',', ",,");
    dst_hmp.ok(&format!(
        "object_add authz-simple,id=auth0,identity={identity}"
    ));
    dst_hmp.ok("migrate_set_parameter tls-creds tls0");
    dst_hmp.ok("migrate_set_parameter tls-authz auth0");
    let params = dst_hmp.run("info migrate_parameters");
    assert!(
        params.contains("tls-creds: 'tls0'") && params.contains("tls-authz: 'auth0'"),
        "{params}"
    );
    dst.cmd("migrate-incoming", json!({"uri": "tcp:127.0.0.1:0"}));
    let port = dst.cmd("query-migrate", Value::Null)["socket-address"][0]["port"]
        .as_str()
        .unwrap()
        .to_string();

    let (mut src, mut src_hmp) = start(dir.path(), "src", &["--fill", "16M"]);
    src_hmp.ok(&format!(
        "object_add tls-creds-x509,id=tls0,dir={},endpoint=client",
        client.display()
    ));
    src_hmp.ok("migrate_set_parameter tls-creds tls0");
    let params = src_hmp.run("info migrate_parameters");
    assert!(params.contains("tls-creds: 'tls0'"), "{params}");
    let out = src_hmp.run(&format!("migrate tcp:127.0.0.1:{port}"));
    assert!(!out.contains("Error"), "{out}");
    assert!(src_hmp
        .run("info migrate")
        .contains("Migration status: completed"));
    dst.wait_status("running");
    assert_eq!(src.cmd("query-migrate", Value::Null)["status"], "completed");
    // The objects can go once the migration is over.
    src_hmp.ok("object_del tls0");
    dst_hmp.ok("object_del auth0");
}
