//! The soak's chart, as a small hand-written SVG: one panel per figure (RSS, open file
//! descriptors, tokio tasks), one line per node over the minutes, the restarts as dashed
//! verticals and the warm-up minute as a dotted one.

use std::fmt::Write as _;

use crate::soak_samples::{figure, Restart, Sample};

const COLORS: [&str; 6] = [
    "#3b7dd8", "#d8573b", "#2e9e5b", "#8e44ad", "#c49a00", "#555555",
];

/// The chart of `samples` as SVG text.
pub(crate) fn svg(
    title: &str,
    samples: &[Sample],
    restarts: &[Restart],
    nodes: usize,
    warm: u64,
) -> String {
    let panels = [
        ("rss_mib", "resident memory (MiB)"),
        ("fds", "open file descriptors"),
        ("tasks", "tokio tasks (impush_tasks)"),
    ];
    let (w, ph, pad) = (900.0_f64, 220.0_f64, 60.0_f64);
    let height = 50.0 + ph * panels.len() as f64 + 30.0;
    let last = samples.iter().map(|s| s.minute).max().unwrap_or(1).max(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{pad}" y="20" font-size="15">{title}</text>"#
    );
    // Legend.
    for n in 0..nodes {
        let x = pad + 90.0 * n as f64;
        let c = COLORS[n % COLORS.len()];
        let _ = write!(
            s,
            r#"<line x1="{x}" y1="36" x2="{}" y2="36" stroke="{c}" stroke-width="2"/><text x="{}" y="40">n{}</text>"#,
            x + 20.0,
            x + 25.0,
            n + 1
        );
    }
    let _ = write!(
        s,
        r##"<text x="{}" y="40" fill="#777">dashed: a node restarted; dotted: end of warm-up</text>"##,
        pad + 90.0 * nodes as f64
    );
    for (k, (what, label)) in panels.iter().enumerate() {
        let top = 50.0 + ph * k as f64;
        let (x0, y0, pw, inner) = (pad, top + ph - 30.0, w - 2.0 * pad, ph - 60.0);
        let vals: Vec<f64> = samples.iter().filter_map(|x| figure(x, what)).collect();
        let max = vals.iter().copied().fold(0.0_f64, f64::max).max(1.0) * 1.1;
        let x = |m: f64| x0 + m / last * pw;
        let y = |v: f64| y0 - v / max * inner;
        let _ = write!(
            s,
            r##"<text x="{x0}" y="{}">{label}</text><line x1="{x0}" y1="{y0}" x2="{}" y2="{y0}" stroke="#444"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{}" stroke="#444"/><text x="{}" y="{}" text-anchor="end">{:.0}</text><text x="{}" y="{}" text-anchor="end">0</text>"##,
            top + 14.0,
            x0 + pw,
            y0 - inner,
            x0 - 4.0,
            y0 - inner + 4.0,
            max,
            x0 - 4.0,
            y0 + 4.0,
        );
        for m in (0..=last as u64).step_by(5) {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{m} min</text>"#,
                x(m as f64),
                y0 + 15.0
            );
        }
        let wx = x(warm as f64);
        let _ = write!(
            s,
            r##"<line x1="{wx:.1}" y1="{y0}" x2="{wx:.1}" y2="{}" stroke="#999" stroke-dasharray="2,3"/>"##,
            y0 - inner
        );
        for r in restarts {
            let rx = x(r.at_secs / 60.0);
            let _ = write!(
                s,
                r##"<line x1="{rx:.1}" y1="{y0}" x2="{rx:.1}" y2="{}" stroke="#bbb" stroke-dasharray="6,4"/><text x="{rx:.1}" y="{}" fill="#999" text-anchor="middle">n{}</text>"##,
                y0 - inner,
                y0 - inner - 2.0,
                r.node + 1
            );
        }
        for n in 0..nodes {
            let pts: String = samples
                .iter()
                .filter(|x| x.node == n)
                .filter_map(|p| Some((p.minute as f64, figure(p, what)?)))
                .fold(String::new(), |mut acc, (m, v)| {
                    let _ = write!(acc, "{:.1},{:.1} ", x(m), y(v));
                    acc
                });
            let _ = write!(
                s,
                r#"<polyline points="{pts}" fill="none" stroke="{}" stroke-width="2"/>"#,
                COLORS[n % COLORS.len()]
            );
        }
    }
    s.push_str("</svg>");
    s
}
