//! livemig's switchover commit: the source's word that the destination may start the guest.
//!
//! With a return path, the destination reports `SHUT 0` ("loaded") and QEMU's destination then
//! starts the guest at once. If the source gave up in the meantime (cancelled, or lost the
//! connection before the report reached it) it resumes its own copy and the guest runs twice.
//! A livemig source closes that window: it announces in the VMDESCRIPTION trailer that it will
//! confirm, and after reading `SHUT 0` it writes a commit on the main channel. A livemig
//! destination that saw the announcement starts the guest only once the commit arrived; end of
//! stream instead means the source kept the guest, and the destination discards its copy.
//!
//! ```text
//! VMDESCRIPTION JSON:  {"page_size": .., "devices": [..], "livemig": {"switchover-commit": true}}
//! source → destination, after SHUT 0 was read:   0x08 be16 0x4c4d be16 0      (COMMIT)
//! ```
//!
//! The commit has the framing of a command record after EOF, where a QEMU destination no
//! longer reads: QEMU peers ignore both the JSON member and the bytes. If the commit is lost on
//! the way (the link dies in that instant), neither side runs the guest; the source holds it
//! paused (`postmigrate`) and `cont` resumes it there — never two running copies.

use crate::error::Error;
use crate::qemu_file::{QemuFileReader, QemuFileWriter};

/// The commit command number ("LM"), outside QEMU's `MIG_CMD_*` range.
pub const LIVEMIG_CMD_COMMIT: u16 = 0x4c4d;

/// The JSON member of the trailer that announces a commit.
pub const COMMIT_ANNOUNCEMENT: &str = "livemig";

const COMMIT: [u8; 5] = [
    super::QEMU_VM_COMMAND,
    (LIVEMIG_CMD_COMMIT >> 8) as u8,
    LIVEMIG_CMD_COMMIT as u8,
    0,
    0,
];

/// Writes the commit.
pub fn write_commit(w: &mut QemuFileWriter) {
    w.put_buffer(&COMMIT);
}

/// Reads the commit: `Ok(true)` when it came, `Ok(false)` at the end of the stream (the source
/// closed without confirming), an error for anything else.
pub fn read_commit(r: &mut QemuFileReader) -> Result<bool, Error> {
    if r.is_eof()? {
        return Ok(false);
    }
    let offset = r.bytes_read();
    let mut got = [0u8; COMMIT.len()];
    r.get_buffer(&mut got)?;
    if got != COMMIT {
        return Err(Error::BadCommit { offset });
    }
    Ok(true)
}

/// Whether the trailer JSON `vmdesc` announces a commit.
pub fn announces_commit(vmdesc: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(vmdesc)
        .map(|v| v[COMMIT_ANNOUNCEMENT]["switchover-commit"] == true)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu_file::{memory_reader, memory_writer};

    #[test]
    fn commit_round_trip_end_of_stream_and_garbage() {
        let (mut w, buf) = memory_writer();
        write_commit(&mut w);
        w.flush().unwrap();
        let bytes = buf.contents();
        assert!(read_commit(&mut memory_reader(bytes.clone())).unwrap());
        assert!(!read_commit(&mut memory_reader(Vec::new())).unwrap());
        assert!(read_commit(&mut memory_reader(vec![8, 0, 2, 0, 4])).is_err());
        assert!(read_commit(&mut memory_reader(bytes[..3].to_vec())).is_err());
    }

    #[test]
    fn announcement_is_a_member_of_the_trailer() {
        assert!(announces_commit(
            br#"{"page_size": 4096, "devices": [], "livemig": {"switchover-commit": true}}"#
        ));
        assert!(!announces_commit(br#"{"page_size": 4096, "devices": []}"#));
        assert!(!announces_commit(b"not json"));
    }
}
