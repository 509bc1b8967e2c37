use std::sync::Arc;

use savevm::qemu_file::QemuFileWriter;
use savevm::ram::{
    self, xbzrle, RamBlockInfo, RamDecoder, RamEncoder, RamRecord, TARGET_PAGE_SIZE,
};
use savevm::Error;

use crate::{bytes_of, reader, Bytes};

fn pc_blocks() -> Vec<RamBlockInfo> {
    [
        ("pc.ram", 0x2000000u64),
        ("/rom@etc/acpi/tables", 0x20000),
        ("pc.bios", 0x40000),
        ("pc.rom", 0x20000),
        ("/rom@etc/table-loader", 0x1000),
        ("/rom@etc/acpi/rsdp", 0x1000),
    ]
    .into_iter()
    .map(|(n, l)| RamBlockInfo {
        idstr: n.into(),
        used_length: l,
    })
    .collect()
}

#[test]
fn mem_size_matches_capture() {
    let bytes = bytes_of(|w| {
        ram::write_mem_size(w, &pc_blocks());
        ram::put_eos(w);
    });
    // spec §2.10
    let golden = Bytes::default()
        .raw(&[0, 0, 0, 0, 0x02, 0x08, 0x20, 0x04])
        .cstr("pc.ram")
        .be64(0x2000000)
        .cstr("/rom@etc/acpi/tables")
        .be64(0x20000)
        .cstr("pc.bios")
        .be64(0x40000)
        .cstr("pc.rom")
        .be64(0x20000)
        .cstr("/rom@etc/table-loader")
        .be64(0x1000)
        .cstr("/rom@etc/acpi/rsdp")
        .be64(0x1000)
        .be64(0x10)
        .0;
    assert_eq!(bytes, golden);
    assert_eq!(bytes[23], 0x14, "length byte of /rom@etc/acpi/tables");
    let mut r = reader(&bytes);
    let mut dec = RamDecoder::new();
    assert_eq!(
        dec.read_record(&mut r).unwrap(),
        RamRecord::MemSize {
            total: 0x2082000,
            blocks: pc_blocks()
        }
    );
    assert_eq!(dec.read_record(&mut r).unwrap(), RamRecord::Eos);
    assert!(r.is_eof().unwrap());
}

#[test]
fn mem_size_must_add_up() {
    // A block longer than what is left of the total.
    let b = Bytes::default()
        .be64(0x2000 | 4)
        .cstr("a")
        .be64(0x1000)
        .cstr("b")
        .be64(0x2000)
        .0;
    assert!(matches!(
        RamDecoder::new().read_record(&mut reader(&b)),
        Err(Error::MemSizeMismatch {
            length: 0x2000,
            remaining: 0x1000,
            ..
        })
    ));
    // Blocks that do not reach the total: the loader keeps reading and hits EOF.
    let b = Bytes::default()
        .be64(0x2000 | 4)
        .cstr("a")
        .be64(0x1000)
        .be64(0x10)
        .0;
    assert!(RamDecoder::new().read_record(&mut reader(&b)).is_err());
    // Endless zero-length blocks are capped.
    let mut b = Bytes::default().be64(0x1000 | 4);
    for _ in 0..5000 {
        b = b.cstr("z").be64(0);
    }
    assert!(matches!(
        RamDecoder::new().read_record(&mut reader(&b.0)),
        Err(Error::LengthTooLarge { .. })
    ));
    // Empty block name.
    let b = Bytes::default().be64(0x1000 | 4).u8(0).be64(0x1000).0;
    assert!(matches!(
        RamDecoder::new().read_record(&mut reader(&b)),
        Err(Error::EmptyBlockName { offset: 8 })
    ));
    // Total 0: no blocks.
    let b = Bytes::default().be64(4).0;
    assert_eq!(
        RamDecoder::new().read_record(&mut reader(&b)).unwrap(),
        RamRecord::MemSize {
            total: 0,
            blocks: vec![]
        }
    );
}

fn page(fill: u8) -> Vec<u8> {
    vec![fill; TARGET_PAGE_SIZE]
}

fn write_pages(w: &mut QemuFileWriter) {
    let mut enc = RamEncoder::new();
    enc.put_page(w, 0, "pc.ram", 0, &page(0xaa));
    enc.put_zero(w, 0, "pc.ram", 0x1000);
    enc.put_page(w, 1, "pc.bios", 0x3000, &page(0xbb));
    enc.put_xbzrle(w, 1, "pc.bios", 0x4000, &[0x00, 0x01, 0x55]);
    enc.reset();
    enc.put_zero(w, 1, "pc.bios", 0x5000);
    enc.put_eos(w);
}

#[test]
fn external_pages_encode_like_copied_pages() {
    let memory = Arc::new([page(0xaa), page(0xbb)].concat());
    let copied = bytes_of(|w| {
        let mut enc = RamEncoder::new();
        enc.put_page(w, 0, "pc.ram", 0x1000, &memory[0x1000..0x2000]);
        enc.put_page(w, 0, "pc.ram", 0, &memory[..0x1000]);
    });
    let in_place = bytes_of(|w| {
        let mut enc = RamEncoder::new();
        enc.put_page_external(w, 0, "pc.ram", 0x1000, &memory);
        enc.put_page_external(w, 0, "pc.ram", 0, &memory);
    });
    assert_eq!(in_place, copied);
}

#[test]
fn page_records_golden_and_continue() {
    let bytes = bytes_of(write_pages);
    // spec §2.10: first page names its block, the next uses CONTINUE.
    let mut golden = Bytes::default().be64(0x8).cstr("pc.ram").raw(&page(0xaa));
    golden = golden.be64(0x1000 | 0x22).u8(0);
    golden = golden.be64(0x3008).cstr("pc.bios").raw(&page(0xbb));
    golden = golden
        .be64(0x4000 | 0x60)
        .u8(1)
        .be16(3)
        .raw(&[0x00, 0x01, 0x55]);
    golden = golden.be64(0x5002).cstr("pc.bios").u8(0);
    golden = golden.be64(0x10);
    assert_eq!(bytes, golden.0);

    let mut r = reader(&bytes);
    let mut dec = RamDecoder::new();
    assert_eq!(
        dec.read_record(&mut r).unwrap(),
        RamRecord::Page {
            block: Some("pc.ram".into()),
            offset: 0
        }
    );
    let mut p = page(0);
    r.get_buffer(&mut p).unwrap();
    assert_eq!(p, page(0xaa));
    assert_eq!(
        dec.read_record(&mut r).unwrap(),
        RamRecord::Zero {
            block: None,
            offset: 0x1000,
            fill: 0
        }
    );
    assert_eq!(dec.last_block(), Some("pc.ram"));
    assert_eq!(
        dec.read_record(&mut r).unwrap(),
        RamRecord::Page {
            block: Some("pc.bios".into()),
            offset: 0x3000
        }
    );
    r.get_buffer(&mut p).unwrap();
    assert_eq!(
        dec.read_record(&mut r).unwrap(),
        RamRecord::Xbzrle {
            block: None,
            offset: 0x4000,
            len: 3
        }
    );
    let mut enc = [0u8; 3];
    r.get_buffer(&mut enc).unwrap();
    let mut target = page(0);
    xbzrle::decode(&enc, &mut target).unwrap();
    assert_eq!(target[0], 0x55);
    assert_eq!(
        dec.read_record(&mut r).unwrap(),
        RamRecord::Zero {
            block: Some("pc.bios".into()),
            offset: 0x5000,
            fill: 0
        }
    );
    assert_eq!(dec.read_record(&mut r).unwrap(), RamRecord::Eos);
}

#[test]
fn decoder_rejects_bad_records() {
    let cases: Vec<(Vec<u8>, crate::ErrCheck)> = vec![
        (Bytes::default().be64(0x1000 | 0x28).0, |e| {
            matches!(e, Error::ContinueWithoutBlock { offset: 0 })
        }),
        (Bytes::default().be64(0x22).0, |e| {
            matches!(e, Error::ContinueWithoutBlock { .. })
        }),
        (Bytes::default().be64(0x1).0, |e| {
            matches!(e, Error::UnknownRamFlags { flags: 1, .. })
        }),
        (Bytes::default().be64(0x0).0, |e| {
            matches!(e, Error::UnknownRamFlags { flags: 0, .. })
        }),
        (Bytes::default().be64(0x2 | 0x8).0, |e| {
            matches!(e, Error::UnknownRamFlags { flags: 0xa, .. })
        }),
        (Bytes::default().be64(0x200).0, |e| {
            matches!(e, Error::UnknownRamFlags { .. })
        }),
        (Bytes::default().be64(0x100).0, |e| {
            matches!(e, Error::UnexpectedCompressedPage { .. })
        }),
        (Bytes::default().be64(0x40).cstr("a").u8(2).0, |e| {
            matches!(
                e,
                Error::XbzrleEncoding {
                    encoding: 2,
                    offset: 10
                }
            )
        }),
        (
            Bytes::default().be64(0x40).cstr("a").u8(1).be16(4097).0,
            |e| matches!(e, Error::LengthTooLarge { len: 4097, .. }),
        ),
        (Bytes::default().be64(0x8).u8(0).0, |e| {
            matches!(e, Error::EmptyBlockName { offset: 8 })
        }),
        (Bytes::default().be64(0x8).u8(2).raw(&[0xc3, 0x28]).0, |e| {
            matches!(e, Error::InvalidUtf8 { .. })
        }),
        (Bytes::default().raw(&[0, 0, 0]).0, |e| {
            matches!(e, Error::UnexpectedEof { offset: 3 })
        }),
    ];
    for (bytes, check) in cases {
        let err = RamDecoder::new()
            .read_record(&mut reader(&bytes))
            .unwrap_err();
        assert!(check(&err), "{bytes:02x?}: {err:?}");
    }
    // HOOK and EOS|CONTINUE are accepted like QEMU does.
    assert_eq!(
        RamDecoder::new()
            .read_record(&mut reader(&Bytes::default().be64(0x80).0))
            .unwrap(),
        RamRecord::Hook
    );
    assert_eq!(
        RamDecoder::new()
            .read_record(&mut reader(&Bytes::default().be64(0x30).0))
            .unwrap(),
        RamRecord::Eos
    );
}

#[test]
fn xbzrle_record_round_trip_through_stream() {
    let old: Vec<u8> = (0..TARGET_PAGE_SIZE).map(|i| (i / 7) as u8).collect();
    let mut new = old.clone();
    new[10..20].fill(0xee);
    new[4000] = 1;
    let mut encoded = vec![0u8; TARGET_PAGE_SIZE];
    let n = xbzrle::encode(&old, &new, &mut encoded).unwrap();
    let bytes = bytes_of(|w| RamEncoder::new().put_xbzrle(w, 3, "vga.vram", 0x7000, &encoded[..n]));
    let mut r = reader(&bytes);
    let RamRecord::Xbzrle { block, offset, len } = RamDecoder::new().read_record(&mut r).unwrap()
    else {
        panic!("not xbzrle")
    };
    assert_eq!(
        (block.as_deref(), offset, usize::from(len)),
        (Some("vga.vram"), 0x7000, n)
    );
    let mut data = vec![0u8; usize::from(len)];
    r.get_buffer(&mut data).unwrap();
    let mut target = old.clone();
    xbzrle::decode(&data, &mut target).unwrap();
    assert_eq!(target, new);
}

#[test]
fn xbzrle_overflow_boundary_matches_qemu() {
    // Changed bytes separated by single unchanged bytes: (zrun, nzrun=1, byte) = 3 bytes per
    // change (the first zrun is 0).
    let old = vec![0u8; TARGET_PAGE_SIZE];
    let encode_changes = |n: usize| {
        let mut new = old.clone();
        for i in (0..TARGET_PAGE_SIZE).step_by(2).take(n) {
            new[i] = 1;
        }
        let mut out = vec![0u8; TARGET_PAGE_SIZE];
        xbzrle::encode(&old, &new, &mut out)
    };
    // 1364 changes: 4092 bytes, the trailing unchanged run is not encoded.
    assert_eq!(encode_changes(1364), Some(4092));
    // 1365 changes would take 4095 bytes, but QEMU gives up when fewer than 2 bytes of room
    // remain at the start of a run, even if only the trailing unchanged run is left.
    assert_eq!(encode_changes(1365), None);
    // Mismatched lengths are refused.
    let mut out = vec![0u8; TARGET_PAGE_SIZE];
    assert_eq!(xbzrle::encode(&old[..10], &old, &mut out), None);
}

#[test]
fn zero_page_detection() {
    let mut p = page(0);
    assert!(ram::buffer_is_zero(&p));
    for i in [0, 15, 16, 4095] {
        p[i] = 1;
        assert!(!ram::buffer_is_zero(&p), "byte {i}");
        p[i] = 0;
    }
    assert!(ram::buffer_is_zero(&[0u8; 7]));
    assert!(!ram::buffer_is_zero(&[0, 0, 0, 0, 0, 0, 1]));
    assert!(ram::buffer_is_zero(&[]));
}

#[test]
fn decoder_reset_forgets_the_block() {
    let bytes = bytes_of(|w| {
        let mut enc = RamEncoder::new();
        enc.put_zero(w, 0, "pc.ram", 0);
        enc.put_zero(w, 0, "pc.ram", 0x1000);
    });
    let mut r = reader(&bytes);
    let mut dec = RamDecoder::new();
    dec.read_record(&mut r).unwrap();
    dec.reset();
    assert!(matches!(
        dec.read_record(&mut r),
        Err(Error::ContinueWithoutBlock { offset: 16 })
    ));
}

#[test]
fn mem_size_optional_fields() {
    let blocks = pc_blocks();
    let mut extras = vec![
        ram::BlockExtras {
            page_size: None,
            mr_addr: Some(0)
        };
        blocks.len()
    ];
    extras[0].page_size = Some(2 << 20);
    extras[2].mr_addr = Some(0xfffc_0000);
    let bytes = bytes_of(|w| ram::write_mem_size_ext(w, &blocks, &extras));
    // pc.ram: name, length, page size, address.
    let head = Bytes::default()
        .be64(0x2082004)
        .cstr("pc.ram")
        .be64(0x2000000)
        .be64(2 << 20)
        .be64(0)
        .0;
    assert_eq!(&bytes[..head.len()], &head[..]);

    let mut dec = RamDecoder::new();
    dec.set_mem_size_layout(ram::MemSizeLayout {
        ignore_shared: true,
        hugepage_blocks: vec!["pc.ram".into()],
    });
    assert_eq!(
        dec.read_record(&mut reader(&bytes)).unwrap(),
        RamRecord::MemSize {
            total: 0x2082000,
            blocks: blocks.clone()
        }
    );
    assert_eq!(dec.mem_size_extras(), &extras[..]);

    // A receiver that expects no optional fields misparses this list and fails.
    assert!(RamDecoder::new().read_record(&mut reader(&bytes)).is_err());
}
