//! Staging copies for incoming migrations: a sparse copy of the image next to it, renamed over
//! the image when the migration succeeded (see [`Disk::begin_incoming`](crate::Disk)).
//!
//! The copy keeps holes (`SEEK_DATA`/`SEEK_HOLE`), so copying a freshly created raw image or
//! qcow2 overlay costs only its metadata.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// `.<file name>.livemig-incoming` in the image's directory.
pub fn staging_path(image: &Path) -> PathBuf {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    image.with_file_name(format!(".{name}.livemig-incoming"))
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

fn copy_range(src: &File, dst: &File, start: u64, end: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut pos = start;
    while pos < end {
        let n = ((end - pos) as usize).min(buf.len());
        src.read_exact_at(&mut buf[..n], pos)?;
        dst.write_all_at(&buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// Copies `src` to a new file `dst` (replacing a stale one), keeping holes.
pub fn sparse_copy(src: &Path, dst: &Path) -> io::Result<()> {
    match fs::remove_file(dst) {
        Ok(()) => tracing::warn!(path = %dst.display(), "removed a stale staging file"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let s = File::open(src)?;
    let len = s.metadata()?.len();
    let d = OpenOptions::new().write(true).create_new(true).open(dst)?;
    let result = (|| {
        d.set_len(len)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0;
        while pos < len {
            let data = match seek(&s, pos, libc::SEEK_DATA) {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // No hole support on this file system: copy the rest as it is.
                    return copy_range(&s, &d, pos, len, &mut buf);
                }
                Err(e) => return Err(e),
            };
            let hole = seek(&s, data, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
            copy_range(&s, &d, data, hole, &mut buf)?;
            pos = hole;
        }
        d.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(dst);
    }
    result
}

/// Syncs the directory holding `path` so a rename in it is durable (best effort).
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
    fn sparse_copy_keeps_content_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a.img");
        let f = File::create(&src).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"hello", 3 << 20).unwrap();
        f.write_all_at(b"end", (8 << 20) - 3).unwrap();
        let dst = staging_path(&src);
        assert_eq!(dst.file_name().unwrap(), ".a.img.livemig-incoming");
        fs::write(&dst, b"stale").unwrap();
        sparse_copy(&src, &dst).unwrap();
        assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
        use std::os::unix::fs::MetadataExt;
        let blocks = fs::metadata(&dst).unwrap().blocks() * 512;
        assert!(
            blocks < 4 << 20,
            "copy is not sparse: {blocks} bytes allocated"
        );
    }
}
