//! `livemig bench --plot DIR`: SVG charts of a case, drawn with `plotters` (its SVG backend
//! writes text as `<text>` elements, so no font files are needed):
//!
//! * `<case>-remaining.svg`: RAM bytes still to send over time, one line per way (QEMU and
//!   livemig on the same axes), from the timeline of each way's last round;
//! * `<case>-throughput.svg`: throughput over time, from the `transferred` counter in windows
//!   of at least [`WINDOW_MS`] (the same computation for both implementations, rather than
//!   each one's own `mbps` estimate);
//! * `<case>-table.svg`: the table's median throughputs as bars, min–max as whiskers.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::table::Table;
use crate::timeline::Sample;

/// The shortest window a throughput point is computed over.
pub(super) const WINDOW_MS: f64 = 100.0;
const MIB: f64 = (1u64 << 20) as f64;

/// A way's name and the timeline of one of its runs.
pub(super) type Timeline = (String, Vec<Sample>);

/// Throughput points `(t_ms, MiB/s)` of a timeline: one per window of at least
/// [`WINDOW_MS`], placed at the window's end.
pub(super) fn throughput(samples: &[Sample]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let Some(mut from) = samples.first() else {
        return out;
    };
    for s in samples {
        let dt = s.t_ms - from.t_ms;
        if dt >= WINDOW_MS {
            let bytes = s.transferred.saturating_sub(from.transferred) as f64;
            out.push((s.t_ms, bytes / MIB / (dt / 1000.0)));
            from = s;
        }
    }
    out
}

fn colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 6] = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
    ];
    PALETTE[i % PALETTE.len()]
}

type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Draws one line per timeline of `f(samples)` points.
fn lines(
    path: &Path,
    title: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> DrawResult<()> {
    let xmax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .fold(1.0, f64::max);
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold(1.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("time since migrate (ms)")
        .y_desc(y_desc)
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The table as bars of median MiB/s with min–max whiskers.
fn bars(path: &Path, table: &Table) -> DrawResult<()> {
    let rows: Vec<(String, f64, f64, f64)> = table
        .rows
        .iter()
        .filter_map(|r| {
            let s = table.throughput(&r.name)?;
            Some((r.name.clone(), s.median, s.min, s.max))
        })
        .collect();
    let ymax = rows.iter().map(|r| r.3).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&table.title, ("sans-serif", 16))
        .margin(15)
        .y_label_area_size(70)
        .x_label_area_size(10)
        .build_cartesian_2d(0f64..rows.len().max(1) as f64, 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_desc("MiB/s (median, min–max)")
        .draw()?;
    for (i, (name, median, min, max)) in rows.iter().enumerate() {
        let x = i as f64;
        let c = colour(i);
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.15, 0.0), (x + 0.85, *median)],
            c.filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x + 0.5, *min), (x + 0.5, *max)],
            BLACK.stroke_width(2),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{name}: {median:.0}"),
            (x + 0.1, (*max * 1.02).min(ymax)),
            ("sans-serif", 12),
        )))?;
    }
    root.present()?;
    Ok(())
}

fn draw_err(e: Box<dyn std::error::Error>) -> anyhow::Error {
    anyhow::anyhow!("cannot draw: {e}")
}

/// Writes the three charts of case `case` into `dir` (created if missing); their paths.
pub(super) fn write(
    dir: &Path,
    case: &str,
    table: &Table,
    timelines: &[Timeline],
) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = write_timelines(dir, case, &table.title, timelines)?;
    let bar_chart = dir.join(format!("{case}-table.svg"));
    bars(&bar_chart, table).map_err(draw_err)?;
    paths.push(bar_chart);
    Ok(paths)
}

/// Writes the two timeline charts (`<case>-remaining.svg`, `<case>-throughput.svg`) of
/// `timelines` into `dir` (created if missing); their paths.
pub(super) fn write_timelines(
    dir: &Path,
    case: &str,
    title: &str,
    timelines: &[Timeline],
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let remaining: Vec<(String, Vec<(f64, f64)>)> = timelines
        .iter()
        .map(|(n, s)| {
            let p = s.iter().map(|x| (x.t_ms, x.remaining as f64 / MIB));
            (n.clone(), p.collect())
        })
        .collect();
    let rates: Vec<(String, Vec<(f64, f64)>)> = timelines
        .iter()
        .map(|(n, s)| (n.clone(), throughput(s)))
        .collect();
    let paths = vec![
        dir.join(format!("{case}-remaining.svg")),
        dir.join(format!("{case}-throughput.svg")),
    ];
    lines(&paths[0], title, "remaining RAM (MiB)", &remaining).map_err(draw_err)?;
    lines(&paths[1], title, "throughput (MiB/s)", &rates).map_err(draw_err)?;
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_ms: f64, transferred: u64, remaining: u64) -> Sample {
        Sample {
            t_ms,
            status: "active".into(),
            remaining,
            transferred,
            mbps: 0.0,
        }
    }

    #[test]
    fn throughput_uses_windows_of_at_least_100_ms() {
        let s = [
            sample(0.0, 0, 100),
            sample(50.0, 1 << 20, 90),
            sample(100.0, 2 << 20, 80),
            sample(150.0, 2 << 20, 80),
            sample(300.0, 4 << 20, 0),
        ];
        let p = throughput(&s);
        assert_eq!(p, vec![(100.0, 20.0), (300.0, 10.0)]);
        assert!(throughput(&[]).is_empty());
        // A counter that goes backwards (a new run) gives zero, not a huge number.
        let p = throughput(&[sample(0.0, 10, 0), sample(200.0, 5, 0)]);
        assert_eq!(p, vec![(200.0, 0.0)]);
    }

    #[test]
    fn write_produces_three_svg_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = Table::new("(x) 1 GiB", 1 << 30);
        for ms in [1000.0, 1200.0, 900.0] {
            table.record("QEMU 7.2, 1 channel", ms * 1.5);
            table.record("livemig, 1 channel", ms);
        }
        let run = |scale: f64| -> Vec<Sample> {
            (0..=20)
                .map(|i| {
                    let t = i as f64 * 50.0 * scale;
                    sample(t, i * (50 << 20), (20 - i) * (50 << 20))
                })
                .collect()
        };
        let timelines = vec![
            ("QEMU 7.2, 1 channel".to_string(), run(1.5)),
            ("livemig, 1 channel".to_string(), run(1.0)),
        ];
        let out = dir.path().join("plots");
        let paths = write(&out, "x", &table, &timelines).unwrap();
        assert_eq!(paths.len(), 3);
        for p in &paths {
            let svg = std::fs::read_to_string(p).unwrap();
            assert!(
                svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
                "{p:?}"
            );
            assert!(svg.contains("livemig, 1 channel"), "{p:?} names the way");
        }
        // Empty input draws empty charts rather than failing.
        let empty = Table::new("(y)", 1);
        write(&out, "y", &empty, &[]).unwrap();
    }
}
