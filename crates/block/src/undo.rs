//! Undo journals for incoming migrations: the destination writes its image *in place* (same
//! inode, owner, mode, xattrs, hard links; a symlinked path keeps pointing at the same file),
//! and a journal next to the image file holds what is needed to put the image back if the
//! migration fails or the process is killed (see [`Disk::begin_incoming`](crate::Disk)).
//!
//! The journal is a sparse copy of the whole image file taken before the first write, not a
//! per-range log: imago writes qcow2 metadata (tables, refcounts, new clusters at the end of the
//! file) through its own file handle, so the only point that sees every byte change is the
//! file, and a copy costs what the former staging copy cost (holes are kept, so a fresh raw image
//! or qcow2 overlay costs only its metadata).
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `LMUNDO\0\x01` |
//! | 8 | 8 | state, big-endian: 0 = being written (the image is untouched), 1 = complete |
//! | 16 | 8 | the image file's length before the migration, big-endian |
//! | 24 | 4072 | zero |
//! | 4096 | length | the image file's bytes, holes kept |
//!
//! Lifecycle: created with `O_CREAT|O_EXCL|O_NOFOLLOW` (a planted file or symlink at the path is
//! refused, never followed or removed), data copied and fsync'd, then the state set to 1 and
//! fsync'd again — only then does the image get written. Commit removes the journal; abort and
//! the next open of an image with a leftover journal [`replay`] it: bytes copied back, holes
//! punched back, the old length restored, the image fsync'd, then the journal removed. Replay is
//! idempotent, so a crash during it is repaired by the next open.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

const MAGIC: [u8; 8] = *b"LMUNDO\0\x01";
/// Where the image's bytes start in the journal.
const DATA: u64 = 4096;
const WRITING: u64 = 0;
const COMPLETE: u64 = 1;

/// `.<file name>.livemig-undo` next to the image *file* (symlinks resolved, so every path to
/// the image finds the same journal).
pub fn journal_path(image: &Path) -> io::Result<PathBuf> {
    let real = fs::canonicalize(image)?;
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    Ok(real.with_file_name(format!(".{name}.livemig-undo")))
}

fn refuse(journal: &Path, why: &str) -> io::Error {
    io::Error::other(format!(
        "'{}' {why}; refusing to use or remove it",
        journal.display()
    ))
}

/// Journals `image` at `journal` (which must not exist). When this returns, the image may be
/// written: the journal is complete and durable.
pub fn create(image: &Path, journal: &Path) -> io::Result<()> {
    let j = match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(journal)
    {
        Ok(j) => j,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(refuse(journal, "already exists"))
        }
        Err(e) => return Err(e),
    };
    let result = (|| {
        let src = File::open(image)?;
        let len = src.metadata()?.len();
        j.write_all_at(&header(WRITING, len), 0)?;
        j.set_len(DATA + len)?;
        for_each_extent(&src, len, |start, end, data| {
            if data {
                copy_range(&src, start, &j, DATA + start, end - start)
            } else {
                Ok(())
            }
        })?;
        j.sync_all()?;
        j.write_all_at(&header(COMPLETE, len), 0)?;
        j.sync_all()
    })();
    match result {
        Ok(()) => {
            sync_parent(journal);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(journal);
            Err(e)
        }
    }
}

fn header(state: u64, len: u64) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[..8].copy_from_slice(&MAGIC);
    h[8..16].copy_from_slice(&state.to_be_bytes());
    h[16..].copy_from_slice(&len.to_be_bytes());
    h
}

/// Removes the journal after a successful migration (the image has been synced).
pub fn discard(journal: &Path) -> io::Result<()> {
    fs::remove_file(journal)?;
    sync_parent(journal);
    Ok(())
}

/// Puts `image` back as the journal at `journal` recorded it and removes the journal. Returns
/// whether there was a journal. A symlink or anything but a livemig journal at the path is an
/// error and is left in place.
pub fn replay(image: &Path, journal: &Path) -> io::Result<bool> {
    let meta = match fs::symlink_metadata(journal) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if meta.file_type().is_symlink() {
        return Err(refuse(journal, "is a symbolic link"));
    }
    if !meta.file_type().is_file() {
        return Err(refuse(journal, "is not a regular file"));
    }
    let j = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(journal)?;
    let mut h = [0u8; 24];
    if meta.len() < DATA || j.read_exact_at(&mut h, 0).is_err() || h[..8] != MAGIC {
        return Err(refuse(journal, "is not a livemig undo journal"));
    }
    let be = |b: &[u8]| b.iter().fold(0u64, |v, &x| v << 8 | u64::from(x));
    let (state, len) = (be(&h[8..16]), be(&h[16..24]));
    if state == COMPLETE {
        if meta.len() != DATA + len {
            return Err(refuse(journal, "is truncated"));
        }
        tracing::warn!(image = %image.display(), "restoring the image from its undo journal");
        let img = OpenOptions::new().write(true).open(image)?;
        img.set_len(len)?;
        let mut unpunched = Vec::new();
        for_each_extent(&j, DATA + len, |start, end, data| {
            let (start, end) = (start.max(DATA), end.max(DATA));
            if start == end {
                Ok(())
            } else if data {
                copy_range(&j, start, &img, start - DATA, end - start)
            } else {
                punch_hole(&img, start - DATA, end - start, &mut unpunched)
            }
        })?;
        img.sync_all()?;
    } else if state != WRITING {
        return Err(refuse(journal, "has an unknown state"));
    }
    // State 0: the journal was being written, the image was never touched.
    discard(journal)?;
    Ok(true)
}

/// `lseek(fd, offset, whence)`; `None` at ENXIO (no more data / holes).
fn seek(f: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek on a valid, owned descriptor has no memory effects.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(r as u64))
}

/// Calls `f(start, end, is_data)` for the data and hole extents of `file` up to `len`; without
/// `SEEK_DATA` support everything is data.
fn for_each_extent(
    file: &File,
    len: u64,
    mut f: impl FnMut(u64, u64, bool) -> io::Result<()>,
) -> io::Result<()> {
    let mut pos = 0;
    while pos < len {
        let data = match seek(file, pos, libc::SEEK_DATA) {
            Ok(Some(d)) => d.min(len),
            Ok(None) => len,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return f(pos, len, true),
            Err(e) => return Err(e),
        };
        if data > pos {
            f(pos, data, false)?;
        }
        if data >= len {
            break;
        }
        let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        f(data, hole, true)?;
        pos = hole;
    }
    Ok(())
}

fn copy_range(src: &File, from: u64, dst: &File, to: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        src.read_exact_at(&mut buf[..n], from + done)?;
        dst.write_all_at(&buf[..n], to + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Makes `offset..offset+len` of `file` read as zeroes: a punched hole, or written zeroes where
/// the file system cannot punch (`scratch` is the zero buffer, allocated on first need).
fn punch_hole(file: &File, offset: u64, len: u64, scratch: &mut Vec<u8>) -> io::Result<()> {
    let (off, n) = (
        libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
    );
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on a valid, owned descriptor has no memory effects.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, off, n) } == 0 {
        return Ok(());
    }
    if scratch.is_empty() {
        scratch.resize(1 << 20, 0);
    }
    let mut done = 0;
    while done < len {
        let k = ((len - done) as usize).min(scratch.len());
        file.write_all_at(&scratch[..k], offset + done)?;
        done += k as u64;
    }
    Ok(())
}

/// Syncs the directory holding `path` so a creation or removal in it is durable (best effort).
pub fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_restores_bytes_holes_and_length() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.img");
        let f = File::create(&img).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"hello", 3 << 20).unwrap();
        f.write_all_at(b"end", (8 << 20) - 3).unwrap();
        let before = fs::read(&img).unwrap();
        let j = journal_path(&img).unwrap();
        assert_eq!(j.file_name().unwrap(), ".a.img.livemig-undo");
        create(&img, &j).unwrap();
        assert!(create(&img, &j).is_err(), "a second journal is refused");
        f.write_all_at(b"dirty", 3 << 20).unwrap();
        f.write_all_at(b"new", 1 << 20).unwrap();
        f.set_len(10 << 20).unwrap();
        f.write_all_at(b"tail", (10 << 20) - 4).unwrap();
        assert!(replay(&img, &j).unwrap());
        assert!(!j.exists());
        assert_eq!(fs::read(&img).unwrap(), before);
        assert!(!replay(&img, &j).unwrap(), "nothing left to replay");
    }

    #[test]
    fn symlinks_and_foreign_files_at_the_journal_path_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.img");
        fs::write(&img, [1u8; 8192]).unwrap();
        let j = journal_path(&img).unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, &j).unwrap();
        let err = create(&img, &j).unwrap_err();
        assert!(err.to_string().contains("refusing"), "{err}");
        let err = replay(&img, &j).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(fs::symlink_metadata(&j).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        fs::remove_file(&j).unwrap();
        fs::write(&j, b"not a journal").unwrap();
        assert!(replay(&img, &j).is_err());
        assert_eq!(fs::read(&j).unwrap(), b"not a journal");
        assert_eq!(fs::read(&img).unwrap(), [1u8; 8192]);
    }
}
