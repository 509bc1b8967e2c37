//! Feeds arbitrary bytes to the multifd receiver's decompression, as a destination channel
//! would: byte 0 picks the method (even: zlib, odd: zstd), byte 1 the packet's page count
//! (1..=128, as the header checks allow), and the rest is split at the be16 offset in bytes
//! 2–3 into two packets decoded one after the other on the same stream (the stream lives as
//! long as the channel). The seeds are two real packets (`savevm`'s `fuzz_seeds` test). Errors are expected; a panic, a hang or an allocation beyond the
//! decoder's bounded window is a bug.

#![no_main]

use libfuzzer_sys::fuzz_target;
use savevm::multifd_codec::{decompress_packet, Compression, Decompressor};

fuzz_target!(|data: &[u8]| {
    let [method, pages, split_hi, split_lo, rest @ ..] = data else {
        return;
    };
    let method = if method % 2 == 0 {
        Compression::Zlib(1)
    } else {
        Compression::Zstd(1)
    };
    let n = usize::from(*pages % 128) + 1;
    let at = usize::from(u16::from_be_bytes([*split_hi, *split_lo])).min(rest.len());
    let Ok(Some(mut d)) = Decompressor::new(method) else {
        return;
    };
    let mut buf = vec![0u8; n * 4096];
    for packet in [&rest[..at], &rest[at..]] {
        let mut pages: Vec<&mut [u8]> = buf.chunks_mut(4096).collect();
        if decompress_packet(&mut d, packet, &mut pages).is_err() {
            return;
        }
    }
});
