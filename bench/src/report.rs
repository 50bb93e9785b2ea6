//! Writing results: a JSON file, a readable table on stdout, and an SVG chart (latency
//! histogram and delivered frames over time).

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde_json::{json, Value};

use crate::{hist::LatHist, sys};

/// One figure compared with its target.
pub(crate) struct Check {
    pub(crate) name: &'static str,
    pub(crate) target: String,
    pub(crate) measured: String,
    pub(crate) met: bool,
}

pub(crate) fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

pub(crate) fn latency_json(h: &LatHist) -> Value {
    json!({
        "count": h.count(),
        "p50_ms": ms(h.quantile(0.50)),
        "p90_ms": ms(h.quantile(0.90)),
        "p99_ms": ms(h.quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

/// The median of `values` (upper median for an even count).
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The median over `runs` of the number at `path` (e.g. `["latency", "p99_ms"]`).
pub(crate) fn median_at(runs: &[Value], path: &[&str]) -> f64 {
    median(
        runs.iter()
            .filter_map(|r| path.iter().fold(r, |v, k| &v[*k]).as_f64())
            .collect(),
    )
}

/// Writes `<dir>/<name>.json` (+ `.svg` when there is a chart) and prints the table.
pub(crate) fn write(
    dir: &Path,
    name: &str,
    params: Value,
    runs: Vec<Value>,
    summary: Value,
    checks: &[Check],
    chart: Option<(&LatHist, &BTreeMap<u64, u64>)>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let doc = json!({
        "scenario": name,
        "machine": sys::machine(),
        "params": params,
        "summary": summary,
        "runs": runs,
        "targets": checks.iter().map(|c| json!({
            "name": c.name, "target": c.target, "measured": c.measured, "met": c.met,
        })).collect::<Vec<_>>(),
    });
    let json_path = dir.join(format!("{name}.json"));
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    )?;
    println!("\n== {name} ==  ({})", json_path.display());
    if let Value::Object(m) = &summary {
        for (k, v) in m {
            println!("  {k:<32} {v}");
        }
    }
    for c in checks {
        println!(
            "  [{}] {:<30} target {:<14} measured {}",
            if c.met { "met" } else { "MISSED" },
            c.name,
            c.target,
            c.measured
        );
    }
    if let Some((hist, timeline)) = chart {
        let svg_path = dir.join(format!("{name}.svg"));
        std::fs::write(&svg_path, svg(name, hist, timeline))?;
        println!("  chart: {}", svg_path.display());
    }
    Ok(())
}

/// Two panels: latency histogram (log-spaced buckets) and frames delivered per 100 ms.
fn svg(title: &str, hist: &LatHist, timeline: &BTreeMap<u64, u64>) -> String {
    let (w, h, pad) = (900.0, 300.0, 50.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif" font-size="12">"#,
        2.0 * h + 40.0
    );
    let _ = write!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{pad}" y="20" font-size="15">{title}</text>"#
    );

    // Panel 1: latency histogram.
    let buckets = hist.buckets();
    let top = 30.0;
    let _ = write!(
        s,
        r#"<text x="{pad}" y="{}">latency (ms, log scale) vs. count: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms</text>"#,
        top + 14.0,
        ms(hist.quantile(0.5)),
        ms(hist.quantile(0.99)),
        ms(hist.max())
    );
    if let (Some(first), Some(last)) = (buckets.first(), buckets.last()) {
        let (lo, hi) = ((first.0.max(1) as f64).ln(), (last.0.max(2) as f64).ln());
        let span = (hi - lo).max(1e-9);
        let maxc = buckets.iter().map(|b| b.1).max().unwrap_or(1) as f64;
        let (x0, y0, pw, ph) = (pad, top + h - 30.0, w - 2.0 * pad, h - 60.0);
        for (ub, c) in &buckets {
            let x = x0 + (((*ub).max(1) as f64).ln() - lo) / span * pw;
            let bh = *c as f64 / maxc * ph;
            let _ = write!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="3" height="{:.1}" fill="#3b7dd8"/>"##,
                x,
                y0 - bh,
                bh
            );
        }
        let _ = write!(
            s,
            r##"<line x1="{x0}" y1="{y0}" x2="{}" y2="{y0}" stroke="#444"/>"##,
            x0 + pw
        );
        let _ = write!(
            s,
            r#"<text x="{x0}" y="{}">{:.3} ms</text><text x="{}" y="{}" text-anchor="end">{:.3} ms</text>"#,
            y0 + 15.0,
            ms(first.0),
            x0 + pw,
            y0 + 15.0,
            ms(last.0)
        );
    }

    // Panel 2: throughput over time.
    let top = top + h;
    let _ = write!(
        s,
        r#"<text x="{pad}" y="{}">frames delivered per second (100 ms buckets) over time</text>"#,
        top + 14.0
    );
    if let (Some((&t0, _)), Some((&t1, _))) =
        (timeline.first_key_value(), timeline.last_key_value())
    {
        let maxv = timeline.values().copied().max().unwrap_or(1) as f64 * 10.0;
        let (x0, y0, pw, ph) = (pad, top + h - 30.0, w - 2.0 * pad, h - 60.0);
        let span = (t1 - t0).max(1) as f64;
        let mut pts = String::new();
        for t in t0..=t1 {
            let v = timeline.get(&t).copied().unwrap_or(0) as f64 * 10.0;
            let _ = write!(
                pts,
                "{:.1},{:.1} ",
                x0 + (t - t0) as f64 / span * pw,
                y0 - v / maxv * ph
            );
        }
        let _ = write!(
            s,
            r##"<polyline points="{pts}" fill="none" stroke="#d8573b" stroke-width="1.5"/>"##
        );
        let _ = write!(
            s,
            r##"<line x1="{x0}" y1="{y0}" x2="{}" y2="{y0}" stroke="#444"/>"##,
            x0 + pw
        );
        let _ = write!(
            s,
            r#"<text x="{x0}" y="{}">0 s</text><text x="{}" y="{}" text-anchor="end">{:.1} s</text><text x="{x0}" y="{}">peak {:.0}/s</text>"#,
            y0 + 15.0,
            x0 + pw,
            y0 + 15.0,
            span / 10.0,
            top + 30.0,
            maxv
        );
    }
    s.push_str("</svg>");
    s
}
