//! `bllm validate` and `bllm ls`: recipes without running them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bllm_recipe::{
    ComponentCheck, MemoryLimit, Recipe, expand_sweep, format_bytes, parse_override,
};
use bllm_ste::Estimator;
use clap::Args;

/// Checks component tables with the real component types.
pub struct Components;

impl ComponentCheck for Components {
    fn kv_cache(&self, keys: &toml::Table, values: &toml::Table) -> Vec<(String, String, String)> {
        let expected = "a cache quantizer table: kind = one of float, f16, sign, int, qjl and its options (bits, axis, group, zero_point, outliers, pre_rope, sketch)";
        let side = |key: &str, t: &toml::Table| {
            toml::Value::Table(t.clone())
                .try_into::<bllm_models::kv::QuantSpec>()
                .map_err(|e| {
                    (
                        key.to_owned(),
                        expected.to_owned(),
                        e.to_string().trim().replace('\n', " "),
                    )
                })
        };
        // Each side's own problems, then (both valid) what only keys may have.
        let (keys, values) = (side("keys", keys), side("values", values));
        let mut problems: Vec<_> = [&keys, &values]
            .into_iter()
            .zip(["keys", "values"])
            .filter_map(|(q, key)| match q {
                Ok(q) => q
                    .validate()
                    .err()
                    .map(|(k, e, f)| (format!("{key}.{k}"), e, f)),
                Err(p) => Some(p.clone()),
            })
            .collect();
        if let (Ok(keys), Ok(values), true) = (keys, values, problems.is_empty()) {
            let spec = bllm_models::kv::CacheSpec {
                keys,
                values,
                window: 0,
            };
            problems.extend(spec.validate().err());
        }
        problems
    }

    fn estimator(&self, table: &toml::Table) -> Vec<(String, String, String)> {
        let kinds: Vec<&str> = Estimator::all().iter().map(Estimator::name).collect();
        let expected = format!(
            "an estimator table: kind = one of {} (see `bllm ste list`) and its parameters",
            kinds.join(", ")
        );
        match toml::Value::Table(table.clone()).try_into::<Estimator>() {
            Ok(est) => match est.validate() {
                Ok(()) => Vec::new(),
                Err(bllm_ste::SteError::InvalidParam {
                    param,
                    value,
                    expected,
                    ..
                }) => {
                    vec![(param.to_owned(), expected.to_owned(), format!("{value}"))]
                }
                Err(e) => vec![(String::new(), expected, e.to_string())],
            },
            Err(e) => {
                let msg = e.to_string().trim().replace('\n', " ");
                vec![(String::new(), expected, msg)]
            }
        }
    }
}

/// Arguments of `bllm validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Recipe file.
    pub recipe: PathBuf,
    /// Overrides `KEY=VALUE` (dotted keys, TOML values), applied in order.
    pub overrides: Vec<String>,
}

/// Loads a recipe with overrides and every component check.
pub fn load(recipe: &Path, overrides: &[String]) -> Result<Recipe> {
    let ovs = overrides
        .iter()
        .map(|o| parse_override(o))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Recipe::load(recipe, &ovs, &Components)?)
}

/// `bllm validate`: prints the resolved recipe and its estimated memory, or every problem;
/// fails when the estimate (of any sweep run) exceeds `limit`.
pub fn validate(a: ValidateArgs, limit: &MemoryLimit) -> Result<()> {
    let r = load(&a.recipe, &a.overrides)?;
    let runs = if r.sweep.is_empty() {
        limit.check(&r.name, &r)?;
        vec![(r.name.clone(), r.clone())]
    } else {
        let ovs = a
            .overrides
            .iter()
            .map(|o| parse_override(o))
            .collect::<Result<Vec<_>, _>>()?;
        let runs = expand_sweep(&a.recipe, &ovs, &r, &Components)?;
        let mut out = Vec::new();
        for run in runs {
            let label = format!("{}/{}", r.name, run.name);
            limit.check(&label, &run.recipe)?;
            out.push((label, run.recipe));
        }
        out
    };
    print!("{}", r.resolved_toml());
    let largest = runs
        .iter()
        .map(|(label, recipe)| (label, bllm_recipe::estimate(recipe)))
        .max_by_key(|(_, e)| e.total());
    if let Some((label, e)) = largest {
        let which = if runs.len() == 1 {
            String::new()
        } else {
            format!(" (largest of {} runs: {label})", runs.len())
        };
        eprintln!(
            "memory: an estimated {}{which}: {e}; limit {limit}",
            format_bytes(e.total())
        );
    }
    let runs = runs.len();
    eprintln!(
        "ok: {} is valid ({} kind, {} run{})",
        a.recipe.display(),
        r.kind.name(),
        runs,
        if runs == 1 { "" } else { "s" }
    );
    Ok(())
}

/// Every shipped recipe (`*.toml` under `dir`, recursively), sorted.
pub fn shipped(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Arguments of `bllm ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Recipe directory.
    #[arg(long, default_value = "recipes")]
    pub dir: PathBuf,
}

/// `bllm ls`: shipped recipes with their descriptions.
pub fn ls(a: LsArgs) -> Result<()> {
    for p in shipped(&a.dir)? {
        match load(&p, &[]) {
            Ok(r) => println!("{:<40} {}", p.display(), r.description),
            Err(e) => println!(
                "{:<40} INVALID: {}",
                p.display(),
                e.to_string().lines().next().unwrap_or("")
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The recipe schema's baseline names are exactly bllm-hash's methods.
    #[test]
    fn recipe_baselines_are_the_hash_methods() {
        let methods: Vec<&str> = bllm_hash::Method::ALL.iter().map(|(_, n)| *n).collect();
        assert_eq!(methods, bllm_recipe::BASELINES.to_vec());
    }
}
