//! `hotplugctl timeline`: the daemon's record of handler runs and gap waits, as a table or
//! as an SVG chart (a boot chart for hotplug): one bar per handler run on a time axis, one
//! row each, labelled with SEQNUM and rule (the full outcome on hover), and the gap waits
//! as shaded bands across all rows, so an admin sees where the time goes.

use std::fmt::Write;

/// One entry of the record, times in seconds since the daemon started. Serialized as
/// `hotplugctl timeline --json` shows it: `"kind": "run"` or `"wait"` and the fields.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Span {
    Run {
        start: f64,
        end: f64,
        seqnum: Option<u64>,
        rule: String,
        outcome: String,
        /// Started by a `background` rule: the queue did not wait for it.
        background: bool,
        /// The lane it ran in (`workers` > 1), 0 otherwise.
        #[serde(default)]
        lane: usize,
    },
    Wait {
        start: f64,
        end: f64,
        first: u64,
        last: u64,
    },
}

impl Span {
    fn bounds(&self) -> (f64, f64) {
        match self {
            Span::Run { start, end, .. } | Span::Wait { start, end, .. } => (*start, *end),
        }
    }
}

/// Parse the daemon's `timeline` reply lines; malformed lines are skipped.
pub fn parse(lines: &[String]) -> Vec<Span> {
    lines
        .iter()
        .filter_map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            let num = |i: usize| w.get(i)?.parse::<f64>().ok();
            match *w.first()? {
                // Words after the 6th are flags: `background`, `lane=N`.
                "run" if w.len() >= 6 => {
                    let mut background = false;
                    let mut lane = 0;
                    for flag in &w[6..] {
                        match flag.strip_prefix("lane=") {
                            Some(n) => lane = n.parse().ok()?,
                            None if *flag == "background" => background = true,
                            None => return None,
                        }
                    }
                    Some(Span::Run {
                        start: num(1)?,
                        end: num(2)?,
                        seqnum: match w[3] {
                            "-" => None,
                            s => Some(s.parse().ok()?),
                        },
                        rule: crate::control::unescape(w[4])
                            .map(|b| String::from_utf8_lossy(&b).into_owned())?,
                        outcome: w[5].replace('_', " "),
                        background,
                        lane,
                    })
                }
                "wait" if w.len() == 5 => Some(Span::Wait {
                    start: num(1)?,
                    end: num(2)?,
                    first: w[3].parse().ok()?,
                    last: w[4].parse().ok()?,
                }),
                _ => None,
            }
        })
        .collect()
}

/// A plain table: when, how long, what.
pub fn table(spans: &[Span]) -> String {
    let mut out = String::new();
    for s in spans {
        let _ = match s {
            Span::Run {
                start,
                end,
                seqnum,
                rule,
                outcome,
                background,
                lane,
            } => writeln!(
                out,
                "{start:>10.3}s {:>9.1}ms  {:>8}  {rule}{}{}: {outcome}",
                (end - start) * 1e3,
                seq(*seqnum),
                if *background { " (background)" } else { "" },
                if *lane > 0 {
                    format!(" [lane {lane}]")
                } else {
                    String::new()
                }
            ),
            Span::Wait {
                start,
                end,
                first,
                last,
            } => writeln!(
                out,
                "{start:>10.3}s {:>9.1}ms  {:>8}  waited for SEQNUM {first}..={last}",
                (end - start) * 1e3,
                "gap"
            ),
        };
    }
    out
}

/// A SEQNUM as shown: `-` for a synthetic event's none.
fn seq(s: Option<u64>) -> String {
    s.map_or("-".to_owned(), |s| s.to_string())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const ROW: f64 = 16.0;
const LEFT: f64 = 10.0;
const TOP: f64 = 40.0;
const WIDTH: f64 = 1200.0;

/// Which row each run is drawn on: with one lane, a row per run (a boot chart); with
/// lanes, a row per lane, each run's bar in its lane's row, and a row per background run
/// after them (it overlaps the runs its lane went on with).
fn rows(spans: &[Span]) -> (Vec<usize>, usize, bool) {
    let lanes = spans
        .iter()
        .filter_map(|s| match s {
            Span::Run { lane, .. } => Some(*lane + 1),
            Span::Wait { .. } => None,
        })
        .max()
        .unwrap_or(0);
    let mut rows = Vec::new();
    let mut next = if lanes > 1 { lanes } else { 0 };
    for s in spans {
        if let Span::Run {
            lane, background, ..
        } = s
        {
            if lanes > 1 && !background {
                rows.push(*lane);
            } else {
                rows.push(next);
                next += 1;
            }
        }
    }
    (rows, next.max(1), lanes > 1)
}

/// The chart. Bars are at least a pixel wide so a 1 ms handler is still visible.
pub fn svg(spans: &[Span]) -> String {
    let runs = spans
        .iter()
        .filter(|s| matches!(s, Span::Run { .. }))
        .count();
    let (rows, nrows, lanes) = rows(spans);
    let (t0, t1) = spans
        .iter()
        .map(Span::bounds)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (s, e)| {
            (a.min(s), b.max(e))
        });
    let (t0, t1) = if spans.is_empty() {
        (0.0, 1.0)
    } else {
        (t0, t1.max(t0 + 1e-3))
    };
    let plot = WIDTH - LEFT - 260.0;
    let x = |t: f64| LEFT + (t - t0) / (t1 - t0) * plot;
    let height = TOP + (nrows as f64) * ROW + 30.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        out,
        "<style>.run{{fill:#3b7dd8}}.run.failed{{fill:#d8453b}}.run.background{{opacity:0.6}}.wait{{fill:#f2b134;opacity:0.35}}text{{fill:#222}}</style>"
    );
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="16" font-size="13">hotplugd: {runs} handler runs over {:.3} s</text>"#,
        t1 - t0
    );
    // Axis ticks at a round step, about ten across.
    let span = t1 - t0;
    let raw = span / 10.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(mag * 10.0);
    let mut t = (t0 / step).ceil() * step;
    while t <= t1 + 1e-9 {
        let _ = writeln!(
            out,
            r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#ccc"/><text x="{0:.1}" y="{3}" text-anchor="middle">{4:.3}s</text>"##,
            x(t),
            TOP - 6.0,
            height - 24.0,
            TOP - 10.0,
            t
        );
        t += step;
    }
    for s in spans {
        if let Span::Wait {
            start,
            end,
            first,
            last,
        } = s
        {
            let _ = writeln!(
                out,
                r#"<rect class="wait" x="{:.1}" y="{TOP}" width="{:.1}" height="{:.1}"><title>waited {:.0} ms for SEQNUM {}..={}</title></rect>"#,
                x(*start),
                (x(*end) - x(*start)).max(1.0),
                height - TOP - 24.0,
                (end - start) * 1e3,
                first,
                last
            );
        }
    }
    let mut rows = rows.into_iter();
    for s in spans {
        if let Span::Run {
            start,
            end,
            seqnum,
            rule,
            outcome,
            background,
            ..
        } = s
        {
            let y = TOP + rows.next().unwrap_or(0) as f64 * ROW;
            // In a lane's row the bars follow each other: the label is in the hover.
            let text = !lanes || *background;
            let class = match (outcome == "exit 0", background) {
                (true, false) => "run",
                (false, false) => "run failed",
                (true, true) => "run background",
                (false, true) => "run failed background",
            };
            let label = format!(
                "{} {}{}",
                seq(*seqnum),
                esc(rule),
                if *background { " (background)" } else { "" }
            );
            let _ = write!(
                out,
                r#"<rect class="{class}" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"><title>SEQNUM {label}: {} in {:.1} ms</title></rect>"#,
                x(*start),
                y + 2.0,
                (x(*end) - x(*start)).max(1.0),
                ROW - 4.0,
                esc(outcome),
                (end - start) * 1e3,
            );
            if text {
                let _ = write!(
                    out,
                    r#"<text x="{:.1}" y="{:.1}">{label}</text>"#,
                    x(*end) + 4.0,
                    y + ROW - 4.0
                );
            }
            out.push('\n');
        }
    }
    if lanes {
        for lane in 0..nrows {
            if spans
                .iter()
                .any(|s| matches!(s, Span::Run { lane: l, background: false, .. } if *l == lane))
            {
                let _ = writeln!(
                    out,
                    r#"<text x="{:.1}" y="{:.1}">lane {lane}</text>"#,
                    LEFT + plot + 8.0,
                    TOP + lane as f64 * ROW + ROW - 4.0
                );
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_draws_every_run() {
        let lines: Vec<String> = [
            "run 0.100000 0.101500 7 modules exit_0",
            "wait 0.200000 2.200000 8 8",
            "run 2.200000 2.500000 9 a\\x20b exit_3",
            "run 2.300000 9.500000 10 net-up exit_0 background",
            "run 2.300000 9.500000 10 net-up exit_0 bogus",
            "garbage",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let spans = parse(&lines);
        assert_eq!(spans.len(), 4);
        assert!(
            matches!(&spans[2], Span::Run { rule, outcome, background: false, .. } if rule == "a b" && outcome == "exit 3")
        );
        assert!(matches!(
            &spans[3],
            Span::Run {
                background: true,
                ..
            }
        ));
        let svg = svg(&spans);
        assert_eq!(svg.matches("<rect class=\"run").count(), 3);
        assert_eq!(svg.matches("class=\"run failed\"").count(), 1);
        assert_eq!(svg.matches("class=\"run background\"").count(), 1);
        assert!(svg.contains("10 net-up (background)"));
        assert_eq!(svg.matches("<rect class=\"wait\"").count(), 1);
        assert!(svg.contains("9 a b"));
        let t = table(&spans);
        assert!(t.contains("waited for SEQNUM 8..=8"), "{t}");
        assert!(t.contains("net-up (background): exit 0"), "{t}");
    }

    #[test]
    fn lanes_get_a_row_each() {
        let lines: Vec<String> = [
            "run 0.1 0.5 1 a exit_0",
            "run 0.1 0.3 2 b exit_0 lane=1",
            "run 0.3 0.6 3 c exit_0 lane=1",
            "run 0.5 0.9 4 d exit_0",
            "run 0.2 0.9 5 bg exit_0 background lane=1",
            "run 0.2 0.9 5 x exit_0 lane=x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let spans = parse(&lines);
        assert_eq!(spans.len(), 5, "lane=x is malformed");
        let (rows, n, lanes) = rows(&spans);
        assert!(lanes);
        assert_eq!(rows, [0, 1, 1, 0, 2]);
        assert_eq!(n, 3);
        let svg = svg(&spans);
        assert!(svg.contains(">lane 0<") && svg.contains(">lane 1<"));
        assert!(!svg.contains(">lane 2<"), "the background row is no lane");
        assert!(table(&spans).contains("b [lane 1]: exit 0"));
        // One lane: a row per run, as ever.
        let one = parse(&lines[..1]);
        assert_eq!(super::rows(&one), (vec![0], 1, false));
    }
}
