//! The backtest as an SVG chart: demand, the forecast band, serving capacity and the
//! replicas asked for; and `prescale tune`'s frontier.

use plotters::prelude::*;

use super::Row;

/// Points per series at most: longer backtests are reduced to the maximum per bucket, so
/// that a 28-day replay stays a chart of a few hundred kilobytes and peaks stay visible.
const MAX_POINTS: usize = 2_000;

/// Renders `rows` and the replicas `serving` at each step (× `capacity_rps`) as SVG.
pub fn svg(rows: &[Row], serving: &[u32], capacity_rps: f64) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1600, 700)).into_drawing_area();
        draw(&root, rows, serving, capacity_rps).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw(
    root: &Area<'_>,
    rows: &[Row],
    serving: &[u32],
    capacity_rps: f64,
) -> Result<(), DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>> {
    root.fill(&WHITE)?;
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(());
    };
    let hours = |t: i64| (t - first.timestamp) as f64 / 3600.0;
    let bucket = rows.len().div_ceil(MAX_POINTS).max(1);
    // Each series as (hours, the bucket's maximum), skipping gaps.
    let series = |value: &dyn Fn(usize) -> f64| -> Vec<(f64, f64)> {
        (0..rows.len())
            .step_by(bucket)
            .filter_map(|s| {
                let m = (s..(s + bucket).min(rows.len()))
                    .map(value)
                    .filter(|v| v.is_finite())
                    .fold(f64::NAN, f64::max);
                m.is_finite().then(|| (hours(rows[s].timestamp), m))
            })
            .collect()
    };
    let demand = series(&|i| rows[i].demand_rps);
    let forecast = series(&|i| rows[i].forecast_rps);
    let upper = series(&|i| rows[i].upper_rps);
    let ready = series(&|i| f64::from(serving.get(i).copied().unwrap_or(0)) * capacity_rps);
    let replicas = series(&|i| f64::from(rows[i].replicas));

    let top = [&demand, &upper, &ready]
        .iter()
        .flat_map(|s| s.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.05;
    let top_replicas = replicas.iter().map(|p| p.1).fold(1.0, f64::max) * 1.05;
    let end = hours(last.timestamp).max(1e-9);
    let mut chart = ChartBuilder::on(root)
        .caption("prescale backtest", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top)?
        .set_secondary_coord(0.0..end, 0.0..top_replicas);
    chart
        .configure_mesh()
        .x_desc("hours from start")
        .y_desc("requests/s")
        .light_line_style(WHITE)
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("replicas asked")
        .draw()?;
    let line = |color: RGBColor, width: u32| ShapeStyle::from(color).stroke_width(width);
    let grey = RGBColor(150, 150, 150);
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let green = RGBColor(44, 160, 44);
    let purple = RGBColor(148, 103, 189);
    chart
        .draw_series(LineSeries::new(demand, line(grey, 1)))?
        .label("demand")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey));
    chart
        .draw_series(LineSeries::new(forecast, line(blue, 1)))?
        .label("forecast")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], blue));
    chart
        .draw_series(LineSeries::new(upper, line(orange, 1)))?
        .label("forecast upper bound")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], orange));
    chart
        .draw_series(LineSeries::new(ready, line(green, 2)))?
        .label("serving capacity")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], green));
    chart
        .draw_secondary_series(LineSeries::new(replicas, line(purple, 1)))?
        .label("replicas asked (right axis)")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], purple));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

/// `prescale tune`'s frontier as SVG: lost requests against replica-hours, for prescale
/// across the dial (the recommended point ringed) and the HPA across its utilisations, and
/// the clairvoyant scaler's cost as a vertical line.
pub fn frontier_svg(t: &super::tune::Tuning) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1000, 650)).into_drawing_area();
        draw_frontier(&root, t).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn draw_frontier(
    root: &Area<'_>,
    t: &super::tune::Tuning,
) -> Result<(), DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>> {
    root.fill(&WHITE)?;
    let ours: Vec<(f64, f64)> = t
        .frontier
        .iter()
        .map(|p| (p.score.replica_hours, p.score.lost_pct))
        .collect();
    let hpa: Vec<(f64, f64)> = t
        .references
        .hpa
        .iter()
        .map(|(_, s)| (s.replica_hours, s.lost_pct))
        .collect();
    let oracle = t.references.clairvoyant.replica_hours;
    let all = || {
        ours.iter()
            .chain(&hpa)
            .filter(|p| p.0.is_finite() && p.1.is_finite())
    };
    let x_max = all().map(|p| p.0).fold(oracle, f64::max).max(1e-9) * 1.05;
    let x_min = all().map(|p| p.0).fold(oracle, f64::min) * 0.95;
    let y_max = all().map(|p| p.1).fold(0.0, f64::max).max(1e-6) * 1.05;
    let mut chart = ChartBuilder::on(root)
        .caption(
            "prescale tune: lost requests against cost",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_min..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("replica-hours")
        .y_desc("lost requests, %")
        .light_line_style(WHITE)
        .draw()?;
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let green = RGBColor(44, 160, 44);
    let style = |c: RGBColor| ShapeStyle::from(c).stroke_width(2);
    chart
        .draw_series(LineSeries::new(ours.clone(), style(blue)))?
        .label("prescale across the risk dial")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], blue));
    chart.draw_series(ours.iter().map(|&p| Circle::new(p, 3, blue.filled())))?;
    chart
        .draw_series(LineSeries::new(hpa.clone(), style(orange)))?
        .label("HPA at 0.3 to 0.9")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], orange));
    chart.draw_series(hpa.iter().map(|&p| Circle::new(p, 3, orange.filled())))?;
    chart
        .draw_series(LineSeries::new(
            [(oracle, 0.0), (oracle, y_max)],
            style(green),
        ))?
        .label("clairvoyant cost")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], green));
    if let Some(p) = t.frontier.iter().find(|p| Some(p.risk) == t.recommended) {
        let at = (p.score.replica_hours, p.score.lost_pct);
        chart.draw_series([Circle::new(at, 9, style(BLACK))])?;
        chart.draw_series([Text::new(
            format!("recommended: risk {}", super::tune::label(p.risk)),
            at,
            ("sans-serif", 16),
        )])?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_series_and_bounds_the_size() {
        let rows: Vec<Row> = (0..40_000)
            .map(|i| Row {
                timestamp: i * 60,
                demand_rps: 10.0 + (i % 100) as f64,
                forecast_rps: 10.0,
                upper_rps: 12.0,
                replicas: 3,
                capacity_rps: 4.0,
                reason: String::new(),
            })
            .collect();
        let serving = vec![3; rows.len()];
        let out = svg(&rows, &serving, 40.0).unwrap();
        assert!(out.starts_with("<svg"), "{}", &out[..50.min(out.len())]);
        for label in [
            "demand",
            "forecast upper bound",
            "serving capacity",
            "replicas asked",
        ] {
            assert!(out.contains(label), "no {label}");
        }
        assert!(out.len() < 2_000_000, "{} bytes", out.len());
        assert!(svg(&[], &[], 1.0).unwrap().starts_with("<svg"));
    }
}
