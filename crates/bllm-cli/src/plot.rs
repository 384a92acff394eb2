//! PNG plots (plotters, bitmap backend, with a bundled DejaVu Sans so no system fonts are
//! needed).

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| anyhow!("cannot load the bundled font"));
    });
    result
}

/// Plots one surrogate-gradient curve per estimator against `xs`, written atomically.
pub fn gradients(
    path: &Path,
    xs: &[f64],
    curves: &[(&str, Vec<f32>)],
    progress: f64,
) -> Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = curves
        .iter()
        .map(|(name, g)| {
            (
                (*name).to_owned(),
                xs.iter().zip(g).map(|(x, y)| (*x, f64::from(*y))).collect(),
            )
        })
        .collect();
    lines(
        path,
        &format!("surrogate gradients G(x) at progress {progress}"),
        "x",
        "G(x)",
        &series,
    )
}

/// A line chart, one line per series, with a legend; written atomically.
pub fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    register_font()?;
    let points = || {
        series
            .iter()
            .flat_map(|(_, p)| p.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for (x, y) in points() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !x0.is_finite() {
        return Err(anyhow!("nothing to plot for {title}"));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = 0.05 * (y1 - y0).max(1e-6);
    // The bitmap encoder picks the format from the extension, so the temp file ends in .png.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}.png", std::process::id()));
    {
        let root = BitMapBackend::new(&tmp, (1000, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (i, (label, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    pts.iter()
                        .copied()
                        .filter(|(x, y)| x.is_finite() && y.is_finite()),
                    color.stroke_width(2),
                ))
                .map_err(|e| anyhow!("{e}"))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        if series.len() <= 40 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    let bytes = std::fs::read(&tmp).map_err(|e| anyhow!("{}: {e}", tmp.display()));
    let _ = std::fs::remove_file(&tmp);
    bllm_codes::io::write_atomic(path, &bytes?)?;
    Ok(())
}
