//! Image locking against real QEMU tools: `qemu-io` cannot write an image livemig has open, and
//! livemig refuses an image `qemu-io` holds, with QEMU's lock names in the error.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::*;
use block::{ImageLock, Perms};

fn qemu_io(args: &[&str]) -> Option<Output> {
    match Command::new("qemu-io").args(args).output() {
        Ok(out) => Some(out),
        Err(_) => {
            eprintln!("SKIP: qemu-io not installed (apt-get install qemu-utils)");
            None
        }
    }
}

/// `qemu-io` holding `path` read-write until killed.
struct Holder(Child);

impl Holder {
    fn start(path: &Path, format: &str) -> Holder {
        let child = Command::new("qemu-io")
            .args(["-f", format, "-c", "sleep 60000", s(path)])
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu-io runs");
        // Wait until its locks are visible: a reader conflicts with its unshared "write".
        let start = Instant::now();
        while ImageLock::acquire(path, Perms::READER).is_ok() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "qemu-io never locked {}",
                path.display()
            );
            thread::sleep(Duration::from_millis(20));
        }
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn overlay(dir: &Path) -> (PathBuf, PathBuf) {
    let base = create(dir, "base.qcow2", "qcow2", 4 * MIB);
    let top = dir.join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&top),
    ]);
    (base, top)
}

#[test]
fn qemu_io_cannot_write_images_livemig_holds() {
    if qemu_io(&["--version"]).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (base, top) = overlay(dir.path());
    let raw = create(dir.path(), "r.img", "raw", 4 * MIB);
    let disk = open(&top, DiskFormat::Qcow2);
    disk.write(0, &[3u8; 4096]).unwrap();
    disk.flush().unwrap();
    let raw_disk = open(&raw, DiskFormat::Raw);
    let before: Vec<Vec<u8>> = [&top, &base, &raw]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();

    // The image, its backing file (livemig reads it) and a raw image: no writer gets in.
    for (path, format) in [(&top, "qcow2"), (&base, "qcow2"), (&raw, "raw")] {
        let out = qemu_io(&["-f", format, "-c", "write -P 0xaa 0 4k", s(path)]).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "qemu-io wrote {}", path.display());
        assert!(
            stderr.contains("Failed to get \"write\" lock")
                && stderr.contains("Is another process using the image"),
            "{stderr}"
        );
    }
    // A reader that does not share "write" is refused too, as with a QEMU VM.
    let out = Command::new("qemu-img")
        .args(["info", s(&top)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Failed to get shared \"write\" lock"));
    // ... while `-U` (force share) readers still work.
    qemu_img(&["info", "-U", s(&top)]);

    let after: Vec<Vec<u8>> = [&top, &base, &raw]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(before == after, "an image changed while livemig held it");

    // Closing the disks releases every lock.
    drop(disk);
    drop(raw_disk);
    let out = qemu_io(&["-f", "qcow2", "-c", "write -P 0xaa 0 4k", s(&top)]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn livemig_refuses_images_qemu_io_holds() {
    if qemu_io(&["--version"]).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (base, top) = overlay(dir.path());
    let raw = create(dir.path(), "r.img", "raw", 4 * MIB);
    let spec = |path: &Path, format| DriveSpec {
        id: "d".into(),
        path: path.into(),
        format,
    };

    // qemu-io does not share "write" of a qcow2 image; of a raw one it does, but holds it.
    let cases = [
        (&top, DiskFormat::Qcow2, "qcow2", "\"write\""),
        (&raw, DiskFormat::Raw, "raw", "shared \"write\""),
    ];
    for (path, format, name, expected) in cases {
        let holder = Holder::start(path, name);
        match Disk::open(&spec(path, format)) {
            Err(BlockError::Locked { path: p, lock }) => {
                assert_eq!(&p, path);
                assert_eq!(lock, expected);
            }
            other => panic!("opened an image qemu-io writes: {other:?}"),
        }
        let msg = Disk::open(&spec(path, format)).unwrap_err().to_string();
        assert_eq!(
            msg,
            format!(
                "failed to get {expected} lock on '{}': is another process using the image?",
                path.display()
            )
        );
        drop(holder);
        drop(open(path, format));
    }

    // qemu-io writes the backing file: livemig cannot read it consistently and names it.
    let holder = Holder::start(&base, "qcow2");
    match Disk::open(&spec(&top, DiskFormat::Qcow2)) {
        Err(BlockError::Locked { path, lock }) => {
            assert_eq!(path.file_name().unwrap(), "base.qcow2");
            assert_eq!(lock, "shared \"write\"");
        }
        other => panic!("opened an overlay whose base qemu-io writes: {other:?}"),
    }
    drop(holder);
    // No lock of the failed open stayed behind: qemu-io can write the overlay.
    let out = qemu_io(&["-f", "qcow2", "-c", "write 0 4k", s(&top)]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn switchover_on_shared_storage_hands_the_locks_over() {
    let dir = tempfile::tempdir().unwrap();
    let (_base, top) = overlay(dir.path());
    let spec = DriveSpec {
        id: "d".into(),
        path: top.clone(),
        format: DiskFormat::Qcow2,
    };
    let src = Disk::open(&spec).unwrap();
    // The destination opens the shared image inactive: no lock, no writes.
    let dst = Disk::open_inactive(&spec).unwrap();
    assert!(dst.is_inactive());
    assert!(dst.write(0, &[1u8; 512]).is_err());
    match dst.activate() {
        Err(BlockError::Locked { lock, .. }) => assert_eq!(lock, "\"write\""),
        other => panic!("activated an image the source holds: {other:?}"),
    }
    assert!(dst.is_inactive());

    // Switchover: the source writes, gives the image up, the destination takes it and sees the
    // data (it reopened the image).
    src.write(MIB, &[7u8; 4096]).unwrap();
    src.inactivate().unwrap();
    assert!(src.write(0, &[1u8; 512]).is_err(), "inactive source writes");
    dst.activate().unwrap();
    let mut buf = [0u8; 4];
    dst.read(MIB, &mut buf).unwrap();
    assert_eq!(buf, [7u8; 4]);
    dst.write(2 * MIB, &[8u8; 4096]).unwrap();
    // Now the source cannot come back, nor can anyone else write.
    assert!(matches!(src.activate(), Err(BlockError::Locked { .. })));
    if let Some(out) = qemu_io(&["-f", "qcow2", "-c", "write 0 4k", s(&top)]) {
        assert!(!out.status.success());
    }
    drop(dst);
    // A failed migration: the source takes its image back.
    src.activate().unwrap();
    src.write(0, &[9u8; 4096]).unwrap();
    src.flush().unwrap();
    drop(src);
    qemu_img(&["check", "-q", s(&top)]);
}
