//! Multifd compression on the receiving side, over a real loopback TCP channel: a QEMU-7.2-style
//! packet is loaded into guest RAM, and hostile packets (corrupt, truncated, a size beyond the
//! limit, the wrong method) end the channel with a typed error instead of a panic.

use std::io::Write;
use std::sync::Arc;

use guest_ram::{Backing, GuestRam, RamBlock};
use migration::cancel::CancelToken;
use migration::ram::multifd::{self, MultifdReceiver};
use migration::MigrationError;
use savevm::multifd::{PacketHeader, MULTIFD_FLAG_SYNC, MULTIFD_PAGES};
use savevm::multifd_codec::{CodecError, Compression, Compressor, MULTIFD_COMPRESSED_MAX};
use transport::{ChannelWriter, MigrationUri};

const PAGE: usize = 4096;

fn ram() -> Arc<GuestRam> {
    Arc::new(GuestRam::new(vec![RamBlock::new(
        "pc.ram",
        1 << 20,
        Backing::Anonymous,
    )
    .unwrap()]))
}

/// A receiver over one TCP channel expecting `method`, and the sending end of that channel.
fn channel(ram: &Arc<GuestRam>, method: Compression) -> (MultifdReceiver, ChannelWriter) {
    let uri: MigrationUri = "tcp:127.0.0.1:0".parse().unwrap();
    let listener = transport::listen(&uri, &transport::NoFds).unwrap();
    let addr: MigrationUri = listener.local_description().parse().unwrap();
    let out = transport::connect(&addr, &transport::NoFds).unwrap();
    let inc = listener.accept_next().unwrap();
    let rx = multifd::start_receiver(
        ram.clone(),
        vec![inc.into_split().0],
        method,
        CancelToken::new(),
        false,
    )
    .unwrap();
    (rx, out.into_split().1)
}

fn text_page(seed: u8) -> Vec<u8> {
    (0..PAGE)
        .map(|i| b"the quick page "[(i + seed as usize) % 15])
        .collect()
}

fn header(flags: u32, offsets: Vec<u64>, size: usize) -> Vec<u8> {
    PacketHeader {
        flags,
        pages_alloc: MULTIFD_PAGES as u32,
        normal_pages: offsets.len() as u32,
        next_packet_size: size as u32,
        packet_num: 1,
        ramblock: "pc.ram".into(),
        offsets,
    }
    .encode()
    .unwrap()
}

fn sync_packet() -> Vec<u8> {
    header(MULTIFD_FLAG_SYNC, Vec::new(), 0)
}

/// Compressed bytes of two text pages (offsets 0x3000 and 0x8000).
fn payload(method: Compression) -> (Vec<Vec<u8>>, Vec<u8>) {
    let pages = vec![text_page(1), text_page(2)];
    let refs: Vec<&[u8]> = pages.iter().map(Vec::as_slice).collect();
    let mut out = Vec::new();
    Compressor::new(method)
        .unwrap()
        .unwrap()
        .compress(&refs, &mut out)
        .unwrap();
    (pages, out)
}

fn codec_error(e: MigrationError) -> CodecError {
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(s) = source {
        if let Some(c) = s.downcast_ref::<CodecError>() {
            return c.clone();
        }
        if let Some(savevm::Error::MultifdCodec(c)) = s.downcast_ref::<savevm::Error>() {
            return c.clone();
        }
        source = s.source();
    }
    panic!("not a codec error: {e:?}");
}

const METHODS: [Compression; 2] = [Compression::Zlib(1), Compression::Zstd(1)];

#[test]
fn compressed_packet_lands_in_guest_ram() {
    for method in METHODS {
        let ram = ram();
        let (rx, mut w) = channel(&ram, method);
        let (pages, bytes) = payload(method);
        w.write_all(&header(method.flag(), vec![0x3000, 0x8000], bytes.len()))
            .unwrap();
        w.write_all(&bytes).unwrap();
        // A SYNC carries no method bits (QEMU 7.2) and stale fields.
        w.write_all(&sync_packet()).unwrap();
        rx.sync().unwrap();
        let b = &ram.blocks()[0];
        assert_eq!(b.page(3).unwrap(), &pages[0][..]);
        assert_eq!(b.page(8).unwrap(), &pages[1][..]);
    }
}

#[test]
fn corrupt_packet_is_a_codec_error() {
    for method in METHODS {
        let ram = ram();
        let (rx, mut w) = channel(&ram, method);
        let (_, mut bytes) = payload(method);
        // Past the zlib header / zstd frame header: the block data itself.
        for b in &mut bytes[6..] {
            *b = 0xff;
        }
        w.write_all(&header(method.flag(), vec![0, 0x1000], bytes.len()))
            .unwrap();
        w.write_all(&bytes).unwrap();
        w.write_all(&sync_packet()).unwrap();
        let e = codec_error(rx.sync().unwrap_err());
        assert!(
            matches!(e, CodecError::Corrupt { .. } | CodecError::ShortPage { .. }),
            "{method:?}: {e:?}"
        );
    }
}

#[test]
fn oversized_packet_is_refused_before_reading_it() {
    for method in METHODS {
        let ram = ram();
        let (rx, mut w) = channel(&ram, method);
        w.write_all(&header(method.flag(), vec![0], u32::MAX as usize))
            .unwrap();
        let e = codec_error(rx.sync().unwrap_err());
        assert_eq!(
            e,
            CodecError::TooLarge {
                size: u32::MAX as usize,
                max: MULTIFD_COMPRESSED_MAX
            }
        );
    }
}

#[test]
fn fewer_pages_than_the_packet_holds_is_trailing_data() {
    for method in METHODS {
        let ram = ram();
        let (rx, mut w) = channel(&ram, method);
        let (_, bytes) = payload(method);
        // The packet claims one page, its bytes hold two.
        w.write_all(&header(method.flag(), vec![0], bytes.len()))
            .unwrap();
        w.write_all(&bytes).unwrap();
        w.write_all(&sync_packet()).unwrap();
        let e = codec_error(rx.sync().unwrap_err());
        assert!(
            matches!(e, CodecError::TrailingData(_)),
            "{method:?}: {e:?}"
        );
    }
}

#[test]
fn more_pages_than_the_packet_holds_is_a_short_page() {
    for method in METHODS {
        let ram = ram();
        let (rx, mut w) = channel(&ram, method);
        let (_, bytes) = payload(method);
        // The packet claims 128 pages: 512 KiB from bytes that hold two pages.
        let offsets = (0..128u64).map(|p| p * PAGE as u64).collect();
        w.write_all(&header(method.flag(), offsets, bytes.len()))
            .unwrap();
        w.write_all(&bytes).unwrap();
        w.write_all(&sync_packet()).unwrap();
        let e = codec_error(rx.sync().unwrap_err());
        assert!(
            matches!(e, CodecError::ShortPage { page: 2, .. }),
            "{method:?}: {e:?}"
        );
    }
}

#[test]
fn truncated_stream_is_an_error() {
    for method in METHODS {
        let ram = ram();
        let (rx, mut w) = channel(&ram, method);
        let (_, bytes) = payload(method);
        w.write_all(&header(method.flag(), vec![0, 0x1000], bytes.len()))
            .unwrap();
        w.write_all(&bytes[..bytes.len() / 2]).unwrap();
        drop(w);
        let e = rx.sync().unwrap_err();
        assert!(
            matches!(e, MigrationError::Stream(savevm::Error::Io(_))),
            "{method:?}: {e:?}"
        );
    }
}

#[test]
fn wrong_method_is_refused() {
    for (local, sent) in [
        (Compression::Zlib(1), Compression::Zstd(1)),
        (Compression::Zstd(1), Compression::Zlib(1)),
        (Compression::None, Compression::Zstd(1)),
    ] {
        let ram = ram();
        let (rx, mut w) = channel(&ram, local);
        let (_, bytes) = payload(sent);
        w.write_all(&header(sent.flag(), vec![0, 0x1000], bytes.len()))
            .unwrap();
        w.write_all(&bytes).unwrap();
        let e = codec_error(rx.sync().unwrap_err());
        assert_eq!(
            e,
            CodecError::WrongMethod {
                received: sent.flag(),
                expected: local.flag()
            }
        );
        // Nothing was written into guest RAM.
        assert!(ram.blocks()[0].is_zero_page(0).unwrap());
    }
}
