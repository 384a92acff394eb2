//! A schema walker over TOML tables that collects every issue instead of stopping at the first.

use std::collections::BTreeSet;

use toml::{Table, Value};

use crate::Issue;

/// Collects issues; maps dotted keys that came from overrides to their override text.
pub(crate) struct Report<'a> {
    pub(crate) file: &'a str,
    pub(crate) overrides: &'a [(String, String)],
    pub(crate) issues: Vec<Issue>,
}

impl Report<'_> {
    pub(crate) fn push(
        &mut self,
        key: &str,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) {
        let source = self
            .overrides
            .iter()
            .rev()
            .find(|(k, _)| {
                k == key || key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}."))
            })
            .map(|(_, text)| format!("override {text}"))
            .unwrap_or_else(|| self.file.to_owned());
        self.issues.push(Issue {
            source,
            key: key.to_owned(),
            expected: expected.into(),
            found: found.into(),
        });
    }
}

/// Human description of a TOML value for messages: its type and value.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {s:?}"),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Float(f) => format!("the float {f}"),
        Value::Boolean(b) => format!("the boolean {b}"),
        Value::Datetime(d) => format!("the datetime {d}"),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Table(_) => "a table".to_owned(),
    }
}

/// One table of the recipe being read; remembers which keys were used.
pub(crate) struct Section<'t> {
    table: Option<&'t Table>,
    path: String,
    used: BTreeSet<String>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl<'t> Section<'t> {
    pub(crate) fn root(table: &'t Table) -> Self {
        Self {
            table: Some(table),
            path: String::new(),
            used: BTreeSet::new(),
        }
    }

    /// The sub-table `key` (an empty section when absent; an issue when not a table).
    pub(crate) fn table(&mut self, key: &str, r: &mut Report<'_>) -> Section<'t> {
        let path = join(&self.path, key);
        self.used.insert(key.to_owned());
        let table = match self.table.and_then(|t| t.get(key)) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(other) => {
                r.push(&path, "a table", describe(other));
                None
            }
        };
        Section {
            table,
            path,
            used: BTreeSet::new(),
        }
    }

    /// The raw value of `key`, marking it used.
    pub(crate) fn raw(&mut self, key: &str) -> Option<&'t Value> {
        self.used.insert(key.to_owned());
        self.table.and_then(|t| t.get(key))
    }

    /// The raw sub-table `key` (for components validated elsewhere).
    pub(crate) fn raw_table(&mut self, key: &str, r: &mut Report<'_>) -> Option<Table> {
        match self.raw(key) {
            None => None,
            Some(Value::Table(t)) => Some(t.clone()),
            Some(other) => {
                r.push(&join(&self.path, key), "a table", describe(other));
                None
            }
        }
    }

    pub(crate) fn key(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// An integer in `min..=max`; `default` when absent (None = required).
    pub(crate) fn int(
        &mut self,
        key: &str,
        default: Option<i64>,
        min: i64,
        max: i64,
        r: &mut Report<'_>,
    ) -> i64 {
        let range = if max == i64::MAX {
            format!("an integer >= {min}")
        } else {
            format!("an integer in {min}..={max}")
        };
        match self.raw(key) {
            None => match default {
                Some(d) => d,
                None => {
                    r.push(&self.key(key), range, "nothing (the key is required)");
                    min
                }
            },
            Some(Value::Integer(i)) if (min..=max).contains(i) => *i,
            Some(v) => {
                r.push(&self.key(key), range, describe(v));
                default.unwrap_or(min)
            }
        }
    }

    /// A finite float in `[min, max]` (integers are accepted); `default` when absent.
    pub(crate) fn float(
        &mut self,
        key: &str,
        default: Option<f64>,
        min: f64,
        max: f64,
        r: &mut Report<'_>,
    ) -> f64 {
        let range = if max == f64::INFINITY {
            format!("a number >= {min}")
        } else {
            format!("a number in [{min}, {max}]")
        };
        let v = match self.raw(key) {
            None => {
                return match default {
                    Some(d) => d,
                    None => {
                        r.push(&self.key(key), range, "nothing (the key is required)");
                        min
                    }
                };
            }
            Some(Value::Float(f)) => Some(*f),
            Some(Value::Integer(i)) => Some(*i as f64),
            Some(_) => None,
        };
        match v {
            Some(f) if f.is_finite() && f >= min && f <= max => f,
            _ => {
                let found = self.raw(key).map(describe).unwrap_or_default();
                r.push(&self.key(key), range, found);
                default.unwrap_or(min)
            }
        }
    }

    /// A boolean; `default` when absent.
    pub(crate) fn boolean(&mut self, key: &str, default: bool, r: &mut Report<'_>) -> bool {
        match self.raw(key) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(v) => {
                r.push(&self.key(key), "true or false", describe(v));
                default
            }
        }
    }

    /// A string, optionally required.
    pub(crate) fn string(
        &mut self,
        key: &str,
        default: Option<&str>,
        r: &mut Report<'_>,
    ) -> String {
        match self.raw(key) {
            None => match default {
                Some(d) => d.to_owned(),
                None => {
                    r.push(&self.key(key), "a string", "nothing (the key is required)");
                    String::new()
                }
            },
            Some(Value::String(s)) => s.clone(),
            Some(v) => {
                r.push(&self.key(key), "a string", describe(v));
                default.unwrap_or_default().to_owned()
            }
        }
    }

    /// One of `choices` (snake_case names); `default` when absent.
    pub(crate) fn choice(
        &mut self,
        key: &str,
        choices: &[&str],
        default: Option<&str>,
        r: &mut Report<'_>,
    ) -> Option<String> {
        let expected = format!(
            "one of {}",
            choices
                .iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        match self.raw(key) {
            None => match default {
                Some(d) => Some(d.to_owned()),
                None => {
                    r.push(&self.key(key), expected, "nothing (the key is required)");
                    None
                }
            },
            Some(Value::String(s)) if choices.contains(&s.as_str()) => Some(s.clone()),
            Some(v) => {
                let hint = match v {
                    Value::String(s) => suggest(s, choices.iter().copied())
                        .map(|c| format!(" (did you mean {c:?}?)"))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                r.push(&self.key(key), expected, format!("{}{hint}", describe(v)));
                None
            }
        }
    }

    /// Reports every key of this table that the schema did not read.
    pub(crate) fn finish(self, r: &mut Report<'_>) {
        let Some(t) = self.table else { return };
        for k in t.keys() {
            if !self.used.contains(k) {
                let hint = suggest(k, self.used.iter().map(String::as_str))
                    .map(|c| format!(" (did you mean {:?}?)", join(&self.path, c)))
                    .unwrap_or_default();
                let known = self
                    .used
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                r.push(
                    &join(&self.path, k),
                    format!("a known key ({known})"),
                    format!("an unknown key{hint}"),
                );
            }
        }
    }
}

/// The closest candidate within edit distance 2 (or a prefix match), for "did you mean".
pub(crate) fn suggest<'c>(
    word: &str,
    candidates: impl Iterator<Item = &'c str>,
) -> Option<&'c str> {
    candidates
        .map(|c| (levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(word.len() / 4) || c.starts_with(word) || word.starts_with(c))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("stpes", ["steps", "batch_size"].into_iter()),
            Some("steps")
        );
        assert_eq!(suggest("lr", ["learning_rate", "kind"].into_iter()), None);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }
}
