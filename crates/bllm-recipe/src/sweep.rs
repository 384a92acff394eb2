//! Sweeps: the cross product of a recipe's `[sweep]` values.

use std::path::Path;

use toml::Value;

use crate::{ComponentCheck, Override, Recipe, Result};

/// One run of a sweep: its overrides and its validated recipe.
#[derive(Clone, Debug)]
pub struct SweepRun {
    /// `key=value` pairs that define this run (in `[sweep]` order).
    pub assignments: Vec<(String, Value)>,
    /// A directory-safe name, e.g. `estimator.kind=ede,seed=1`.
    pub name: String,
    /// The recipe of this run (the `[sweep]` table removed).
    pub recipe: Recipe,
}

/// Expands `base`'s `[sweep]` into every combination, each validated; the first combination
/// varies slowest. A recipe without `[sweep]` gives one run.
pub fn expand_sweep(
    path: &Path,
    extra: &[Override],
    base: &Recipe,
    check: &dyn ComponentCheck,
) -> Result<Vec<SweepRun>> {
    let mut combos: Vec<Vec<(String, Value)>> = vec![Vec::new()];
    for (key, values) in &base.sweep {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    let text = crate::error::read_recipe_text(path)?;
    combos
        .into_iter()
        .map(|assignments| {
            let mut ovs = extra.to_vec();
            ovs.extend(assignments.iter().map(|(k, v)| Override {
                key: k.clone(),
                value: v.clone(),
                text: format!("{k}={v}"),
            }));
            let mut recipe = Recipe::parse(&text, &path.display().to_string(), &ovs, check)?;
            recipe.sweep.clear();
            recipe.resolved.remove("sweep");
            let name = if assignments.is_empty() {
                "run".to_owned()
            } else {
                assignments
                    .iter()
                    .map(|(k, v)| {
                        // A table value with a `name` (e.g. a `[cache]`) is named by it.
                        let named = v.as_table().and_then(|t| t.get("name")?.as_str());
                        let v = match v {
                            _ if named.is_some() => named.unwrap_or_default().to_owned(),
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        format!("{k}={}", v.replace(['/', ' '], "_"))
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            };
            Ok(SweepRun {
                assignments,
                name,
                recipe,
            })
        })
        .collect()
}
