//! Two-process live migrations: `livemig run` sources and destinations driven over QMP, with a
//! running guest workload and `ram-verify` on (the destination refuses RAM that differs).

mod common;

use std::time::Duration;

use common::{configure, deferred_destination, destination, Vm, SMALL};
use serde_json::{json, Value};

fn args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = SMALL.to_vec();
    v.extend_from_slice(extra);
    v
}

/// Migrates a running source to `uri` and checks both sides afterwards.
/// Resumes `src`, migrates it to a file (one channel, no way back) and returns the error.
fn failing_file_migration(dir: &std::path::Path, src: &mut Vm) -> String {
    src.cmd("cont", Value::Null);
    let uri = format!("file:{}", dir.join("f.mig").display());
    src.cmd("migrate", json!({ "uri": uri }));
    let info = src.wait_migration();
    assert_eq!(info["status"], "failed", "{info}");
    info["error-desc"].as_str().unwrap_or_default().to_string()
}

fn migrate_and_check(src: &mut Vm, dst: &mut Vm, uri: &str) -> Value {
    src.wait_status("running");
    src.enable_verify();
    std::thread::sleep(Duration::from_millis(100));
    src.cmd("migrate", json!({ "uri": uri }));
    let info = src.wait_completed(dst);
    dst.wait_status("running");
    assert_eq!(src.status(), "postmigrate");
    // The destination starts the guest, then reports completed (QEMU's order too).
    assert_eq!(dst.wait_migration()["status"], "completed");
    let ram = &info["ram"];
    assert!(ram["normal"].as_u64().unwrap() > 0, "{info}");
    assert!(ram["dirty-sync-count"].as_u64().unwrap() >= 2, "{info}");
    assert!(info["downtime"].is_u64(), "{info}");
    info
}

#[test]
fn tcp_with_running_guest_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dst, uri) = destination(dir.path(), "dst", &args(&[]), "tcp:127.0.0.1:0");
    let mut src = Vm::start(dir.path(), "src", &args(&["--fill", "32M"]));
    migrate_and_check(&mut src, &mut dst, &uri);
    // The guest keeps running on the destination; the source resumes with `cont` if asked.
    src.cmd("cont", Value::Null);
    assert_eq!(src.status(), "running");
    assert!(dst.quit().status.success());
}

/// Also a destination started with `--mem-prealloc` (all RAM allocated, reading as zero,
/// before the stream arrives): `ram-verify` shows it loaded exactly the source's RAM.
#[test]
fn unix_socket_into_a_preallocated_destination() {
    let dir = tempfile::tempdir().unwrap();
    let sock = format!("unix:{}", dir.path().join("mig.sock").display());
    let (mut dst, uri) = destination(dir.path(), "dst", &args(&["--mem-prealloc"]), &sock);
    let mut src = Vm::start(dir.path(), "src", &args(&["--fill", "16M"]));
    migrate_and_check(&mut src, &mut dst, &uri);
}

#[test]
fn exec_through_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: plain mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let incoming = format!("exec:cat {}", fifo.display());
    let (mut dst, _) = destination(dir.path(), "dst", &args(&[]), &incoming);
    let mut src = Vm::start(dir.path(), "src", &args(&["--fill", "16M"]));
    migrate_and_check(
        &mut src,
        &mut dst,
        &format!("exec:cat > {}", fifo.display()),
    );
}

#[test]
fn save_to_file_then_restore() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vm.mig");
    let mut src = Vm::start(dir.path(), "src", &args(&["--fill", "16M"]));
    src.wait_status("running");
    src.enable_verify();
    src.cmd(
        "migrate",
        json!({ "uri": format!("file:{}", file.display()) }),
    );
    let info = src.wait_migration();
    assert_eq!(info["status"], "completed", "{info}");
    assert_eq!(src.status(), "postmigrate");
    let (mut dst, _) = destination(
        dir.path(),
        "dst",
        &args(&[]),
        &format!("file:{}", file.display()),
    );
    dst.wait_status("running");
    assert_eq!(dst.wait_migration()["status"], "completed");
    // The file is a QEMU-format stream: livemig analyze reads it back.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_livemig"))
        .args(["analyze", "--json", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.to_string().contains("soft-cpu"), "{report}");
}

/// A source migrating at 8 MiB/s, half a second in, and its destination.
fn start_throttled_migration(dir: &std::path::Path) -> (Vm, Vm) {
    let (dst, uri) = destination(dir, "dst1", &args(&[]), "tcp:127.0.0.1:0");
    let mut src = Vm::start(dir, "src", &args(&["--fill", "48M"]));
    src.wait_status("running");
    src.enable_verify();
    src.cmd("migrate-set-parameters", json!({"max-bandwidth": 8 << 20}));
    src.cmd("migrate", json!({ "uri": uri }));
    std::thread::sleep(Duration::from_millis(500));
    (src, dst)
}

/// Unthrottles `src` and migrates it to a fresh destination.
fn retry_to_new_destination(dir: &std::path::Path, src: &mut Vm) {
    src.cmd("migrate-set-parameters", json!({"max-bandwidth": 0}));
    let (mut dst2, uri2) = destination(dir, "dst2", &args(&[]), "tcp:127.0.0.1:0");
    migrate_and_check(src, &mut dst2, &uri2);
}

#[test]
fn cancel_keeps_the_source_running_and_a_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (mut src, mut dst1) = start_throttled_migration(dir.path());
    assert_eq!(src.cmd("query-migrate", Value::Null)["status"], "active");
    src.cmd("migrate_cancel", Value::Null);
    let info = src.wait_migration();
    assert_eq!(info["status"], "cancelled", "{info}");
    assert_eq!(src.status(), "running");
    // The destination saw a broken stream and exited with an error, as QEMU does.
    let out = dst1.wait_exit();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("load of migration failed"));

    retry_to_new_destination(dir.path(), &mut src);
}

#[test]
fn killed_destination_fails_the_migration_and_a_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (mut src, mut dst1) = start_throttled_migration(dir.path());
    dst1.kill();
    let info = src.wait_migration();
    assert_eq!(info["status"], "failed", "{info}");
    assert!(
        info["error-desc"]
            .as_str()
            .unwrap_or("")
            .contains("I/O error"),
        "{info}"
    );
    assert_eq!(src.status(), "running");

    retry_to_new_destination(dir.path(), &mut src);
}

#[test]
fn bad_uri_and_unreachable_destination() {
    let dir = tempfile::tempdir().unwrap();
    let mut src = Vm::start(dir.path(), "src", &args(&[]));
    let err = src.cmd_err("migrate", json!({"uri": "bogus:somewhere"}));
    assert!(
        err.contains("Parameter 'uri' expects a valid migration protocol"),
        "{err}"
    );
    assert_eq!(src.cmd("query-migrate", Value::Null)["status"], "failed");

    let (_refusing, port) = transport::test_support::refusing_tcp_port().unwrap();
    src.cmd("migrate", json!({"uri": format!("tcp:127.0.0.1:{port}")}));
    let info = src.wait_migration();
    assert_eq!(info["status"], "failed");
    let desc = info["error-desc"].as_str().unwrap();
    assert!(
        desc.contains(&format!("tcp:127.0.0.1:{port}")) && desc.contains("refused"),
        "{desc}"
    );
    assert_eq!(src.status(), "running");
}

#[test]
fn destination_with_other_ram_size_refuses_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut dst_args = args(&[]);
    dst_args[1] = "128M";
    let (mut dst, uri) = destination(dir.path(), "dst", &dst_args, "tcp:127.0.0.1:0");
    let mut src = Vm::start(dir.path(), "src", &args(&["--fill", "16M"]));
    src.cmd("migrate", json!({ "uri": uri }));
    let out = dst.wait_exit();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Length mismatch: pc.ram: 0x4000000 in:0x8000000"),
        "{stderr}"
    );
    let info = src.wait_migration();
    assert_eq!(info["status"], "failed", "{info}");
    assert_eq!(src.status(), "running");
}

#[test]
fn fd_handed_over_with_getfd() {
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let theirs_fd = theirs.as_raw_fd();
    let dst_args = args(&["--incoming", "fd:3"]);
    let mut dst = Vm::start_with(dir.path(), "dst", &dst_args, |cmd| {
        // SAFETY: the closure runs in the child between fork and exec and only calls dup2,
        // which is async-signal-safe; dup2 also clears close-on-exec on fd 3.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(theirs_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    drop(theirs);
    let mut src = Vm::start(dir.path(), "src", &args(&["--fill", "16M"]));
    let getfd = json!({"fdname": "mig"});
    src.qmp()
        .execute_with_fd("getfd", Some(getfd), ours.as_fd())
        .unwrap();
    drop(ours);
    migrate_and_check(&mut src, &mut dst, "fd:mig");
}

#[test]
fn xbzrle_sends_small_deltas_for_rewritten_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dst, uri) = destination(dir.path(), "dst", &args(&[]), "tcp:127.0.0.1:0");
    let mut src = Vm::start(dir.path(), "src", &args(&["--fill", "16M"]));
    src.cmd(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "xbzrle", "state": true}]}),
    );
    src.cmd(
        "migrate-set-parameters",
        json!({"max-bandwidth": 32 << 20, "downtime-limit": 50, "xbzrle-cache-size": 16 << 20}),
    );
    let info = migrate_and_check(&mut src, &mut dst, &uri);
    let x = &info["xbzrle-cache"];
    assert_eq!(x["cache-size"], 16 << 20, "{info}");
    let (pages, bytes) = (x["pages"].as_u64().unwrap(), x["bytes"].as_u64().unwrap());
    assert!(pages > 0, "{info}");
    // The guest rewrites four words per page: deltas are far smaller than pages.
    assert!(bytes < pages * 512, "{info}");
    let text = src.cmd(
        "human-monitor-command",
        json!({"command-line": "info migrate"}),
    );
    assert!(text.as_str().unwrap().contains("xbzrle pages: "), "{text}");
}

#[test]
fn return_path_reports_a_destination_failure_and_the_source_resumes() {
    let dir = tempfile::tempdir().unwrap();
    // The destination has one vCPU fewer: it fails at the device state, after all of RAM.
    let mut dst_args = args(&[]);
    dst_args[3] = "1";
    let (mut dst, uri) = destination(dir.path(), "dst", &dst_args, "tcp:127.0.0.1:0");
    let mut src = Vm::start(dir.path(), "src", &args(&["--fill", "16M"]));
    src.wait_status("running");
    src.cmd(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "return-path", "state": true}]}),
    );
    src.cmd("migrate", json!({ "uri": uri }));
    let info = src.wait_migration();
    assert_eq!(info["status"], "failed", "{info}");
    let desc = info["error-desc"].as_str().unwrap();
    assert!(
        desc.contains("the destination failed to load the migration"),
        "{desc}"
    );
    // The guest was stopped for switchover and runs again on the source.
    assert_eq!(src.status(), "running");
    let out = dst.wait_exit();
    assert!(String::from_utf8_lossy(&out.stderr).contains("'soft-cpu' 1"));
}

#[test]
fn return_path_confirms_a_successful_migration() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dst, uri) = destination(dir.path(), "dst", &args(&[]), "tcp:127.0.0.1:0");
    let mut src = Vm::start(dir.path(), "src", &args(&["--fill", "16M"]));
    // livemig turns return-path on by default (QEMU: off).
    let caps = src.cmd("query-migrate-capabilities", Value::Null);
    let rp = caps
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["capability"] == "return-path")
        .unwrap();
    assert_eq!(rp["state"], true, "{caps}");
    migrate_and_check(&mut src, &mut dst, &uri);
    // A file has no way back: the migration runs without a return path and completes.
    src.cmd("cont", Value::Null);
    let path = dir.path().join("f.mig");
    src.cmd(
        "migrate",
        json!({ "uri": format!("file:{}", path.display()) }),
    );
    assert_eq!(src.wait_migration()["status"], "completed");
    assert!(std::fs::metadata(&path).unwrap().len() > 8 << 20);
}

#[test]
fn auto_converge_throttles_a_guest_that_dirties_faster_than_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let guest = [
        "-m",
        "64M",
        "--smp",
        "1",
        "--working-set",
        "16M",
        "--write-rate",
        "48M",
        "--pattern",
        "random",
    ];
    let (mut dst, uri) = destination(dir.path(), "dst", &guest, "tcp:127.0.0.1:0");
    let mut src = Vm::start(dir.path(), "src", &guest);
    src.wait_status("running");
    src.cmd(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "auto-converge", "state": true}]}),
    );
    // The guest dirties 48 MiB/s, the link carries 16 MiB/s: only throttling converges.
    src.cmd(
        "migrate-set-parameters",
        json!({"max-bandwidth": 16 << 20, "downtime-limit": 30,
               "cpu-throttle-initial": 95, "cpu-throttle-increment": 4}),
    );
    // Let the guest populate its working set first.
    std::thread::sleep(Duration::from_millis(700));
    src.cmd("migrate", json!({ "uri": uri }));
    let mut max_throttle = 0;
    let info = common::wait_final_migration(|| {
        let info = src.cmd("query-migrate", Value::Null);
        max_throttle = max_throttle.max(info["cpu-throttle-percentage"].as_u64().unwrap_or(0));
        info
    });
    assert_eq!(info["status"], "completed", "{info}");
    assert!(
        max_throttle >= 95,
        "throttle never applied: {max_throttle} {info}"
    );
    assert!(info.get("cpu-throttle-percentage").is_none(), "{info}");
    dst.wait_status("running");
}

#[test]
fn incoming_defer_then_migrate_incoming_over_qmp() {
    let dir = tempfile::tempdir().unwrap();
    let mut dst = Vm::start(dir.path(), "dst", &args(&["--incoming", "defer"]));
    assert_eq!(dst.status(), "inmigrate");
    // Listening: query-migrate shows the address and no status, as QEMU.
    dst.cmd("migrate-incoming", json!({"uri": "tcp:127.0.0.1:0"}));
    let info = dst.cmd("query-migrate", Value::Null);
    assert!(info.get("status").is_none(), "{info}");
    let port = info["socket-address"][0]["port"]
        .as_str()
        .unwrap()
        .to_string();
    let err = dst.cmd_err("migrate-incoming", json!({"uri": "tcp:127.0.0.1:0"}));
    assert!(
        err.contains("The incoming migration has already been started"),
        "{err}"
    );
    let mut src = Vm::start(dir.path(), "src", &args(&["--fill", "16M"]));
    migrate_and_check(&mut src, &mut dst, &format!("tcp:127.0.0.1:{port}"));
}

#[test]
fn multifd_channels_carry_the_pages() {
    let dir = tempfile::tempdir().unwrap();
    // Multifd must be on at both ends before the destination listens (as with QEMU).
    let params = json!({"multifd-channels": 3});
    let (mut dst, uri) =
        deferred_destination(dir.path(), "dst", &args(&[]), &["multifd"], params.clone());
    let mut src = Vm::start(dir.path(), "src", &args(&["--fill", "32M"]));
    configure(&mut src, &["multifd"], params);
    let info = migrate_and_check(&mut src, &mut dst, &uri);
    let ram = &info["ram"];
    // Page payloads went over the channels: far more multifd bytes than main-stream page bytes.
    assert!(ram["multifd-bytes"].as_u64().unwrap() > 16 << 20, "{info}");
    // A file has one channel only.
    let err = failing_file_migration(dir.path(), &mut src);
    assert!(
        err.contains("multifd is not supported by current protocol"),
        "{err}"
    );
}

/// A text-filled guest over 2 channels compressed with `method` at `level`: RAM verified, and
/// the channels carried well under the pages' bytes.
fn multifd_compressed(method: &str, level_param: &str, level: u8) {
    let dir = tempfile::tempdir().unwrap();
    let params = json!({"multifd-channels": 2, "multifd-compression": method, level_param: level});
    let (mut dst, uri) =
        deferred_destination(dir.path(), "dst", &args(&[]), &["multifd"], params.clone());
    let mut src = Vm::start(
        dir.path(),
        "src",
        &args(&["--fill", "32M", "--fill-pattern", "text"]),
    );
    // Compression is CPU-bound: on a loaded host the 2 vCPUs' writes may outrun it, so allow
    // a long downtime and throttle (this test is about the bytes, not about convergence).
    let mut src_params = params.clone();
    src_params["downtime-limit"] = json!(5000);
    configure(&mut src, &["multifd", "auto-converge"], src_params);
    let info = migrate_and_check(&mut src, &mut dst, &uri);
    let ram = &info["ram"];
    let (normal, multifd) = (
        ram["normal"].as_u64().unwrap(),
        ram["multifd-bytes"].as_u64().unwrap(),
    );
    // At least 24 MiB of text pages went compressed: their wire bytes are under half of them.
    assert!(normal > 6000, "{info}");
    assert!(multifd > 0 && multifd < normal * 4096 / 2, "{info}");
}

#[test]
fn multifd_zlib_compresses_and_verifies() {
    multifd_compressed("zlib", "multifd-zlib-level", 1);
}

#[test]
fn multifd_zstd_compresses_and_verifies() {
    multifd_compressed("zstd", "multifd-zstd-level", 3);
}

#[test]
fn multifd_compression_mismatch_fails_without_starting_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let dst_params = json!({"multifd-channels": 2, "multifd-compression": "zlib"});
    let (mut dst, uri) =
        deferred_destination(dir.path(), "dst", &args(&[]), &["multifd"], dst_params);
    let mut src = Vm::start(dir.path(), "src", &args(&["--fill", "8M"]));
    configure(
        &mut src,
        &["multifd"],
        json!({"multifd-channels": 2, "multifd-compression": "zstd"}),
    );
    src.wait_status("running");
    src.cmd("migrate", json!({ "uri": uri }));
    let info = src.wait_migration();
    assert_eq!(info["status"], "failed", "{info}");
    // The source runs on; the destination never ran the guest.
    assert_eq!(src.status(), "running");
    let out = dst.wait_exit();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("compression flags 0x4, expected 0x2"),
        "{stderr}"
    );
}

#[test]
fn zero_copy_send_migrates_with_ram_verified() {
    let dir = tempfile::tempdir().unwrap();
    let params = json!({"multifd-channels": 2});
    let (mut dst, uri) =
        deferred_destination(dir.path(), "dst", &args(&[]), &["multifd"], params.clone());
    let mut src = Vm::start(dir.path(), "src", &args(&["--fill", "32M"]));
    // QEMU 7.2's rules: multifd first, and no compression with it.
    let zc = json!({"capabilities": [{"capability": "zero-copy-send", "state": true}]});
    let text = "Zero copy only available for non-compressed non-TLS multifd migration";
    assert!(src
        .cmd_err("migrate-set-capabilities", zc.clone())
        .contains(text));
    configure(&mut src, &["multifd", "zero-copy-send"], params);
    let zstd = json!({"multifd-compression": "zstd"});
    assert!(src.cmd_err("migrate-set-parameters", zstd).contains(text));
    let info = migrate_and_check(&mut src, &mut dst, &uri);
    let ram = &info["ram"];
    assert!(ram["multifd-bytes"].as_u64().unwrap() > 16 << 20, "{info}");
    // Over loopback the kernel copies after all, and says so at every channel sync.
    assert!(
        ram["dirty-sync-missed-zero-copy"].as_u64().unwrap() > 0,
        "{info}"
    );
}

#[test]
fn zero_copy_send_over_a_unix_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = format!("unix:{}", dir.path().join("mig.sock").display());
    let params = json!({"multifd-channels": 2});
    let (_dst, uri) = deferred_destination_at(dir.path(), &sock, params.clone());
    let mut src = Vm::start(dir.path(), "src", &args(&["--fill", "8M"]));
    configure(&mut src, &["multifd", "zero-copy-send"], params);
    src.wait_status("running");
    src.cmd("migrate", json!({ "uri": uri }));
    let info = src.wait_migration();
    assert_eq!(info["status"], "failed", "{info}");
    let desc = info["error-desc"].as_str().unwrap_or_default();
    assert!(
        desc.starts_with("Zero copy send feature not detected in host kernel"),
        "{info}"
    );
    assert_eq!(src.status(), "running");
}

/// A destination with multifd on, listening on `uri` (deferred, like QEMU's `-incoming defer`).
fn deferred_destination_at(dir: &std::path::Path, uri: &str, params: Value) -> (Vm, String) {
    let mut dst = Vm::start(dir, "dst", &args(&["--incoming", "defer"]));
    configure(&mut dst, &["multifd"], params);
    dst.cmd("migrate-incoming", json!({ "uri": uri }));
    (dst, uri.to_string())
}

#[test]
fn destination_started_with_capital_s_stays_paused_until_cont() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dst, uri) = destination(dir.path(), "dst", &args(&["-S"]), "tcp:127.0.0.1:0");
    let mut src = Vm::start(dir.path(), "src", &args(&["--fill", "8M"]));
    src.wait_status("running");
    src.cmd("migrate", json!({ "uri": uri }));
    assert_eq!(src.wait_migration()["status"], "completed");
    let t = std::time::Instant::now();
    while dst.cmd("query-migrate", Value::Null)["status"] != "completed" {
        assert!(t.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(dst.status(), "paused");
    dst.cmd("cont", Value::Null);
    assert_eq!(dst.status(), "running");
}
