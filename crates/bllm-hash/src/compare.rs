//! Evaluation of encoders side by side: Recall@k (Hamming only, after exact float re-ranking
//! of the Hamming top R, and after re-scoring the same top R against the codes alone —
//! asymmetrically, through the decoded codes, and through the decoded codes plus a PQ residual)
//! for every method × bit budget, as the rows of `results.json`, each with the bytes a
//! database row costs in that variant.

use bllm_codes::metrics::{asymmetric_rerank, recall_at_k, rerank};
use bllm_codes::{FloatMatrix, Metric, Neighbors, PackedCodes, hamming};
use serde::{Deserialize, Serialize};

use crate::{CodeDecoder, HashError, LinearEncoder, Result};

/// How the Hamming candidates of a row were re-ranked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RerankKind {
    /// Hamming ranking only (`rerank = 0`).
    None,
    /// Exact cosine against the float database vectors (the database keeps its floats).
    /// The default, so rows written before asymmetric re-scoring existed read as what they were.
    #[default]
    Float,
    /// The float query's projection against the ±1 database codes
    /// ([`bllm_codes::metrics::asymmetric_rerank`]); the database keeps only its codes.
    Asymmetric,
    /// The float query's cosine with the codes decoded by a least-squares [`CodeDecoder`]
    /// (shared by all rows); the database keeps only its codes.
    Decoded,
    /// [`Decoded`](Self::Decoded) plus the row's product-quantised residual: the codes and
    /// `subspaces` bytes per row.
    #[serde(rename = "decoded_pq")]
    DecodedPq,
}

impl RerankKind {
    /// The name used in `results.json` and tables.
    pub fn name(self) -> &'static str {
        match self {
            RerankKind::None => "none",
            RerankKind::Float => "float",
            RerankKind::Asymmetric => "asymmetric",
            RerankKind::Decoded => "decoded",
            RerankKind::DecodedPq => "decoded_pq",
        }
    }
}

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
    /// How the top `rerank` were re-scored (`none` when `rerank = 0`).
    #[serde(default)]
    pub rerank_kind: RerankKind,
    /// Bytes stored per database row for this variant: the packed code (`⌈bits/64⌉·8`), plus
    /// the float32 vector (`dim·4`) when re-ranking against floats; with `decoded` the f32 norm
    /// of the decoded row (recomputed from the code when the index is built) and with
    /// `decoded_pq` the residual bytes too. What all rows share (the encoder's projection, the
    /// decoder's weights and codebooks) is not counted.
    #[serde(default)]
    pub bytes_per_row: usize,
    /// Recall@k against exact cosine neighbours.
    pub recall: f64,
}

impl ResultRow {
    /// The re-ranking this row measured: [`RerankKind::None`] whenever `rerank = 0` (rows
    /// written before `rerank_kind` existed carry the `float` default there).
    pub fn kind(&self) -> RerankKind {
        if self.rerank == 0 {
            RerankKind::None
        } else {
            self.rerank_kind
        }
    }
}

/// The column label of (k, rerank, kind): `R@10`, `R@10 rerank 100`, `R@10 asym 100`.
fn column(k: usize, rerank: usize, kind: RerankKind) -> String {
    match kind {
        _ if rerank == 0 => format!("R@{k}"),
        RerankKind::Asymmetric => format!("R@{k} asym {rerank}"),
        RerankKind::Decoded => format!("R@{k} dec {rerank}"),
        RerankKind::DecodedPq => format!("R@{k} dec+pq {rerank}"),
        _ => format!("R@{k} rerank {rerank}"),
    }
}

/// One re-scored candidate list: its kind, the lists (for the largest k) and bytes per row.
type Rescored = (RerankKind, Neighbors<f32>, usize);

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
/// (exact cosine top-`max k`): Hamming only, then for each depth R float re-ranking and
/// asymmetric re-scoring of the same Hamming top R, and with a `decoder` (fitted for `enc`)
/// re-scoring through the decoded codes, and through the decoded codes plus the residual when
/// the decoder has one.
pub fn evaluate_encoder(
    enc: &LinearEncoder,
    decoder: Option<&CodeDecoder>,
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
    let zq = enc.project(queries)?;
    let qc = PackedCodes::from_f32_rows(&zq, enc.bits, enc.bits)?;
    let hits = hamming::search(&dbc, &qc, depth)?;
    let code_bytes = dbc.words_per_row() * 8;
    let residual = match decoder {
        Some(d) if d.residual_bytes() > 0 => Some(d.residual_codes(&dbc, db)?),
        _ => None,
    };
    let plain = decoder.map(|d| d.index(&dbc, None)).transpose()?;
    let with_residual = match (decoder, &residual) {
        (Some(d), Some(res)) => Some(d.index(&dbc, Some(res))?),
        _ => None,
    };
    // Each depth is re-scored once, for the largest k it serves; a smaller k's list is the
    // prefix (lists are ordered by score, then index).
    let mut reranked: Vec<(usize, Vec<Rescored>)> = Vec::new();
    for &r in reranks {
        let Some(kk) = ks.iter().copied().filter(|&k| k <= r).max() else {
            continue;
        };
        if r > depth || reranked.iter().any(|(d, _)| *d == r) {
            continue;
        }
        let top = prefix(&hits, r);
        let mut lists = vec![
            (
                RerankKind::Float,
                rerank(&top, db, queries, kk, Metric::Cosine)?,
                code_bytes + db.cols() * 4,
            ),
            (
                RerankKind::Asymmetric,
                asymmetric_rerank(&top, &dbc, &zq, kk)?,
                code_bytes,
            ),
        ];
        for (kind, index) in [
            (RerankKind::Decoded, &plain),
            (RerankKind::DecodedPq, &with_residual),
        ] {
            if let Some(index) = index {
                lists.push((
                    kind,
                    index.rerank(&top, queries, kk)?,
                    index.bytes_per_row(),
                ));
            }
        }
        reranked.push((r, lists));
    }
    let mut rows = Vec::new();
    for &k in ks {
        let row =
            |rerank: usize, rerank_kind: RerankKind, bytes_per_row: usize, recall: f64| ResultRow {
                method: enc.method.clone(),
                bits: enc.bits,
                k,
                rerank,
                rerank_kind,
                bytes_per_row,
                recall,
            };
        rows.push(row(
            0,
            RerankKind::None,
            code_bytes,
            recall_at_k(&prefix(&hits, k), &prefix(truth, k), k)?,
        ));
        for &r in reranks {
            let Some((_, lists)) = reranked.iter().find(|(d, _)| *d == r) else {
                continue;
            };
            if r < k {
                continue;
            }
            for (kind, list, bytes) in lists {
                rows.push(row(
                    r,
                    *kind,
                    *bytes,
                    recall_at_k(&prefix(list, k), &prefix(truth, k), k)?,
                ));
            }
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
    let mut cols: Vec<(usize, usize, RerankKind)> = Vec::new();
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in rows {
        if !cols.contains(&(r.k, r.rerank, r.kind())) {
            cols.push((r.k, r.rerank, r.kind()));
        }
        if !keys.contains(&(r.method.clone(), r.bits)) {
            keys.push((r.method.clone(), r.bits));
        }
    }
    let mut md = String::from("| method | bits |");
    for (k, r, kind) in &cols {
        md.push_str(&format!(" {} |", column(*k, *r, *kind)));
    }
    md.push_str("\n|---|---:|");
    md.push_str(&"---:|".repeat(cols.len()));
    md.push('\n');
    for (m, b) in &keys {
        md.push_str(&format!("| {m} | {b} |"));
        for (k, rr, kind) in &cols {
            match rows.iter().find(|r| {
                &r.method == m && r.bits == *b && r.k == *k && r.rerank == *rr && r.kind() == *kind
            }) {
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
        let dec = CodeDecoder::fit(&enc, &db, 4, 0).unwrap();
        let t = truth(&db, &q, &[1, 10]).unwrap();
        let rows = evaluate_encoder(&enc, Some(&dec), &db, &q, &t, &[1, 10], &[50, 280]).unwrap();
        assert_eq!(rows.len(), 2 * 9);
        // Re-ranking the whole database against the floats is exact search.
        assert!(
            rows.iter()
                .filter(|r| r.rerank == 280 && r.rerank_kind == RerankKind::Float)
                .all(|r| r.recall == 1.0),
            "{rows:?}"
        );
        for r in &rows {
            let want = match r.rerank_kind {
                RerankKind::Float => 8 + 16 * 4,
                RerankKind::Decoded => 8 + 4,
                RerankKind::DecodedPq => 8 + 4 + 4,
                _ => 8,
            };
            assert_eq!(r.bytes_per_row, want, "{r:?}");
            assert_eq!(r.rerank == 0, r.rerank_kind == RerankKind::None, "{r:?}");
            assert!((0.0..=1.0).contains(&r.recall));
        }
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
        // The float query against the codes ranks better than its own code does.
        let a10 = rows
            .iter()
            .find(|r| r.k == 10 && r.rerank == 50 && r.rerank_kind == RerankKind::Asymmetric)
            .unwrap()
            .recall;
        assert!(a10 > h10 && a10 <= r10, "{rows:?}");
        let kind = |kind| {
            rows.iter()
                .find(|r| r.k == 10 && r.rerank == 50 && r.rerank_kind == kind)
                .unwrap()
                .recall
        };
        // Decoding ranks better than the code; the residual adds more.
        let (d10, p10) = (kind(RerankKind::Decoded), kind(RerankKind::DecodedPq));
        assert!(d10 > h10 && p10 > d10 && p10 <= r10, "{rows:?}");
        let json = serde_json::to_string(&rows).unwrap();
        assert!(json.contains(r#""rerank_kind":"decoded_pq""#), "{json}");
        let md = markdown(&rows);
        assert!(
            md.contains("| itq | 16 |")
                && md.contains("R@10 rerank 50")
                && md.contains("R@10 asym 50")
                && md.contains("R@10 dec 50")
                && md.contains("R@10 dec+pq 50"),
            "{md}"
        );
        // Rows written before `rerank_kind` existed read as float re-ranking.
        let old: ResultRow =
            serde_json::from_str(r#"{"method":"itq","bits":16,"k":10,"rerank":50,"recall":0.5}"#)
                .unwrap();
        assert_eq!(old.rerank_kind, RerankKind::Float);
    }
}
