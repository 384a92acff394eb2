//! `bllm ste …`: list the estimators; tabulate and plot their forward and surrogate gradient.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bllm_ste::{Ctx, Estimator};
use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use clap::{Args, Subcommand};

type Ad = Autodiff<NdArray>;

/// `bllm ste` subcommands.
#[derive(Debug, Subcommand)]
pub enum SteCommand {
    /// Every estimator: name, output levels, parameters with defaults, description.
    List(ListArgs),
    /// CSV `estimator,x,forward,grad` over a range of x (grad = autodiff through the real op).
    Table(TableArgs),
}

/// Arguments of `bllm ste list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `bllm ste table`.
#[derive(Debug, Args)]
pub struct TableArgs {
    /// Range START:STOP:STEP (STOP included), e.g. -2:2:0.01.
    #[arg(long, allow_hyphen_values = true)]
    pub x: String,
    /// Training progress p in [0, 1] for scheduled estimators.
    #[arg(long, default_value_t = 0.0)]
    pub progress: f64,
    /// Comma-separated estimator names (default: all).
    #[arg(long, value_delimiter = ',')]
    pub estimators: Vec<String>,
    /// Seed of stochastic estimators.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also plot the surrogate gradients to this PNG.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
    /// Write the CSV here instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Runs one `bllm ste` subcommand.
pub fn run(cmd: SteCommand) -> Result<()> {
    match cmd {
        SteCommand::List(a) => list(a),
        SteCommand::Table(a) => table(a),
    }
}

fn list(a: ListArgs) -> Result<()> {
    let infos: Vec<_> = Estimator::all().iter().map(Estimator::info).collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&infos)?);
        return Ok(());
    }
    for i in infos {
        let params = if i.params.is_empty() {
            "-".to_owned()
        } else {
            i.params
                .iter()
                .map(|p| format!("{}={}", p.name, p.value))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let levels = serde_json::to_value(i.levels)?;
        println!(
            "{:<18} {:<9} {:<30} {}",
            i.name,
            levels.as_str().unwrap_or(""),
            params,
            i.description
        );
    }
    Ok(())
}

/// Parses `START:STOP:STEP` into the points `START, START+STEP, …, <= STOP`.
pub(crate) fn parse_range(s: &str) -> Result<Vec<f64>> {
    let parts: Vec<&str> = s.split(':').collect();
    let [start, stop, step] = parts[..] else {
        bail!("--x {s:?}: expected START:STOP:STEP, e.g. -2:2:0.01");
    };
    let num = |v: &str, what: &str| -> Result<f64> {
        let x: f64 = v
            .trim()
            .parse()
            .with_context(|| format!("--x {s:?}: {what} {v:?} is not a number"))?;
        if !x.is_finite() {
            bail!("--x {s:?}: {what} must be finite");
        }
        Ok(x)
    };
    let (start, stop, step) = (num(start, "START")?, num(stop, "STOP")?, num(step, "STEP")?);
    if step <= 0.0 || stop < start {
        bail!("--x {s:?}: need STEP > 0 and STOP >= START");
    }
    let n = ((stop - start) / step + 1e-9).floor() as usize + 1;
    if n > 1_000_000 {
        bail!("--x {s:?}: {n} points is too many (at most 1,000,000)");
    }
    Ok((0..n).map(|i| start + i as f64 * step).collect())
}

/// Forward values and autodiff gradients of `est` at `xs`.
pub(crate) fn evaluate(est: &Estimator, xs: &[f64], ctx: &Ctx) -> Result<(Vec<f32>, Vec<f32>)> {
    let dev = Default::default();
    let xf: Vec<f32> = xs.iter().map(|&x| x as f32).collect();
    let x = Tensor::<Ad, 1>::from_data(TensorData::new(xf, [xs.len()]), &dev).require_grad();
    let y = est.apply(x.clone(), ctx);
    let grads = y.clone().sum().backward();
    let read = |t: TensorData| t.to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"));
    let g = x.grad(&grads).context("no gradient reached x")?;
    Ok((read(y.into_data())?, read(g.into_data())?))
}

fn table(a: TableArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&a.progress) {
        bail!("--progress {} is outside [0, 1]", a.progress);
    }
    let xs = parse_range(&a.x)?;
    let ests = if a.estimators.is_empty() {
        Estimator::all()
    } else {
        a.estimators
            .iter()
            .map(|n| Estimator::from_name(n.trim()))
            .collect::<Result<Vec<_>, _>>()?
    };
    let ctx = Ctx::at(a.progress).with_seed(a.seed);
    let mut csv = String::from("estimator,x,forward,grad\n");
    let mut curves = Vec::new();
    for est in &ests {
        let (fwd, grad) = evaluate(est, &xs, &ctx)?;
        for ((x, f), g) in xs.iter().zip(&fwd).zip(&grad) {
            csv.push_str(&format!("{},{},{},{}\n", est.name(), *x as f32, f, g));
        }
        curves.push((est.name(), grad));
    }
    match &a.out {
        Some(path) => bllm_codes::io::write_atomic(path, csv.as_bytes())?,
        None => print!("{csv}"),
    }
    if let Some(png) = &a.png {
        crate::plot::gradients(png, &xs, &curves, a.progress)?;
        eprintln!("wrote {}", png.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("-1:1:0.5").unwrap(),
            vec![-1.0, -0.5, 0.0, 0.5, 1.0]
        );
        assert_eq!(parse_range("0:0.3:0.1").unwrap().len(), 4);
        for bad in ["1:0:0.1", "0:1:0", "0:1", "a:1:0.1", "0:1:-1", "0:1e9:1e-9"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }
}
