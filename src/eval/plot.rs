//! Plots for evaluation reports (SVG): ROC and PR curves, per-category bars.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One curve: its label and its points.
pub type Curve = (String, Vec<(f64, f64)>);

/// One series of bars: its label and, per category, (mean, std) if measured.
pub type BarSeries = (String, Vec<Option<(f64, f64)>>);

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// A precision–recall curve as the staircase average precision measures:
/// precision P_n holds from recall R_{n−1} to R_n.
pub fn pr_steps(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(2 * points.len());
    for w in points.windows(2) {
        let ((r0, _), (r1, p1)) = (w[0], w[1]);
        out.push((r0, p1));
        out.push((r1, p1));
    }
    out
}

/// Curves on the unit square (ROC: x = FPR, y = TPR; PR: x = recall, y =
/// precision), with what chance would draw (`chance`: a dashed grey line).
pub fn curves(
    path: &Path,
    title: &str,
    x: &str,
    y: &str,
    series: &[Curve],
    chance: &[(f64, f64)],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (520, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)?;
    chart
        .configure_mesh()
        .max_light_lines(1)
        .x_desc(x)
        .y_desc(y)
        .draw()?;
    let grey = RGBColor(150, 150, 150);
    chart
        .draw_series(DashedLineSeries::new(
            chance.iter().copied(),
            6,
            4,
            grey.stroke_width(1),
        ))?
        .label("chance")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey.stroke_width(1)));
    for (i, (label, pts)) in series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Grouped bars: one group per category, one bar per series (e.g. K); values
/// are (mean, std) fractions, drawn in percent with the std as an error bar.
/// Category names sit under their group and the legend to the right of the
/// plot, so neither hides a bar.
pub fn bars(path: &Path, title: &str, categories: &[String], series: &[BarSeries]) -> anyhow::Result<()> {
    const LEGEND: u32 = 90;
    let plot_width = (110 + categories.len() * (24 + 18 * series.len())).max(430) as u32;
    let root = SVGBackend::new(path, (plot_width + LEGEND, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(plot_width);
    let n = categories.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&left)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n, 0f64..100f64)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(11)
        .max_light_lines(1)
        .y_desc("%")
        .draw()?;
    let group = 0.8 / series.len().max(1) as f64;
    for (s, (_, values)) in series.iter().enumerate() {
        let c = COLOURS[s % COLOURS.len()];
        chart.draw_series(values.iter().enumerate().filter_map(|(i, v)| {
            v.map(|(v, _)| {
                let x0 = i as f64 + 0.1 + s as f64 * group;
                Rectangle::new([(x0, 0.0), (x0 + group * 0.9, v * 100.0)], c.filled())
            })
        }))?;
        chart.draw_series(values.iter().enumerate().filter_map(|(i, v)| {
            v.filter(|(_, sd)| *sd > 0.0).map(|(v, sd)| {
                let x = i as f64 + 0.1 + s as f64 * group + group * 0.45;
                let (lo, hi) = (((v - sd) * 100.0).max(0.0), ((v + sd) * 100.0).min(100.0));
                PathElement::new(vec![(x, lo), (x, hi)], BLACK.stroke_width(1))
            })
        }))?;
    }
    let label = TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (i, name) in categories.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        left.draw(&Text::new(name.as_str(), (x, y + 8), &label))?;
    }
    for (s, (name, _)) in series.iter().enumerate() {
        let (c, y) = (COLOURS[s % COLOURS.len()], 50 + 22 * s as i32);
        right.draw(&Rectangle::new([(4, y), (18, y + 12)], c.filled()))?;
        right.draw(&Text::new(name.as_str(), (24, y), ("sans-serif", 13)))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pr_staircase_holds_each_precision_over_its_recall_step() {
        let steps = pr_steps(&[(0.0, 1.0), (0.5, 0.5), (1.0, 0.75)]);
        assert_eq!(steps, vec![(0.0, 0.5), (0.5, 0.5), (0.5, 0.75), (1.0, 0.75)]);
    }
}
