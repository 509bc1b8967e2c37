//! Multifd wire format (QEMU 7.2, spec §3.12): extra connections that carry page payloads
//! while the main stream carries everything else.
//!
//! ```text
//! channel hello (64 bytes): be32 magic 0x11223344  be32 version 1  16 bytes uuid  u8 id  39 zero bytes
//! packet header (1344 bytes for 4 KiB pages, 128 page slots):
//!   0 be32 magic   4 be32 version   8 be32 flags (bit 0 SYNC)   12 be32 pages_alloc (128)
//!  16 be32 normal_pages   20 be32 next_packet_size (payload bytes)   24 be64 packet_num
//!  32 32 zero bytes   64 256 bytes NUL-padded ramblock name   320 128 × be64 page offsets
//! payload: normal_pages × 4096 bytes, in offset order
//! ```
//!
//! A packet with `normal_pages == 0` (a SYNC) carries stale leftovers in `next_packet_size`,
//! `ramblock` and `offsets`; the decoder ignores them.

use crate::error::Error;

/// Hello and packet magic.
pub const MULTIFD_MAGIC: u32 = 0x1122_3344;
/// Protocol version.
pub const MULTIFD_VERSION: u32 = 1;
/// Page slots per packet (512 KiB / 4 KiB).
pub const MULTIFD_PAGES: usize = 128;
/// Size of the channel hello.
pub const MULTIFD_INIT_LEN: usize = 64;
/// Size of a packet header.
pub const MULTIFD_HEADER_LEN: usize = 320 + 8 * MULTIFD_PAGES;
/// Flag: every channel sends one at each RAM EOS; the receiver waits for all of them.
pub const MULTIFD_FLAG_SYNC: u32 = 1;
/// Compression bits (1..=3) of `flags`; 0 = none.
pub const MULTIFD_FLAG_COMPRESSION_MASK: u32 = 0xe;
const RAMBLOCK_LEN: usize = 256;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}

fn bad(what: &str) -> Error {
    Error::Multifd(what.to_string())
}

/// The hello each multifd channel sends first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultifdInit {
    /// The source VM's UUID (zero when none).
    pub uuid: [u8; 16],
    /// Channel number, 0..N-1.
    pub id: u8,
}

impl MultifdInit {
    /// The 64 wire bytes.
    pub fn encode(&self) -> [u8; MULTIFD_INIT_LEN] {
        let mut b = [0u8; MULTIFD_INIT_LEN];
        b[0..4].copy_from_slice(&MULTIFD_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&MULTIFD_VERSION.to_be_bytes());
        b[8..24].copy_from_slice(&self.uuid);
        b[24] = self.id;
        b
    }

    /// Parses and checks a hello.
    pub fn decode(b: &[u8; MULTIFD_INIT_LEN]) -> Result<Self, Error> {
        if be32(b, 0) != MULTIFD_MAGIC {
            return Err(bad("multifd channel hello has a bad magic"));
        }
        if be32(b, 4) != MULTIFD_VERSION {
            return Err(bad("multifd channel hello has an unsupported version"));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[8..24]);
        Ok(Self { uuid, id: b[24] })
    }
}

/// A packet header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PacketHeader {
    /// Flags ([`MULTIFD_FLAG_SYNC`], compression bits).
    pub flags: u32,
    /// Page slots (128).
    pub pages_alloc: u32,
    /// Pages that follow.
    pub normal_pages: u32,
    /// Payload bytes that follow.
    pub next_packet_size: u32,
    /// Global sequence number.
    pub packet_num: u64,
    /// RAM block of all pages (meaningful only when `normal_pages > 0`).
    pub ramblock: String,
    /// Page offsets in the block (`normal_pages` of them).
    pub offsets: Vec<u64>,
}

impl PacketHeader {
    /// The 1344 wire bytes.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let name = self.ramblock.as_bytes();
        if name.len() >= RAMBLOCK_LEN || self.offsets.len() > MULTIFD_PAGES {
            return Err(bad("multifd packet does not fit its header"));
        }
        let mut b = vec![0u8; MULTIFD_HEADER_LEN];
        b[0..4].copy_from_slice(&MULTIFD_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&MULTIFD_VERSION.to_be_bytes());
        b[8..12].copy_from_slice(&self.flags.to_be_bytes());
        b[12..16].copy_from_slice(&self.pages_alloc.to_be_bytes());
        b[16..20].copy_from_slice(&self.normal_pages.to_be_bytes());
        b[20..24].copy_from_slice(&self.next_packet_size.to_be_bytes());
        b[24..32].copy_from_slice(&self.packet_num.to_be_bytes());
        b[64..64 + name.len()].copy_from_slice(name);
        for (i, off) in self.offsets.iter().enumerate() {
            b[320 + 8 * i..328 + 8 * i].copy_from_slice(&off.to_be_bytes());
        }
        Ok(b)
    }

    /// Parses and checks a header (QEMU's receiver checks).
    pub fn decode(b: &[u8]) -> Result<Self, Error> {
        if b.len() != MULTIFD_HEADER_LEN {
            return Err(bad("multifd packet header has the wrong size"));
        }
        if be32(b, 0) != MULTIFD_MAGIC {
            return Err(bad("multifd packet has a bad magic"));
        }
        if be32(b, 4) != MULTIFD_VERSION {
            return Err(bad("multifd packet has an unsupported version"));
        }
        let mut h = PacketHeader {
            flags: be32(b, 8),
            pages_alloc: be32(b, 12),
            normal_pages: be32(b, 16),
            next_packet_size: be32(b, 20),
            packet_num: be64(b, 24),
            ..Default::default()
        };
        if h.pages_alloc as usize > MULTIFD_PAGES {
            return Err(bad("multifd packet has more page slots than 128"));
        }
        if h.normal_pages > h.pages_alloc {
            return Err(bad("multifd packet has more pages than slots"));
        }
        if h.normal_pages > 0 {
            let raw = &b[64..64 + RAMBLOCK_LEN];
            let end = raw.iter().position(|&c| c == 0).unwrap_or(RAMBLOCK_LEN);
            h.ramblock = std::str::from_utf8(&raw[..end])
                .map_err(|_| bad("multifd packet ramblock name is not UTF-8"))?
                .to_string();
            h.offsets = (0..h.normal_pages as usize)
                .map(|i| be64(b, 320 + 8 * i))
                .collect();
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_and_header_round_trip() {
        let hello = MultifdInit {
            uuid: [0; 16],
            id: 1,
        };
        let b = hello.encode();
        assert_eq!(&b[..8], &[0x11, 0x22, 0x33, 0x44, 0, 0, 0, 1]);
        assert_eq!(MultifdInit::decode(&b).unwrap(), hello);
        let h = PacketHeader {
            flags: 0,
            pages_alloc: 128,
            normal_pages: 2,
            next_packet_size: 8192,
            packet_num: 7,
            ramblock: "pc.ram".into(),
            offsets: vec![0x1000, 0x5000],
        };
        let b = h.encode().unwrap();
        assert_eq!(b.len(), 1344);
        assert_eq!(PacketHeader::decode(&b).unwrap(), h);
    }

    #[test]
    fn sync_packets_ignore_stale_fields_and_bad_headers_fail() {
        let mut b = PacketHeader {
            flags: 1,
            pages_alloc: 128,
            ..Default::default()
        }
        .encode()
        .unwrap();
        b[64] = b'x';
        b[320] = 9;
        let h = PacketHeader::decode(&b).unwrap();
        assert!(h.ramblock.is_empty() && h.offsets.is_empty());
        let mut over = b.clone();
        over[12..16].copy_from_slice(&129u32.to_be_bytes());
        assert!(PacketHeader::decode(&over).is_err());
        let mut more = b.clone();
        more[16..20].copy_from_slice(&129u32.to_be_bytes());
        assert!(PacketHeader::decode(&more).is_err());
        b[0] = 0;
        assert!(PacketHeader::decode(&b).is_err());
        assert!(PacketHeader::decode(&b[..100]).is_err());
    }
}
