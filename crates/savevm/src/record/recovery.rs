//! Postcopy recovery's messages (spec §2.6, §2.11, §9.4): after a broken link the source asks
//! the destination which pages it holds, block by block, then resumes.
//!
//! ```text
//! source → destination (new connection, no header):
//!   RECV_BITMAP (cmd 10)    u8 name_len, name               (len field = name_len + 1)
//!   POSTCOPY_RESUME (cmd 9) empty
//! destination → source (return path of the new connection):
//!   RP RECV_BITMAP (5)      u8 name_len, name               (framed message), then OUTSIDE
//!                           the framing: be64 size, size bytes of bitmap, be64 end marker
//!   RP RESUME_ACK (6)       be32 1
//! ```
//!
//! The bitmap has one bit per target page of the block, set for the pages the destination
//! *received*; `size` is the bit count rounded up to whole bytes, then to a multiple of 8,
//! and the bytes are the bitmap's 64-bit words in little-endian order (bit n of the block is
//! bit n % 64 of word n / 64). The end marker is `0x0123456789abcdef`.
//!
//! Decoders take hostile bytes: the tail's size is checked against the caller's limit before
//! anything is allocated, and the allocation is fallible.

use std::io::Read;

use crate::error::Error;

/// `MIG_RP_MSG_RECV_BITMAP`.
pub const RP_RECV_BITMAP: u16 = 5;
/// `MIG_RP_MSG_RESUME_ACK`.
pub const RP_RESUME_ACK: u16 = 6;
/// The one value a RESUME_ACK carries (`MIGRATION_RESUME_ACK_VALUE`).
pub const RESUME_ACK_VALUE: u32 = 1;
/// The be64 after a received-pages bitmap (`RAMBLOCK_RECV_BITMAP_ENDING`).
pub const RECV_BITMAP_END: u64 = 0x0123_4567_89ab_cdef;

/// The `u8 len, name` payload of RECV_BITMAP (both directions); `None` for an empty name or
/// one over 255 bytes.
pub fn encode_block_name(name: &str) -> Option<Vec<u8>> {
    let len = u8::try_from(name.len()).ok().filter(|&n| n > 0)?;
    let mut b = Vec::with_capacity(1 + name.len());
    b.push(len);
    b.extend_from_slice(name.as_bytes());
    Some(b)
}

/// Parses a RECV_BITMAP payload (`what`: which of the two, for the error).
pub fn decode_block_name(what: &'static str, data: &[u8]) -> Result<String, Error> {
    let bad = |why| Error::BadPostcopyCommand { what, why };
    let (&len, name) = data.split_first().ok_or(bad("empty"))?;
    if len == 0 || name.len() != usize::from(len) {
        return Err(bad("block name length does not match the message"));
    }
    std::str::from_utf8(name)
        .map(str::to_string)
        .map_err(|_| bad("block name not UTF-8"))
}

/// Bytes of the bitmap of a block of `pages` target pages (whole 64-bit words).
pub fn bitmap_size(pages: u64) -> u64 {
    pages.div_ceil(64) * 8
}

/// The part after an RP RECV_BITMAP message: `words` as be64 size, the little-endian words,
/// the end marker.
pub fn encode_bitmap_tail(words: &[u64]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + words.len() * 8);
    b.extend_from_slice(&((words.len() as u64) * 8).to_be_bytes());
    for w in words {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(&RECV_BITMAP_END.to_be_bytes());
    b
}

/// A received-pages bitmap as read from the return path, not yet checked against a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapTail {
    /// The words (from little-endian bytes).
    pub words: Vec<u64>,
    /// The be64 found after them (must be [`RECV_BITMAP_END`]).
    pub end: u64,
}

/// Reads the tail of an RP RECV_BITMAP: refuses a size over `max_bytes` or not a multiple
/// of 8 before allocating.
pub fn read_bitmap_tail(r: &mut dyn Read, max_bytes: u64) -> Result<BitmapTail, Error> {
    let mut b8 = [0u8; 8];
    r.read_exact(&mut b8)?;
    let size = u64::from_be_bytes(b8);
    if size > max_bytes {
        return Err(Error::LengthTooLarge {
            what: "received-pages bitmap",
            len: size,
            max: max_bytes,
            offset: 0,
        });
    }
    if size % 8 != 0 {
        return Err(Error::BadPostcopyCommand {
            what: "received-pages bitmap",
            why: "size is not a multiple of 8",
        });
    }
    let n = (size / 8) as usize;
    let mut words: Vec<u64> = Vec::new();
    words
        .try_reserve_exact(n)
        .map_err(|_| Error::LengthTooLarge {
            what: "received-pages bitmap (allocation)",
            len: size,
            max: max_bytes,
            offset: 0,
        })?;
    for _ in 0..n {
        r.read_exact(&mut b8)?;
        words.push(u64::from_le_bytes(b8));
    }
    r.read_exact(&mut b8)?;
    Ok(BitmapTail {
        words,
        end: u64::from_be_bytes(b8),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_names() {
        assert_eq!(encode_block_name("pc.ram").unwrap(), b"\x06pc.ram");
        assert_eq!(decode_block_name("x", b"\x06pc.ram").unwrap(), "pc.ram");
        assert!(encode_block_name("").is_none());
        assert!(encode_block_name(&"a".repeat(256)).is_none());
        for bad in [
            &b""[..],
            b"\x00",
            b"\x07pc.ram",
            b"\x05pc.ram",
            b"\x02\xff\xfe",
        ] {
            assert!(decode_block_name("x", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bitmap_tail_golden_bytes_and_round_trip() {
        let tail = encode_bitmap_tail(&[0b101]);
        assert_eq!(
            tail,
            [
                0, 0, 0, 0, 0, 0, 0, 8, // size
                5, 0, 0, 0, 0, 0, 0, 0, // word 0, little endian
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef
            ]
        );
        let t = read_bitmap_tail(&mut &tail[..], 8).unwrap();
        assert_eq!(t.words, vec![5]);
        assert_eq!(t.end, RECV_BITMAP_END);
        assert_eq!(bitmap_size(1), 8);
        assert_eq!(bitmap_size(64), 8);
        assert_eq!(bitmap_size(65), 16);
        assert_eq!(bitmap_size(0), 0);
    }

    #[test]
    fn hostile_bitmap_tails() {
        // Over the limit: refused before reading (or allocating) anything more.
        let mut huge = u64::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        assert!(matches!(
            read_bitmap_tail(&mut &huge[..], 1 << 20),
            Err(Error::LengthTooLarge { .. })
        ));
        // Not whole words.
        let odd = [0, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3];
        assert!(read_bitmap_tail(&mut &odd[..], 64).is_err());
        // Truncated bitmap, missing end marker.
        let mut short = encode_bitmap_tail(&[1, 2]);
        short.truncate(20);
        assert!(read_bitmap_tail(&mut &short[..], 64).is_err());
        let mut no_end = encode_bitmap_tail(&[1]);
        no_end.truncate(16);
        assert!(read_bitmap_tail(&mut &no_end[..], 64).is_err());
        // A wrong end marker is read as such (the caller refuses it by block).
        let mut bad_end = encode_bitmap_tail(&[1]);
        bad_end[16] = 0;
        assert_ne!(
            read_bitmap_tail(&mut &bad_end[..], 64).unwrap().end,
            RECV_BITMAP_END
        );
    }
}
