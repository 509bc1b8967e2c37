//! Return-path messages (destination → source, spec §2.11), on the other direction of the
//! migration socket once the source sent `OPEN_RETURN_PATH`.
//!
//! ```text
//! message := be16 type  be16 len  len*u8        (len <= 512)
//! SHUT    (1): be32 status   0 = the destination loaded everything, else it failed
//! PONG    (2): be32 value    echo of a PING command
//! ```
//!
//! The return path carries few, small messages, so it is read and written unbuffered.

use std::io::{Read, Write};

use crate::error::Error;

/// `MIG_RP_MSG_SHUT`.
pub const RP_SHUT: u16 = 1;
/// `MIG_RP_MSG_PONG`.
pub const RP_PONG: u16 = 2;
/// Largest message body accepted.
pub const RP_MAX_LEN: u16 = 512;

/// One return-path message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpMessage {
    /// The destination is done: 0 = success.
    Shut(u32),
    /// Reply to a PING.
    Pong(u32),
    /// A message livemig does not act on (postcopy page requests, bitmaps, ...).
    Other {
        /// Message type.
        kind: u16,
        /// Body.
        data: Vec<u8>,
    },
}

/// Writes one message.
pub fn write_rp(w: &mut dyn Write, msg: &RpMessage) -> Result<(), Error> {
    let (kind, data): (u16, Vec<u8>) = match msg {
        RpMessage::Shut(v) => (RP_SHUT, v.to_be_bytes().to_vec()),
        RpMessage::Pong(v) => (RP_PONG, v.to_be_bytes().to_vec()),
        RpMessage::Other { kind, data } => (*kind, data.clone()),
    };
    let len = u16::try_from(data.len()).map_err(|_| Error::LengthTooLarge {
        what: "return-path message",
        len: data.len() as u64,
        max: u64::from(RP_MAX_LEN),
        offset: 0,
    })?;
    let mut out = Vec::with_capacity(4 + data.len());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&data);
    w.write_all(&out)?;
    w.flush()?;
    Ok(())
}

/// Reads one message; `Ok(None)` at a clean end of stream.
pub fn read_rp(r: &mut dyn Read) -> Result<Option<RpMessage>, Error> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(Error::UnexpectedEof { offset: got as u64 }),
            n => got += n,
        }
    }
    let kind = u16::from_be_bytes([head[0], head[1]]);
    let len = u16::from_be_bytes([head[2], head[3]]);
    if len > RP_MAX_LEN {
        return Err(Error::LengthTooLarge {
            what: "return-path message",
            len: u64::from(len),
            max: u64::from(RP_MAX_LEN),
            offset: 2,
        });
    }
    let mut data = vec![0u8; usize::from(len)];
    r.read_exact(&mut data)
        .map_err(|_| Error::UnexpectedEof { offset: 4 })?;
    let be32 = |d: &[u8]| -> Result<u32, Error> {
        <[u8; 4]>::try_from(d)
            .map(u32::from_be_bytes)
            .map_err(|_| Error::LengthTooLarge {
                what: "return-path value",
                len: d.len() as u64,
                max: 4,
                offset: 4,
            })
    };
    Ok(Some(match kind {
        RP_SHUT => RpMessage::Shut(be32(&data)?),
        RP_PONG => RpMessage::Pong(be32(&data)?),
        kind => RpMessage::Other { kind, data },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_golden_bytes() {
        let mut out = Vec::new();
        write_rp(&mut out, &RpMessage::Shut(0)).unwrap();
        write_rp(&mut out, &RpMessage::Pong(1)).unwrap();
        assert_eq!(out, [0, 1, 0, 4, 0, 0, 0, 0, 0, 2, 0, 4, 0, 0, 0, 1]);
        let mut r = &out[..];
        assert_eq!(read_rp(&mut r).unwrap(), Some(RpMessage::Shut(0)));
        assert_eq!(read_rp(&mut r).unwrap(), Some(RpMessage::Pong(1)));
        assert_eq!(read_rp(&mut r).unwrap(), None);
    }

    #[test]
    fn hostile_messages() {
        assert!(read_rp(&mut &[0u8, 1, 0x02, 0x01][..]).is_err()); // len 513
        assert!(read_rp(&mut &[0u8, 1, 0, 3, 0, 0, 0][..]).is_err()); // SHUT of 3 bytes
        assert!(read_rp(&mut &[0u8, 1][..]).is_err()); // truncated header
        assert!(read_rp(&mut &[0u8, 1, 0, 4, 0][..]).is_err()); // truncated body
    }
}
