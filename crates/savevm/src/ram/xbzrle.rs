//! XBZRLE page delta encoding (spec §3.9, QEMU `xbzrle.c`).
//!
//! ```text
//! encoded := { zrun nzrun }+          ; trailing unchanged run omitted
//! zrun    := varint(count of unchanged bytes)          ; 0 only in the first pair
//! nzrun   := varint(n) n*u8 (bytes from the new page)  ; n >= 1
//! varint  := n < 0x80: one byte n; else (n & 0x7f)|0x80, n >> 7  (at most 2 bytes)
//! ```
//!
//! The decoder applies the runs in place over the receiver's current page: unchanged bytes
//! are skipped, never zero-filled. The encoder reproduces QEMU's overflow decisions exactly
//! (it gives up when fewer than 2 bytes of output room remain at the start of a run), so the
//! choice between an XBZRLE record and a raw page matches QEMU for the same inputs.

use crate::error::Error;

fn encode_varint(out: &mut [u8], d: usize, n: usize) -> usize {
    if n < 0x80 {
        out[d] = n as u8;
        1
    } else {
        out[d] = (n as u8 & 0x7f) | 0x80;
        out[d + 1] = (n >> 7) as u8;
        2
    }
}

/// Encodes `new` as a delta against `old` into `out` (whose length is the output limit,
/// normally 4096).
///
/// Returns `Some(0)` when the pages are identical, `None` when the encoding does not fit in
/// `out` (QEMU: overflow, send a raw page), else `Some(encoded length)`.
///
/// `old` and `new` must have the same length, at most 0x3fff bytes; otherwise `None`.
pub fn encode(old: &[u8], new: &[u8], out: &mut [u8]) -> Option<usize> {
    let slen = new.len();
    if old.len() != slen || slen > 0x3fff {
        return None;
    }
    let dlen = out.len();
    let mut d = 0usize;
    let mut i = 0usize;
    while i < slen {
        if d + 2 > dlen {
            return None;
        }
        let zstart = i;
        i += common_prefix(&old[i..], &new[i..]);
        let zrun = i - zstart;
        if zrun == slen {
            return Some(0);
        }
        if i == slen {
            return Some(d);
        }
        d += encode_varint(out, d, zrun);
        if d + 2 > dlen {
            return None;
        }
        let nzstart = i;
        i += differing_prefix(&old[i..], &new[i..]);
        let nzrun = i - nzstart;
        d += encode_varint(out, d, nzrun);
        if d + nzrun > dlen {
            return None;
        }
        out[d..d + nzrun].copy_from_slice(&new[nzstart..i]);
        d += nzrun;
    }
    Some(d)
}

/// Length of the run of equal bytes at the start, compared 8 bytes at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let mut n = 0;
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        let x = u64::from_ne_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
        let y = u64::from_ne_bytes([y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7]]);
        if x != y {
            break;
        }
        n += 8;
    }
    n + a[n..]
        .iter()
        .zip(&b[n..])
        .take_while(|(x, y)| x == y)
        .count()
}

/// Length of the run of differing bytes at the start.
fn differing_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x != y).count()
}

fn decode_varint(src: &[u8], i: usize) -> Result<(usize, usize), Error> {
    // Callers guarantee two bytes are available.
    let b0 = src[i];
    if b0 & 0x80 == 0 {
        return Ok((usize::from(b0), 1));
    }
    let b1 = src[i + 1];
    if b1 & 0x80 != 0 {
        return Err(Error::XbzrleDecode {
            position: i,
            reason: "varint longer than 2 bytes",
        });
    }
    Ok((usize::from(b0 & 0x7f) | (usize::from(b1) << 7), 2))
}

/// Applies `encoded` in place to `page` (the receiver's current contents).
///
/// Fails like QEMU's `xbzrle_decode_buffer`: fewer than 2 input bytes where a run is expected,
/// a zero zrun after the first pair, a zero nzrun, or a run past the page or the input.
pub fn decode(encoded: &[u8], page: &mut [u8]) -> Result<(), Error> {
    let slen = encoded.len();
    let dlen = page.len();
    let mut i = 0usize;
    let mut d = 0usize;
    while i < slen {
        if slen - i < 2 {
            return Err(Error::XbzrleDecode {
                position: i,
                reason: "truncated zero run",
            });
        }
        let (count, k) = decode_varint(encoded, i)?;
        if i != 0 && count == 0 {
            return Err(Error::XbzrleDecode {
                position: i,
                reason: "empty zero run",
            });
        }
        i += k;
        d += count;
        if d > dlen {
            return Err(Error::XbzrleDecode {
                position: i,
                reason: "zero run past the page",
            });
        }
        if slen - i < 2 {
            return Err(Error::XbzrleDecode {
                position: i,
                reason: "truncated data run",
            });
        }
        let (count, k) = decode_varint(encoded, i)?;
        if count == 0 {
            return Err(Error::XbzrleDecode {
                position: i,
                reason: "empty data run",
            });
        }
        i += k;
        if d + count > dlen {
            return Err(Error::XbzrleDecode {
                position: i,
                reason: "data run past the page",
            });
        }
        if i + count > slen {
            return Err(Error::XbzrleDecode {
                position: i,
                reason: "data run past the input",
            });
        }
        page[d..d + count].copy_from_slice(&encoded[i..i + count]);
        d += count;
        i += count;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_pages_encode_to_zero() {
        let p = vec![7u8; 4096];
        let mut out = vec![0u8; 4096];
        assert_eq!(encode(&p, &p, &mut out), Some(0));
    }

    #[test]
    fn single_byte_change_golden() {
        let old = vec![0u8; 4096];
        let mut new = old.clone();
        new[0x100] = 0xaa;
        let mut out = vec![0u8; 4096];
        let n = encode(&old, &new, &mut out).unwrap();
        // zrun 256 = 0x80|0x00, 0x02; nzrun 1; byte.
        assert_eq!(&out[..n], &[0x80, 0x02, 0x01, 0xaa]);
        let mut page = old.clone();
        decode(&out[..n], &mut page).unwrap();
        assert_eq!(page, new);
    }

    #[test]
    fn change_at_start_has_zero_zrun() {
        let old = vec![0u8; 16];
        let mut new = old.clone();
        new[0] = 1;
        new[1] = 2;
        let mut out = vec![0u8; 16];
        let n = encode(&old, &new, &mut out).unwrap();
        assert_eq!(&out[..n], &[0x00, 0x02, 0x01, 0x02]);
    }

    #[test]
    fn all_bytes_changed_overflows() {
        let old = vec![0u8; 4096];
        let new = vec![1u8; 4096];
        let mut out = vec![0u8; 4096];
        assert_eq!(encode(&old, &new, &mut out), None);
    }

    #[test]
    fn alternating_changes_overflow() {
        let old = vec![0u8; 4096];
        let new: Vec<u8> = (0..4096).map(|i| if i % 2 == 0 { 1 } else { 0 }).collect();
        let mut out = vec![0u8; 4096];
        assert_eq!(encode(&old, &new, &mut out), None);
    }

    #[test]
    fn round_trip_sparse_changes() {
        let old: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let mut new = old.clone();
        for i in (0..4096).step_by(97) {
            new[i] ^= 0x5a;
        }
        new[4095] ^= 1;
        let mut out = vec![0u8; 4096];
        let n = encode(&old, &new, &mut out).unwrap();
        assert!(n > 0);
        let mut page = old.clone();
        decode(&out[..n], &mut page).unwrap();
        assert_eq!(page, new);
    }

    #[test]
    fn decoder_rejects_malformed_input() {
        let mut page = vec![0u8; 4096];
        // Empty zero run after the first pair.
        assert!(decode(&[0x01, 0x01, 0xaa, 0x00, 0x01, 0xbb], &mut page).is_err());
        // Empty data run.
        assert!(decode(&[0x01, 0x00], &mut page).is_err());
        // Three-byte varint.
        assert!(decode(&[0x80, 0x80, 0x01], &mut page).is_err());
        // Zero run past the page: 0x3fff.
        assert!(decode(&[0xff, 0x7f, 0x01, 0x00], &mut page).is_err());
        // Data run past the input.
        assert!(decode(&[0x00, 0x05, 0x01], &mut page).is_err());
        // Only one byte left where a run is expected.
        assert!(decode(&[0x00], &mut page).is_err());
        // In-place semantics: bytes outside the runs keep their contents.
        let mut page = vec![9u8; 8];
        decode(&[0x02, 0x01, 0x00], &mut page).unwrap();
        assert_eq!(page, [9, 9, 0, 9, 9, 9, 9, 9]);
    }
}
