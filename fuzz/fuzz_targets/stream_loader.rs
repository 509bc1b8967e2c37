//! Feeds arbitrary bytes through the savevm loader: header, configuration, records, RAM and
//! block section bodies, VMState bodies of a sample description, footers and the trailer.
//! Any panic or unbounded allocation is a bug; errors are expected.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use savevm::qemu_file::{memory_reader, QemuFileReader};
use savevm::ram::{xbzrle, RamDecoder, RamRecord, TARGET_PAGE_SIZE};
use savevm::record::{self, Record, SectionHeader};
use savevm::vmstate::{self, FieldKind, VmStateDescription};
use savevm::{block, Error};

fn sample_description() -> VmStateDescription {
    let inner = Arc::new(
        VmStateDescription::new("dev/inner", 1)
            .field("a", FieldKind::U16)
            .field("b", FieldKind::Bool),
    );
    VmStateDescription::new("dev", 3)
        .minimum_version(1)
        .field("count", FieldKind::U32)
        .field(
            "regs",
            FieldKind::VarArray {
                elem: Box::new(FieldKind::U32),
                len_field: "count".into(),
            },
        )
        .field("len", FieldKind::U8)
        .field(
            "data",
            FieldKind::VBuffer {
                len_field: "len".into(),
            },
        )
        .field("pad", FieldKind::Unused(3))
        .field_since("timer", FieldKind::Timer, 2)
        .field("inner", FieldKind::Struct(inner.clone()))
        .field(
            "arr",
            FieldKind::Array {
                elem: Box::new(FieldKind::I16),
                len: 4,
            },
        )
        .field("queue", FieldKind::QTailQ(inner))
        .field_since("bits", FieldKind::Bitmap(100), 3)
        .subsection(VmStateDescription::new("dev/extra", 1).field("x", FieldKind::I64))
}

#[derive(Clone, Copy)]
enum Kind {
    Ram,
    Block,
    Device,
}

fn ram_body(r: &mut QemuFileReader, dec: &mut RamDecoder, page: &mut [u8]) -> Result<(), Error> {
    for _ in 0..4096 {
        match dec.read_record(r)? {
            RamRecord::Eos => return Ok(()),
            RamRecord::Page { .. } => r.get_buffer(page)?,
            RamRecord::Xbzrle { len, .. } => {
                let mut enc = vec![0u8; usize::from(len)];
                r.get_buffer(&mut enc)?;
                xbzrle::decode(&enc, page)?;
            }
            RamRecord::MemSize { .. } | RamRecord::Zero { .. } | RamRecord::Hook => {}
        }
    }
    Ok(())
}

fn block_body(r: &mut QemuFileReader) -> Result<(), Error> {
    for _ in 0..64 {
        match block::read_record(r)? {
            block::BlockRecord::Eos => return Ok(()),
            block::BlockRecord::Data { .. } => r.skip(block::BLK_MIG_CHUNK_SIZE as u64)?,
            _ => {}
        }
    }
    Ok(())
}

fn run(data: &[u8]) -> Result<(), Error> {
    let desc = sample_description();
    let mut r = memory_reader(data.to_vec());
    record::read_header(&mut r)?;
    if r.peek_u8()? == record::QEMU_VM_CONFIGURATION {
        record::read_configuration(&mut r)?;
    }
    let mut sections: Vec<(u32, Kind)> = Vec::new();
    let mut dec = RamDecoder::new();
    let mut page = vec![0u8; TARGET_PAGE_SIZE];
    for _ in 0..256 {
        let rec = record::read_record(&mut r)?;
        let (id, kind, version) = match rec {
            Record::Eof => {
                let _ = record::read_vmdesc(&mut r)?;
                return Ok(());
            }
            Record::Command { .. } => {
                if let Some(n) = rec.packaged_len() {
                    r.skip(u64::from(n))?;
                }
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
                let kind = match idstr.as_str() {
                    "ram" => Kind::Ram,
                    "block" => Kind::Block,
                    _ => Kind::Device,
                };
                sections.push((section_id, kind));
                (section_id, kind, version_id)
            }
            Record::Section(h) => {
                let id = h.section_id();
                let kind = sections
                    .iter()
                    .find(|(s, _)| *s == id)
                    .map(|(_, k)| *k)
                    .unwrap_or(Kind::Device);
                (id, kind, desc.version_id)
            }
        };
        match kind {
            Kind::Ram => ram_body(&mut r, &mut dec, &mut page)?,
            Kind::Block => block_body(&mut r)?,
            Kind::Device => {
                vmstate::load(&desc, version, &mut r)?;
            }
        }
        record::read_footer(&mut r, id)?;
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
