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
    register_font()?;
    // The bitmap encoder picks the format from the extension, so the temp file ends in .png.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}.png", std::process::id()));
    {
        let root = BitMapBackend::new(&tmp, (1000, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let (lo, hi) = curves
            .iter()
            .flat_map(|(_, g)| g.iter().copied())
            .filter(|v| v.is_finite())
            .fold((0.0f32, 1.0f32), |(a, b), v| (a.min(v), b.max(v)));
        let pad = 0.05 * (hi - lo).max(1e-3);
        let (x0, x1) = (xs[0], *xs.last().unwrap_or(&xs[0]) + 1e-9);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("surrogate gradients G(x) at progress {progress}"),
                ("sans-serif", 24),
            )
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(x0..x1, f64::from(lo - pad)..f64::from(hi + pad))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("x")
            .y_desc("G(x)")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (i, (name, g)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    xs.iter().zip(g).map(|(x, y)| (*x, f64::from(*y))),
                    color.stroke_width(2),
                ))
                .map_err(|e| anyhow!("{e}"))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    let bytes = std::fs::read(&tmp).map_err(|e| anyhow!("{}: {e}", tmp.display()));
    let _ = std::fs::remove_file(&tmp);
    bllm_codes::io::write_atomic(path, &bytes?)?;
    Ok(())
}
