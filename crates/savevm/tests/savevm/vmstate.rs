use std::sync::Arc;

use savevm::vmdesc::{self, VmDescBuilder};
use savevm::vmstate::{self, FieldKind as K, Value, VmState, VmStateDescription, VmStateValue};
use savevm::Error;

use crate::{bytes_of, reader, Bytes};

fn inner() -> Arc<VmStateDescription> {
    Arc::new(
        VmStateDescription::new("dev/inner", 1)
            .field("a", K::U16)
            .field("b", K::Bool),
    )
}

fn desc() -> VmStateDescription {
    VmStateDescription::new("dev", 3)
        .minimum_version(1)
        .field("u8", K::U8)
        .field("i8", K::I8)
        .field("u16", K::U16)
        .field("i16", K::I16)
        .field("u32", K::U32)
        .field("i32", K::I32)
        .field("u64", K::U64)
        .field("i64", K::I64)
        .field("le", K::I32Le)
        .field("eq", K::U32Equal)
        .field("f", K::Float64)
        .field("t", K::Timer)
        .field("buf", K::Buffer(3))
        .field("unused", K::Unused(2))
        .field("count", K::U32)
        .field(
            "regs",
            K::VarArray {
                elem: Box::new(K::U64),
                len_field: "count".into(),
            },
        )
        .field("vlen", K::U8)
        .field(
            "vbuf",
            K::VBuffer {
                len_field: "vlen".into(),
            },
        )
        .field("bits", K::Bitmap(70))
        .field(
            "arr",
            K::Array {
                elem: Box::new(K::I16),
                len: 3,
            },
        )
        .field("inner", K::Struct(inner()))
        .field(
            "inners",
            K::Array {
                elem: Box::new(K::Struct(inner())),
                len: 2,
            },
        )
        .field("q", K::QTailQ(inner()))
        .field_since("new_in_3", K::U32, 3)
        .subsection(VmStateDescription::new("dev/sub", 2).field("x", K::I64))
        .subsection(VmStateDescription::new("dev/oth2", 1).field("y", K::Bool))
}

fn inner_value(a: u64, b: bool) -> Value {
    Value::Struct(
        VmStateValue::new()
            .with("a", Value::Uint(a))
            .with("b", Value::Bool(b)),
    )
}

fn value() -> VmStateValue {
    VmStateValue::new()
        .with("u8", Value::Uint(0xfe))
        .with("i8", Value::Int(-2))
        .with("u16", Value::Uint(0xbeef))
        .with("i16", Value::Int(-300))
        .with("u32", Value::Uint(0xdead_beef))
        .with("i32", Value::Int(-70000))
        .with("u64", Value::Uint(u64::MAX - 1))
        .with("i64", Value::Int(i64::MIN))
        .with("le", Value::Int(5))
        .with("eq", Value::Uint(16))
        .with("f", Value::Uint(1.5f64.to_bits()))
        .with("t", Value::Uint(u64::MAX))
        .with("buf", Value::Bytes(vec![1, 2, 3]))
        .with("count", Value::Uint(2))
        .with("regs", Value::List(vec![Value::Uint(10), Value::Uint(20)]))
        .with("vlen", Value::Uint(4))
        .with("vbuf", Value::Bytes(vec![9, 9, 9, 9]))
        .with(
            "bits",
            Value::List(vec![Value::Uint(0x8000_0000_0000_0001), Value::Uint(0x3f)]),
        )
        .with(
            "arr",
            Value::List(vec![Value::Int(-1), Value::Int(0), Value::Int(1)]),
        )
        .with("inner", inner_value(7, true))
        .with(
            "inners",
            Value::List(vec![inner_value(1, false), inner_value(2, true)]),
        )
        .with("q", Value::List(vec![inner_value(3, true)]))
        .with("new_in_3", Value::Uint(33))
        .with_subsection("dev/oth2", VmStateValue::new().with("y", Value::Bool(true)))
}

#[test]
fn save_load_save_is_identical() {
    let d = desc();
    let v = value();
    let mut json = None;
    let bytes = bytes_of(|w| json = Some(vmstate::save(&d, &v, w).unwrap()));
    let loaded = vmstate::load(&d, 3, &mut reader(&bytes)).unwrap();
    assert_eq!(loaded, v);
    let again = bytes_of(|w| {
        vmstate::save(&d, &loaded, w).unwrap();
    });
    assert_eq!(again, bytes);

    // Wire layout spot checks.
    assert_eq!(&bytes[..4], &[0xfe, 0xfe, 0xbe, 0xef]);
    let json = json.unwrap();
    assert_eq!(json["vmsd_name"], "dev");
    assert_eq!(json["version"], 3);
    let fields = json["fields"].as_array().unwrap();
    let sizes: u64 = fields
        .iter()
        .map(|f| {
            f["size"].as_u64().unwrap() * f.get("array_len").and_then(|n| n.as_u64()).unwrap_or(1)
        })
        .sum();
    let sub_bytes = 1 + 1 + 8 + 4 + 1; // 0x05, len, "dev/oth2", be32, bool
    assert_eq!(
        sizes as usize,
        bytes.len() - sub_bytes,
        "field sizes add up to the body"
    );
    assert_eq!(json["subsections"][0]["vmsd_name"], "dev/oth2");
}

#[test]
fn version_range_is_enforced() {
    let d = desc();
    let bytes = bytes_of(|w| {
        vmstate::save(&d, &value(), w).unwrap();
    });
    match vmstate::load(&d, 4, &mut reader(&bytes)) {
        Err(Error::VersionTooNew {
            name,
            version: 4,
            max: 3,
        }) => assert_eq!(name, "dev"),
        other => panic!("unexpected {other:?}"),
    }
    match vmstate::load(&d, 0, &mut reader(&bytes)) {
        Err(Error::VersionTooOld {
            version: 0, min: 1, ..
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
    // A subsection carrying a newer version than ours.
    let sub = VmStateDescription::new("p", 1)
        .subsection(VmStateDescription::new("p/s", 1).field("x", K::U8));
    let b = Bytes::default().u8(5).cstr("p/s").be32(2).u8(1).0;
    assert!(matches!(
        vmstate::load(&sub, 1, &mut reader(&b)),
        Err(Error::VersionTooNew { .. })
    ));
}

#[test]
fn fields_of_later_versions_are_skipped() {
    // An old (v2) sender does not know new_in_3.
    let mut old = desc();
    old.version_id = 2;
    let mut v = value();
    v.fields.retain(|(n, _)| n != "new_in_3");
    let bytes = bytes_of(|w| {
        let j = vmstate::save(&old, &v, w).unwrap();
        assert_eq!(j["version"], 2);
    });
    let loaded = vmstate::load(&desc(), 2, &mut reader(&bytes)).unwrap();
    assert!(loaded.get("new_in_3").is_none());
    assert_eq!(loaded, v);
    assert!(matches!(
        loaded.get_u32("new_in_3"),
        Err(Error::FieldMissing { .. })
    ));
}

#[test]
fn subsections_present_absent_unknown_and_foreign() {
    let d = desc();
    // Absent: no 0x05 at all.
    let mut v = value();
    v.subsections.clear();
    let bytes = bytes_of(|w| {
        let j = vmstate::save(&d, &v, w).unwrap();
        assert!(j.get("subsections").is_none());
    });
    assert_eq!(vmstate::load(&d, 3, &mut reader(&bytes)).unwrap(), v);

    // Both, written in declaration order regardless of value order.
    let mut v2 = value();
    v2.set_subsection("dev/sub", VmStateValue::new().with("x", Value::Int(-9)));
    let bytes2 = bytes_of(|w| {
        vmstate::save(&d, &v2, w).unwrap();
    });
    let loaded = vmstate::load(&d, 3, &mut reader(&bytes2)).unwrap();
    let names: Vec<&str> = loaded.subsections.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["dev/sub", "dev/oth2"]);

    // QEMU's prefix rule: inside "dev/sub", a following "dev/sub..." subsection counts as
    // addressed to "dev/sub" and, being unknown there, is fatal.
    let clash = VmStateDescription::new("p", 1)
        .subsection(VmStateDescription::new("p/a", 1))
        .subsection(VmStateDescription::new("p/ab", 1));
    let v = VmStateValue::new()
        .with_subsection("p/a", VmStateValue::new())
        .with_subsection("p/ab", VmStateValue::new());
    let b = bytes_of(|w| {
        vmstate::save(&clash, &v, w).unwrap();
    });
    assert!(matches!(
        vmstate::load(&clash, 1, &mut reader(&b)),
        Err(Error::UnknownSubsection { .. })
    ));
    assert_eq!(
        loaded.subsection("dev/sub").unwrap().get_i64("x").unwrap(),
        -9
    );

    // Unknown subsection addressed to us: fatal.
    let mut b = bytes.clone();
    b.extend(Bytes::default().u8(5).cstr("dev/nope").be32(1).0);
    match vmstate::load(&d, 3, &mut reader(&b)) {
        Err(Error::UnknownSubsection { parent, name }) => {
            assert_eq!((parent.as_str(), name.as_str()), ("dev", "dev/nope"))
        }
        other => panic!("unexpected {other:?}"),
    }
    // A subsection of somebody else (or a short name) ends the body without being consumed.
    for foreign in ["other/x", "de"] {
        let mut b = bytes.clone();
        b.extend(Bytes::default().u8(5).cstr(foreign).be32(1).0);
        let mut r = reader(&b);
        vmstate::load(&d, 3, &mut r).unwrap();
        assert_eq!(r.bytes_read(), bytes.len() as u64);
    }
    // Saving a subsection the description does not declare is refused.
    let bad = value().with_subsection("dev/zzz", VmStateValue::new());
    let mut w = savevm::qemu_file::QemuFileWriter::new(Box::new(std::io::sink()));
    assert!(matches!(
        vmstate::save(&d, &bad, &mut w),
        Err(Error::UnknownSubsection { .. })
    ));
}

#[test]
fn checked_load_compares_with_local_state() {
    let d = desc();
    let bytes = bytes_of(|w| {
        vmstate::save(&d, &value(), w).unwrap();
    });
    let local = value();
    vmstate::load_checked(&d, 3, &mut reader(&bytes), &local).unwrap();
    let local_eq = value().with("eq", Value::Uint(17));
    assert!(matches!(
        vmstate::load_checked(&d, 3, &mut reader(&bytes), &local_eq),
        Err(Error::CheckFailed {
            received: 16,
            local: 17,
            ..
        })
    ));
    let local_le = value().with("le", Value::Int(4));
    assert!(matches!(
        vmstate::load_checked(&d, 3, &mut reader(&bytes), &local_le),
        Err(Error::CheckFailed {
            received: 5,
            local: 4,
            ..
        })
    ));
    // Negative values fail the le check even when the local value is larger.
    let neg = value().with("le", Value::Int(-1));
    let nb = bytes_of(|w| {
        vmstate::save(&d, &neg, w).unwrap();
    });
    assert!(vmstate::load_checked(&d, 3, &mut reader(&nb), &value()).is_err());
}

#[test]
fn save_rejects_values_that_do_not_fit() {
    let d = desc();
    let cases: Vec<(VmStateValue, crate::ErrCheck)> = vec![
        (value().with("u8", Value::Uint(256)), |e| {
            matches!(e, Error::ValueOutOfRange { value: 256, .. })
        }),
        (value().with("i8", Value::Int(-129)), |e| {
            matches!(e, Error::ValueOutOfRange { .. })
        }),
        (value().with("buf", Value::Bytes(vec![1])), |e| {
            matches!(
                e,
                Error::SizeMismatch {
                    expected: 3,
                    actual: 1,
                    ..
                }
            )
        }),
        (value().with("count", Value::Uint(3)), |e| {
            matches!(
                e,
                Error::SizeMismatch {
                    expected: 3,
                    actual: 2,
                    ..
                }
            )
        }),
        (value().with("arr", Value::List(vec![])), |e| {
            matches!(e, Error::SizeMismatch { .. })
        }),
        (value().with("u16", Value::Bool(true)), |e| {
            matches!(e, Error::FieldType { .. })
        }),
        (
            value().with("bits", Value::List(vec![Value::Uint(1)])),
            |e| matches!(e, Error::SizeMismatch { .. }),
        ),
        (
            {
                let mut v = value();
                v.fields.retain(|(n, _)| n != "u64");
                v
            },
            |e| matches!(e, Error::FieldMissing { .. }),
        ),
    ];
    for (v, check) in cases {
        let mut w = savevm::qemu_file::QemuFileWriter::new(Box::new(std::io::sink()));
        let err = vmstate::save(&d, &v, &mut w).unwrap_err();
        assert!(check(&err), "{err:?}");
    }
}

#[test]
fn hostile_lengths_are_capped() {
    let d = VmStateDescription::new("h", 1).field("n", K::U32).field(
        "a",
        K::VarArray {
            elem: Box::new(K::Unused(0)),
            len_field: "n".into(),
        },
    );
    // Unused elements are not valid array elements: the description is rejected.
    let b = Bytes::default().be32(3).0;
    assert!(matches!(
        vmstate::load(&d, 1, &mut reader(&b)),
        Err(Error::InvalidDescription { .. })
    ));

    let d = VmStateDescription::new("h", 1).field("n", K::U32).field(
        "a",
        K::VarArray {
            elem: Box::new(K::U8),
            len_field: "n".into(),
        },
    );
    let b = Bytes::default().be32(u32::MAX).u8(1).0;
    assert!(matches!(
        vmstate::load(&d, 1, &mut reader(&b)),
        Err(Error::LengthTooLarge { .. })
    ));
    let b = Bytes::default().be32(1 << 20).u8(1).0;
    assert!(matches!(
        vmstate::load(&d, 1, &mut reader(&b)),
        Err(Error::UnexpectedEof { .. })
    ));

    let d = VmStateDescription::new("h", 1).field("n", K::U64).field(
        "b",
        K::VBuffer {
            len_field: "n".into(),
        },
    );
    let b = Bytes::default().be64(u64::MAX).0;
    assert!(matches!(
        vmstate::load(&d, 1, &mut reader(&b)),
        Err(Error::LengthTooLarge { .. })
    ));
    let b = Bytes::default().be64(32 << 20).raw(&[1, 2]).0;
    assert!(matches!(
        vmstate::load(&d, 1, &mut reader(&b)),
        Err(Error::UnexpectedEof { .. })
    ));

    // A queue with a bad marker.
    let d = VmStateDescription::new("q", 1).field("q", K::QTailQ(inner()));
    let b = Bytes::default().u8(1).be16(5).u8(1).u8(7).0;
    assert!(matches!(
        vmstate::load(&d, 1, &mut reader(&b)),
        Err(Error::BadListMarker {
            marker: 7,
            offset: 4,
            ..
        })
    ));

    // A length field that is not before the array.
    let d = VmStateDescription::new("h", 1)
        .field(
            "a",
            K::VarArray {
                elem: Box::new(K::U8),
                len_field: "n".into(),
            },
        )
        .field("n", K::U32);
    assert!(matches!(
        vmstate::load(&d, 1, &mut reader(&[0; 8])),
        Err(Error::InvalidDescription { .. })
    ));
}

#[test]
fn json_description_matches_qemu_schema() {
    let plain = Arc::new(VmStateDescription::new("ctl/in", 1).field("a", K::U16));
    let with_sub = Arc::new(
        VmStateDescription::new("ctl/in2", 1)
            .field("b", K::U8)
            .subsection(VmStateDescription::new("ctl/in2/s", 1).field("c", K::U8)),
    );
    let d = VmStateDescription::new("ctl", 2)
        .field("r", K::U8)
        .field("r", K::U8)
        .field(
            "regs",
            K::Array {
                elem: Box::new(K::U32),
                len: 4,
            },
        )
        .field("st", K::Struct(plain))
        .field(
            "sts",
            K::Array {
                elem: Box::new(K::Struct(with_sub)),
                len: 2,
            },
        )
        .field("skip", K::Unused(2))
        .field_since("future", K::U8, 3)
        .subsection(VmStateDescription::new("ctl/sub", 1).field("z", K::Bool));
    let mut v = VmStateValue::new()
        .with("r", Value::Uint(1))
        .with("regs", Value::List(vec![Value::Uint(0); 4]))
        .with(
            "st",
            Value::Struct(VmStateValue::new().with("a", Value::Uint(2))),
        )
        .with(
            "sts",
            Value::List(vec![
                Value::Struct(
                    VmStateValue::new()
                        .with("b", Value::Uint(3))
                        .with_subsection(
                            "ctl/in2/s",
                            VmStateValue::new().with("c", Value::Uint(4)),
                        ),
                ),
                Value::Struct(VmStateValue::new().with("b", Value::Uint(5))),
            ]),
        )
        .with_subsection("ctl/sub", VmStateValue::new().with("z", Value::Bool(true)));
    v.push("r", Value::Uint(2));
    let mut vmsd_json = None;
    let bytes = bytes_of(|w| vmsd_json = Some(vmstate::save(&d, &v, w).unwrap()));
    let mut b = VmDescBuilder::new(4096);
    b.add_device("ctl", 0, vmsd_json.unwrap());
    let expected = concat!(
        r#"{"page_size": 4096, "devices": [{"name": "ctl", "instance_id": 0, "vmsd_name": "ctl", "version": 2, "fields": ["#,
        r#"{"name": "r[0]", "type": "uint8", "size": 1}, "#,
        r#"{"name": "r[1]", "type": "uint8", "size": 1}, "#,
        r#"{"name": "regs", "array_len": 4, "type": "uint32", "size": 4}, "#,
        r#"{"name": "st", "type": "struct", "struct": {"vmsd_name": "ctl/in", "version": 1, "fields": [{"name": "a", "type": "uint16", "size": 2}]}, "size": 2}, "#,
        r#"{"name": "sts", "index": 0, "type": "struct", "struct": {"vmsd_name": "ctl/in2", "version": 1, "fields": [{"name": "b", "type": "uint8", "size": 1}], "#,
        r#""subsections": [{"vmsd_name": "ctl/in2/s", "version": 1, "fields": [{"name": "c", "type": "uint8", "size": 1}]}]}, "size": 17}, "#,
        r#"{"name": "sts", "index": 1, "type": "struct", "struct": {"vmsd_name": "ctl/in2", "version": 1, "fields": [{"name": "b", "type": "uint8", "size": 1}]}, "size": 1}, "#,
        r#"{"name": "skip", "type": "unused_buffer", "size": 2}], "#,
        r#""subsections": [{"vmsd_name": "ctl/sub", "version": 1, "fields": [{"name": "z", "type": "bool", "size": 1}]}]}]}"#,
    );
    assert_eq!(b.to_qemu_json(), expected);
    // r, r, 4*u32, u16, (u8 + sub 15+1), u8, 2 unused, subsection (1+1+7+4+1).
    assert_eq!(bytes.len(), 1 + 1 + 16 + 2 + 17 + 1 + 2 + 14);
    assert_eq!(
        vmdesc::to_qemu_json(&serde_json::json!({"a": [1, 2]})),
        r#"{"a": [1, 2]}"#
    );
}

/// A device state struct in the Persist style.
#[derive(Debug, Clone, PartialEq)]
struct SerialState {
    divider: u16,
    lcr: u8,
    fifo: [u8; 4],
    timeout_ns: Option<u64>,
}

impl VmState for SerialState {
    fn description() -> VmStateDescription {
        VmStateDescription::new("serial", 3)
            .minimum_version(2)
            .field("divider", K::U16)
            .field("lcr", K::U8)
            .field_since("fifo", K::Buffer(4), 3)
            .subsection(VmStateDescription::new("serial/timeout", 1).field("ns", K::Timer))
    }

    fn save(&self) -> VmStateValue {
        let mut v = VmStateValue::new()
            .with("divider", Value::Uint(self.divider.into()))
            .with("lcr", Value::Uint(self.lcr.into()))
            .with("fifo", Value::Bytes(self.fifo.to_vec()));
        if let Some(ns) = self.timeout_ns {
            v.set_subsection(
                "serial/timeout",
                VmStateValue::new().with("ns", Value::Uint(ns)),
            );
        }
        v
    }

    fn restore(v: &VmStateValue) -> Result<Self, Error> {
        let fifo = match v.get("fifo") {
            None => [0; 4],
            Some(_) => v
                .get_bytes("fifo")?
                .try_into()
                .map_err(|_| Error::SizeMismatch {
                    field: "fifo".into(),
                    expected: 4,
                    actual: 0,
                })?,
        };
        Ok(SerialState {
            divider: v.get_u16("divider")?,
            lcr: v.get_u8("lcr")?,
            fifo,
            timeout_ns: v
                .subsection("serial/timeout")
                .map(|s| s.get_u64("ns"))
                .transpose()?,
        })
    }
}

#[test]
fn vmstate_trait_round_trip() {
    for s in [
        SerialState {
            divider: 12,
            lcr: 3,
            fifo: [1, 2, 3, 4],
            timeout_ns: Some(1_000_000),
        },
        SerialState {
            divider: 1,
            lcr: 0,
            fifo: [0; 4],
            timeout_ns: None,
        },
    ] {
        let d = SerialState::description();
        let bytes = bytes_of(|w| {
            vmstate::save(&d, &s.save(), w).unwrap();
        });
        let back =
            SerialState::restore(&vmstate::load(&d, 3, &mut reader(&bytes)).unwrap()).unwrap();
        assert_eq!(back, s);
    }
    // A v2 stream (no fifo) restores with the default.
    let b = Bytes::default().be16(5).u8(1).0;
    let back = SerialState::restore(
        &vmstate::load(&SerialState::description(), 2, &mut reader(&b)).unwrap(),
    )
    .unwrap();
    assert_eq!(
        back,
        SerialState {
            divider: 5,
            lcr: 1,
            fifo: [0; 4],
            timeout_ns: None
        }
    );
}

#[test]
fn named_kinds_keep_the_codec_and_rename_the_type() {
    let named = K::Named {
        type_name: "CPU_Double_U".into(),
        codec: Box::new(K::Float64),
    };
    let d = VmStateDescription::new("fpu", 1)
        .field("st0", named.clone())
        .field(
            "regs",
            K::Array {
                elem: Box::new(named),
                len: 2,
            },
        );
    let v = VmStateValue::new()
        .with("st0", Value::Uint(2.0f64.to_bits()))
        .with("regs", Value::List(vec![Value::Uint(1), Value::Uint(2)]));
    let mut json = None;
    let bytes = bytes_of(|w| json = Some(vmstate::save(&d, &v, w).unwrap()));
    assert_eq!(&bytes[..8], &2.0f64.to_bits().to_be_bytes());
    assert_eq!(bytes.len(), 24);
    let json = json.unwrap();
    assert_eq!(json["fields"][0]["type"], "CPU_Double_U");
    assert_eq!(json["fields"][1]["type"], "CPU_Double_U");
    assert_eq!(json["fields"][1]["array_len"], 2);
    assert_eq!(vmstate::load(&d, 1, &mut reader(&bytes)).unwrap(), v);
}

#[test]
fn full_section_helpers() {
    let d = VmStateDescription::new("timer", 2)
        .field("ticks", K::I64)
        .field("unused", K::Unused(8));
    let v = VmStateValue::new().with("ticks", Value::Int(0x938d734f));
    let mut b = VmDescBuilder::new(4096);
    let bytes = bytes_of(|w| {
        vmstate::save_full_section(w, 0, "timer", 0, &d, &v, Some(&mut b)).unwrap();
    });
    let golden = Bytes::default()
        .u8(4)
        .be32(0)
        .cstr("timer")
        .be32(0)
        .be32(2)
        .be64(0x938d734f)
        .be64(0)
        .u8(0x7e)
        .be32(0)
        .0;
    assert_eq!(bytes, golden);
    assert_eq!(
        b.to_qemu_json(),
        r#"{"page_size": 4096, "devices": [{"name": "timer", "instance_id": 0, "vmsd_name": "timer", "version": 2, "fields": [{"name": "ticks", "type": "int64", "size": 8}, {"name": "unused", "type": "unused_buffer", "size": 8}]}]}"#
    );
    let mut r = reader(&bytes);
    let savevm::record::Record::Section(h) = savevm::record::read_record(&mut r).unwrap() else {
        panic!("not a section")
    };
    assert_eq!(vmstate::load_section_body(&mut r, &h, &d).unwrap(), v);
    // A wrong footer id is caught.
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] = 1;
    let mut r = reader(&bad);
    let savevm::record::Record::Section(h) = savevm::record::read_record(&mut r).unwrap() else {
        panic!("not a section")
    };
    assert!(matches!(
        vmstate::load_section_body(&mut r, &h, &d),
        Err(Error::MismatchedFooter { .. })
    ));
}

#[test]
fn qtailq_json_inlines_the_element_description() {
    let d = VmStateDescription::new("q", 1).field("list", K::QTailQ(inner()));
    let v = VmStateValue::new().with(
        "list",
        Value::List(vec![inner_value(1, true), inner_value(2, false)]),
    );
    let mut json = None;
    let bytes = bytes_of(|w| json = Some(vmstate::save(&d, &v, w).unwrap()));
    assert_eq!(bytes, [1, 0, 1, 1, 1, 0, 2, 0, 0]);
    assert_eq!(
        vmdesc::to_qemu_json(&json.unwrap()["fields"][0]),
        r#"{"name": "list", "type": "qtailq", "vmsd_name": "dev/inner", "version": 1, "fields": [{"name": "a", "type": "uint16", "size": 2}, {"name": "b", "type": "bool", "size": 1}], "size": 9}"#
    );
    assert_eq!(vmstate::load(&d, 1, &mut reader(&bytes)).unwrap(), v);
}

#[test]
fn repeated_field_names_map_to_occurrences() {
    // QEMU allows a VMSD to list the same field name twice (e.g. two views of env.xmm_regs).
    let d = VmStateDescription::new("cpu", 2)
        .field("regs", K::U32)
        .field("pad", K::Unused(1))
        .field("regs", K::U16)
        .field_since("regs", K::U8, 3);
    let mut v = VmStateValue::new();
    v.push("regs", Value::Uint(0x1111_1111));
    v.push("regs", Value::Uint(0x2222));
    let mut json = None;
    let bytes = bytes_of(|w| json = Some(vmstate::save(&d, &v, w).unwrap()));
    assert_eq!(bytes, [0x11, 0x11, 0x11, 0x11, 0, 0x22, 0x22]);
    let json = json.unwrap();
    // Names are made unique over the whole description, as QEMU does.
    assert_eq!(json["fields"][0]["name"], "regs[0]");
    assert_eq!(json["fields"][1]["name"], "pad");
    assert_eq!(json["fields"][2]["name"], "regs[1]");
    let back = vmstate::load(&d, 2, &mut reader(&bytes)).unwrap();
    assert_eq!(back, v);
    assert_eq!(back.get_nth("regs", 1), Some(&Value::Uint(0x2222)));
    assert_eq!(back.get_u32("regs").unwrap(), 0x1111_1111);
}
