//! The `multifd_codec` fuzz target's seeds (`fuzz/seeds/multifd_codec/`): a real channel's
//! first two packets, made by [`Compressor`], in the target's input layout
//!
//! ```text
//! byte 0      method: even zlib, odd zstd
//! byte 1      pages per packet − 1
//! bytes 2–3   be16: length of packet 0
//! bytes 4…    packet 0 ‖ packet 1   (one compressed stream, flushed after each packet)
//! ```
//!
//! Packet 1 decodes only with the stream state packet 0 left behind, which is where the
//! fuzzer should start. `cargo test -p savevm --test fuzz_seeds -- --ignored` writes them; the
//! test that is not ignored checks that every committed seed still decodes both packets to
//! the pages they were made from.

use std::path::PathBuf;

use savevm::multifd_codec::{decompress_packet, Compression, Compressor, Decompressor};

const PAGE: usize = 4096;
const PAGES: usize = 2;

/// Text-like pages: words from a small vocabulary, so both codecs find matches within a page
/// and, in packet 1, back into packet 0.
fn pages(packet: usize) -> Vec<u8> {
    let words = [
        "migrate ", "page ", "dirty ", "stream ", "channel ", "guest ",
    ];
    let mut x = (packet as u64 + 1) * 0x9e37_79b9;
    let mut out = Vec::with_capacity(PAGES * PAGE + 16);
    while out.len() < PAGES * PAGE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
    }
    out.truncate(PAGES * PAGE);
    out
}

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/multifd_codec")
}

fn method_of(byte: u8) -> Compression {
    if byte % 2 == 0 {
        Compression::Zlib(1)
    } else {
        Compression::Zstd(1)
    }
}

fn seed(method_byte: u8) -> Vec<u8> {
    let mut c = Compressor::new(method_of(method_byte))
        .expect("codec")
        .expect("a compressing method");
    let packets: Vec<Vec<u8>> = (0..2)
        .map(|k| {
            let data = pages(k);
            let refs: Vec<&[u8]> = data.chunks(PAGE).collect();
            let mut out = Vec::new();
            c.compress(&refs, &mut out).expect("compress");
            out
        })
        .collect();
    let len0 = u16::try_from(packets[0].len()).expect("packet 0 under 64 KiB");
    let mut seed = vec![method_byte, (PAGES - 1) as u8];
    seed.extend_from_slice(&len0.to_be_bytes());
    seed.extend_from_slice(&packets.concat());
    seed
}

#[test]
fn committed_seeds_decode_to_their_pages() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(seeds_dir()).expect("seeds dir") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read seed");
        let [method, n, hi, lo, rest @ ..] = data.as_slice() else {
            panic!("{} is too short", path.display());
        };
        assert_eq!(usize::from(*n) + 1, PAGES, "{}", path.display());
        let at = usize::from(u16::from_be_bytes([*hi, *lo]));
        assert!(at < rest.len(), "{}: split past the end", path.display());
        let mut d = Decompressor::new(method_of(*method))
            .expect("codec")
            .expect("method");
        for (k, packet) in [&rest[..at], &rest[at..]].into_iter().enumerate() {
            let mut buf = vec![0u8; PAGES * PAGE];
            let mut slots: Vec<&mut [u8]> = buf.chunks_mut(PAGE).collect();
            decompress_packet(&mut d, packet, &mut slots)
                .unwrap_or_else(|e| panic!("{} packet {k}: {e}", path.display()));
            assert!(buf == pages(k), "{} packet {k} differs", path.display());
        }
        seen.push(method_of(*method));
    }
    assert!(
        seen.contains(&Compression::Zlib(1)) && seen.contains(&Compression::Zstd(1)),
        "expected a zlib and a zstd seed, found {seen:?}"
    );
}

#[test]
#[ignore = "writes fuzz/seeds/multifd_codec"]
fn write_seeds() {
    for (name, byte) in [("zlib-two-packets.bin", 0u8), ("zstd-two-packets.bin", 1)] {
        std::fs::write(seeds_dir().join(name), seed(byte)).expect("write seed");
    }
}
