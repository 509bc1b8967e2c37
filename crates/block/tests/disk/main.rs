//! Block layer tests on real images made by `qemu-img`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;

use block::{
    BlockError, Disk, DiskFormat, DiskWriter, DiskWriterConfig, DriveSpec, WritePattern, CHUNK_SIZE,
};

const MIB: u64 = 1 << 20;

mod identity;
mod locking;

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn create(dir: &Path, name: &str, format: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    qemu_img(&["create", "-q", "-f", format, s(&p), &size.to_string()]);
    p
}

fn open(path: &Path, format: DiskFormat) -> Disk {
    Disk::open(&DriveSpec {
        id: "d".into(),
        path: path.into(),
        format,
    })
    .unwrap()
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn raw_and_qcow2_read_back_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    for (format, f) in [("raw", DiskFormat::Raw), ("qcow2", DiskFormat::Qcow2)] {
        let path = create(dir.path(), &format!("d.{format}"), format, 8 * MIB + 512);
        let disk = open(&path, f);
        assert_eq!(disk.size(), 8 * MIB + 512);
        let data = pattern(7, 3 * 4096 + 100);
        disk.write(MIB - 4096, &data).unwrap();
        disk.write(8 * MIB, &[9u8; 512]).unwrap();
        let mut back = vec![0u8; data.len()];
        disk.read(MIB - 4096, &mut back).unwrap();
        assert_eq!(back, data);
        assert!(matches!(
            disk.write(8 * MIB, &[0u8; 513]),
            Err(BlockError::OutOfRange { .. })
        ));
        disk.write_zeroes(MIB, 4096).unwrap();
        disk.read(MIB - 4096, &mut back).unwrap();
        assert_eq!(&back[..4096], &data[..4096]);
        assert!(back[4096..8192].iter().all(|&b| b == 0));
        disk.flush().unwrap();
        drop(disk);
        // What imago wrote is what QEMU reads, and the qcow2 metadata is consistent.
        let copy = dir.path().join(format!("copy.{format}.raw"));
        qemu_img(&["convert", "-f", format, "-O", "raw", s(&path), s(&copy)]);
        let bytes = std::fs::read(&copy).unwrap();
        assert_eq!(&bytes[MIB as usize - 4096..][..4096], &data[..4096]);
        assert_eq!(&bytes[8 * MIB as usize..], &[9u8; 512]);
        if format == "qcow2" {
            qemu_img(&["check", "-q", s(&path)]);
        }
    }
}

#[test]
fn format_is_checked_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let q = create(dir.path(), "q.qcow2", "qcow2", MIB);
    let r = create(dir.path(), "r.raw", "raw", MIB);
    let spec = |p: &Path, format| DriveSpec {
        id: "d".into(),
        path: p.into(),
        format,
    };
    assert!(matches!(
        Disk::open(&spec(&q, DiskFormat::Raw)),
        Err(BlockError::FormatMismatch(_))
    ));
    assert!(matches!(
        Disk::open(&spec(&r, DiskFormat::Qcow2)),
        Err(BlockError::Open { .. })
    ));
}

#[test]
fn allocation_is_reported_for_the_top_image_only() {
    let dir = tempfile::tempdir().unwrap();
    let base = create(dir.path(), "base.qcow2", "qcow2", 8 * MIB);
    {
        let b = open(&base, DiskFormat::Qcow2);
        b.write(0, &pattern(1, (4 * MIB) as usize)).unwrap();
        b.flush().unwrap();
    }
    let top = dir.path().join("top.qcow2");
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
    let disk = open(&top, DiskFormat::Qcow2);
    assert_eq!(disk.cluster_size(), 64 << 10);
    assert!(!disk.is_allocated(0, 8 * MIB).unwrap());
    // Reads go through to the base.
    let mut buf = vec![0u8; 4096];
    disk.read(4096, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, 8192)[4096..]);
    const CLUSTER: u64 = 64 << 10;
    disk.write(5 * MIB + CLUSTER + 4096, &[3u8; 4096]).unwrap();
    assert!(disk.is_allocated(5 * MIB, MIB).unwrap());
    assert!(!disk.is_allocated(0, 5 * MIB).unwrap());
    assert!(!disk.is_allocated(6 * MIB, 2 * MIB).unwrap());
    assert_eq!(disk.block_status(5 * MIB, MIB).unwrap(), (false, CLUSTER));
    assert_eq!(
        disk.block_status(5 * MIB + CLUSTER, MIB).unwrap(),
        (true, CLUSTER)
    );
    let (allocated, len) = disk.block_status(5 * MIB + 2 * CLUSTER, MIB).unwrap();
    assert!(!allocated && len > 0);
    // A raw image is allocated everywhere.
    let raw = create(dir.path(), "r.raw", "raw", 2 * MIB);
    assert!(open(&raw, DiskFormat::Raw).is_allocated(MIB, MIB).unwrap());
}

#[test]
fn dirty_bitmap_records_every_concurrent_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = create(dir.path(), "d.qcow2", "qcow2", 32 * MIB);
    let disk = Arc::new(open(&path, DiskFormat::Qcow2));
    disk.write(0, &[1u8; 4096]).unwrap();
    assert_eq!(disk.dirty().count(), 0, "no tracking before start");
    disk.dirty().start();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let disk = disk.clone();
            thread::spawn(move || {
                // Thread t writes chunks t, t+4, t+8, ... (one block in each).
                for chunk in (t..32).step_by(4) {
                    disk.write(chunk * CHUNK_SIZE + t * 8192, &[t as u8 + 1; 4096])
                        .unwrap();
                }
            })
        })
        .collect();
    // Meanwhile the "migration thread" takes bits; every chunk must be seen exactly once or
    // stay dirty.
    let mut seen = [false; 32];
    for _ in 0..1000 {
        if let Some(c) = disk.dirty().next_dirty(0) {
            if disk.dirty().take(c) {
                seen[c as usize] = true;
            }
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    for c in 0..32 {
        assert!(seen[c as usize] || disk.dirty().get(c), "chunk {c} lost");
    }
    disk.dirty().stop();
    assert_eq!(disk.dirty().count(), 0);
}

/// Waits until the writer completed `n` writes (it stops on its first error).
fn wait_writes(w: &DiskWriter, n: u64) {
    loop {
        let s = w.stats();
        assert!(s.error.is_none(), "{s:?}");
        if s.writes >= n {
            return;
        }
        thread::yield_now();
    }
}

#[test]
fn writer_pauses_with_no_write_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = create(dir.path(), "d.raw", "raw", 4 * MIB);
    let disk = Arc::new(open(&path, DiskFormat::Raw));
    disk.dirty().start();
    let w = DiskWriter::start(
        disk.clone(),
        DiskWriterConfig {
            region: MIB..3 * MIB,
            rate: 0,
            pattern: WritePattern::Random,
            seed: 42,
        },
    )
    .unwrap();
    wait_writes(&w, 50);
    w.pause();
    assert!(w.is_paused());
    let n = w.stats().writes;
    let mut snapshot = vec![0u8; (4 * MIB) as usize];
    disk.read(0, &mut snapshot).unwrap();
    thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(w.stats().writes, n, "no write while paused");
    let mut again = vec![0u8; (4 * MIB) as usize];
    disk.read(0, &mut again).unwrap();
    assert!(snapshot == again, "content changed while paused");
    assert_eq!(disk.dirty().next_dirty(0), Some(1));
    assert!(
        !disk.dirty().get(0) && !disk.dirty().get(3),
        "writes stay in the region"
    );
    w.resume();
    wait_writes(&w, n + 10);
    let stats = w.stop();
    assert!(stats.error.is_none());
    assert!(snapshot[..MIB as usize].iter().all(|&b| b == 0));
}

#[test]
fn incoming_migration_commits_or_leaves_the_image_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let base = create(dir.path(), "base.qcow2", "qcow2", 4 * MIB);
    {
        let b = open(&base, DiskFormat::Qcow2);
        b.write(0, &[5u8; 8192]).unwrap();
    }
    let top = dir.path().join("top.qcow2");
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
    let before = std::fs::read(&top).unwrap();
    let disk = open(&top, DiskFormat::Qcow2);

    // Failed migration: the image is byte-identical afterwards and the journal is gone.
    disk.begin_incoming().unwrap();
    assert!(disk.journal_path().exists());
    assert!(matches!(
        disk.begin_incoming(),
        Err(BlockError::Staging { .. })
    ));
    disk.write(MIB, &[7u8; 4096]).unwrap();
    let mut buf = [0u8; 4];
    disk.read(0, &mut buf).unwrap();
    assert_eq!(buf, [5u8; 4], "the image still sees the backing file");
    disk.abort_incoming().unwrap();
    assert!(!disk.journal_path().exists());
    assert_eq!(std::fs::read(&top).unwrap(), before);
    disk.read(MIB, &mut buf).unwrap();
    assert_eq!(buf, [0u8; 4]);

    // Successful migration: the image has the data afterwards, I/O continues on it.
    disk.begin_incoming().unwrap();
    disk.write(MIB, &[7u8; 4096]).unwrap();
    disk.commit_incoming().unwrap();
    assert!(!disk.journal_path().exists());
    disk.write(2 * MIB, &[8u8; 4096]).unwrap();
    disk.flush().unwrap();
    drop(disk);
    qemu_img(&["check", "-q", s(&top)]);
    let reopened = open(&top, DiskFormat::Qcow2);
    reopened.read(MIB, &mut buf).unwrap();
    assert_eq!(buf, [7u8; 4]);
    reopened.read(2 * MIB, &mut buf).unwrap();
    assert_eq!(buf, [8u8; 4]);
    reopened.read(0, &mut buf).unwrap();
    assert_eq!(buf, [5u8; 4]);
}
