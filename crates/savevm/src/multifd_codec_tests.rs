use super::*;

const PAGE: usize = 4096;

/// Text-like pages (compress ~3:1), a random page, a zero page.
fn sample_pages(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let words = [
        "migration ",
        "page ",
        "channel ",
        "the ",
        "stream ",
        "of ",
        "dirty ",
        "QEMU ",
    ];
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| match i % 5 {
            3 => (0..PAGE).map(|_| next() as u8).collect(),
            4 => vec![0u8; PAGE],
            _ => {
                let mut p = Vec::with_capacity(PAGE);
                while p.len() < PAGE {
                    p.extend_from_slice(words[(next() % 8) as usize].as_bytes());
                }
                p.truncate(PAGE);
                p
            }
        })
        .collect()
}

fn compress_packets(method: Compression, packets: &[Vec<Vec<u8>>]) -> Vec<Vec<u8>> {
    let mut c = Compressor::new(method).unwrap().unwrap();
    packets
        .iter()
        .map(|pages| {
            let refs: Vec<&[u8]> = pages.iter().map(Vec::as_slice).collect();
            let mut out = Vec::new();
            c.compress(&refs, &mut out).unwrap();
            assert!(out.len() <= MULTIFD_COMPRESSED_MAX);
            out
        })
        .collect()
}

fn decode(d: &mut Decompressor, input: &[u8], n: usize) -> Result<Vec<Vec<u8>>, CodecError> {
    let mut pages = vec![vec![0u8; PAGE]; n];
    let mut refs: Vec<&mut [u8]> = pages.iter_mut().map(Vec::as_mut_slice).collect();
    decompress_packet(d, input, &mut refs)?;
    Ok(pages)
}

fn methods() -> [Compression; 6] {
    [
        Compression::Zlib(0),
        Compression::Zlib(1),
        Compression::Zlib(9),
        Compression::Zstd(0),
        Compression::Zstd(1),
        Compression::Zstd(20),
    ]
}

#[test]
fn packets_round_trip_on_one_stream_per_channel() {
    for method in methods() {
        let packets: Vec<_> = [128, 1, 37, 128]
            .iter()
            .enumerate()
            .map(|(i, &n)| sample_pages(i as u64 + 7, n))
            .collect();
        let wire = compress_packets(method, &packets);
        let mut d = Decompressor::new(method).unwrap().unwrap();
        for (pages, bytes) in packets.iter().zip(&wire) {
            assert_eq!(
                &decode(&mut d, bytes, pages.len()).unwrap(),
                pages,
                "{method:?}"
            );
        }
        if method != Compression::Zlib(0) {
            // Text pages compress: the first packet is well under half its pages.
            assert!(
                wire[0].len() < 128 * PAGE / 2,
                "{method:?}: {}",
                wire[0].len()
            );
        }
    }
}

#[test]
fn flags_select_the_method() {
    assert_eq!(Compression::Zlib(1).flag(), 2);
    assert_eq!(Compression::Zstd(1).flag(), 4);
    assert_eq!(Compression::None.flag(), 0);
    assert!(Compression::Zstd(1).check_flags(4 | 1).is_ok());
    assert_eq!(
        Compression::Zstd(1).check_flags(2),
        Err(CodecError::WrongMethod {
            received: 2,
            expected: 4
        })
    );
    assert!(Compression::None.check_flags(4).is_err());
    assert!(Compressor::new(Compression::None).unwrap().is_none());
    assert!(matches!(
        Compressor::new(Compression::Zlib(10)),
        Err(CodecError::Level { .. })
    ));
    assert!(matches!(
        Compressor::new(Compression::Zstd(21)),
        Err(CodecError::Level { .. })
    ));
}

#[test]
fn truncated_packet_is_a_short_page() {
    for method in methods() {
        let pages = sample_pages(3, 8);
        let wire = compress_packets(method, &[pages]);
        let mut d = Decompressor::new(method).unwrap().unwrap();
        let cut = &wire[0][..wire[0].len() / 2];
        let err = decode(&mut d, cut, 8).unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::ShortPage { .. } | CodecError::Corrupt { .. }
            ),
            "{method:?}: {err:?}"
        );
    }
}

#[test]
fn more_bytes_than_pages_is_trailing_data() {
    for method in methods() {
        let packets = vec![sample_pages(1, 4), sample_pages(2, 4)];
        let wire = compress_packets(method, &packets);
        let mut d = Decompressor::new(method).unwrap().unwrap();
        // Two packets' bytes announced as one packet of 4 pages.
        let joined = [wire[0].clone(), wire[1].clone()].concat();
        let err = decode(&mut d, &joined, 4).unwrap_err();
        assert!(
            matches!(err, CodecError::TrailingData(_)),
            "{method:?}: {err:?}"
        );
        // And fewer pages than the packet holds.
        let mut d = Decompressor::new(method).unwrap().unwrap();
        let err = decode(&mut d, &wire[0], 3).unwrap_err();
        assert!(
            matches!(err, CodecError::TrailingData(_)),
            "{method:?}: {err:?}"
        );
    }
}

#[test]
fn garbage_and_the_other_codec_are_errors() {
    let garbage = vec![0xffu8; 3000];
    for method in [Compression::Zlib(1), Compression::Zstd(1)] {
        let mut d = Decompressor::new(method).unwrap().unwrap();
        assert!(matches!(
            decode(&mut d, &garbage, 2),
            Err(CodecError::Corrupt { .. })
        ));
    }
    let zlib = compress_packets(Compression::Zlib(1), &[sample_pages(5, 4)]);
    let mut d = Decompressor::new(Compression::Zstd(1)).unwrap().unwrap();
    assert!(decode(&mut d, &zlib[0], 4).is_err());
    let zstd = compress_packets(Compression::Zstd(1), &[sample_pages(5, 4)]);
    let mut d = Decompressor::new(Compression::Zlib(1)).unwrap().unwrap();
    assert!(decode(&mut d, &zstd[0], 4).is_err());
}

#[test]
fn every_single_byte_corruption_is_an_error_or_other_pages_never_a_panic() {
    for method in [Compression::Zlib(1), Compression::Zstd(1)] {
        let pages = sample_pages(9, 3);
        let wire = compress_packets(method, std::slice::from_ref(&pages));
        for at in 0..wire[0].len() {
            let mut bad = wire[0].clone();
            bad[at] ^= 0x5a;
            let mut d = Decompressor::new(method).unwrap().unwrap();
            // zlib has no checksum before the stream end: a flipped literal may decode to
            // other bytes. Either way the result is a value.
            if let Ok(out) = decode(&mut d, &bad, 3) {
                assert_eq!(out.len(), 3);
            }
        }
    }
}

#[test]
fn a_huge_zstd_window_is_refused() {
    // A frame header asking for a 2^31-byte window: magic, frame header descriptor with
    // single-segment off, window descriptor exponent 21 (2^(10+21)).
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 21 << 3];
    frame.extend_from_slice(&[0; 16]);
    let mut d = Decompressor::new(Compression::Zstd(1)).unwrap().unwrap();
    assert!(matches!(
        decode(&mut d, &frame, 1),
        Err(CodecError::Corrupt { .. })
    ));
}
