//! Evaluation of encoders side by side: Recall@k (Hamming only, and after exact re-ranking of
//! the Hamming top R) for every method × bit budget, as the rows of `results.json`.

use bllm_codes::metrics::{recall_at_k, rerank};
use bllm_codes::{FloatMatrix, Metric, Neighbors, hamming};
use serde::{Deserialize, Serialize};

use crate::{HashError, LinearEncoder, Result};

/// One result row: `rerank = 0` means Hamming ranking only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    /// Method name.
    pub method: String,
    /// Code length.
    pub bits: usize,
    /// Neighbours evaluated.
    pub k: usize,
    /// Hamming candidates re-ranked exactly (0 = none).
    pub rerank: usize,
    /// Recall@k against exact cosine neighbours.
    pub recall: f64,
}

/// The first `k` entries of each list of `n` (a top-k is the prefix of a longer top list,
/// because lists are ordered by (score, index)).
fn prefix<D: Copy>(n: &Neighbors<D>, k: usize) -> Neighbors<D> {
    let q = n.queries();
    let mut ids = Vec::with_capacity(q * k);
    let mut dists = Vec::with_capacity(q * k);
    for i in 0..q {
        ids.extend_from_slice(&n.ids_of(i)[..k]);
        dists.extend_from_slice(&n.dists_of(i)[..k]);
    }
    Neighbors { k, ids, dists }
}

/// Evaluates one encoder on `db`/`queries` for every `k` and re-rank depth, against `truth`
/// (exact cosine top-`max k`).
pub fn evaluate_encoder(
    enc: &LinearEncoder,
    db: &FloatMatrix,
    queries: &FloatMatrix,
    truth: &Neighbors<f32>,
    ks: &[usize],
    reranks: &[usize],
) -> Result<Vec<ResultRow>> {
    let kmax = ks.iter().copied().max().unwrap_or(1);
    let depth = reranks
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(kmax)
        .min(db.rows());
    let dbc = enc.encode(db)?;
    let qc = enc.encode(queries)?;
    let hits = hamming::search(&dbc, &qc, depth)?;
    let mut rows = Vec::new();
    for &k in ks {
        let row = |rerank: usize, recall: f64| ResultRow {
            method: enc.method.clone(),
            bits: enc.bits,
            k,
            rerank,
            recall,
        };
        rows.push(row(
            0,
            recall_at_k(&prefix(&hits, k), &prefix(truth, k), k)?,
        ));
        for &r in reranks {
            if r < k || r > depth {
                continue;
            }
            let re = rerank(&prefix(&hits, r), db, queries, k, Metric::Cosine)?;
            rows.push(row(r, recall_at_k(&re, &prefix(truth, k), k)?));
        }
    }
    Ok(rows)
}

/// The exact cosine top-`max k` of every query (the ground truth for [`evaluate_encoder`]).
pub fn truth(db: &FloatMatrix, queries: &FloatMatrix, ks: &[usize]) -> Result<Neighbors<f32>> {
    let kmax = ks.iter().copied().max().unwrap_or(1);
    if kmax > db.rows() {
        return Err(HashError::InvalidArgument(format!(
            "k = {kmax} exceeds the database ({} rows)",
            db.rows()
        )));
    }
    Ok(bllm_codes::float::search(
        db,
        queries,
        kmax,
        Metric::Cosine,
    )?)
}

/// `results.md`: one line per method and bits, one column per (k, rerank).
pub fn markdown(rows: &[ResultRow]) -> String {
    let mut cols: Vec<(usize, usize)> = Vec::new();
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in rows {
        if !cols.contains(&(r.k, r.rerank)) {
            cols.push((r.k, r.rerank));
        }
        if !keys.contains(&(r.method.clone(), r.bits)) {
            keys.push((r.method.clone(), r.bits));
        }
    }
    let mut md = String::from("| method | bits |");
    for (k, r) in &cols {
        md.push_str(&if *r == 0 {
            format!(" R@{k} |")
        } else {
            format!(" R@{k} rerank {r} |")
        });
    }
    md.push_str("\n|---|---:|");
    md.push_str(&"---:|".repeat(cols.len()));
    md.push('\n');
    for (m, b) in &keys {
        md.push_str(&format!("| {m} | {b} |"));
        for (k, rr) in &cols {
            match rows
                .iter()
                .find(|r| &r.method == m && r.bits == *b && r.k == *k && r.rerank == *rr)
            {
                Some(r) => md.push_str(&format!(" {:.4} |", r.recall)),
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use bllm_codes::rng::SplitMix64;

    #[test]
    fn rows_cover_every_k_and_rerank_and_exact_rerank_is_perfect() {
        let mut rng = SplitMix64::new(1);
        let x = FloatMatrix::new(
            300,
            16,
            (0..300 * 16).map(|_| rng.next_gaussian() as f32).collect(),
        )
        .unwrap();
        let (q, db) = (x.slice_rows(0, 20).unwrap(), x.slice_rows(20, 300).unwrap());
        let enc = crate::fit(crate::Method::Itq, &db, 16, 0).unwrap();
        let t = truth(&db, &q, &[1, 10]).unwrap();
        let rows = evaluate_encoder(&enc, &db, &q, &t, &[1, 10], &[50, 280]).unwrap();
        assert_eq!(rows.len(), 2 * 3);
        // Re-ranking the whole database is exact search.
        assert!(
            rows.iter()
                .filter(|r| r.rerank == 280)
                .all(|r| r.recall == 1.0),
            "{rows:?}"
        );
        let h10 = rows
            .iter()
            .find(|r| r.k == 10 && r.rerank == 0)
            .unwrap()
            .recall;
        let r10 = rows
            .iter()
            .find(|r| r.k == 10 && r.rerank == 50)
            .unwrap()
            .recall;
        assert!(r10 >= h10, "{rows:?}");
        let md = markdown(&rows);
        assert!(
            md.contains("| itq | 16 |") && md.contains("R@10 rerank 50"),
            "{md}"
        );
    }
}
