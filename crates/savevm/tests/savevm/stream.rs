//! Whole-stream tests: a small valid stream parses, every truncation of it fails with a typed
//! error, and corrupted bytes never panic.

use std::sync::Arc;

use savevm::block::{self, BlockRecord};
use savevm::qemu_file::{QemuFileReader, QemuFileWriter};
use savevm::ram::{
    self, xbzrle, RamBlockInfo, RamDecoder, RamEncoder, RamRecord, TARGET_PAGE_SIZE,
};
use savevm::record::{self, Configuration, Record, SectionHeader};
use savevm::vmdesc::VmDescBuilder;
use savevm::vmstate::{self, FieldKind as K, Value, VmStateDescription, VmStateValue};
use savevm::Error;

use crate::{bytes_of, reader};

fn device() -> VmStateDescription {
    let inner = Arc::new(VmStateDescription::new("dev/inner", 1).field("a", K::U32));
    VmStateDescription::new("dev", 2)
        .field("n", K::U8)
        .field(
            "list",
            K::VarArray {
                elem: Box::new(K::U16),
                len_field: "n".into(),
            },
        )
        .field("s", K::Struct(inner))
        .subsection(VmStateDescription::new("dev/extra", 1).field("x", K::I64))
}

fn device_value() -> VmStateValue {
    VmStateValue::new()
        .with("n", Value::Uint(2))
        .with("list", Value::List(vec![Value::Uint(1), Value::Uint(2)]))
        .with(
            "s",
            Value::Struct(VmStateValue::new().with("a", Value::Uint(3))),
        )
        .with_subsection("dev/extra", VmStateValue::new().with("x", Value::Int(-5)))
}

/// Writes a small stream exercising every record kind; returns the offset of the EOF byte.
fn write_stream(w: &mut QemuFileWriter) -> u64 {
    record::write_header(w);
    Configuration {
        machine: "pc-i440fx-7.2".into(),
        capabilities: vec!["x-ignore-shared".into()],
        ..Default::default()
    }
    .write_to(w);
    record::write_command(w, record::MIG_CMD_OPEN_RETURN_PATH, &[]);
    record::write_command(w, record::MIG_CMD_PING, &1u32.to_be_bytes());

    SectionHeader::Start {
        section_id: 1,
        idstr: "block".into(),
        instance_id: 0,
        version_id: 1,
    }
    .write_to(w);
    block::write_eos(w);
    record::write_footer(w, 1);

    SectionHeader::Start {
        section_id: 2,
        idstr: "ram".into(),
        instance_id: 0,
        version_id: 4,
    }
    .write_to(w);
    ram::write_mem_size(
        w,
        &[RamBlockInfo {
            idstr: "pc.ram".into(),
            used_length: 0x10000,
        }],
    );
    ram::put_eos(w);
    record::write_footer(w, 2);

    SectionHeader::Part { section_id: 1 }.write_to(w);
    block::write_progress(w, 50);
    block::write_zero(w, 0, "drv0");
    block::write_eos(w);
    record::write_footer(w, 1);

    SectionHeader::Part { section_id: 2 }.write_to(w);
    let mut enc = RamEncoder::new();
    let old = vec![0u8; TARGET_PAGE_SIZE];
    let mut new = old.clone();
    new[100] = 7;
    enc.put_page(w, 0, "pc.ram", 0, &new);
    enc.put_zero(w, 0, "pc.ram", 0x1000);
    let mut x = vec![0u8; TARGET_PAGE_SIZE];
    new[200] = 9;
    let n = xbzrle::encode(&old, &new, &mut x).unwrap();
    enc.put_xbzrle(w, 0, "pc.ram", 0x2000, &x[..n]);
    ram::put_eos(w);
    record::write_footer(w, 2);

    SectionHeader::End { section_id: 2 }.write_to(w);
    ram::put_eos(w);
    record::write_footer(w, 2);

    SectionHeader::Full {
        section_id: 7,
        idstr: "dev".into(),
        instance_id: 0,
        version_id: 2,
    }
    .write_to(w);
    let json = vmstate::save(&device(), &device_value(), w).unwrap();
    record::write_footer(w, 7);

    let eof = w.total_transferred();
    record::write_eof(w);
    let mut desc = VmDescBuilder::new(4096);
    desc.add_device("dev", 0, json);
    record::write_vmdesc(w, desc.to_qemu_json().as_bytes());
    eof
}

#[derive(Debug, Default, PartialEq)]
struct Summary {
    sections: usize,
    commands: usize,
    pages: usize,
    zeros: usize,
    xbzrle: usize,
    block_records: usize,
    devices: Vec<VmStateValue>,
    vmdesc: Option<Vec<u8>>,
}

/// A receiver in the shape of spec Appendix A.
fn parse(r: &mut QemuFileReader) -> Result<Summary, Error> {
    let mut s = Summary::default();
    record::read_header(r)?;
    let cfg = record::read_configuration(r)?;
    assert_eq!(cfg.machine, "pc-i440fx-7.2");
    let mut ids: Vec<(u32, String)> = Vec::new();
    let mut dec = RamDecoder::new();
    let mut page = vec![0u8; TARGET_PAGE_SIZE];
    loop {
        let rec = record::read_record(r)?;
        let (id, name, version) = match rec {
            Record::Eof => break,
            Record::Command { .. } => {
                s.commands += 1;
                continue;
            }
            Record::Section(SectionHeader::Start {
                section_id,
                idstr,
                version_id,
                ..
            })
            | Record::Section(SectionHeader::Full {
                section_id,
                idstr,
                version_id,
                ..
            }) => {
                ids.push((section_id, idstr.clone()));
                (section_id, idstr, version_id)
            }
            Record::Section(h) => {
                let id = h.section_id();
                let name = ids
                    .iter()
                    .find(|(i, _)| *i == id)
                    .map(|(_, n)| n.clone())
                    .expect("known id");
                (id, name, 0)
            }
        };
        s.sections += 1;
        match name.as_str() {
            "ram" => loop {
                match dec.read_record(r)? {
                    RamRecord::Eos => break,
                    RamRecord::Page { .. } => {
                        r.get_buffer(&mut page)?;
                        s.pages += 1;
                    }
                    RamRecord::Zero { .. } => s.zeros += 1,
                    RamRecord::Xbzrle { len, .. } => {
                        let mut e = vec![0u8; usize::from(len)];
                        r.get_buffer(&mut e)?;
                        xbzrle::decode(&e, &mut page)?;
                        s.xbzrle += 1;
                    }
                    RamRecord::MemSize { .. } | RamRecord::Hook => {}
                }
            },
            "block" => loop {
                s.block_records += 1;
                if block::read_record(r)? == BlockRecord::Eos {
                    break;
                }
            },
            _ => s.devices.push(vmstate::load(&device(), version, r)?),
        }
        record::read_footer(r, id)?;
    }
    s.vmdesc = record::read_vmdesc(r)?;
    Ok(s)
}

#[test]
fn full_stream_parses() {
    let mut eof = 0;
    let bytes = bytes_of(|w| eof = write_stream(w));
    let s = parse(&mut reader(&bytes)).unwrap();
    assert_eq!(
        (
            s.sections,
            s.commands,
            s.pages,
            s.zeros,
            s.xbzrle,
            s.block_records
        ),
        (6, 2, 1, 1, 1, 4)
    );
    assert_eq!(s.devices, vec![device_value()]);
    let json = String::from_utf8(s.vmdesc.unwrap()).unwrap();
    assert!(json.starts_with(r#"{"page_size": 4096, "devices": [{"name": "dev", "instance_id": 0, "vmsd_name": "dev", "version": 2, "fields": [{"name": "n", "type": "uint8", "size": 1}, {"name": "list", "array_len": 2, "type": "uint16", "size": 2}"#), "{json}");
    assert_eq!(bytes[eof as usize], 0);
}

#[test]
fn every_truncation_is_a_typed_error() {
    let mut eof = 0;
    let bytes = bytes_of(|w| eof = write_stream(w));
    let eof = eof as usize;
    for len in 0..bytes.len() {
        let res = parse(&mut reader(&bytes[..len]));
        if len == eof + 1 {
            // Ends right after EOF: a stream without the (optional) trailer.
            assert_eq!(res.unwrap().vmdesc, None);
            continue;
        }
        match res {
            Err(Error::UnexpectedEof { offset }) => {
                assert!(offset <= len as u64, "offset {offset} > {len}")
            }
            // A cut inside a subsection header is not recognised as a subsection; the next
            // check then sees the 0x05 byte.
            Err(Error::MissingFooter { found: 5, .. })
            | Err(Error::UnknownRecordType { byte: 5, .. }) => {}
            other => panic!("prefix of {len} bytes: unexpected {other:?}"),
        }
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    let bytes = bytes_of(|w| {
        write_stream(w);
    });
    for i in 0..bytes.len() {
        for flip in [0xffu8, 0x01, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= flip;
            // Any result is fine as long as there is no panic or runaway allocation.
            let _ = parse_lenient(&mut reader(&b));
        }
    }
}

/// Like `parse` but treats unknown section ids and machine names as errors instead of
/// asserting (the corrupted-stream test must not trip test assertions).
fn parse_lenient(r: &mut QemuFileReader) -> Result<(), Error> {
    record::read_header(r)?;
    record::read_configuration(r)?;
    let mut ids: Vec<(u32, String)> = Vec::new();
    let mut dec = RamDecoder::new();
    let mut page = vec![0u8; TARGET_PAGE_SIZE];
    for _ in 0..64 {
        let (id, name, version) = match record::read_record(r)? {
            Record::Eof => {
                record::read_vmdesc(r)?;
                return Ok(());
            }
            Record::Command { .. } => continue,
            Record::Section(h) => {
                let id = h.section_id();
                if let Some(n) = h.idstr() {
                    ids.push((id, n.to_owned()));
                }
                let Some(name) = ids.iter().find(|(i, _)| *i == id).map(|(_, n)| n.clone()) else {
                    return Err(Error::UnknownRecordType {
                        byte: 0,
                        offset: r.bytes_read(),
                    });
                };
                (id, name, h.version_id().unwrap_or(2))
            }
        };
        match name.as_str() {
            "ram" => loop {
                match dec.read_record(r)? {
                    RamRecord::Eos => break,
                    RamRecord::Page { .. } => r.get_buffer(&mut page)?,
                    RamRecord::Xbzrle { len, .. } => {
                        let mut e = vec![0u8; usize::from(len)];
                        r.get_buffer(&mut e)?;
                        xbzrle::decode(&e, &mut page)?;
                    }
                    _ => {}
                }
            },
            "block" => while block::read_record(r)? != BlockRecord::Eos {},
            _ => {
                vmstate::load(&device(), version, r)?;
            }
        }
        record::read_footer(r, id)?;
    }
    Ok(())
}
