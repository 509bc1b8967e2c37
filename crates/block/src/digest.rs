//! [`Disk::digest`]: a BLAKE3 digest of what the guest sees on a drive, for livemig's
//! `ram-verify` capability (the `disk-verify` section compares source and destination).
//!
//! The digest covers the *virtual* disk (backing files included), not the image file: the two
//! sides may lay the same data out differently (a qcow2 destination allocates clusters in its
//! own order), so only the guest-visible bytes can be compared.
//!
//! ```text
//! chunk_i  = BLAKE3(bytes [i·1 MiB, min((i+1)·1 MiB, size)))      i = 0 .. ⌈size / 1 MiB⌉
//! digest   = BLAKE3(be64 size ‖ chunk_0 ‖ chunk_1 ‖ …)
//! ```
//!
//! Cost: one read of the whole disk. The source computes it with the guest stopped (it is part
//! of the downtime, like the RAM digest), so `ram-verify` is a tool for proving migrations, not
//! for every production switchover of a large disk.

use crate::disk::Disk;
use crate::error::BlockError;

/// Bytes hashed per chunk.
pub const DIGEST_CHUNK: u64 = 1 << 20;

impl Disk {
    /// BLAKE3 digest of the drive's guest-visible content (see the module doc).
    pub fn digest(&self) -> Result<[u8; 32], BlockError> {
        let size = self.size();
        let mut buf = vec![0u8; DIGEST_CHUNK as usize];
        let mut top = blake3::Hasher::new();
        top.update(&size.to_be_bytes());
        let mut offset = 0;
        while offset < size {
            let len = DIGEST_CHUNK.min(size - offset);
            let chunk = &mut buf[..len as usize];
            self.read(offset, chunk)?;
            let h = blake3::hash(chunk);
            top.update(h.as_bytes());
            offset += len;
        }
        Ok(*top.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::DriveSpec;
    use crate::Disk;

    fn raw(dir: &std::path::Path, name: &str, size: u64) -> Disk {
        let path = dir.join(name);
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        let spec = DriveSpec::parse(&format!("file={},format=raw", path.display()), 0).unwrap();
        Disk::open(&spec).unwrap()
    }

    #[test]
    fn equal_content_equal_digest_and_one_flipped_byte_changes_it() {
        let dir = tempfile::tempdir().unwrap();
        let size = 3 * super::DIGEST_CHUNK + 4096;
        let a = raw(dir.path(), "a.raw", size);
        let b = raw(dir.path(), "b.raw", size);
        assert_eq!(a.digest().unwrap(), b.digest().unwrap());
        a.write(5 << 20 >> 2, &[7u8; 512]).unwrap();
        b.write(5 << 20 >> 2, &[7u8; 512]).unwrap();
        assert_eq!(a.digest().unwrap(), b.digest().unwrap());
        // The last, partial chunk counts too.
        b.write(size - 1, &[1]).unwrap();
        assert_ne!(a.digest().unwrap(), b.digest().unwrap());
    }

    #[test]
    fn size_is_part_of_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let a = raw(dir.path(), "a.raw", 1 << 20);
        let b = raw(dir.path(), "b.raw", 2 << 20);
        assert_ne!(a.digest().unwrap(), b.digest().unwrap());
    }
}
