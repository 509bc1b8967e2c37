use savevm::record::{self, Configuration, Record, SectionHeader};
use savevm::Error;

use crate::{bytes_of, reader, Bytes};

/// Header + configuration of spec §2.3's capture (x-ignore-shared + validate-uuid + -uuid).
fn capture_2_3() -> Vec<u8> {
    Bytes::default()
        .raw(&[0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3, 7, 0, 0, 0, 0x0d])
        .raw(b"pc-i440fx-7.2")
        .u8(5)
        .cstr("configuration/capabilities")
        .be32(1)
        .be32(1)
        .cstr("x-ignore-shared")
        .u8(5)
        .cstr("configuration/uuid")
        .be32(1)
        .raw(&[
            0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34,
            0x56, 0x78,
        ])
        .0
}

fn capture_config() -> Configuration {
    Configuration {
        machine: "pc-i440fx-7.2".into(),
        capabilities: vec!["x-ignore-shared".into()],
        uuid: Some([
            0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34,
            0x56, 0x78,
        ]),
        target_page_bits: None,
    }
}

#[test]
fn header_and_configuration_match_capture() {
    let cfg = capture_config();
    let bytes = bytes_of(|w| {
        record::write_header(w);
        cfg.write_to(w);
    });
    assert_eq!(bytes, capture_2_3());

    // The loader stops at the next record type byte (START of "ram") without consuming it.
    let mut stream = capture_2_3();
    stream.extend_from_slice(&[
        0x01, 0, 0, 0, 2, 3, b'r', b'a', b'm', 0, 0, 0, 0, 0, 0, 0, 4,
    ]);
    let mut r = reader(&stream);
    record::read_header(&mut r).unwrap();
    assert_eq!(record::read_configuration(&mut r).unwrap(), cfg);
    assert_eq!(
        record::read_record(&mut r).unwrap(),
        Record::Section(SectionHeader::Start {
            section_id: 2,
            idstr: "ram".into(),
            instance_id: 0,
            version_id: 4
        })
    );
}

#[test]
fn default_configuration_has_no_subsections() {
    let cfg = Configuration {
        machine: "pc-i440fx-7.2".into(),
        ..Default::default()
    };
    let bytes = bytes_of(|w| cfg.write_to(w));
    assert_eq!(
        bytes,
        Bytes::default().u8(7).be32(13).raw(b"pc-i440fx-7.2").0
    );
    let mut r = reader(&bytes[1..]);
    assert_eq!(Configuration::read_from(&mut r).unwrap(), cfg);
    assert!(r.is_eof().unwrap());
}

#[test]
fn configuration_page_bits_round_trip_and_order() {
    let cfg = Configuration {
        target_page_bits: Some(12),
        ..capture_config()
    };
    let bytes = bytes_of(|w| cfg.write_to(w));
    // target-page-bits comes first.
    assert_eq!(bytes[18], 5);
    assert_eq!(&bytes[20..50], b"configuration/target-page-bits");
    let mut r = reader(&bytes);
    assert_eq!(record::read_configuration(&mut r).unwrap(), cfg);
}

#[test]
fn configuration_errors() {
    let mut r = reader(&[0x01]);
    assert!(matches!(
        record::read_configuration(&mut r),
        Err(Error::ConfigurationMissing { found: 1, .. })
    ));
    // Hostile name length.
    let mut r = reader(&Bytes::default().be32(0xffff_ffff).0);
    assert!(matches!(
        Configuration::read_from(&mut r),
        Err(Error::LengthTooLarge { .. })
    ));
    // Unknown subsection of ours is fatal.
    let b = Bytes::default()
        .be32(2)
        .raw(b"pc")
        .u8(5)
        .cstr("configuration/bogus")
        .be32(1)
        .0;
    assert!(matches!(
        Configuration::read_from(&mut reader(&b)),
        Err(Error::UnknownConfigSubsection { .. })
    ));
    // A subsection of somebody else ends the record.
    let b = Bytes::default()
        .be32(2)
        .raw(b"pc")
        .u8(5)
        .cstr("other/x")
        .be32(1)
        .0;
    let mut r = reader(&b);
    Configuration::read_from(&mut r).unwrap();
    assert_eq!(r.bytes_read(), 6);
    // Hostile capability count.
    let b = Bytes::default()
        .be32(2)
        .raw(b"pc")
        .u8(5)
        .cstr("configuration/capabilities")
        .be32(1)
        .be32(1 << 30)
        .0;
    assert!(matches!(
        Configuration::read_from(&mut reader(&b)),
        Err(Error::LengthTooLarge { .. })
    ));
    // Subsection version too new.
    let b = Bytes::default()
        .be32(2)
        .raw(b"pc")
        .u8(5)
        .cstr("configuration/uuid")
        .be32(2)
        .0;
    assert!(matches!(
        Configuration::read_from(&mut reader(&b)),
        Err(Error::VersionTooNew { .. })
    ));
}

#[test]
fn header_errors() {
    let mut r = reader(&[0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 2]);
    assert!(matches!(
        record::read_header(&mut r),
        Err(Error::ObsoleteVersion)
    ));
    let mut r = reader(&[0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 4]);
    assert!(matches!(
        record::read_header(&mut r),
        Err(Error::UnsupportedVersion { version: 4 })
    ));
    let mut r = reader(b"GET / HTTP/1.1");
    assert!(matches!(
        record::read_header(&mut r),
        Err(Error::NotAMigrationStream { magic: 0x4745_5420 })
    ));
}

#[test]
fn section_headers_golden() {
    // spec §2.10: START ram (id 2, v4) and FULL timer (id 0, v2), PART/END ram.
    let start = SectionHeader::Start {
        section_id: 2,
        idstr: "ram".into(),
        instance_id: 0,
        version_id: 4,
    };
    let full = SectionHeader::Full {
        section_id: 0,
        idstr: "timer".into(),
        instance_id: 0,
        version_id: 2,
    };
    let bytes = bytes_of(|w| {
        start.write_to(w);
        full.write_to(w);
        SectionHeader::Part { section_id: 2 }.write_to(w);
        SectionHeader::End { section_id: 2 }.write_to(w);
        record::write_footer(w, 2);
        record::write_eof(w);
    });
    let golden = Bytes::default()
        .u8(1)
        .be32(2)
        .cstr("ram")
        .be32(0)
        .be32(4)
        .u8(4)
        .be32(0)
        .cstr("timer")
        .be32(0)
        .be32(2)
        .u8(2)
        .be32(2)
        .u8(3)
        .be32(2)
        .u8(0x7e)
        .be32(2)
        .u8(0)
        .0;
    assert_eq!(bytes, golden);
    let mut r = reader(&bytes);
    assert_eq!(
        record::read_record(&mut r).unwrap(),
        Record::Section(start.clone())
    );
    assert_eq!(record::read_record(&mut r).unwrap(), Record::Section(full));
    assert_eq!(
        record::read_record(&mut r).unwrap(),
        Record::Section(SectionHeader::Part { section_id: 2 })
    );
    assert_eq!(
        record::read_record(&mut r).unwrap(),
        Record::Section(SectionHeader::End { section_id: 2 })
    );
    record::read_footer(&mut r, 2).unwrap();
    assert_eq!(record::read_record(&mut r).unwrap(), Record::Eof);
    assert_eq!(start.idstr(), Some("ram"));
    assert_eq!(start.instance_id(), Some(0));
    assert_eq!(start.version_id(), Some(4));
    assert_eq!(SectionHeader::End { section_id: 9 }.section_id(), 9);
}

#[test]
fn footer_errors() {
    let mut r = reader(&[0x7f, 0, 0, 0, 2]);
    assert!(matches!(
        record::read_footer(&mut r, 2),
        Err(Error::MissingFooter {
            section_id: 2,
            found: 0x7f,
            offset: 0
        })
    ));
    let mut r = reader(&[0x7e, 0, 0, 0, 3]);
    assert!(matches!(
        record::read_footer(&mut r, 2),
        Err(Error::MismatchedFooter {
            expected: 2,
            found: 3,
            offset: 1
        })
    ));
    let mut r = reader(&[0x7e, 0]);
    assert!(matches!(
        record::read_footer(&mut r, 2),
        Err(Error::UnexpectedEof { .. })
    ));
}

#[test]
fn record_errors() {
    let mut r = reader(&Bytes::default().u8(4).be32(0).u8(0).be32(0).be32(1).0);
    assert!(matches!(
        record::read_record(&mut r),
        Err(Error::EmptyIdstr { offset: 5 })
    ));
    for byte in [0x05u8, 0x06, 0x07, 0x09, 0x7e, 0xff] {
        let mut r = reader(&[0, byte]);
        assert_eq!(record::read_record(&mut r).unwrap(), Record::Eof);
        match record::read_record(&mut r) {
            Err(Error::UnknownRecordType { byte: b, offset: 1 }) => assert_eq!(b, byte),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn commands() {
    let bytes = bytes_of(|w| {
        record::write_command(w, record::MIG_CMD_OPEN_RETURN_PATH, &[]);
        record::write_command(w, record::MIG_CMD_PING, &1u32.to_be_bytes());
        record::write_command(w, record::MIG_CMD_PACKAGED, &3u32.to_be_bytes());
        w.put_buffer(&[0, 0xaa, 0xbb]);
    });
    assert_eq!(&bytes[..5], &[8, 0, 1, 0, 0]);
    assert_eq!(&bytes[5..14], &[8, 0, 2, 0, 4, 0, 0, 0, 1]);
    let mut r = reader(&bytes);
    assert_eq!(
        record::read_record(&mut r).unwrap(),
        Record::Command {
            cmd: 1,
            data: vec![]
        }
    );
    assert_eq!(
        record::read_record(&mut r).unwrap(),
        Record::Command {
            cmd: 2,
            data: vec![0, 0, 0, 1]
        }
    );
    let packaged = record::read_record(&mut r).unwrap();
    assert_eq!(packaged.packaged_len(), Some(3));
    // The nested stream is left for the caller.
    assert_eq!(record::read_record(&mut r).unwrap(), Record::Eof);

    // Invalid numbers and lengths.
    let cases: &[(&[u8], crate::ErrCheck)] = &[
        (&[8, 0, 0, 0, 0], |e| {
            matches!(e, Error::InvalidCommand { cmd: 0, offset: 1 })
        }),
        (&[8, 0, 11, 0, 0], |e| {
            matches!(e, Error::InvalidCommand { cmd: 11, .. })
        }),
        (&[8, 0, 2, 0, 3, 1, 2, 3], |e| {
            matches!(e, Error::CommandLength { cmd: 2, len: 3, .. })
        }),
        (&[8, 0, 1, 0, 1, 0], |e| {
            matches!(e, Error::CommandLength { cmd: 1, .. })
        }),
        (&[8, 0, 3, 0, 8], |e| {
            matches!(e, Error::CommandLength { cmd: 3, len: 8, .. })
        }),
        (&[8, 0, 6, 0xff, 0xff, 1], |e| {
            matches!(e, Error::UnexpectedEof { .. })
        }),
    ];
    for (bytes, check) in cases {
        let err = record::read_record(&mut reader(bytes)).unwrap_err();
        assert!(check(&err), "{bytes:?}: {err:?}");
    }
    // POSTCOPY_ADVISE accepts 0 and 16.
    let advise = Bytes::default()
        .u8(8)
        .be16(3)
        .be16(16)
        .be64(4096)
        .be64(4096)
        .0;
    assert!(matches!(
        record::read_record(&mut reader(&advise)).unwrap(),
        Record::Command { cmd: 3, .. }
    ));
}

#[test]
fn vmdesc_trailer() {
    let json = br#"{"page_size": 4096, "devices": []}"#;
    let bytes = bytes_of(|w| {
        record::write_eof(w);
        record::write_vmdesc(w, json);
    });
    assert_eq!(bytes[1], 6);
    assert_eq!(&bytes[2..6], &(json.len() as u32).to_be_bytes());
    let mut r = reader(&bytes);
    assert_eq!(record::read_record(&mut r).unwrap(), Record::Eof);
    assert_eq!(
        record::read_vmdesc(&mut r).unwrap().as_deref(),
        Some(&json[..])
    );
    assert_eq!(
        record::read_vmdesc(&mut r).unwrap(),
        None,
        "clean end of stream"
    );

    // Another byte: None and not consumed.
    let mut r = reader(&[0x42]);
    assert_eq!(record::read_vmdesc(&mut r).unwrap(), None);
    assert_eq!(r.get_u8().unwrap(), 0x42);

    // Hostile length: rejected before allocating.
    let mut r = reader(&Bytes::default().u8(6).be32(0xffff_fff0).0);
    assert!(matches!(
        record::read_vmdesc(&mut r),
        Err(Error::LengthTooLarge { .. })
    ));
    // Large but allowed length with little data: EOF, not a 60 MiB allocation up front.
    let mut r = reader(&Bytes::default().u8(6).be32(60 << 20).raw(b"{}").0);
    assert!(matches!(
        record::read_vmdesc(&mut r),
        Err(Error::UnexpectedEof { offset: 7 })
    ));
}
