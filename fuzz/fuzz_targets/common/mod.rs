//! Helpers shared by the monitor targets: a reader that hands out its bytes in chunks of a
//! chosen size, so requests and lines arrive split across reads as they do on a socket, and
//! input blown up past the monitors' size caps.

use std::io::{self, Read};

/// `input` as it is, or (when `pad`) followed by more than `cap` blanks, so that a request
/// or line the input leaves open grows past the size cap that the fuzzer's small inputs never
/// reach (blanks, not repetitions of the input: thousands of complete commands would only be
/// slow).
pub fn padded(input: &[u8], pad: bool, cap: usize) -> Vec<u8> {
    let mut v = input.to_vec();
    if pad {
        v.resize(input.len() + cap + 1, b' ');
    }
    v
}

/// Serves `data` in reads of at most `chunk` bytes (0 = everything at once).
pub struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl Chunked {
    /// A reader over a copy of `data`.
    pub fn new(data: &[u8], chunk: usize) -> Self {
        Self {
            data: data.to_vec(),
            pos: 0,
            chunk: if chunk == 0 { usize::MAX } else { chunk },
        }
    }

    /// The next piece, `None` at the end.
    pub fn next_chunk(&mut self) -> Option<&[u8]> {
        let rest = self.data.get(self.pos..).filter(|r| !r.is_empty())?;
        let n = rest.len().min(self.chunk);
        self.pos += n;
        rest.get(..n)
    }
}

impl Read for Chunked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let limit = buf.len();
        let Some(piece) = self.next_chunk() else {
            return Ok(0);
        };
        let n = piece.len().min(limit);
        buf[..n].copy_from_slice(&piece[..n]);
        // Give back what did not fit.
        self.pos -= piece.len() - n;
        Ok(n)
    }
}
