//! SVG plots (plotters' SVG backend only: no font or system libraries; text is
//! emitted as SVG `<text>` and laid out with plotters' built-in size estimate).

use std::path::Path;

use plotters::prelude::*;

use crate::workload::ReplayResult;
use crate::Results;

type Res = Result<(), String>;
/// (x, median, min, max) points of one named series.
type Series = (String, Vec<(f64, f64, f64, f64)>);
/// A latency percentile picker.
type Pick = fn(&crate::inproc::LatencyPoint) -> u64;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws every plot whose data exists; returns the file names written.
pub fn all(r: &Results, dir: &Path) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut run = |name: &str, f: &dyn Fn(&Path) -> Res| -> Res {
        let p = dir.join(name);
        f(&p)?;
        names.push(format!("plots/{name}"));
        Ok(())
    };
    run("mpps_vs_frame.svg", &|p| mpps_vs_frame(r, p))?;
    run("mpps_vs_rules.svg", &|p| mpps_vs_rules(r, p))?;
    if r.stages.is_some() {
        run("stage_cycles.svg", &|p| stage_cycles(r, p))?;
    }
    if r.latency.is_some() {
        run("latency_vs_load.svg", &|p| latency(r, p))?;
    }
    run("scaling_workers.svg", &|p| scaling(r, p))?;
    Ok(names)
}

/// A line (with points and min–max whiskers) per series over numeric x.
fn xy_chart(path: &Path, title: &str, xdesc: &str, ydesc: &str, series: &[Series]) -> Res {
    let root = SVGBackend::new(path, (860, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let xs = series.iter().flat_map(|s| s.1.iter().map(|p| p.0));
    let xmax = xs.fold(1.0f64, f64::max) * 1.05;
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.3))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(xdesc)
        .y_desc(ydesc)
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 4, c.filled())))
            .map_err(err)?;
        chart
            .draw_series(
                pts.iter()
                    .map(|p| PathElement::new(vec![(p.0, p.2), (p.0, p.3)], c.stroke_width(1))),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

fn pts(rows: &[&ReplayResult], x: impl Fn(&ReplayResult) -> f64) -> Vec<(f64, f64, f64, f64)> {
    let mut v: Vec<_> = rows
        .iter()
        .map(|r| (x(r), r.mpps.median, r.mpps.min, r.mpps.max))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

fn mpps_vs_frame(r: &Results, path: &Path) -> Res {
    let g: Vec<&ReplayResult> = r
        .replay
        .iter()
        .filter(|x| x.scenario.group == "frame_size")
        .collect();
    let full: Vec<_> = g
        .iter()
        .copied()
        .filter(|x| x.scenario.label.ends_with("_full"))
        .collect();
    let route: Vec<_> = g
        .iter()
        .copied()
        .filter(|x| x.scenario.label.ends_with("_route"))
        .collect();
    xy_chart(
        path,
        "Mpps vs inner frame size (1 worker)",
        "inner frame size (bytes)",
        "Mpps",
        &[
            (
                "full pipeline".into(),
                pts(&full, |x| x.scenario.frame as f64),
            ),
            (
                "decap + route".into(),
                pts(&route, |x| x.scenario.frame as f64),
            ),
        ],
    )
}

fn mpps_vs_rules(r: &Results, path: &Path) -> Res {
    let g: Vec<&ReplayResult> = r
        .replay
        .iter()
        .filter(|x| x.scenario.group == "acl")
        .collect();
    let zero: Vec<&ReplayResult> = g
        .iter()
        .copied()
        .filter(|x| x.scenario.acl.is_none())
        .collect();
    let mut series = Vec::new();
    for fam in ["acl", "fw", "ipc"] {
        let mut rows = zero.clone();
        rows.extend(g.iter().copied().filter(|x| {
            x.scenario
                .acl
                .as_ref()
                .is_some_and(|a| a.name.starts_with(fam))
        }));
        if rows.len() > zero.len() {
            series.push((
                format!("ClassBench {fam}"),
                pts(&rows, |x| {
                    x.scenario.acl.as_ref().map_or(0.0, |a| a.rules as f64)
                }),
            ));
        }
    }
    xy_chart(
        path,
        "Mpps vs ACL rule count (64 B, 1 worker)",
        "rules",
        "Mpps",
        &series,
    )
}

fn scaling(r: &Results, path: &Path) -> Res {
    let g: Vec<&ReplayResult> = r
        .replay
        .iter()
        .filter(|x| x.scenario.group == "workers")
        .collect();
    let measured = pts(&g, |x| x.scenario.workers as f64);
    let one = measured.first().map(|p| p.1).unwrap_or(0.0);
    let ideal: Vec<_> = measured
        .iter()
        .map(|p| (p.0, one * p.0, one * p.0, one * p.0))
        .collect();
    xy_chart(
        path,
        "Scaling with workers (64 B, full pipeline)",
        "workers",
        "Mpps (all workers)",
        &[
            ("measured".into(), measured),
            ("linear from 1 worker".into(), ideal),
        ],
    )
}

fn stage_cycles(r: &Results, path: &Path) -> Res {
    let Some(st) = &r.stages else { return Ok(()) };
    let mut bars: Vec<(String, f64)> = st
        .rows
        .iter()
        .map(|b| (b.stage.clone(), b.cycles_per_packet.median))
        .collect();
    bars.push((
        "engine loop (replay − Σ stages)".into(),
        st.engine_residual_cycles,
    ));
    let n = bars.len();
    let xmax = bars.iter().map(|b| b.1).fold(1.0f64, f64::max) * 1.6;
    let root = SVGBackend::new(path, (900, 80 + 40 * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "cycles/packet per stage (target pipeline; Σ {:.0}, replay {:.0})",
                st.in_process_cycles, st.replay_cycles
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(10)
        .build_cartesian_2d(0f64..xmax, 0f64..n as f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc("TSC cycles per packet")
        .draw()
        .map_err(err)?;
    for (i, (name, c)) in bars.iter().enumerate() {
        let y = (n - 1 - i) as f64;
        let col = COLORS[i % COLORS.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y + 0.15), (*c, y + 0.85)],
                col.filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{name}: {c:.1}"),
                (c + xmax * 0.01, y + 0.65),
                ("sans-serif", 14),
            )))
            .map_err(err)?;
    }
    root.present().map_err(err)
}

fn latency(r: &Results, path: &Path) -> Res {
    let Some(l) = &r.latency else { return Ok(()) };
    let root = SVGBackend::new(path, (860, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let ymax = l
        .points
        .iter()
        .map(|p| p.max_ns as f64)
        .fold(10.0f64, f64::max)
        * 2.0;
    let ymin = l
        .points
        .iter()
        .map(|p| p.p50_ns as f64)
        .fold(f64::MAX, f64::min)
        .max(1.0)
        / 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("latency vs offered load (100% = {:.2} Mpps)", l.max_mpps),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(0f64..100f64, (ymin..ymax).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered load (% of measured maximum)")
        .y_desc("latency (ns, log)")
        .draw()
        .map_err(err)?;
    let series: [(&str, Pick); 4] = [
        ("p50", |p| p.p50_ns),
        ("p99", |p| p.p99_ns),
        ("p99.9", |p| p.p999_ns),
        ("max", |p| p.max_ns),
    ];
    for (i, (name, f)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let v: Vec<(f64, f64)> = l
            .points
            .iter()
            .map(|p| (p.load_pct, f(p).max(1) as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(v.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(v.iter().map(|p| Circle::new(*p, 4, c.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}
