//! `key=value` overrides: dotted keys, TOML-typed values.

use toml::{Table, Value};

use crate::{RecipeError, Result};

/// One parsed override.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    /// Dotted key path, e.g. `train.steps`.
    pub key: String,
    /// The value, typed as TOML (`200` an integer, `1e-3` a float, `true` a boolean, `[1, 2]` an
    /// array, `"x"` or a bare word a string).
    pub value: Value,
    /// The text as given, for messages.
    pub text: String,
}

/// Parses `KEY=VALUE`. The value is read as a TOML value; a bare word that is not valid TOML
/// (`estimator.kind=ede`) is taken as a string.
pub fn parse_override(text: &str) -> Result<Override> {
    let Some((key, raw)) = text.split_once('=') else {
        return Err(RecipeError::BadOverride(text.to_owned()));
    };
    let key = key.trim();
    let valid_key = !key.is_empty()
        && key.split('.').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if !valid_key {
        return Err(RecipeError::BadOverride(text.to_owned()));
    }
    let raw = raw.trim();
    let value = format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()));
    Ok(Override {
        key: key.to_owned(),
        value,
        text: text.to_owned(),
    })
}

/// Sets `key` (dotted) in `table`, creating intermediate tables. Unknown keys are not rejected
/// here: validation reports them, attributed to the override.
pub(crate) fn apply(table: &mut Table, key: &str, value: Value) -> std::result::Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut t = table;
    for (i, p) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = t
            .entry((*p).to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        t = match entry {
            Value::Table(inner) => inner,
            other => {
                return Err(format!(
                    "{} is {}, not a table",
                    parts[..=i].join("."),
                    crate::walk::describe(other)
                ));
            }
        };
    }
    t.insert(parts[parts.len() - 1].to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values() {
        assert_eq!(
            parse_override("train.steps=200").unwrap().value,
            Value::Integer(200)
        );
        assert_eq!(
            parse_override("optimizer.lr=1e-3").unwrap().value,
            Value::Float(1e-3)
        );
        assert_eq!(
            parse_override("model.float_last=false").unwrap().value,
            Value::Boolean(false)
        );
        assert_eq!(
            parse_override("estimator.kind=ede").unwrap().value,
            Value::String("ede".into())
        );
        assert_eq!(
            parse_override("name=\"x y\"").unwrap().value,
            Value::String("x y".into())
        );
        assert_eq!(
            parse_override("model.hidden=[8, 16]").unwrap().value,
            Value::Array(vec![Value::Integer(8), Value::Integer(16)])
        );
        for bad in ["novalue", "=3", "a..b=1", "a b=1"] {
            assert!(parse_override(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn apply_creates_tables_and_refuses_to_descend_into_values() {
        let mut t: Table = "a = 1\n[b]\nc = 2".parse().unwrap();
        apply(&mut t, "b.d.e", Value::Integer(3)).unwrap();
        assert_eq!(t["b"]["d"]["e"].as_integer(), Some(3));
        assert!(
            apply(&mut t, "a.x", Value::Integer(1))
                .unwrap_err()
                .contains("not a table")
        );
    }
}
