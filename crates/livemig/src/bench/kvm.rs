//! `livemig bench` case (d): the identical running guest — the built-in payload on KVM, 2
//! vCPUs, 256 MiB — migrated between QEMU 7.2 `-M microvm` and `livemig run --machine microvm
//! --accel kvm` (see `kvm_guest`), over loopback TCP, all four ways: QEMU → QEMU,
//! livemig → livemig, and the cross ways QEMU → livemig and livemig → QEMU (what an operator
//! moving off QEMU does).
//!
//! Every VMM is its own process driven over QMP, with the same migration settings on both
//! sides: the return path on (livemig's default: a source completes once its destination has
//! loaded everything), `max-bandwidth` lifted (QEMU's default is 128 MiB/s), the default
//! `downtime-limit` (300 ms), one channel. A run starts the destination (`-incoming defer`,
//! configured, then `migrate-incoming` on a free loopback port), then the source, waits until
//! its guest has filled its region and counts, migrates, and then checks on the destination's
//! serial output that the guest went on (no reboot, the counter on without gap, see
//! `kvm_guest::continuation`); a run where it did not is reported as FAILED and the case
//! fails after printing the table.
//!
//! Figures are the source's `query-migrate` at completion: `total-time`, `downtime`,
//! `setup-time`, `ram.transferred`. Each round runs every way once, starting one way later
//! than the previous round, so the host's noise hits each way alike.
//!
//! ```text
//!   way                   rounds  total ms        downtime ms  setup ms    sent KiB
//!   QEMU 7.2 -> QEMU 7.2       7  131 [120–150]   46 [40–52]   39 [35–41]  2720 [2716–2730]
//! ```

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::kvm_guest::{self, Guest, Vmm, MEMORY, VCPUS};
use super::plot::Timeline;
use super::qemu;
use super::table::{spread_text, Spread, Table};
use crate::size::human;

/// Both implementations' own bandwidth limit, out of the way.
const NO_LIMIT: u64 = 100_000_000_000;
/// Counts the source's guest prints before it is migrated (it has filled its region).
const COUNTS_BEFORE: usize = 3;
/// Counts the destination's guest must print past the source's last.
const COUNTS_AFTER: u64 = 2;
/// How long a guest may take to boot or to count on (nested KVM is slow, the host shared).
const GUEST_LIMIT: Duration = Duration::from_secs(180);

/// The four ways, source → destination.
const WAYS: [(Vmm, Vmm); 4] = [
    (Vmm::Qemu, Vmm::Qemu),
    (Vmm::Livemig, Vmm::Livemig),
    (Vmm::Qemu, Vmm::Livemig),
    (Vmm::Livemig, Vmm::Qemu),
];

fn way_name((src, dst): (Vmm, Vmm)) -> String {
    format!("{} -> {}", src.name(), dst.name())
}

/// What one run measured, from the source's final `query-migrate`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    total_ms: f64,
    downtime_ms: f64,
    setup_ms: f64,
    transferred: u64,
}

impl Figures {
    fn from_query(info: &Value) -> anyhow::Result<Figures> {
        let ms = |key: &str| {
            info[key]
                .as_f64()
                .with_context(|| format!("no {key} in {info}"))
        };
        Ok(Figures {
            total_ms: ms("total-time")?,
            downtime_ms: ms("downtime")?,
            setup_ms: ms("setup-time")?,
            transferred: info["ram"]["transferred"]
                .as_u64()
                .with_context(|| format!("no ram.transferred in {info}"))?,
        })
    }
}

/// One way's figures over the rounds.
#[derive(Debug, Default)]
struct WayRow {
    name: String,
    runs: Vec<Figures>,
}

impl WayRow {
    fn column(&self, f: impl Fn(&Figures) -> f64) -> Vec<f64> {
        self.runs.iter().map(f).collect()
    }

    /// Total, downtime, setup (ms) and transferred (KiB) samples.
    fn columns(&self) -> [Vec<f64>; 4] {
        [
            self.column(|f| f.total_ms),
            self.column(|f| f.downtime_ms),
            self.column(|f| f.setup_ms),
            self.column(|f| f.transferred as f64 / 1024.0),
        ]
    }
}

const HEADERS: [&str; 6] = [
    "way",
    "rounds",
    "total ms",
    "downtime ms",
    "setup ms",
    "sent KiB",
];

/// The table: one line per way with runs, each figure as `median [min–max]`, each line
/// indented by two spaces.
fn render(rows: &[WayRow]) -> String {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .filter(|r| !r.runs.is_empty())
        .map(|r| {
            let [t, d, s, x] = r.columns();
            [
                r.name.clone(),
                r.runs.len().to_string(),
                spread_text(&t),
                spread_text(&d),
                spread_text(&s),
                spread_text(&x),
            ]
        })
        .collect();
    let mut width = HEADERS.map(|h| h.chars().count());
    for line in &cells {
        for (w, c) in width.iter_mut().zip(line) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADERS.map(String::from);
    for line in std::iter::once(&header).chain(&cells) {
        let mut text = String::new();
        for (i, (c, w)) in line.iter().zip(width).enumerate() {
            // Two spaces before each column; the round count right-aligned, the rest left.
            let _ = match i {
                1 => write!(text, "  {c:>w$}"),
                _ => write!(text, "  {c:<w$}"),
            };
        }
        let _ = writeln!(out, "{}", text.trim_end());
    }
    out
}

/// `qemu ÷ livemig` of two medians, or `-` when either is missing or livemig's is 0.
fn ratio(qemu: &[f64], livemig: &[f64]) -> String {
    match (Spread::of(qemu), Spread::of(livemig)) {
        (Some(q), Some(l)) if l.median > 0.0 => format!("{:.2}", q.median / l.median),
        _ => "-".into(),
    }
}

fn params() -> Value {
    json!({ "max-bandwidth": NO_LIMIT })
}

/// One migration of a freshly booted guest from `src` to `dst`; returns its figures and
/// timeline once the guest went on at the destination.
fn one_run(
    scratch: &Path,
    kernel: &Path,
    (src_vmm, dst_vmm): (Vmm, Vmm),
) -> anyhow::Result<(Figures, Timeline)> {
    let dir = tempfile::tempdir_in(scratch)?;
    let cmdline = kvm_guest::guest().cmdline();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let uri = format!("tcp:127.0.0.1:{port}");
    let mut dst = Guest::start(dst_vmm, dir.path(), "dst", kernel, &cmdline, true)?;
    dst.vm.configure(false, params())?;
    dst.vm
        .qmp
        .execute("migrate-incoming", Some(json!({ "uri": uri })))?;
    let mut src = Guest::start(src_vmm, dir.path(), "src", kernel, &cmdline, false)?;
    src.vm.configure(false, params())?;
    src.wait_counts(COUNTS_BEFORE, GUEST_LIMIT)
        .context("the source's guest did not start")?;
    let (info, samples) = qemu::migrate(&mut src.vm, &mut dst.vm, &uri)?;
    let status = dst.vm.qmp.execute("query-status", None)?;
    if status["status"] != "running" {
        bail!(
            "the destination is {} after the migration",
            status["status"]
        );
    }
    kvm_guest::wait_continued(&src, &dst, COUNTS_AFTER, GUEST_LIMIT)?;
    let figures = Figures::from_query(&info)?;
    Ok((figures, (way_name((src_vmm, dst_vmm)), samples)))
}

/// Runs case (d) over `rounds` alternating rounds, or prints why it cannot (None then);
/// returns a table of the total times (bytes: the guest's RAM) and each way's last timeline.
pub(super) fn case_d(rounds: usize) -> anyhow::Result<Option<(Table, Vec<Timeline>)>> {
    let cmdline = kvm_guest::guest().cmdline();
    println!(
        "(d) the payload on KVM, microvm, {VCPUS} vCPUs, {} RAM ({cmdline}): QEMU 7.2 and \
         livemig, {rounds} alternating rounds",
        human(MEMORY)
    );
    if !vmm::kvm::kvm_available() {
        println!("  SKIP: /dev/kvm not available");
        return Ok(None);
    }
    let ways: Vec<(Vmm, Vmm)> = if qemu::installed() {
        WAYS.to_vec()
    } else {
        println!("  SKIP QEMU: qemu-system-x86_64 not installed; livemig -> livemig only");
        vec![(Vmm::Livemig, Vmm::Livemig)]
    };
    let scratch = super::scratch_dir()?;
    let kernel = scratch.path().join("payload.elf");
    std::fs::write(&kernel, payload::PAYLOAD_ELF)?;
    let mut rows: Vec<WayRow> = ways
        .iter()
        .map(|w| WayRow {
            name: way_name(*w),
            runs: Vec::new(),
        })
        .collect();
    let mut timelines: Vec<Timeline> = Vec::new();
    let mut failures = Vec::new();
    for round in 1..=rounds {
        let mut parts = Vec::new();
        for i in 0..ways.len() {
            let at = (i + round - 1) % ways.len();
            let name = &rows[at].name;
            match one_run(scratch.path(), &kernel, ways[at]) {
                Ok((f, timeline)) => {
                    parts.push(format!("{name} {:.0}/{:.0}", f.total_ms, f.downtime_ms));
                    rows[at].runs.push(f);
                    timelines.retain(|(n, _)| *n != timeline.0);
                    timelines.push(timeline);
                }
                Err(e) => {
                    println!("  round {round}: {name} FAILED: {e:#}");
                    parts.push(format!("{name} FAILED"));
                    failures.push(format!("round {round}, {name}: {e:#}"));
                }
            }
        }
        println!("  round {round} (total/downtime ms): {}", parts.join(" | "));
    }
    let checked = if failures.is_empty() {
        "every run's guest counted on at its destination".to_string()
    } else {
        format!("{} run(s) FAILED, not in the table", failures.len())
    };
    println!("  (d) medians [min–max] over the rounds, from the source's query-migrate; {checked}");
    print!("{}", render(&rows));
    let find = |src, dst| rows.iter().find(|r| r.name == way_name((src, dst)));
    if let (Some(q), Some(l)) = (find(Vmm::Qemu, Vmm::Qemu), find(Vmm::Livemig, Vmm::Livemig)) {
        let (q, l) = (q.columns(), l.columns());
        println!(
            "  => QEMU/livemig (medians, QEMU -> QEMU ÷ livemig -> livemig): total {}, \
             downtime {}, setup {}, sent {}",
            ratio(&q[0], &l[0]),
            ratio(&q[1], &l[1]),
            ratio(&q[2], &l[2]),
            ratio(&q[3], &l[3])
        );
    }
    if !failures.is_empty() {
        bail!(
            "case (d): {} run(s) failed; the first: {}",
            failures.len(),
            failures[0]
        );
    }
    let mut table = Table::new(
        &format!("(d) payload on KVM, {} RAM: total time", human(MEMORY)),
        MEMORY,
    );
    for row in &rows {
        for f in &row.runs {
            table.record(&row.name, f.total_ms);
        }
    }
    Ok(Some((table, timelines)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(total_ms: f64, downtime_ms: f64, setup_ms: f64, transferred: u64) -> Figures {
        Figures {
            total_ms,
            downtime_ms,
            setup_ms,
            transferred,
        }
    }

    #[test]
    fn figures_come_from_query_migrate_and_missing_ones_are_errors() {
        let info = json!({
            "status": "completed", "total-time": 120, "downtime": 9, "setup-time": 2,
            "ram": { "transferred": 3_145_728u64 }
        });
        assert_eq!(
            Figures::from_query(&info).unwrap(),
            figures(120.0, 9.0, 2.0, 3 << 20)
        );
        for key in ["total-time", "downtime", "setup-time", "ram"] {
            let mut bad = info.clone();
            bad.as_object_mut().unwrap().remove(key);
            let err = Figures::from_query(&bad).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        let mut bad = info.clone();
        bad["total-time"] = json!("soon");
        assert!(Figures::from_query(&bad).is_err());
    }

    #[test]
    fn render_has_a_line_per_way_with_medians_and_spread() {
        let rows = vec![
            WayRow {
                name: way_name((Vmm::Qemu, Vmm::Qemu)),
                runs: vec![
                    figures(100.0, 10.0, 1.0, 2048),
                    figures(300.0, 30.0, 3.0, 4096),
                    figures(200.0, 20.0, 2.0, 3072),
                ],
            },
            WayRow {
                name: way_name((Vmm::Livemig, Vmm::Qemu)),
                runs: vec![figures(50.0, 5.0, 0.0, 1024)],
            },
            WayRow {
                name: "never ran".into(),
                runs: vec![],
            },
        ];
        let text = render(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines.iter().all(|l| l.starts_with("  ")), "{text}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{text}");
        assert!(lines[1].starts_with("  QEMU 7.2 -> QEMU 7.2 "), "{text}");
        for want in ["200 [100–300]", "20 [10–30]", "2 [1–3]", "3 [2–4]"] {
            assert!(lines[1].contains(want), "{want}: {text}");
        }
        assert!(lines[2].contains("50 [50–50]"), "{text}");
        // Columns line up (counted in characters: the dash is not one byte).
        let at = |line: &str, pat: &str| line[..line.find(pat).unwrap()].chars().count();
        assert_eq!(at(lines[0], "total ms"), at(lines[1], "200 ["));
        assert_eq!(at(lines[0], "downtime"), at(lines[1], "20 ["));
        assert_eq!(at(lines[0], "sent KiB"), at(lines[2], "1 [1–1]"));
        // The round counts end where the header does.
        assert_eq!(
            at(lines[0], "rounds") + "rounds".len(),
            at(lines[1], "3 ") + 1
        );
    }

    #[test]
    fn ratio_is_of_medians_and_dash_when_undefined() {
        assert_eq!(ratio(&[300.0, 100.0, 200.0], &[100.0]), "2.00");
        assert_eq!(ratio(&[1.0], &[0.0, 0.0]), "-");
        assert_eq!(ratio(&[], &[1.0]), "-");
        assert_eq!(ratio(&[1.0], &[]), "-");
    }

    #[test]
    fn the_four_ways_have_distinct_names() {
        let names: Vec<String> = WAYS.iter().map(|w| way_name(*w)).collect();
        assert_eq!(names[2], "QEMU 7.2 -> livemig");
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4);
    }
}
