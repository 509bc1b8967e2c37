//! Field-by-field codecs for the structured parts of a vCPU's state: special registers,
//! vCPU events and debug registers. Every integer is its own big-endian field, so the section
//! does not depend on the layout of KVM's C structs.
//!
//! ```text
//! segment  (struct "kvm_segment"): be64 base  be32 limit  be16 selector
//!                                  u8 type present dpl db s l g avl unusable
//! dtable   (struct "kvm_dtable"):  be64 base  be16 limit
//! sregs:   segment cs ds es fs gs ss tr ldt  dtable gdt idt
//!          be64 cr0 cr2 cr3 cr4 cr8 efer apic_base  be64 interrupt_bitmap[4]
//! events:  u8 exc_injected exc_nr exc_has_error_code exc_pending  be32 exc_error_code
//!          u8 int_injected int_nr int_soft int_shadow  u8 nmi_injected nmi_pending nmi_masked
//!          be32 sipi_vector  be32 events_flags  u8 smi_smm smi_pending smi_inside_nmi
//!          smi_latched_init  u8 triple_fault_pending  u8 exc_has_payload  be64 exc_payload
//! debug:   be64 db[4] dr6 dr7 debugregs_flags
//! ```

use std::sync::Arc;

use kvm_bindings::{kvm_debugregs, kvm_dtable, kvm_segment, kvm_sregs, kvm_vcpu_events};
use savevm::vmstate::{FieldKind, Value, VmStateDescription, VmStateValue};

const SEGMENTS: [&str; 8] = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"];
const SEG_U8: [&str; 9] = [
    "type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable",
];
const CRS: [&str; 7] = ["cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base"];
const EVENT_U8: [&str; 15] = [
    "exc_injected",
    "exc_nr",
    "exc_has_error_code",
    "exc_pending",
    "int_injected",
    "int_nr",
    "int_soft",
    "int_shadow",
    "nmi_injected",
    "nmi_pending",
    "nmi_masked",
    "smi_smm",
    "smi_pending",
    "smi_inside_nmi",
    "smi_latched_init",
];

fn u64_array(len: usize) -> FieldKind {
    FieldKind::Array {
        elem: Box::new(FieldKind::U64),
        len,
    }
}

fn segment_desc() -> Arc<VmStateDescription> {
    let d = VmStateDescription::new("kvm_segment", 1)
        .field("base", FieldKind::U64)
        .field("limit", FieldKind::U32)
        .field("selector", FieldKind::U16);
    Arc::new(SEG_U8.iter().fold(d, |d, n| d.field(*n, FieldKind::U8)))
}

fn dtable_desc() -> Arc<VmStateDescription> {
    Arc::new(
        VmStateDescription::new("kvm_dtable", 1)
            .field("base", FieldKind::U64)
            .field("limit", FieldKind::U16),
    )
}

/// Appends the sregs, events and debug-register fields to `d`.
pub(crate) fn fields(mut d: VmStateDescription) -> VmStateDescription {
    let seg = segment_desc();
    for s in SEGMENTS {
        d = d.field(s, FieldKind::Struct(seg.clone()));
    }
    let dt = dtable_desc();
    d = d
        .field("gdt", FieldKind::Struct(dt.clone()))
        .field("idt", FieldKind::Struct(dt));
    for cr in CRS {
        d = d.field(cr, FieldKind::U64);
    }
    d = d.field("interrupt_bitmap", u64_array(4));
    for (i, n) in EVENT_U8.iter().enumerate() {
        d = d.field(*n, FieldKind::U8);
        if i == 3 {
            d = d.field("exc_error_code", FieldKind::U32);
        }
        if i == 10 {
            d = d
                .field("sipi_vector", FieldKind::U32)
                .field("events_flags", FieldKind::U32);
        }
    }
    d.field("triple_fault_pending", FieldKind::U8)
        .field("exc_has_payload", FieldKind::U8)
        .field("exc_payload", FieldKind::U64)
        .field("db", u64_array(4))
        .field("dr6", FieldKind::U64)
        .field("dr7", FieldKind::U64)
        .field("debugregs_flags", FieldKind::U64)
}

fn list(words: &[u64]) -> Value {
    Value::List(words.iter().map(|w| Value::Uint(*w)).collect())
}

fn segment_value(s: &kvm_segment) -> Value {
    let mut v = VmStateValue::new()
        .with("base", Value::Uint(s.base))
        .with("limit", Value::Uint(u64::from(s.limit)))
        .with("selector", Value::Uint(u64::from(s.selector)));
    let b = [
        s.type_, s.present, s.dpl, s.db, s.s, s.l, s.g, s.avl, s.unusable,
    ];
    for (n, x) in SEG_U8.iter().zip(b) {
        v.set(*n, Value::Uint(u64::from(x)));
    }
    Value::Struct(v)
}

fn dtable_value(t: &kvm_dtable) -> Value {
    Value::Struct(
        VmStateValue::new()
            .with("base", Value::Uint(t.base))
            .with("limit", Value::Uint(u64::from(t.limit))),
    )
}

/// Stores `sregs`, `events` and `debug` into `v`.
pub(crate) fn save(
    v: &mut VmStateValue,
    sregs: &kvm_sregs,
    events: &kvm_vcpu_events,
    debug: &kvm_debugregs,
) {
    let segs = [
        &sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss, &sregs.tr, &sregs.ldt,
    ];
    for (n, s) in SEGMENTS.iter().zip(segs) {
        v.set(*n, segment_value(s));
    }
    v.set("gdt", dtable_value(&sregs.gdt));
    v.set("idt", dtable_value(&sregs.idt));
    let crs = [
        sregs.cr0,
        sregs.cr2,
        sregs.cr3,
        sregs.cr4,
        sregs.cr8,
        sregs.efer,
        sregs.apic_base,
    ];
    for (n, x) in CRS.iter().zip(crs) {
        v.set(*n, Value::Uint(x));
    }
    v.set("interrupt_bitmap", list(&sregs.interrupt_bitmap));
    let e = events;
    let b = [
        e.exception.injected,
        e.exception.nr,
        e.exception.has_error_code,
        e.exception.pending,
        e.interrupt.injected,
        e.interrupt.nr,
        e.interrupt.soft,
        e.interrupt.shadow,
        e.nmi.injected,
        e.nmi.pending,
        e.nmi.masked,
        e.smi.smm,
        e.smi.pending,
        e.smi.smm_inside_nmi,
        e.smi.latched_init,
    ];
    for (n, x) in EVENT_U8.iter().zip(b) {
        v.set(*n, Value::Uint(u64::from(x)));
    }
    v.set(
        "exc_error_code",
        Value::Uint(u64::from(e.exception.error_code)),
    );
    v.set("sipi_vector", Value::Uint(u64::from(e.sipi_vector)));
    v.set("events_flags", Value::Uint(u64::from(e.flags)));
    v.set(
        "triple_fault_pending",
        Value::Uint(u64::from(e.triple_fault.pending)),
    );
    v.set(
        "exc_has_payload",
        Value::Uint(u64::from(e.exception_has_payload)),
    );
    v.set("exc_payload", Value::Uint(e.exception_payload));
    v.set("db", list(&debug.db));
    v.set("dr6", Value::Uint(debug.dr6));
    v.set("dr7", Value::Uint(debug.dr7));
    v.set("debugregs_flags", Value::Uint(debug.flags));
}

fn err(e: savevm::Error) -> String {
    e.to_string()
}

fn words<const N: usize>(v: &VmStateValue, name: &str) -> Result<[u64; N], String> {
    let l = v.get_list(name).map_err(err)?;
    if l.len() != N {
        return Err(format!("{name} has {} words, expected {N}", l.len()));
    }
    let mut out = [0u64; N];
    for (o, x) in out.iter_mut().zip(l) {
        *o = x
            .as_u64()
            .ok_or_else(|| format!("{name} holds a non-integer"))?;
    }
    Ok(out)
}

fn segment(v: &VmStateValue, name: &str) -> Result<kvm_segment, String> {
    let s = v.get_struct(name).map_err(err)?;
    let b = |n: &str| s.get_u8(n).map_err(err);
    Ok(kvm_segment {
        base: s.get_u64("base").map_err(err)?,
        limit: s.get_u32("limit").map_err(err)?,
        selector: s.get_u16("selector").map_err(err)?,
        type_: b("type")?,
        present: b("present")?,
        dpl: b("dpl")?,
        db: b("db")?,
        s: b("s")?,
        l: b("l")?,
        g: b("g")?,
        avl: b("avl")?,
        unusable: b("unusable")?,
        padding: 0,
    })
}

fn dtable(v: &VmStateValue, name: &str) -> Result<kvm_dtable, String> {
    let s = v.get_struct(name).map_err(err)?;
    Ok(kvm_dtable {
        base: s.get_u64("base").map_err(err)?,
        limit: s.get_u16("limit").map_err(err)?,
        padding: [0; 3],
    })
}

/// Reads back what [`save`] stored.
pub(crate) fn load(
    v: &VmStateValue,
) -> Result<(kvm_sregs, kvm_vcpu_events, kvm_debugregs), String> {
    let u64f = |n: &str| v.get_u64(n).map_err(err);
    let u8f = |n: &str| v.get_u8(n).map_err(err);
    let sregs = kvm_sregs {
        cs: segment(v, "cs")?,
        ds: segment(v, "ds")?,
        es: segment(v, "es")?,
        fs: segment(v, "fs")?,
        gs: segment(v, "gs")?,
        ss: segment(v, "ss")?,
        tr: segment(v, "tr")?,
        ldt: segment(v, "ldt")?,
        gdt: dtable(v, "gdt")?,
        idt: dtable(v, "idt")?,
        cr0: u64f("cr0")?,
        cr2: u64f("cr2")?,
        cr3: u64f("cr3")?,
        cr4: u64f("cr4")?,
        cr8: u64f("cr8")?,
        efer: u64f("efer")?,
        apic_base: u64f("apic_base")?,
        interrupt_bitmap: words::<4>(v, "interrupt_bitmap")?,
    };
    let mut e = kvm_vcpu_events::default();
    e.exception.injected = u8f("exc_injected")?;
    e.exception.nr = u8f("exc_nr")?;
    e.exception.has_error_code = u8f("exc_has_error_code")?;
    e.exception.pending = u8f("exc_pending")?;
    e.exception.error_code = v.get_u32("exc_error_code").map_err(err)?;
    e.interrupt.injected = u8f("int_injected")?;
    e.interrupt.nr = u8f("int_nr")?;
    e.interrupt.soft = u8f("int_soft")?;
    e.interrupt.shadow = u8f("int_shadow")?;
    e.nmi.injected = u8f("nmi_injected")?;
    e.nmi.pending = u8f("nmi_pending")?;
    e.nmi.masked = u8f("nmi_masked")?;
    e.sipi_vector = v.get_u32("sipi_vector").map_err(err)?;
    e.flags = v.get_u32("events_flags").map_err(err)?;
    e.smi.smm = u8f("smi_smm")?;
    e.smi.pending = u8f("smi_pending")?;
    e.smi.smm_inside_nmi = u8f("smi_inside_nmi")?;
    e.smi.latched_init = u8f("smi_latched_init")?;
    e.triple_fault.pending = u8f("triple_fault_pending")?;
    e.exception_has_payload = u8f("exc_has_payload")?;
    e.exception_payload = u64f("exc_payload")?;
    let d = kvm_debugregs {
        db: words::<4>(v, "db")?,
        dr6: u64f("dr6")?,
        dr7: u64f("dr7")?,
        flags: u64f("debugregs_flags")?,
        reserved: [0; 9],
    };
    Ok((sregs, e, d))
}
