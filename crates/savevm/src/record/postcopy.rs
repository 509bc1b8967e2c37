//! Postcopy's commands (spec §2.6) and page requests on the return path (§2.11).
//!
//! ```text
//! POSTCOPY_ADVISE (3)      be64 page-size summary (OR of every block's page size)
//!                          be64 target page size                          (16 bytes)
//! POSTCOPY_RAM_DISCARD (6) u8 version 0, u8 name_len, name, u8 0,
//!                          k × (be64 start byte, be64 length bytes)       (k ≤ 12)
//! PACKAGED (7)             be32 N, then N bytes of a nested command/section stream
//!                          (no header): LISTEN, FULL sections, PING, RUN
//! RP REQ_PAGES_ID (3)      be64 start, be32 len, cstr8 block name          (≥ 13 bytes)
//! RP REQ_PAGES (4)         be64 start, be32 len  (same block as the previous request)
//! ```
//!
//! Every decoder takes hostile bytes and returns a typed error; the callers check ranges
//! against their RAM.

use crate::error::Error;

/// `MIG_RP_MSG_REQ_PAGES_ID`.
pub const RP_REQ_PAGES_ID: u16 = 3;
/// `MIG_RP_MSG_REQ_PAGES`.
pub const RP_REQ_PAGES: u16 = 4;
/// Ranges per POSTCOPY_RAM_DISCARD command (QEMU's `MAX_DISCARDS_PER_COMMAND`).
pub const MAX_DISCARDS_PER_COMMAND: usize = 12;
/// Version byte of POSTCOPY_RAM_DISCARD.
pub const DISCARD_VERSION: u8 = 0;

/// The 16-byte POSTCOPY_ADVISE payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advise {
    /// Bitwise OR of the page sizes of all RAM blocks.
    pub page_size_summary: u64,
    /// Target page size.
    pub target_page_size: u64,
}

impl Advise {
    /// The payload bytes.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.page_size_summary.to_be_bytes());
        b[8..].copy_from_slice(&self.target_page_size.to_be_bytes());
        b
    }

    /// Parses a payload: `None` for the 0-byte form (dirty-bitmap postcopy only).
    pub fn decode(data: &[u8]) -> Result<Option<Advise>, Error> {
        match data.len() {
            0 => Ok(None),
            16 => Ok(Some(Advise {
                page_size_summary: be64(&data[..8]),
                target_page_size: be64(&data[8..]),
            })),
            len => Err(Error::CommandLength {
                cmd: super::MIG_CMD_POSTCOPY_ADVISE,
                len: len as u16,
                expected: "0 or 16",
            }),
        }
    }
}

/// One POSTCOPY_RAM_DISCARD command: byte ranges of one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discard {
    /// RAM block name.
    pub block: String,
    /// (start, length) in bytes.
    pub ranges: Vec<(u64, u64)>,
}

impl Discard {
    /// The payload bytes; `None` if the name is empty or longer than 255 bytes or there are
    /// more than [`MAX_DISCARDS_PER_COMMAND`] ranges.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let name = self.block.as_bytes();
        let name_len = u8::try_from(name.len()).ok().filter(|&n| n > 0)?;
        if self.ranges.len() > MAX_DISCARDS_PER_COMMAND {
            return None;
        }
        let mut b = Vec::with_capacity(3 + name.len() + 16 * self.ranges.len());
        b.push(DISCARD_VERSION);
        b.push(name_len);
        b.extend_from_slice(name);
        b.push(0);
        for (start, len) in &self.ranges {
            b.extend_from_slice(&start.to_be_bytes());
            b.extend_from_slice(&len.to_be_bytes());
        }
        Some(b)
    }

    /// Parses a payload.
    pub fn decode(data: &[u8]) -> Result<Discard, Error> {
        let bad = |why: &'static str| Error::BadPostcopyCommand {
            what: "discard",
            why,
        };
        let (&version, rest) = data.split_first().ok_or(bad("empty"))?;
        if version != DISCARD_VERSION {
            return Err(bad("unknown version"));
        }
        let (&name_len, rest) = rest.split_first().ok_or(bad("no name length"))?;
        let name_len = usize::from(name_len);
        if name_len == 0 || rest.len() < name_len + 1 {
            return Err(bad("bad block name"));
        }
        let (name, rest) = rest.split_at(name_len);
        let (&nul, rest) = rest.split_first().ok_or(bad("no name terminator"))?;
        if nul != 0 {
            return Err(bad("block name not terminated"));
        }
        let block = std::str::from_utf8(name)
            .map_err(|_| bad("block name not UTF-8"))?
            .to_string();
        if rest.len() % 16 != 0 || rest.len() / 16 > MAX_DISCARDS_PER_COMMAND {
            return Err(bad("bad range list"));
        }
        let ranges = rest
            .chunks_exact(16)
            .map(|c| (be64(&c[..8]), be64(&c[8..])))
            .collect();
        Ok(Discard { block, ranges })
    }
}

/// A page request on the return path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// The block, or `None` for "the same block as the previous request" (REQ_PAGES).
    pub block: Option<String>,
    /// Start byte inside the block.
    pub start: u64,
    /// Length in bytes.
    pub len: u32,
}

impl PageRequest {
    /// Message type and body.
    pub fn encode(&self) -> Option<(u16, Vec<u8>)> {
        let mut b = Vec::with_capacity(12 + 256);
        b.extend_from_slice(&self.start.to_be_bytes());
        b.extend_from_slice(&self.len.to_be_bytes());
        match &self.block {
            None => Some((RP_REQ_PAGES, b)),
            Some(name) => {
                let n = u8::try_from(name.len()).ok().filter(|&n| n > 0)?;
                b.push(n);
                b.extend_from_slice(name.as_bytes());
                Some((RP_REQ_PAGES_ID, b))
            }
        }
    }

    /// Parses a REQ_PAGES / REQ_PAGES_ID body.
    pub fn decode(kind: u16, data: &[u8]) -> Result<PageRequest, Error> {
        let bad = |why: &'static str| Error::BadPostcopyCommand {
            what: "page request",
            why,
        };
        if data.len() < 12 {
            return Err(bad("shorter than 12 bytes"));
        }
        let start = be64(&data[..8]);
        let len = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
        let rest = &data[12..];
        let block = match kind {
            RP_REQ_PAGES if rest.is_empty() => None,
            RP_REQ_PAGES => return Err(bad("REQ_PAGES longer than 12 bytes")),
            RP_REQ_PAGES_ID => {
                let (&n, name) = rest.split_first().ok_or(bad("no block name"))?;
                if n == 0 || usize::from(n) != name.len() {
                    return Err(bad("block name length does not match"));
                }
                Some(
                    std::str::from_utf8(name)
                        .map_err(|_| bad("block name not UTF-8"))?
                        .to_string(),
                )
            }
            _ => return Err(bad("not a page request")),
        };
        Ok(PageRequest { block, start, len })
    }
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advise_round_trip_and_bytes() {
        let a = Advise {
            page_size_summary: 4096,
            target_page_size: 4096,
        };
        let b = a.encode();
        assert_eq!(&b[..8], &[0, 0, 0, 0, 0, 0, 0x10, 0]);
        assert_eq!(Advise::decode(&b).unwrap(), Some(a));
        assert_eq!(Advise::decode(&[]).unwrap(), None);
        assert!(Advise::decode(&[0; 8]).is_err());
    }

    #[test]
    fn discard_round_trip_and_hostile() {
        let d = Discard {
            block: "pc.ram".into(),
            ranges: vec![(0, 4096), (8192, 3 * 4096)],
        };
        let b = d.encode().unwrap();
        assert_eq!(&b[..9], &[0, 6, b'p', b'c', b'.', b'r', b'a', b'm', 0]);
        assert_eq!(Discard::decode(&b).unwrap(), d);
        assert!(Discard::decode(&[]).is_err());
        assert!(Discard::decode(&[1, 1, b'a', 0]).is_err()); // version
        assert!(Discard::decode(&[0, 0, 0]).is_err()); // empty name
        assert!(Discard::decode(&[0, 9, b'a', 0]).is_err()); // name past the end
        assert!(Discard::decode(&[0, 1, b'a', 1]).is_err()); // no NUL
        let mut odd = b.clone();
        odd.push(0);
        assert!(Discard::decode(&odd).is_err()); // partial range
        let mut many = vec![0, 1, b'a', 0];
        many.extend(std::iter::repeat_n(0, 16 * 13));
        assert!(Discard::decode(&many).is_err()); // 13 ranges
        let too_many = Discard {
            block: "a".into(),
            ranges: vec![(0, 1); 13],
        };
        assert!(too_many.encode().is_none());
    }

    #[test]
    fn page_requests() {
        let r = PageRequest {
            block: Some("pc.ram".into()),
            start: 0x1000,
            len: 4096,
        };
        let (kind, body) = r.encode().unwrap();
        assert_eq!(kind, RP_REQ_PAGES_ID);
        assert_eq!(body.len(), 12 + 1 + 6);
        assert_eq!(PageRequest::decode(kind, &body).unwrap(), r);
        let same = PageRequest {
            block: None,
            start: 0,
            len: 4096,
        };
        let (kind, body) = same.encode().unwrap();
        assert_eq!((kind, body.len()), (RP_REQ_PAGES, 12));
        assert_eq!(PageRequest::decode(kind, &body).unwrap(), same);
        assert!(PageRequest::decode(RP_REQ_PAGES, &[0; 11]).is_err());
        assert!(PageRequest::decode(RP_REQ_PAGES, &[0; 13]).is_err());
        assert!(PageRequest::decode(RP_REQ_PAGES_ID, &[0; 12]).is_err());
        assert!(PageRequest::decode(RP_REQ_PAGES_ID, &[0; 14]).is_err()); // name len 0
        let mut long = vec![0; 12];
        long.extend_from_slice(&[5, b'a']);
        assert!(PageRequest::decode(RP_REQ_PAGES_ID, &long).is_err());
        assert!(PageRequest::decode(9, &[0; 12]).is_err());
    }
}
