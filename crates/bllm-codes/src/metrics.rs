//! Retrieval quality: Recall@k, Overlap@k and recall after exact re-ranking.
//!
//! Definitions (per query, then averaged over queries):
//! * `Overlap@k(A, B) = |A_k ∩ B_k| / k` for two top-k lists;
//! * `Recall@k = Overlap@k(retrieved, true)` where `true` is the exact float top-k — the
//!   fraction of the true k nearest neighbours that the codes retrieve in their own top k;
//! * recall after re-ranking: take the Hamming top `R >= k`, re-score those candidates exactly
//!   with the float vectors, keep the best k, and compute Recall@k of that list.
//!
//! * recall after *asymmetric* re-scoring: the same Hamming top `R`, re-scored by the inner
//!   product of the float query's projection `z = (q − μ)·P − t` with the database row's ±1
//!   code ([`asymmetric_rerank`]) — no float database is kept, only its codes.
//!
//! Hamming distances tie often; ties at the k-th place are broken by the lower database index
//! (see [`crate::hamming`]), which makes every number here deterministic.

use rayon::prelude::*;

use crate::float::{FloatMatrix, Metric, push_best, similarity};
use crate::hamming::{self, check_k};
use crate::{CodesError, Neighbors, PackedCodes, Result};

/// Mean `|A_k ∩ B_k| / k` over queries, using the first `k` entries of each list.
pub fn overlap_at_k<A: Copy, B: Copy>(a: &Neighbors<A>, b: &Neighbors<B>, k: usize) -> Result<f64> {
    if a.queries() != b.queries() {
        return Err(CodesError::Mismatch(format!(
            "{} queries in one result list, {} in the other",
            a.queries(),
            b.queries()
        )));
    }
    if k == 0 || k > a.k || k > b.k {
        return Err(CodesError::InvalidArgument(format!(
            "k ({k}) must be in 1..={} (the shorter result list)",
            a.k.min(b.k)
        )));
    }
    let nq = a.queries();
    if nq == 0 {
        return Err(CodesError::InvalidArgument("no queries to evaluate".into()));
    }
    let total: usize = (0..nq)
        .map(|q| {
            let bs = &b.ids_of(q)[..k];
            a.ids_of(q)[..k].iter().filter(|id| bs.contains(id)).count()
        })
        .sum();
    Ok(total as f64 / (nq * k) as f64)
}

/// Recall@k of `retrieved` against the exact float neighbours `truth`.
pub fn recall_at_k<A: Copy>(
    retrieved: &Neighbors<A>,
    truth: &Neighbors<f32>,
    k: usize,
) -> Result<f64> {
    overlap_at_k(retrieved, truth, k)
}

/// Re-ranks each query's Hamming candidates exactly: keeps the best `k` of `candidates` by
/// float similarity (ties by lower index). `candidates` holds at least `k` ids per query.
pub fn rerank(
    candidates: &Neighbors<u32>,
    db: &FloatMatrix,
    queries: &FloatMatrix,
    k: usize,
    metric: Metric,
) -> Result<Neighbors<f32>> {
    if candidates.queries() != queries.rows() {
        return Err(CodesError::Mismatch(format!(
            "{} candidate lists for {} queries",
            candidates.queries(),
            queries.rows()
        )));
    }
    if db.cols() != queries.cols() {
        return Err(CodesError::Mismatch(format!(
            "database has dimension {} but queries have {}",
            db.cols(),
            queries.cols()
        )));
    }
    if k == 0 || k > candidates.k {
        return Err(CodesError::InvalidArgument(format!(
            "re-rank k ({k}) must be in 1..={} (the candidate count)",
            candidates.k
        )));
    }
    let per_query: Vec<Vec<(f32, u32)>> = (0..queries.rows())
        .into_par_iter()
        .map(|q| {
            let mut ids: Vec<u32> = candidates.ids_of(q).to_vec();
            ids.sort_unstable(); // offer candidates in index order: ties go to the lower index
            let mut best = Vec::with_capacity(k + 1);
            for id in ids {
                let s = similarity(metric, queries.row(q), db.row(id as usize));
                push_best(&mut best, k, s, id);
            }
            best
        })
        .collect();
    Ok(Neighbors {
        k,
        ids: per_query.iter().flatten().map(|x| x.1).collect(),
        dists: per_query.iter().flatten().map(|x| x.0).collect(),
    })
}

/// Re-scores each query's Hamming candidates asymmetrically and keeps the best `k`: the score
/// of database row `i` for query `q` is `Σ_j z_qj · s_ij`, with `z` the query's float
/// projection (`queries_projected`, row-major `[queries, bits]`, e.g.
/// `LinearEncoder::project`) and `s_ij = +1` where bit `j` of code `i` is set, else `−1`
/// (BPR, Yamada et al. 2021; sentence-transformers' binary rescoring). Only the database's
/// codes are read, so re-ranking needs no float database. Ties go to the lower index.
///
/// The score is computed as `2·Σ_{j: bit set} z_j − Σ_j z_j`, summing in bit order, so it is
/// deterministic for any thread count.
pub fn asymmetric_rerank(
    candidates: &Neighbors<u32>,
    db: &PackedCodes,
    queries_projected: &[f32],
    k: usize,
) -> Result<Neighbors<f32>> {
    let bits = db.bits();
    let nq = candidates.queries();
    if queries_projected.len() != nq * bits {
        return Err(CodesError::Mismatch(format!(
            "{} projected query values for {nq} candidate lists × {bits} bits (expected {})",
            queries_projected.len(),
            nq * bits
        )));
    }
    if k == 0 || k > candidates.k {
        return Err(CodesError::InvalidArgument(format!(
            "re-rank k ({k}) must be in 1..={} (the candidate count)",
            candidates.k
        )));
    }
    if let Some(&bad) = candidates.ids.iter().find(|&&id| id as usize >= db.rows()) {
        return Err(CodesError::Mismatch(format!(
            "candidate id {bad} is outside the database ({} rows)",
            db.rows()
        )));
    }
    let per_query: Vec<Vec<(f32, u32)>> = (0..nq)
        .into_par_iter()
        .map(|q| {
            let z = &queries_projected[q * bits..(q + 1) * bits];
            let total: f32 = z.iter().sum();
            let mut ids: Vec<u32> = candidates.ids_of(q).to_vec();
            ids.sort_unstable();
            let mut best = Vec::with_capacity(k + 1);
            for id in ids {
                let row = db.row(id as usize);
                let mut set = 0f32;
                for (w, &word) in row.iter().enumerate() {
                    let mut m = word;
                    while m != 0 {
                        let j = w * 64 + m.trailing_zeros() as usize;
                        set += z[j];
                        m &= m - 1;
                    }
                }
                push_best(&mut best, k, 2.0 * set - total, id);
            }
            best
        })
        .collect();
    Ok(Neighbors {
        k,
        ids: per_query.iter().flatten().map(|x| x.1).collect(),
        dists: per_query.iter().flatten().map(|x| x.0).collect(),
    })
}

/// A full evaluation of codes against float embeddings at one `k`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecallReport {
    /// Neighbours evaluated.
    pub k: usize,
    /// Similarity of the float ground truth.
    pub metric: Metric,
    /// Code length.
    pub bits: usize,
    /// Database rows.
    pub db_rows: usize,
    /// Query rows.
    pub queries: usize,
    /// Recall@k of the Hamming top-k.
    pub recall_at_k: f64,
    /// Hamming candidates re-ranked exactly, when requested.
    pub rerank: Option<usize>,
    /// Recall@k after re-ranking the Hamming top-`rerank`, when requested.
    pub recall_after_rerank: Option<f64>,
}

/// Evaluates codes against the float vectors they were made from: exact float top-k as truth,
/// Hamming top-k Recall@k, and (with `rerank = Some(R)`) Recall@k after re-ranking the top R.
pub fn evaluate(
    db_float: &FloatMatrix,
    queries_float: &FloatMatrix,
    db_codes: &PackedCodes,
    query_codes: &PackedCodes,
    k: usize,
    rerank_r: Option<usize>,
    metric: Metric,
) -> Result<RecallReport> {
    if db_float.rows() != db_codes.rows() {
        return Err(CodesError::Mismatch(format!(
            "{} float database rows but {} database codes",
            db_float.rows(),
            db_codes.rows()
        )));
    }
    if queries_float.rows() != query_codes.rows() {
        return Err(CodesError::Mismatch(format!(
            "{} float queries but {} query codes",
            queries_float.rows(),
            query_codes.rows()
        )));
    }
    check_k(k, db_codes.rows())?;
    if let Some(r) = rerank_r {
        if r < k {
            return Err(CodesError::InvalidArgument(format!(
                "re-rank depth ({r}) must be at least k ({k})"
            )));
        }
    }
    let truth = crate::float::search(db_float, queries_float, k, metric)?;
    let depth = rerank_r.unwrap_or(k);
    let hits = hamming::search(db_codes, query_codes, depth)?;
    let recall = recall_at_k(&hits, &truth, k)?;
    let after = match rerank_r {
        Some(_) => {
            let re = rerank(&hits, db_float, queries_float, k, metric)?;
            Some(recall_at_k(&re, &truth, k)?)
        }
        None => None,
    };
    Ok(RecallReport {
        k,
        metric,
        bits: db_codes.bits(),
        db_rows: db_codes.rows(),
        queries: query_codes.rows(),
        recall_at_k: recall,
        rerank: rerank_r,
        recall_after_rerank: after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn nb(k: usize, ids: Vec<u32>) -> Neighbors<u32> {
        let dists = vec![0; ids.len()];
        Neighbors { k, ids, dists }
    }

    #[test]
    fn overlap_counts_shared_ids() {
        let a = nb(3, vec![1, 2, 3, 7, 8, 9]);
        let b = nb(3, vec![3, 2, 5, 9, 8, 7]);
        assert!((overlap_at_k(&a, &b, 3).unwrap() - (2.0 + 3.0) / 6.0).abs() < 1e-12);
        assert!((overlap_at_k(&a, &b, 1).unwrap() - 0.0).abs() < 1e-12);
        assert!(overlap_at_k(&a, &b, 4).is_err());
        assert!(overlap_at_k(&a, &nb(3, vec![1, 2, 3]), 3).is_err());
    }

    #[test]
    fn asymmetric_rerank_matches_the_dense_signed_inner_product() {
        let mut rng = crate::rng::SplitMix64::new(7);
        let (rows, bits, nq, r, k) = (300, 130, 9, 40, 7);
        let db_vals: Vec<f32> = (0..rows * bits)
            .map(|_| rng.next_gaussian() as f32)
            .collect();
        let db = PackedCodes::from_f32_rows(&db_vals, bits, bits).unwrap();
        let z: Vec<f32> = (0..nq * bits).map(|_| rng.next_gaussian() as f32).collect();
        let qc = PackedCodes::from_f32_rows(&z, bits, bits).unwrap();
        let hits = hamming::search(&db, &qc, r).unwrap();
        let got = asymmetric_rerank(&hits, &db, &z, k).unwrap();
        let signs = db.to_signs();
        for q in 0..nq {
            let zq = &z[q * bits..(q + 1) * bits];
            let mut want: Vec<(f64, u32)> = hits
                .ids_of(q)
                .iter()
                .map(|&id| {
                    let s = &signs[id as usize * bits..(id as usize + 1) * bits];
                    (zq.iter().zip(s).map(|(a, b)| (a * b) as f64).sum(), id)
                })
                .collect();
            want.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
            let want_ids: Vec<u32> = want[..k].iter().map(|x| x.1).collect();
            assert_eq!(got.ids_of(q), &want_ids[..], "query {q}");
            for (g, w) in got.dists_of(q).iter().zip(&want[..k]) {
                assert!((*g as f64 - w.0).abs() < 1e-3, "{g} vs {}", w.0);
            }
        }
        // wrong shapes and ids are errors, not panics
        assert!(asymmetric_rerank(&hits, &db, &z[1..], k).is_err());
        assert!(asymmetric_rerank(&hits, &db, &z, r + 1).is_err());
        let small = PackedCodes::from_f32_rows(&db_vals[..10 * bits], bits, bits).unwrap();
        assert!(asymmetric_rerank(&hits, &small, &z, k).is_err());
    }

    #[test]
    fn full_bit_codes_of_identical_data_and_rerank_recover_truth() {
        let mut rng = SplitMix64::new(9);
        let (n, d) = (500, 32);
        let data: Vec<f32> = (0..n * d).map(|_| rng.next_gaussian() as f32).collect();
        let db = FloatMatrix::new(n, d, data).unwrap();
        let q = db.slice_rows(0, 20).unwrap();
        let dbc = PackedCodes::from_f32_rows(db.as_slice(), d, d).unwrap();
        let qc = dbc.slice_rows(0, 20).unwrap();
        // Re-ranking the whole database is exact search: recall must be 1.
        let r = evaluate(&db, &q, &dbc, &qc, 10, Some(n), Metric::Cosine).unwrap();
        assert_eq!(r.recall_after_rerank, Some(1.0));
        assert!(r.recall_at_k > 0.1 && r.recall_at_k < 1.0, "{r:?}");
        // Re-ranking can only help here (more candidates than k).
        let r2 = evaluate(&db, &q, &dbc, &qc, 10, Some(50), Metric::Cosine).unwrap();
        assert!(r2.recall_after_rerank.unwrap() >= r2.recall_at_k);
        assert!(evaluate(&db, &q, &dbc, &qc, 10, Some(5), Metric::Cosine).is_err());
        assert!(evaluate(&db, &q, &dbc, &dbc, 10, None, Metric::Cosine).is_err());
    }
}
