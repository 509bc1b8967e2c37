//! The default, human-readable summary of a [`Report`].
//!
//! Layout: a header paragraph, the sections table (one line per section record, with
//! offset, type, id, idstr, instance, version and body size), commands, RAM blocks with page
//! counts, block-migration drives, and the devices with their decoded fields in a compact
//! one-line-per-field form (`name: value`, nested structs as `{a=1, b=2}`, long buffers
//! abbreviated). Records beyond the [`crate::Limits`] are said to be summarised, with their
//! per-idstr counts.

use std::io::{self, Write};

use crate::devices::{FieldValue, StructValue, Value};
use crate::report::{Report, SectionInfo, SectionKind};

/// Longest rendering of one field value before it is cut with `…`.
const MAX_VALUE_CHARS: usize = 160;
/// Consecutive PART records listed one per line before the run is summarised.
const PART_RUN_SHOWN: usize = 6;
/// Hex bytes shown for a buffer before abbreviating.
const MAX_HEX_BYTES: usize = 24;

/// Writes the summary of `r` to `out`.
pub fn render(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    header(r, out)?;
    sections(r, out)?;
    commands(r, out)?;
    ram(r, out)?;
    block(r, out)?;
    devices(r, out)?;
    if !r.warnings.is_empty() {
        writeln!(out, "\nWarnings:")?;
        for w in &r.warnings {
            writeln!(out, "  {w}")?;
        }
        more(out, omitted(r, |t| t.warnings), "warnings")?;
    }
    Ok(())
}

fn header(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    write!(out, "QEMU migration stream, version {}", r.header.version)?;
    match &r.header.configuration {
        Some(c) => {
            writeln!(out, ", machine {}", c.machine)?;
            if !c.capabilities.is_empty() {
                writeln!(out, "  capabilities: {}", c.capabilities.join(", "))?;
            }
            if let Some(u) = &c.uuid {
                writeln!(out, "  uuid: {u}")?;
            }
            if let Some(b) = c.target_page_bits {
                writeln!(out, "  target page bits: {b}")?;
            }
        }
        None => writeln!(out, " (no configuration record)")?,
    }
    let t = &r.totals;
    write!(out, "  {} bytes", t.stream_bytes)?;
    if let Some(e) = t.eof_offset {
        write!(out, ", EOF at {e:#x}")?;
    }
    match (t.vmdesc_offset, t.vmdesc_size) {
        (Some(o), Some(s)) => writeln!(out, ", vmdescription {s} bytes at {o:#x}")?,
        _ => writeln!(out, ", no vmdescription")?,
    }
    Ok(())
}

fn sections(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "\nSections ({}):", r.section_count())?;
    writeln!(
        out,
        "  {:>10}  {:<5} {:>4}  {:<32} {:>4} {:>4} {:>10}",
        "offset", "type", "id", "idstr", "inst", "ver", "body"
    )?;
    let mut i = 0;
    while i < r.sections.len() {
        // Long runs of PART records (a busy migration has thousands) are summarised.
        let run = r.sections[i..]
            .iter()
            .take_while(|s| s.kind == SectionKind::Part)
            .count();
        if run > PART_RUN_SHOWN {
            let parts = &r.sections[i..i + run];
            section_line(&parts[0], out)?;
            let mut per_id: Vec<(&str, u64, u64)> = Vec::new();
            for p in &parts[1..run - 1] {
                match per_id.iter_mut().find(|(name, _, _)| *name == p.idstr) {
                    Some(e) => {
                        e.1 += 1;
                        e.2 += p.body_bytes;
                    }
                    None => per_id.push((&p.idstr, 1, p.body_bytes)),
                }
            }
            for (name, n, bytes) in per_id {
                writeln!(
                    out,
                    "  {:>10}  PART  x{n} {name}, {bytes} body bytes",
                    "..."
                )?;
            }
            section_line(&parts[run - 1], out)?;
            i += run;
        } else {
            section_line(&r.sections[i], out)?;
            i += 1;
        }
    }
    if let Some(t) = r.truncated.as_ref().filter(|t| t.sections > 0) {
        writeln!(
            out,
            "  … {} more sections summarised (detail limit reached):",
            t.sections
        )?;
        for s in t.section_summary.iter().chain(Some(&t.other_sections)) {
            if s.is_empty() {
                continue;
            }
            let name = if s.idstr.is_empty() {
                "(other idstrs)"
            } else {
                &s.idstr
            };
            writeln!(
                out,
                "  {:>10}  {:<32} x{}, {} body bytes",
                "...", name, s.sections, s.body_bytes
            )?;
        }
    }
    Ok(())
}

/// "… N more X summarised" after a cut list.
fn more(out: &mut dyn Write, n: u64, what: &str) -> io::Result<()> {
    if n > 0 {
        writeln!(out, "  … {n} more {what} summarised (detail limit reached)")?;
    }
    Ok(())
}

fn omitted(r: &Report, pick: fn(&crate::report::Truncated) -> u64) -> u64 {
    r.truncated.as_ref().map_or(0, pick)
}

fn section_line(s: &SectionInfo, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "  {:>#10x}  {:<5} {:>4}  {:<32} {:>4} {:>4} {:>10}{}",
        s.offset,
        s.kind.name(),
        s.section_id,
        s.idstr,
        s.instance_id,
        s.version,
        s.body_bytes,
        if s.footer { "" } else { "  (no footer)" }
    )
}

fn commands(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    let extra = omitted(r, |t| t.commands);
    if r.commands.is_empty() && extra == 0 {
        return Ok(());
    }
    writeln!(out, "\nCommands ({}):", r.commands.len() as u64 + extra)?;
    for c in &r.commands {
        write!(
            out,
            "  {:>#10x}  {} ({}), {} bytes",
            c.offset, c.name, c.cmd, c.len
        )?;
        match &c.detail {
            Some(d) => writeln!(out, ": {d}")?,
            None => writeln!(out)?,
        }
    }
    more(out, extra, "commands")
}

fn ram(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    let Some(ram) = &r.ram else {
        return Ok(());
    };
    writeln!(
        out,
        "\nRAM: total {:#x} bytes in {} blocks, {} passes (EOS), {} section body bytes{}",
        ram.total,
        ram.blocks.len(),
        ram.passes,
        ram.body_bytes,
        if ram.hooks > 0 {
            format!(", {} RDMA hooks", ram.hooks)
        } else {
            String::new()
        }
    )?;
    writeln!(
        out,
        "  {:<28} {:>12} {:>8} {:>8} {:>8} {:>10} {:>9} {:>12}",
        "block", "used_length", "normal", "zero", "xbzrle", "xbz_bytes", "distinct", "wire_bytes"
    )?;
    for b in &ram.blocks {
        writeln!(
            out,
            "  {:<28} {:>#12x} {:>8} {:>8} {:>8} {:>10} {:>9} {:>12}{}",
            b.idstr,
            b.used_length,
            b.normal_pages,
            b.zero_pages,
            b.xbzrle_pages,
            b.xbzrle_bytes,
            format!(
                "{}{}",
                if b.distinct_pages_lower_bound {
                    ">="
                } else {
                    ""
                },
                b.distinct_pages
            ),
            b.wire_bytes,
            b.mr_addr.map(|a| format!("  @ {a:#x}")).unwrap_or_default()
        )?;
    }
    Ok(())
}

fn block(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    let Some(b) = &r.block else {
        return Ok(());
    };
    let mut progress: Vec<String> = b.progress.iter().map(|p| format!("{p}%")).collect();
    if b.progress_omitted > 0 {
        progress.push(format!("… {} more", b.progress_omitted));
    }
    writeln!(
        out,
        "\nBlock migration: {} drives, {} EOS, progress [{}]",
        b.devices.len(),
        b.eos,
        progress.join(" ")
    )?;
    for d in &b.devices {
        writeln!(
            out,
            "  {:<20} {} data chunks ({} bytes), {} zero chunks, {} sectors covered",
            d.name, d.data_chunks, d.data_bytes, d.zero_chunks, d.sectors_covered
        )?;
    }
    if b.untracked_chunks > 0 {
        writeln!(
            out,
            "  … {} chunks of further drives summarised (drive limit reached)",
            b.untracked_chunks
        )?;
    }
    Ok(())
}

fn devices(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    let extra = omitted(r, |t| t.devices);
    writeln!(out, "\nDevices ({}):", r.devices.len() as u64 + extra)?;
    for d in &r.devices {
        write!(
            out,
            "  {} (instance {}) v{}, section {}, {} bytes at {:#x}",
            d.name, d.instance_id, d.version, d.section_id, d.body_bytes, d.offset
        )?;
        match &d.state {
            Some(s) if s.vmsd_name != d.name => writeln!(out, ", vmsd {}", s.vmsd_name)?,
            _ => writeln!(out)?,
        }
        if let Some(e) = &d.error {
            writeln!(out, "    ! {e}")?;
        }
        if let Some(p) = &d.raw_preview {
            writeln!(out, "    raw: {p}")?;
        }
        if let Some(s) = &d.state {
            struct_lines(s, 4, out)?;
        }
    }
    more(
        out,
        extra,
        "devices (their sections are in the summary above)",
    )
}

fn struct_lines(s: &StructValue, indent: usize, out: &mut dyn Write) -> io::Result<()> {
    for f in &s.fields {
        writeln!(
            out,
            "{:indent$}{}: {}",
            "",
            field_name(f),
            cut(value_text(&f.value))
        )?;
    }
    for sub in &s.subsections {
        writeln!(out, "{:indent$}[{} v{}]", "", sub.vmsd_name, sub.version)?;
        struct_lines(sub, indent + 2, out)?;
    }
    Ok(())
}

fn field_name(f: &FieldValue) -> String {
    match f.index {
        Some(i) => format!("{}#{i}", f.name),
        None => f.name.clone(),
    }
}

fn cut(mut s: String) -> String {
    if s.chars().count() > MAX_VALUE_CHARS {
        s = s.chars().take(MAX_VALUE_CHARS).collect();
        s.push('…');
    }
    s
}

/// Compact rendering of a value.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Unsigned(u) if *u < 10 => u.to_string(),
        Value::Unsigned(u) => format!("{u:#x}"),
        Value::Signed(i) if (-9..10).contains(i) => i.to_string(),
        Value::Signed(i) if *i < 0 => i.to_string(),
        Value::Signed(i) => format!("{i:#x}"),
        Value::Hex(h) => hex_text(h),
        Value::Null => "NULL".to_string(),
        Value::Struct(s) => {
            let mut parts: Vec<String> = s
                .fields
                .iter()
                .map(|f| format!("{}={}", field_name(f), value_text(&f.value)))
                .collect();
            for sub in &s.subsections {
                parts.push(format!("[{}]={}", sub.vmsd_name, {
                    let inner = Value::Struct(Box::new(sub.clone()));
                    value_text(&inner)
                }));
            }
            format!("{{{}}}", parts.join(", "))
        }
        Value::Array(items) => {
            let texts: Vec<String> = items.iter().map(value_text).collect();
            match texts.first() {
                Some(first) if texts.len() > 2 && texts.iter().all(|t| t == first) => {
                    format!("[{first} x{}]", texts.len())
                }
                _ => format!("[{}]", texts.join(", ")),
            }
        }
    }
}

fn hex_text(h: &str) -> String {
    let bytes = h.len() / 2;
    if bytes > 0 && h.bytes().all(|c| c == b'0') {
        return format!("zeros({bytes})");
    }
    if let Some(s) = nul_padded_text(h) {
        return format!("{s:?} ({bytes} bytes)");
    }
    if bytes > MAX_HEX_BYTES {
        format!("{}… ({bytes} bytes)", &h[..MAX_HEX_BYTES * 2])
    } else {
        h.to_string()
    }
}

/// A buffer holding printable ASCII followed only by NULs (e.g. globalstate's runstate).
fn nul_padded_text(h: &str) -> Option<String> {
    let raw: Vec<u8> = (0..h.len() / 2)
        .map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let (text, pad) = raw.split_at(end);
    let printable = text.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
    (text.len() >= 2 && printable && pad.iter().all(|&b| b == 0))
        .then(|| String::from_utf8_lossy(text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_values() {
        assert_eq!(value_text(&Value::Unsigned(7)), "7");
        assert_eq!(value_text(&Value::Unsigned(255)), "0xff");
        assert_eq!(value_text(&Value::Signed(-300)), "-300");
        assert_eq!(value_text(&Value::Hex("0000".into())), "zeros(2)");
        assert_eq!(
            value_text(&Value::Array(vec![Value::Unsigned(0); 4])),
            "[0 x4]"
        );
        let mut run = crate::devices::hex(b"running");
        run.push_str(&"00".repeat(93));
        assert_eq!(value_text(&Value::Hex(run)), "\"running\" (100 bytes)");
        let long = "ab".repeat(100);
        assert!(value_text(&Value::Hex(long)).ends_with("(100 bytes)"));
    }
}
