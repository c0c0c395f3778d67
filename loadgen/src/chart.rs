//! A small bar chart written as SVG text: panels stacked vertically, each
//! with groups of bars on a linear axis from 0, values printed on the bars.

use std::fmt::Write as _;

/// One chart panel.
pub struct Panel {
    pub title: String,
    /// Unit of the axis, e.g. "per second".
    pub unit: String,
    pub groups: Vec<Group>,
}

/// Bars side by side under one label.
pub struct Group {
    /// May hold a `\n` for a second line.
    pub label: String,
    /// (series, value): the series picks the colour and the legend entry.
    pub bars: Vec<(Series, f64)>,
}

/// What a bar shows; each has its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    /// A figure of the system under test.
    Measured,
    /// A reference measured in the same run.
    Reference,
    P50,
    P99,
}

impl Series {
    fn colour(self) -> &'static str {
        match self {
            Series::Measured => "#2b6cb0",
            Series::Reference => "#a0aec0",
            Series::P50 => "#38a169",
            Series::P99 => "#dd6b20",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Series::Measured => "this system",
            Series::Reference => "reference (same run)",
            Series::P50 => "p50",
            Series::P99 => "p99",
        }
    }
}

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 330.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;

/// The whole chart as an SVG document.
pub fn svg(title: &str, panels: &[Panel]) -> String {
    let height = 40.0 + PANEL_HEIGHT * panels.len() as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="26" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut out, panel, 40.0 + PANEL_HEIGHT * i as f64);
    }
    out.push_str("</svg>\n");
    out
}

fn draw_panel(out: &mut String, panel: &Panel, y0: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = PANEL_HEIGHT - TOP - BOTTOM;
    let base = y0 + TOP + plot_h;
    let max = panel
        .groups
        .iter()
        .flat_map(|g| g.bars.iter().map(|(_, v)| *v))
        .fold(0.0_f64, f64::max);
    let (top, step) = axis(max);
    let y_of = |v: f64| base - plot_h * (v / top);

    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{} <tspan font-weight="normal" fill="#555">({})</tspan></text>"##,
        y0 + 22.0,
        escape(&panel.title),
        escape(&panel.unit)
    );
    // Grid lines and axis labels.
    let mut tick = 0.0;
    while tick <= top * 1.0001 {
        let y = y_of(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e2e8f0"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            tick_label(tick, step)
        );
        tick += step;
    }
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{base:.1}" x2="{:.1}" y2="{base:.1}" stroke="#333"/>"##,
        LEFT + plot_w
    );

    let n = panel.groups.len().max(1) as f64;
    let group_w = plot_w / n;
    for (i, group) in panel.groups.iter().enumerate() {
        let gx = LEFT + group_w * i as f64;
        let bars = group.bars.len().max(1) as f64;
        let bar_w = (group_w * 0.7 / bars).min(60.0);
        let start = gx + (group_w - bar_w * bars) / 2.0;
        for (j, (series, value)) in group.bars.iter().enumerate() {
            let x = start + bar_w * j as f64;
            let y = y_of(*value);
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                bar_w - 2.0,
                (base - y).max(0.0),
                series.colour(),
                escape(&group.label.replace('\n', " ")),
                number(*value)
            );
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"#,
                x + (bar_w - 2.0) / 2.0,
                y - 4.0,
                number(*value)
            );
        }
        for (k, line) in group.label.split('\n').enumerate() {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                gx + group_w / 2.0,
                base + 18.0 + 15.0 * k as f64,
                escape(line)
            );
        }
    }

    // Legend: the series this panel uses, in first-use order.
    let mut series: Vec<Series> = Vec::new();
    for (s, _) in panel.groups.iter().flat_map(|g| &g.bars) {
        if !series.contains(s) {
            series.push(*s);
        }
    }
    let mut x = WIDTH - RIGHT - 170.0 * series.len() as f64;
    for s in series {
        let _ = writeln!(
            out,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            y0 + 12.0,
            s.colour(),
            x + 16.0,
            y0 + 22.0,
            s.name()
        );
        x += 170.0;
    }
}

/// The top of the axis and the tick step: 1, 2 or 5 times a power of ten,
/// about five ticks.
fn axis(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.2);
    }
    let rough = max / 5.0;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * power);
    ((max / step).ceil() * step, step)
}

/// An axis label: as many decimals as the step needs.
fn tick_label(value: f64, step: f64) -> String {
    if step >= 1.0 {
        thousands(value.round() as u64)
    } else {
        let decimals = (-step.log10().floor()) as usize;
        format!("{value:.decimals$}")
    }
}

/// A value for a label: thousands separated, few decimals.
pub fn number(value: f64) -> String {
    if value >= 1000.0 {
        thousands(value.round() as u64)
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// 12345 as "12,345".
fn thousands(whole: u64) -> String {
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_steps_are_round() {
        assert_eq!(axis(2_340.0), (2_500.0, 500.0));
        assert_eq!(axis(9.0), (10.0, 2.0));
        assert_eq!(axis(0.0), (1.0, 0.2));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(25_123.4), "25,123");
        assert_eq!(number(1_000.0), "1,000");
        assert_eq!(number(123.4), "123");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(1.234), "1.23");
        assert_eq!(tick_label(0.0, 50.0), "0");
        assert_eq!(tick_label(50.0, 50.0), "50");
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        assert_eq!(tick_label(5_000.0, 1_000.0), "5,000");
    }

    #[test]
    fn the_chart_is_one_svg_with_every_bar() {
        let panel = Panel {
            title: "Throughput".into(),
            unit: "per second".into(),
            groups: vec![
                Group {
                    label: "commands\nc64".into(),
                    bars: vec![(Series::Measured, 1500.0)],
                },
                Group {
                    label: "sysbench <16>".into(),
                    bars: vec![(Series::Reference, 2000.0)],
                },
            ],
        };
        let svg = svg("Bench & co", &[panel]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect x=").count(), 2 + 2);
        assert!(svg.contains("Bench &amp; co") && svg.contains("sysbench &lt;16&gt;"));
        assert!(svg.contains(">1,500<"));
    }
}
