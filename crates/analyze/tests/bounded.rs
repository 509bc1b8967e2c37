//! Memory stays bounded however long the stream is: a million empty sections, and an
//! endless stream of valid records through a pipe. Peak memory is the process's `VmHWM`
//! (`/proc/self/status`); this binary holds only these tests, run one at a time.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use analyze::{analyze, AnalyzeError, AnalyzeOptions};

/// Peak resident memory allowed. The code before the limits kept ~100 bytes per section
/// record (and 64+ bytes per touched 512-page region), i.e. >100 MiB for either test.
const BOUND: u64 = 64 << 20;

/// `VmHWM` is process-wide: keep the tests from overlapping.
static SERIAL: Mutex<()> = Mutex::new(());

fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// RAM block of 1 TiB, so ZERO records can land in ever new 512-page chunks.
const BLOCK: u64 = 1 << 40;

fn prefix() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0x5145_564du32.to_be_bytes());
    b.extend_from_slice(&3u32.to_be_bytes());
    // START "ram" id 2: MEM_SIZE with one block, EOS, footer.
    b.push(1);
    b.extend_from_slice(&2u32.to_be_bytes());
    b.extend_from_slice(&[3, b'r', b'a', b'm']);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&4u32.to_be_bytes());
    b.extend_from_slice(&(BLOCK | 0x4).to_be_bytes());
    b.extend_from_slice(&[6, b'p', b'c', b'.', b'r', b'a', b'm']);
    b.extend_from_slice(&BLOCK.to_be_bytes());
    b.extend_from_slice(&0x10u64.to_be_bytes());
    b.extend_from_slice(&[0x7e, 0, 0, 0, 2]);
    b
}

/// One PART of `ram`: optionally a ZERO record (in chunk `i`) and a PING before it.
fn part(i: u64, busy: bool, out: &mut Vec<u8>) {
    if busy {
        out.extend_from_slice(&[8, 0, 2, 0, 4]);
        out.extend_from_slice(&(i as u32).to_be_bytes());
    }
    out.extend_from_slice(&[2, 0, 0, 0, 2]);
    if busy {
        let page = (i * 512) % (BLOCK / 4096);
        out.extend_from_slice(&((page * 4096) | 0x2).to_be_bytes());
        out.extend_from_slice(&[6, b'p', b'c', b'.', b'r', b'a', b'm', 0]);
    }
    out.extend_from_slice(&0x10u64.to_be_bytes());
    out.extend_from_slice(&[0x7e, 0, 0, 0, 2]);
}

/// Generates the stream on the fly: prefix, `sections` PARTs, then END + EOF when `finish`.
struct Gen {
    buf: Vec<u8>,
    pos: usize,
    next: u64,
    sections: u64,
    busy: bool,
    finished: bool,
    finish: bool,
}

impl Gen {
    fn new(sections: u64, busy: bool, finish: bool) -> Gen {
        Gen {
            buf: prefix(),
            pos: 0,
            next: 0,
            sections,
            busy,
            finished: false,
            finish,
        }
    }
}

impl Read for Gen {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            while self.buf.len() < 64 * 1024 && self.next < self.sections {
                part(self.next, self.busy, &mut self.buf);
                self.next += 1;
            }
            if self.buf.is_empty() && self.finish && !self.finished {
                self.finished = true;
                self.buf.extend_from_slice(&[3, 0, 0, 0, 2]);
                self.buf.extend_from_slice(&0x10u64.to_be_bytes());
                self.buf.extend_from_slice(&[0x7e, 0, 0, 0, 2, 0]);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn a_million_empty_sections_in_bounded_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    const N: u64 = 1_000_000;
    let mut text = Vec::new();
    let opts = AnalyzeOptions::default();
    let report = analyze(Box::new(Gen::new(N, false, true)), &opts, &mut text).unwrap();
    let peak = peak_rss();
    eprintln!("peak RSS {} KiB", peak >> 10);
    assert!(peak < BOUND, "peak RSS {} MiB", peak >> 20);
    // START + N PART + END, listed up to the limit, the rest summarised.
    assert_eq!(report.section_count(), N + 2);
    assert_eq!(report.sections.len(), opts.limits.sections);
    let t = report.truncated.as_ref().unwrap();
    assert_eq!(t.sections, N + 2 - opts.limits.sections as u64);
    assert_eq!(t.section_summary.len(), 1);
    assert_eq!(t.section_summary[0].idstr, "ram");
    assert_eq!(t.section_summary[0].sections, t.sections);
    assert_eq!(t.section_summary[0].body_bytes, 8 * t.sections);
    assert_eq!(report.ram.as_ref().unwrap().passes, N + 2);
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains(&format!("Sections ({}):", N + 2)), "{text}");
    assert!(text.contains(&format!("… {} more sections summarised", t.sections)));

    // --json says so too.
    let json_opts = AnalyzeOptions {
        json: true,
        ..Default::default()
    };
    let mut json = Vec::new();
    analyze(
        Box::new(Gen::new(20_000, false, true)),
        &json_opts,
        &mut json,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["truncated"]["sections"], 20_002 - 10_000);
    assert_eq!(v["truncated"]["section_summary"][0]["idstr"], "ram");
    assert_eq!(v["sections"].as_array().unwrap().len(), 10_000);
}

#[test]
fn an_endless_pipe_stays_bounded() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Stopped after a fixed amount of input, not a time.
    const INPUT: u64 = 200 << 20;
    let (rx, mut tx) = UnixStream::pair().unwrap();
    let writer = std::thread::spawn(move || {
        let mut gen = Gen::new(u64::MAX, true, false).take(INPUT);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = gen.read(&mut chunk).unwrap();
            if n == 0 || tx.write_all(&chunk[..n]).is_err() {
                break;
            }
        }
    });
    let opts = AnalyzeOptions::default();
    let r = analyze(Box::new(rx), &opts, &mut io::sink());
    writer.join().unwrap();
    // The stream was cut in the middle: a typed error, after bounded memory.
    assert!(matches!(r, Err(AnalyzeError::Stream { .. })), "{r:?}");
    let peak = peak_rss();
    eprintln!("peak RSS {} KiB", peak >> 10);
    assert!(peak < BOUND, "peak RSS {} MiB", peak >> 20);

    // The same records, finished after 200 000 sections: what was cut is reported.
    let report = analyze(
        Box::new(Gen::new(200_000, true, true)),
        &opts,
        &mut io::sink(),
    )
    .unwrap();
    let t = report.truncated.unwrap();
    assert_eq!(t.commands, 200_000 - opts.limits.commands as u64);
    assert_eq!(report.commands.len(), opts.limits.commands);
    let ram = report.ram.unwrap();
    assert!(ram.blocks[0].distinct_pages_lower_bound);
    assert_eq!(ram.blocks[0].distinct_pages, opts.limits.page_chunks as u64);
    assert_eq!(ram.blocks[0].zero_pages, 200_000);
}
