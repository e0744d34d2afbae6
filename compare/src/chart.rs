//! `BENCHMARKS.svg`: the run drawn with plotters — every ratio with a target as a bar on a log
//! scale with its target as a line (green when met, red when not), and the latency distribution
//! (p10–p90 whisker, p25–p75 box, p50 tick, p99 dot; medians of the rounds) of each system for
//! the point read and the request cycle.

use plotters::prelude::*;

use crate::{Res, Results, SYSTEMS};

const WIDTH: u32 = 1100;
const ROW: i32 = 22;
const LEFT: i32 = 560;
const BAR_WIDTH: i32 = 480;
/// The ratio axis: 0.1× to 100×, logarithmic.
const LOG_MIN: f64 = -1.0;
const LOG_MAX: f64 = 2.0;

/// A target as written in the ratio table (`≤ 1.03×`, `≥ 10×`): at most or at least, and the
/// number; `None` for "(measured)" and targets in other units.
pub(crate) fn target(text: &str) -> Option<(bool, f64)> {
    if !text.ends_with('×') {
        return None;
    }
    crate::bound(text)
}

fn x_of(ratio: f64) -> i32 {
    let l = ratio.max(1e-3).log10().clamp(LOG_MIN, LOG_MAX);
    LEFT + ((l - LOG_MIN) / (LOG_MAX - LOG_MIN) * f64::from(BAR_WIDTH)) as i32
}

pub(crate) fn draw(path: &std::path::Path, r: &Results, rows: &[(String, f64, &str)]) -> Res<()> {
    // A target's floor (see `floor_of`) is drawn on its bar as a blue tick.
    let bars: Vec<(&str, f64, bool, f64, Option<f64>)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, (what, v, t))| {
            let (at_most, goal) = target(t)?;
            let floor = crate::floor_of(rows, i);
            (!v.is_nan()).then_some((what.as_str(), *v, at_most, goal, floor))
        })
        .collect();
    let panels = [
        "1. point read by primary key",
        "3. request cycle (checkout, point read, return)",
    ];
    let ratios_height = 60 + ROW * bars.len() as i32;
    let panel_height = 60 + 26 * SYSTEMS.len() as i32;
    let height = ratios_height + panel_height * panels.len() as i32 + 20;
    let root = SVGBackend::new(path, (WIDTH, height as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let font = |size: i32| ("sans-serif", size).into_font();
    root.draw(&Text::new(
        "Ratios against each target (log scale, 0.1× to 100×): green met, red missed; black line: the target; blue tick: the floor measured in the same run",
        (10, 20),
        font(15),
    ))?;
    for x in [0.1, 0.5, 1.0, 2.0, 10.0, 100.0] {
        let px = x_of(x);
        root.draw(&PathElement::new(
            vec![(px, 34), (px, ratios_height - 10)],
            RGBColor(220, 220, 220),
        ))?;
        root.draw(&Text::new(format!("{x}×"), (px - 10, 40), font(11)))?;
    }
    for (i, (what, v, at_most, goal, floor)) in bars.iter().enumerate() {
        let y = 52 + ROW * i as i32;
        let met = if *at_most { v <= goal } else { v >= goal };
        let color = if met {
            RGBColor(60, 160, 90)
        } else {
            RGBColor(210, 70, 60)
        };
        let label: String = what.chars().take(88).collect();
        root.draw(&Text::new(label, (10, y + 4), font(11)))?;
        root.draw(&Rectangle::new(
            [(x_of(0.1), y), (x_of(*v), y + ROW - 6)],
            color.filled(),
        ))?;
        let gx = x_of(*goal);
        root.draw(&PathElement::new(
            vec![(gx, y - 2), (gx, y + ROW - 4)],
            BLACK.stroke_width(2),
        ))?;
        if let Some(floor) = floor {
            let fx = x_of(*floor);
            root.draw(&PathElement::new(
                vec![(fx, y - 2), (fx, y + ROW - 4)],
                RGBColor(40, 90, 220).stroke_width(3),
            ))?;
        }
        root.draw(&Text::new(
            format!("{v:.2}×"),
            (x_of(*v).max(x_of(0.1)) + 4, y + 3),
            font(10),
        ))?;
    }
    for (p, workload) in panels.iter().enumerate() {
        let top = ratios_height + panel_height * p as i32;
        let get = |sys: &str, q: &str| r.get(workload, &format!("{q} µs"), sys);
        let most = SYSTEMS
            .iter()
            .map(|s| get(s, "p99"))
            .filter(|v| !v.is_nan())
            .fold(1.0_f64, f64::max);
        let scale = |us: f64| LEFT + (us / most * f64::from(BAR_WIDTH)) as i32;
        root.draw(&Text::new(
            format!("{workload}: latency µs (p10–p90 line, p25–p75 box, p50 tick, p99 dot)"),
            (10, top + 20),
            font(15),
        ))?;
        for (i, sys) in SYSTEMS.iter().enumerate() {
            let y = top + 40 + 26 * i as i32;
            let [p10, p25, p50, p75, p90, p99] =
                ["p10", "p25", "p50", "p75", "p90", "p99"].map(|q| get(sys, q));
            if p50.is_nan() {
                continue;
            }
            root.draw(&Text::new(
                format!("{sys}: p50 {p50:.1}, p99 {p99:.1}"),
                (10, y + 4),
                font(12),
            ))?;
            let mid = y + 8;
            if !(p10.is_nan() || p90.is_nan()) {
                root.draw(&PathElement::new(
                    vec![(scale(p10), mid), (scale(p90), mid)],
                    BLACK,
                ))?;
            }
            if !(p25.is_nan() || p75.is_nan()) {
                root.draw(&Rectangle::new(
                    [(scale(p25), y + 2), (scale(p75), y + 14)],
                    RGBColor(120, 150, 210).filled(),
                ))?;
            }
            root.draw(&PathElement::new(
                vec![(scale(p50), y), (scale(p50), y + 16)],
                BLACK.stroke_width(3),
            ))?;
            if !p99.is_nan() {
                root.draw(&Circle::new(
                    (scale(p99), mid),
                    4,
                    RGBColor(210, 70, 60).filled(),
                ))?;
            }
        }
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::target;

    #[test]
    fn targets_are_read_as_written_in_the_table() {
        assert_eq!(target("≤ 1.03×"), Some((true, 1.03)));
        assert_eq!(target("≥ 10×"), Some((false, 10.0)));
        assert_eq!(target("< 1×"), Some((true, 1.0)));
        assert_eq!(target("(measured)"), None);
        assert_eq!(target("≤ 4 KiB"), None);
    }
}
