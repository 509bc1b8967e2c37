//! Feeds arbitrary bytes to the destination's real loader, `migration::incoming::load_stream`,
//! against a small registry like a VM's: the `ram` handler over one 64 KiB block (`pc.ram`),
//! the `block` handler with no drives, `globalstate`, a `timer`-like device and `dev`, a
//! device whose description uses every VMState codec (var-arrays, buffers, structs, queues,
//! bitmaps, a subsection). So header, configuration, commands, section lookup and versions,
//! RAM block names and offsets, XBZRLE, block records, VMState bodies, footers and the
//! trailer are all parsed and validated as on a real destination. Any panic or unbounded
//! allocation is a bug; errors are expected.

#![no_main]

use std::io::Cursor;
use std::sync::Arc;

use guest_ram::{Backing, FullDirtyLog, GuestRam, RamBlock};
use libfuzzer_sys::fuzz_target;
use migration::block::BlockHandler;
use migration::incoming::{load_stream, ReturnPath};
use migration::ram::RamHandler;
use migration::{DeviceState, GlobalState, IncomingSession, MigrationError, Registry};
use savevm::vmstate::{FieldKind, VmStateDescription, VmStateValue};

/// Machine type the streams must name (a prefix of it, as QEMU's check).
const MACHINE: &str = "pc-i440fx-7.2";
/// Size of the only RAM block.
const RAM_SIZE: u64 = 64 << 10;

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

/// A device that keeps whatever loads under its description.
struct Sample(VmStateValue);

impl DeviceState for Sample {
    fn description(&self) -> VmStateDescription {
        sample_description()
    }

    fn save(&self) -> VmStateValue {
        self.0.clone()
    }

    fn load(&mut self, value: &VmStateValue, _version: u32) -> Result<(), MigrationError> {
        self.0 = value.clone();
        Ok(())
    }
}

/// QEMU's `timer` section (as the `vmm` crate's `Timer`): two clock offsets, one of them
/// from version 2 on, an unused gap and an optional subsection.
#[derive(Default)]
struct Clock {
    ticks: i64,
    clock: i64,
}

impl DeviceState for Clock {
    fn description(&self) -> VmStateDescription {
        VmStateDescription::new("timer", 2)
            .minimum_version(1)
            .field("cpu_ticks_offset", FieldKind::I64)
            .field("unused", FieldKind::Unused(8))
            .field_since("cpu_clock_offset", FieldKind::I64, 2)
            .subsection(
                VmStateDescription::new("timer/icount", 1)
                    .field("qemu_icount_bias", FieldKind::I64)
                    .field("qemu_icount", FieldKind::I64),
            )
    }

    fn save(&self) -> VmStateValue {
        VmStateValue::new()
            .with("cpu_ticks_offset", savevm::vmstate::Value::Int(self.ticks))
            .with("cpu_clock_offset", savevm::vmstate::Value::Int(self.clock))
    }

    fn load(&mut self, v: &VmStateValue, _version: u32) -> Result<(), MigrationError> {
        let err = |e: savevm::Error| MigrationError::DeviceLoad {
            idstr: "timer".into(),
            reason: e.to_string(),
        };
        self.ticks = v.get_i64("cpu_ticks_offset").map_err(err)?;
        self.clock = match v.get("cpu_clock_offset") {
            Some(_) => v.get_i64("cpu_clock_offset").map_err(err)?,
            None => 0,
        };
        Ok(())
    }
}

fn registry() -> Registry {
    let block = RamBlock::new("pc.ram", RAM_SIZE, Backing::Anonymous).expect("small RAM block");
    let ram = Arc::new(GuestRam::new(vec![block]));
    let mut registry = Registry::new();
    registry.register_live(Box::new(RamHandler::new(
        ram.clone(),
        Box::new(FullDirtyLog::new(ram)),
    )));
    registry.register_live(Box::new(BlockHandler::new(Vec::new())));
    registry.register_device("globalstate", Some(0), Box::new(GlobalState::new()));
    registry.register_device("timer", Some(0), Box::new(Clock::default()));
    registry.register_device("dev", Some(0), Box::new(Sample(VmStateValue::new())));
    registry
}

fuzz_target!(|data: &[u8]| {
    let mut registry = registry();
    // A return path that accepts everything, so OPEN_RETURN_PATH and PING are exercised.
    let mut rp = ReturnPath::new(Some(Box::new(std::io::sink())));
    let r = load_stream(
        Box::new(Cursor::new(data.to_vec())),
        &mut registry,
        MACHINE,
        &mut rp,
        &mut IncomingSession::standalone(),
    );
    // For checking seeds: how far does this input get?
    if std::env::var_os("STREAM_LOADER_VERBOSE").is_some() {
        eprintln!("load_stream: {:?}", r.map_err(|e| e.report()));
    }
});
