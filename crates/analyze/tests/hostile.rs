//! Synthetic streams (no QEMU needed): exact counts on a known stream, and corrupt,
//! truncated or hostile input giving typed errors instead of panics.

use std::io::Cursor;

use analyze::{analyze, AnalyzeError, AnalyzeOptions, Report};

/// Builds a small stream byte by byte.
#[derive(Default)]
struct B(Vec<u8>);

impl B {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn be16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn be32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn be64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn str8(&mut self, s: &str) -> &mut Self {
        self.u8(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn header(&mut self, caps: &[&str]) -> &mut Self {
        self.be32(0x5145_564d).be32(3).u8(7).be32(4).bytes(b"test");
        if !caps.is_empty() {
            self.u8(5).str8("configuration/capabilities").be32(1);
            self.be32(caps.len() as u32);
            for c in caps {
                self.str8(c);
            }
        }
        self
    }
    fn full(&mut self, id: u32, name: &str, inst: u32, ver: u32) -> &mut Self {
        self.u8(4).be32(id).str8(name).be32(inst).be32(ver)
    }
    fn footer(&mut self, id: u32) -> &mut Self {
        self.u8(0x7e).be32(id)
    }
}

const DESC: &str = r#"{"page_size": 4096, "devices": [{"name": "timer", "instance_id": 0, "vmsd_name": "timer", "version": 2, "fields": [{"name": "cpu_ticks_offset", "type": "int64", "size": 8}, {"name": "unused", "type": "unused_buffer", "size": 8}, {"name": "cpu_clock_offset", "type": "int64", "size": 8}]}, {"name": "dev", "instance_id": 1, "vmsd_name": "dev", "version": 1, "fields": [{"name": "regs", "array_len": 2, "type": "uint16", "size": 2}], "subsections": [{"vmsd_name": "dev/extra", "version": 1, "fields": [{"name": "x", "type": "bool", "size": 1}]}]}]}"#;

/// ram START (two blocks) + PART (PAGE, ZERO, XBZRLE, CONTINUE) + END, a PING command,
/// two FULL devices, EOF and the description.
fn good_stream() -> Vec<u8> {
    let mut b = B::default();
    b.header(&[]);
    b.u8(8).be16(2).be16(4).be32(1); // PING 1
    b.u8(1).be32(2).str8("ram").be32(0).be32(4);
    b.be64(0x3000 | 0x4)
        .str8("a")
        .be64(0x2000)
        .str8("/rom@b")
        .be64(0x1000);
    b.be64(0x10).footer(2);
    b.u8(2).be32(2);
    b.be64(0x8).str8("a").bytes(&[0xab; 4096]); // PAGE a@0
    b.be64(0x1000 | 0x2 | 0x20).u8(0); // ZERO a@0x1000 (CONTINUE)
    b.be64(0x40 | 0x20).u8(1).be16(3).bytes(&[1, 1, 0xcd]); // XBZRLE a@0: byte 1 = 0xcd
    b.be64(0x2).str8("/rom@b").u8(0x11); // ZERO b@0 fill 0x11
    b.be64(0x10).footer(2);
    b.u8(3).be32(2).be64(0x10).footer(2);
    b.full(0, "timer", 0, 2)
        .be64(5)
        .be64(0)
        .be64(u64::MAX)
        .footer(0);
    b.full(7, "dev", 1, 1).be16(1).be16(2);
    b.u8(5).str8("dev/extra").be32(1).u8(1).footer(7);
    b.u8(0).u8(6).be32(DESC.len() as u32).bytes(DESC.as_bytes());
    b.0
}

fn run(bytes: Vec<u8>, opts: &AnalyzeOptions) -> Result<Report, AnalyzeError> {
    let mut out = Vec::new();
    analyze(Box::new(Cursor::new(bytes)), opts, &mut out)
}

#[test]
fn known_stream_is_reported_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let opts = AnalyzeOptions {
        extract_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let r = run(good_stream(), &opts).unwrap();
    assert_eq!(r.header.configuration.as_ref().unwrap().machine, "test");
    assert_eq!(r.commands.len(), 1);
    assert_eq!(r.commands[0].name, "PING");
    let kinds: Vec<&str> = r.sections.iter().map(|s| s.kind.name()).collect();
    assert_eq!(kinds, ["START", "PART", "END", "FULL", "FULL"]);
    let ram = r.ram.as_ref().unwrap();
    assert_eq!(ram.passes, 3);
    assert_eq!(ram.total, 0x3000);
    let a = &ram.blocks[0];
    assert_eq!((a.normal_pages, a.zero_pages, a.xbzrle_pages), (1, 1, 1));
    assert_eq!((a.xbzrle_bytes, a.distinct_pages), (3, 2));
    assert_eq!(ram.blocks[1].nonzero_fill_pages, 1);
    let dev = &r.devices[1];
    assert_eq!((dev.decoded_bytes, dev.body_bytes), (Some(4 + 16), 20));
    assert_eq!(r.devices[0].error, None);
    // Extraction: page 0 = 0xab with byte 1 patched by XBZRLE, page 1 hole; rom block filled.
    let a_file = std::fs::read(dir.path().join("a")).unwrap();
    assert_eq!(a_file.len(), 0x2000);
    assert_eq!(&a_file[..3], &[0xab, 0xcd, 0xab]);
    assert!(a_file[0x1000..].iter().all(|&x| x == 0));
    let b_file = std::fs::read(dir.path().join("rom@b")).unwrap();
    assert!(b_file.iter().all(|&x| x == 0x11));

    // The text summary names every part of the stream.
    let mut out = Vec::new();
    analyze(
        Box::new(Cursor::new(good_stream())),
        &AnalyzeOptions::default(),
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    for want in [
        "machine test",
        "PING (2), 4 bytes: value 1",
        "START",
        "/rom@b",
        "timer (instance 0) v2",
        "cpu_clock_offset: -1",
        "regs: [1, 2]",
        "[dev/extra v1]",
        "x: true",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
}

#[test]
fn every_truncation_is_an_error_never_a_panic() {
    let full = good_stream();
    let eof_at = full.len() - DESC.len() - 5;
    for len in 0..full.len() {
        let r = run(full[..len].to_vec(), &AnalyzeOptions::default());
        if len == eof_at {
            // Ends right after EOF: valid stream without a description.
            let r = r.unwrap();
            assert_eq!(r.totals.vmdesc_size, None);
            assert!(r.devices.iter().all(|d| d.state.is_none()));
        } else {
            assert!(r.is_err(), "prefix of {len} bytes accepted");
        }
    }
}

#[test]
fn corrupt_bytes_never_panic() {
    let full = good_stream();
    for i in 0..full.len() {
        for x in [0xff, 0x01, 0x80] {
            let mut bad = full.clone();
            bad[i] ^= x;
            let _ = run(bad, &AnalyzeOptions::default());
        }
    }
}

fn ram_stream(records: impl FnOnce(&mut B)) -> Vec<u8> {
    let mut b = B::default();
    b.header(&[]);
    b.u8(1).be32(2).str8("ram").be32(0).be32(4);
    b.be64(0x2000 | 0x4).str8("a").be64(0x2000);
    records(&mut b);
    b.be64(0x10).footer(2).u8(0);
    b.0
}

#[test]
fn ram_offset_outside_block_is_rejected() {
    let s = ram_stream(|b| {
        b.be64(0x2000 | 0x2).str8("a").u8(0);
    });
    match run(s, &AnalyzeOptions::default()) {
        Err(AnalyzeError::RamOffsetOutOfRange {
            page, used_length, ..
        }) => assert_eq!((page, used_length), (0x2000, 0x2000)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_block_and_continue_without_block_are_rejected() {
    let s = ram_stream(|b| {
        b.be64(0x2).str8("nope").u8(0);
    });
    assert!(matches!(
        run(s, &AnalyzeOptions::default()),
        Err(AnalyzeError::UnknownRamBlock { .. })
    ));
    let s = ram_stream(|b| {
        b.be64(0x2 | 0x20).u8(0);
    });
    assert!(matches!(
        run(s, &AnalyzeOptions::default()),
        Err(AnalyzeError::Stream { .. })
    ));
}

#[test]
fn hostile_block_name_is_not_extracted_outside_the_directory() {
    let mut b = B::default();
    b.header(&[]);
    b.u8(1).be32(2).str8("ram").be32(0).be32(4);
    b.be64(0x1000 | 0x4).str8("../escape").be64(0x1000);
    b.be64(0x10).footer(2).u8(0);
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("out");
    let opts = AnalyzeOptions {
        extract_dir: Some(inner.clone()),
        ..Default::default()
    };
    assert!(matches!(
        run(b.0, &opts),
        Err(AnalyzeError::UnsafeBlockName { .. })
    ));
    assert!(!dir.path().join("escape").exists());
}

#[test]
fn ignore_shared_block_list_carries_addresses() {
    let mut b = B::default();
    b.header(&["x-ignore-shared"]);
    b.u8(1).be32(2).str8("ram").be32(0).be32(4);
    b.be64(0x3000 | 0x4)
        .str8("a")
        .be64(0x2000)
        .be64(0x1_0000_0000);
    b.str8("b").be64(0x1000).be64(0xfffc_0000);
    b.be64(0x10).footer(2).u8(0);
    let r = run(b.0, &AnalyzeOptions::default()).unwrap();
    let cfg = r.header.configuration.unwrap();
    assert_eq!(cfg.capabilities, ["x-ignore-shared"]);
    let ram = r.ram.unwrap();
    assert_eq!(ram.blocks[0].mr_addr, Some(0x1_0000_0000));
    assert_eq!(ram.blocks[1].mr_addr, Some(0xfffc_0000));
}

#[test]
fn bad_description_leaves_device_undecoded_but_delimited() {
    let desc = r#"{"devices": [{"name": "dev", "instance_id": 0, "vmsd_name": "dev", "version": 1, "fields": [{"name": "a", "array_len": 18446744073709551615, "type": "uint8", "size": 1}]}]}"#;
    let mut b = B::default();
    b.header(&[]);
    b.full(3, "dev", 0, 1).bytes(&[1, 2, 3]).footer(3);
    b.u8(0).u8(6).be32(desc.len() as u32).bytes(desc.as_bytes());
    let r = run(b.0, &AnalyzeOptions::default()).unwrap();
    let d = &r.devices[0];
    assert_eq!(d.body_bytes, 3);
    assert!(d.error.is_some() && d.state.is_none());
    assert_eq!(d.raw_preview.as_deref(), Some("010203"));
}

#[test]
fn desc_option_prints_the_description_and_fails_without_one() {
    let mut out = Vec::new();
    let opts = AnalyzeOptions {
        desc: true,
        ..Default::default()
    };
    analyze(Box::new(Cursor::new(good_stream())), &opts, &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["devices"][1]["name"], "dev");
    let s = ram_stream(|_| {});
    assert!(matches!(run(s, &opts), Err(AnalyzeError::NoVmdesc)));
}

#[test]
fn not_a_stream_reports_offset_zero() {
    match run(b"GARBAGE!".to_vec(), &AnalyzeOptions::default()) {
        Err(AnalyzeError::Stream { offset, .. }) => assert_eq!(offset, 0),
        other => panic!("{other:?}"),
    }
}
