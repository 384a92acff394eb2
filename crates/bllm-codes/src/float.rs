//! Exact float nearest neighbours: the ground truth that binary codes are measured against.

use rayon::prelude::*;

use crate::hamming::check_k;
use crate::{CodesError, Neighbors, Result};

/// Similarity used for the float ground truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Cosine similarity (rows are L2-normalised first; a zero row has similarity 0 to all).
    Cosine,
    /// Raw inner product.
    InnerProduct,
}

impl std::str::FromStr for Metric {
    type Err = CodesError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cosine" => Ok(Self::Cosine),
            "ip" | "inner_product" => Ok(Self::InnerProduct),
            other => Err(CodesError::InvalidArgument(format!(
                "unknown metric {other:?}; expected \"cosine\" or \"ip\""
            ))),
        }
    }
}

/// A dense row-major `f32` matrix (one embedding per row), all values finite.
#[derive(Clone, Debug, PartialEq)]
pub struct FloatMatrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl FloatMatrix {
    /// Wraps row-major data; rejects a ragged length and non-finite values.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if Some(data.len()) != rows.checked_mul(cols) {
            return Err(CodesError::Mismatch(format!(
                "{} values given for a {rows} × {cols} matrix",
                data.len()
            )));
        }
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            return Err(CodesError::NonFinite {
                what: "float matrix".into(),
                row: i / cols,
                col: i % cols,
                value: data[i],
            });
        }
        Ok(Self { rows, cols, data })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (the embedding dimension).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r`. Panics if out of range.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// All values, row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// A copy of rows `start..end`.
    pub fn slice_rows(&self, start: usize, end: usize) -> Result<Self> {
        if start > end || end > self.rows {
            return Err(CodesError::InvalidArgument(format!(
                "row range {start}..{end} is outside 0..{}",
                self.rows
            )));
        }
        Ok(Self {
            rows: end - start,
            cols: self.cols,
            data: self.data[start * self.cols..end * self.cols].to_vec(),
        })
    }

    /// A copy with every row scaled to unit L2 norm (zero rows stay zero).
    pub fn l2_normalized(&self) -> Self {
        let mut data = self.data.clone();
        if self.cols > 0 {
            data.chunks_mut(self.cols).for_each(|r| {
                let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
                if n > 0.0 {
                    r.iter_mut().for_each(|x| *x /= n);
                }
            });
        }
        Self { data, ..*self }
    }

    fn prepared(&self, metric: Metric) -> std::borrow::Cow<'_, Self> {
        match metric {
            Metric::Cosine => std::borrow::Cow::Owned(self.l2_normalized()),
            Metric::InnerProduct => std::borrow::Cow::Borrowed(self),
        }
    }
}

/// Queries per block of the score matrix.
const FQ_BLOCK: usize = 32;
/// Database rows per block of the score matrix.
const FDB_BLOCK: usize = 2048;

/// Similarity of a query to a database row under `metric` (unnormalised input is fine).
pub fn similarity(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    match metric {
        Metric::InnerProduct => dot,
        Metric::Cosine => {
            let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
            let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
            if na > 0.0 && nb > 0.0 {
                dot / (na * nb)
            } else {
                0.0
            }
        }
    }
}

/// Exact top-`k` by similarity (highest first; ties by lower database index).
///
/// Scores are computed a block at a time with a blocked SGEMM (never the full query × database
/// matrix), multi-threaded over query blocks. Block shapes are fixed, so the result does not
/// depend on the number of threads.
pub fn search(
    db: &FloatMatrix,
    queries: &FloatMatrix,
    k: usize,
    metric: Metric,
) -> Result<Neighbors<f32>> {
    if db.cols != queries.cols {
        return Err(CodesError::Mismatch(format!(
            "database has dimension {} but queries have {}",
            db.cols, queries.cols
        )));
    }
    if db.cols == 0 {
        return Err(CodesError::InvalidArgument(
            "embeddings have zero dimensions".into(),
        ));
    }
    check_k(k, db.rows)?;
    let db = db.prepared(metric);
    let queries = queries.prepared(metric);
    let d = db.cols;
    let nq = queries.rows;
    let mut ids = vec![0u32; nq * k];
    let mut scores = vec![0f32; nq * k];
    ids.par_chunks_mut(FQ_BLOCK * k)
        .zip(scores.par_chunks_mut(FQ_BLOCK * k))
        .zip(queries.data.par_chunks(FQ_BLOCK * d))
        .for_each(|((ids, scores), qdata)| {
            let m = qdata.len() / d;
            let mut best: Vec<Vec<(f32, u32)>> = vec![Vec::with_capacity(k + 1); m];
            let mut block = vec![0f32; m * FDB_BLOCK];
            for start in (0..db.rows).step_by(FDB_BLOCK) {
                let n = FDB_BLOCK.min(db.rows - start);
                // SAFETY: A is m×d with row stride d (qdata holds m rows), B = DBᵀ is d×n
                // read from n database rows of d values starting at `start`, C is m×n with
                // row stride n inside `block` (m * FDB_BLOCK >= m * n).
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        d,
                        n,
                        1.0,
                        qdata.as_ptr(),
                        d as isize,
                        1,
                        db.data[start * d..].as_ptr(),
                        1,
                        d as isize,
                        0.0,
                        block.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                }
                for (qi, list) in best.iter_mut().enumerate() {
                    for (j, &s) in block[qi * n..(qi + 1) * n].iter().enumerate() {
                        push_best(list, k, s, (start + j) as u32);
                    }
                }
            }
            for (qi, list) in best.iter().enumerate() {
                for (t, &(s, id)) in list.iter().enumerate() {
                    ids[qi * k + t] = id;
                    scores[qi * k + t] = s;
                }
            }
        });
    Ok(Neighbors {
        k,
        ids,
        dists: scores,
    })
}

/// Keeps `list` as the best `k` (score descending, index ascending) after offering one
/// candidate. Candidates must be offered in increasing index order.
#[inline]
pub(crate) fn push_best(list: &mut Vec<(f32, u32)>, k: usize, s: f32, id: u32) {
    if list.len() == k && s <= list[k - 1].0 {
        return; // equal score and a later index never displaces
    }
    let pos = list.partition_point(|&(x, _)| x >= s);
    list.insert(pos, (s, id));
    list.truncate(k);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn random(rows: usize, cols: usize, seed: u64) -> FloatMatrix {
        let mut rng = SplitMix64::new(seed);
        let data = (0..rows * cols)
            .map(|_| rng.next_gaussian() as f32)
            .collect();
        FloatMatrix::new(rows, cols, data).unwrap()
    }

    fn brute(db: &FloatMatrix, q: &FloatMatrix, k: usize, metric: Metric) -> Vec<Vec<u32>> {
        (0..q.rows())
            .map(|qi| {
                let mut all: Vec<(f32, u32)> = (0..db.rows())
                    .map(|i| (similarity(metric, q.row(qi), db.row(i)), i as u32))
                    .collect();
                all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                all[..k].iter().map(|x| x.1).collect()
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_across_blocks() {
        let db = random(FDB_BLOCK * 2 + 37, 24, 1);
        let q = random(FQ_BLOCK + 5, 24, 2);
        for metric in [Metric::Cosine, Metric::InnerProduct] {
            let got = search(&db, &q, 10, metric).unwrap();
            let want = brute(&db, &q, 10, metric);
            for (qi, w) in want.iter().enumerate() {
                // Scores agree to float rounding; ids agree because random data has no ties.
                assert_eq!(got.ids_of(qi), w.as_slice(), "query {qi} {metric:?}");
                for (t, &id) in w.iter().enumerate() {
                    let s = similarity(metric, q.row(qi), db.row(id as usize));
                    assert!((got.dists_of(qi)[t] - s).abs() < 1e-4);
                }
            }
        }
    }

    #[test]
    fn ties_go_to_the_lower_index_and_zero_rows_are_safe() {
        let db = FloatMatrix::new(4, 2, vec![1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 1.0, 0.0]).unwrap();
        let q = FloatMatrix::new(1, 2, vec![3.0, 0.0]).unwrap();
        let n = search(&db, &q, 4, Metric::Cosine).unwrap();
        assert_eq!(n.ids, vec![0, 2, 3, 1]);
        let n = search(&db, &q, 2, Metric::InnerProduct).unwrap();
        assert_eq!(n.ids, vec![2, 0]);
    }

    #[test]
    fn independent_of_thread_count() {
        let db = random(3000, 16, 5);
        let q = random(100, 16, 6);
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let a = pool(1).install(|| search(&db, &q, 9, Metric::Cosine).unwrap());
        let b = pool(4).install(|| search(&db, &q, 9, Metric::Cosine).unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn validates_input() {
        assert!(FloatMatrix::new(2, 2, vec![0.0; 3]).is_err());
        let e = FloatMatrix::new(2, 2, vec![0.0, 0.0, f32::NAN, 0.0]).unwrap_err();
        assert!(matches!(e, CodesError::NonFinite { row: 1, col: 0, .. }));
        let a = random(3, 4, 1);
        assert!(search(&a, &random(1, 5, 1), 1, Metric::Cosine).is_err());
        assert!(search(&a, &a, 4, Metric::Cosine).is_err());
        assert!("l2".parse::<Metric>().is_err());
    }
}
