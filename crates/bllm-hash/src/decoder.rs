//! [`CodeDecoder`]: database codes decoded back to vectors, so the Hamming candidates can be
//! re-scored against the float query without the float database.
//!
//! The decoder is the least-squares map from a row's ±1 code to its (normalised) input vector,
//! `x̂ = μ + s·W` (`s ∈ {−1, +1}^bits`, `W` `[bits, dim]`, fitted once on the training rows and
//! shared by all rows, so it costs no bytes per row), optionally plus a product-quantised
//! residual (Jégou et al., *Product quantization for nearest neighbor search*, TPAMI 2011):
//! `x − x̂` split into `m` equal subspaces, each coded by the nearest of 256 k-means centroids —
//! `m` bytes per row. A candidate's score is the cosine between the float query and its decoded
//! vector, `q·x̃ / ‖x̃‖`. On all-MiniLM-L6-v2 embeddings this recovers roughly a third of what the
//! float re-ranking gains with no extra bytes, and over half with 8 bytes per row (README).
//!
//! Everything is deterministic: the least-squares solve and k-means run single-threaded in f64 /
//! in a fixed order; row chunks of the assignments are fixed in size, so any thread count gives
//! the same centroids, codes and scores.

use std::path::Path;

use bllm_codes::rng::SplitMix64;
use bllm_codes::{FloatMatrix, Neighbors, PackedCodes};
use nalgebra::DMatrix;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::encoder::{f32_tensor, write_f32_safetensors};
use crate::{HashError, LinearEncoder, Result, normalize_rows};

/// File name of the decoder's tensors (safetensors: `offset` [dim], `weights` [bits, dim] and,
/// with a residual quantizer, `codebooks` [subspaces, centroids, dim / subspaces], all f32).
pub const DECODER_TENSORS: &str = "decoder.safetensors";
/// File name of the decoder's description (JSON).
pub const DECODER_JSON: &str = "decoder.json";
/// File name of a database's residual codes beside its packed codes (`uint8 [rows,
/// subspaces]` `.npy`, row i ↔ code i).
pub const RESIDUAL_NPY: &str = "residual.npy";
/// Centroids per residual subspace (one byte per subspace per row).
pub const PQ_CENTROIDS: usize = 256;
/// Lloyd iterations of each subspace's k-means.
const KMEANS_ITERS: usize = 20;
/// Ridge added to `SᵀS / n` so constant or duplicated bits still give a unique solution.
const RIDGE: f64 = 1e-6;
/// Rows per assignment chunk (fixed, so results do not depend on the thread count).
const CHUNK: usize = 1024;

/// The product quantizer of the decoding residual `x − x̂`.
#[derive(Clone, Debug, PartialEq)]
pub struct ResidualQuantizer {
    /// Subspaces `m` (= bytes per row); divides the dimension.
    pub subspaces: usize,
    /// Centroids per subspace (≤ 256).
    pub centroids: usize,
    /// Row-major `[subspaces, centroids, dim / subspaces]`.
    pub codebooks: Vec<f32>,
}

/// A least-squares decoder from codes to vectors with an optional PQ-coded residual.
#[derive(Clone, Debug, PartialEq)]
pub struct CodeDecoder {
    /// Vector dimension (the encoder's input dimension).
    pub dim: usize,
    /// Code length.
    pub bits: usize,
    /// Whether the decoded space is the L2-normalised input (as the encoder's).
    pub normalize: bool,
    /// `μ` (`dim`): the mean of the training rows.
    pub offset: Vec<f32>,
    /// `W`, row-major `[bits, dim]`.
    pub weights: Vec<f32>,
    /// The residual quantizer, when the decoder was fitted with `pq_bytes > 0`.
    pub residual: Option<ResidualQuantizer>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecoderJson {
    format: String,
    dim: usize,
    bits: usize,
    normalize: bool,
    /// Residual bytes per row (0: none).
    subspaces: usize,
    centroids: usize,
    formula: String,
    tensors: String,
}

/// Row-major `C = A·B` (f32) via matrixmultiply, `a` `[m, k]`, `b` `[k, n]`, `c` `[m, n]`, or
/// with `b_transposed` `b` stored as `[n, k]`.
fn sgemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], b_transposed: bool, c: &mut [f32]) {
    assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n);
    let (rsb, csb) = if b_transposed {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: the assertion above guarantees the buffers hold the matrices the strides describe.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            rsb,
            csb,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `AᵀB` (f64) of row-major `a` `[n, p]` and `b` `[n, q]` via matrixmultiply, as `[p, q]`.
fn dgemm_tn(n: usize, p: usize, q: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
    assert!(a.len() == n * p && b.len() == n * q);
    let mut c = vec![0f64; p * q];
    // SAFETY: `a` holds n×p and `b` n×q values; Aᵀ is read with strides (1, p).
    unsafe {
        matrixmultiply::dgemm(
            p,
            n,
            q,
            1.0,
            a.as_ptr(),
            1,
            p as isize,
            b.as_ptr(),
            q as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            q as isize,
            1,
        );
    }
    c
}

/// Index of the nearest centroid (squared Euclidean, ties to the lower index) of every row of
/// `y` (`[n, s]`) among `c` (`[centroids, s]`).
fn nearest(y: &[f32], s: usize, c: &[f32], centroids: usize) -> Vec<u8> {
    let norms: Vec<f32> = c.chunks(s).map(|r| r.iter().map(|v| v * v).sum()).collect();
    y.par_chunks(CHUNK * s)
        .flat_map_iter(|rows| {
            let n = rows.len() / s;
            let mut dots = vec![0f32; n * centroids];
            sgemm(n, s, centroids, rows, c, true, &mut dots);
            dots.chunks(centroids)
                .map(|d| {
                    let mut best = (f32::INFINITY, 0usize);
                    for (j, (&dot, &cn)) in d.iter().zip(&norms).enumerate() {
                        let dist = cn - 2.0 * dot;
                        if dist < best.0 {
                            best = (dist, j);
                        }
                    }
                    best.1 as u8
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Seeded k-means (Lloyd) of the rows of `y` (`[n, s]`) into `centroids` clusters, starting
/// from distinct rows drawn by a partial Fisher–Yates shuffle; an empty cluster keeps its
/// centroid. Means are accumulated in f64 in row order.
fn kmeans(y: &[f32], s: usize, centroids: usize, seed: u64) -> Vec<f32> {
    let n = y.len() / s;
    let mut rng = SplitMix64::new(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in 0..centroids {
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        order.swap(i, j);
    }
    let mut c: Vec<f32> = order[..centroids]
        .iter()
        .flat_map(|&i| y[i * s..(i + 1) * s].iter().copied())
        .collect();
    for _ in 0..KMEANS_ITERS {
        let a = nearest(y, s, &c, centroids);
        let mut sums = vec![0f64; centroids * s];
        let mut counts = vec![0usize; centroids];
        for (row, &j) in y.chunks(s).zip(&a) {
            let j = j as usize;
            counts[j] += 1;
            for (acc, v) in sums[j * s..(j + 1) * s].iter_mut().zip(row) {
                *acc += f64::from(*v);
            }
        }
        for j in 0..centroids {
            if counts[j] > 0 {
                for (dst, acc) in c[j * s..(j + 1) * s]
                    .iter_mut()
                    .zip(&sums[j * s..(j + 1) * s])
                {
                    *dst = (acc / counts[j] as f64) as f32;
                }
            }
        }
    }
    c
}

impl CodeDecoder {
    /// Fits the decoder of `enc`'s codes on the rows of `x` (raw, as given to `enc`): `μ` their
    /// mean, `W` the ridge least-squares solution of `S·W ≈ X − μ` (`S` the ±1 codes), and with
    /// `pq_bytes > 0` a residual product quantizer of `pq_bytes` subspaces (each of
    /// `dim / pq_bytes` dimensions, which must divide evenly) with up to 256 centroids, seeded
    /// by `seed`.
    pub fn fit(enc: &LinearEncoder, x: &FloatMatrix, pq_bytes: usize, seed: u64) -> Result<Self> {
        enc.validate()?;
        if x.cols() != enc.dim {
            return Err(HashError::InvalidArgument(format!(
                "decoder training rows have {} columns, the encoder expects {}",
                x.cols(),
                enc.dim
            )));
        }
        let (n, d, bits) = (x.rows(), enc.dim, enc.bits);
        if n < 2 {
            return Err(HashError::InvalidArgument(format!(
                "a decoder needs at least 2 training rows, got {n}"
            )));
        }
        if pq_bytes > 0 && (pq_bytes > d || d % pq_bytes != 0) {
            return Err(HashError::InvalidArgument(format!(
                "pq_bytes = {pq_bytes} must divide the dimension {d} (each byte codes an equal \
                 subspace)"
            )));
        }
        let xs = if enc.normalize {
            normalize_rows(x)?
        } else {
            x.clone()
        };
        let codes = enc.encode(x)?;
        let signs: Vec<f64> = codes.to_signs().into_iter().map(f64::from).collect();
        let mut mu = vec![0f64; d];
        for r in xs.as_slice().chunks(d) {
            for (m, v) in mu.iter_mut().zip(r) {
                *m += f64::from(*v);
            }
        }
        mu.iter_mut().for_each(|m| *m /= n as f64);
        let centred: Vec<f64> = xs
            .as_slice()
            .chunks(d)
            .flat_map(|r| r.iter().zip(&mu).map(|(v, m)| f64::from(*v) - m))
            .collect();
        let mut g = dgemm_tn(n, bits, bits, &signs, &signs);
        for i in 0..bits {
            g[i * bits + i] += RIDGE * n as f64;
        }
        let h = dgemm_tn(n, bits, d, &signs, &centred);
        let chol = DMatrix::from_row_slice(bits, bits, &g)
            .cholesky()
            .ok_or_else(|| {
                HashError::InvalidArgument(
                    "the codes' Gram matrix is not positive definite (non-finite inputs?)".into(),
                )
            })?;
        let w = chol.solve(&DMatrix::from_row_slice(bits, d, &h));
        let weights: Vec<f32> = (0..bits)
            .flat_map(|i| (0..d).map(move |j| (i, j)))
            .map(|(i, j)| w[(i, j)] as f32)
            .collect();
        let mut dec = Self {
            dim: d,
            bits,
            normalize: enc.normalize,
            offset: mu.iter().map(|&m| m as f32).collect(),
            weights,
            residual: None,
        };
        if let Some(v) = dec.weights.iter().find(|v| !v.is_finite()) {
            return Err(HashError::InvalidArgument(format!(
                "the least-squares decoder has a non-finite weight {v}"
            )));
        }
        if let Some(s) = d.checked_div(pq_bytes) {
            let centroids = PQ_CENTROIDS.min(n);
            let resid = dec.residuals(&codes, &xs);
            let mut codebooks = Vec::with_capacity(pq_bytes * centroids * s);
            for j in 0..pq_bytes {
                let sub = subspace(&resid, d, j * s, s);
                codebooks.extend(kmeans(&sub, s, centroids, seed.wrapping_add(j as u64)));
            }
            dec.residual = Some(ResidualQuantizer {
                subspaces: pq_bytes,
                centroids,
                codebooks,
            });
        }
        Ok(dec)
    }

    /// Bytes per database row the residual costs (0 without one).
    pub fn residual_bytes(&self) -> usize {
        self.residual.as_ref().map_or(0, |r| r.subspaces)
    }

    /// `μ − Σ_j W_j`: the decoded vector of the all-zero-bits code.
    fn base(&self) -> Vec<f32> {
        let mut b = self.offset.clone();
        for w in self.weights.chunks(self.dim) {
            for (acc, v) in b.iter_mut().zip(w) {
                *acc -= v;
            }
        }
        b
    }

    /// Writes `x̂ = μ + s·W` of one code row into `out`, from `base` = [`Self::base`], adding
    /// `2·W_j` for every set bit in bit order.
    fn decode_into(&self, base: &[f32], row: &[u64], out: &mut [f32]) {
        out.copy_from_slice(base);
        for (w, &word) in row.iter().enumerate() {
            let mut m = word;
            while m != 0 {
                let j = w * 64 + m.trailing_zeros() as usize;
                for (o, v) in out.iter_mut().zip(&self.weights[j * self.dim..]) {
                    *o += 2.0 * v;
                }
                m &= m - 1;
            }
        }
    }

    /// Adds the residual centroids of `pq` (one index per subspace) to `out`.
    fn add_residual(&self, pq: &[u8], out: &mut [f32]) {
        if let Some(r) = &self.residual {
            let s = self.dim / r.subspaces;
            for (j, &c) in pq.iter().enumerate() {
                let cb = &r.codebooks[(j * r.centroids + c as usize) * s..][..s];
                for (o, v) in out[j * s..(j + 1) * s].iter_mut().zip(cb) {
                    *o += v;
                }
            }
        }
    }

    /// The decoded vectors `x̂` of every code (`[rows, dim]`), without the residual.
    pub fn decode(&self, codes: &PackedCodes) -> Result<FloatMatrix> {
        self.check_codes(codes)?;
        let base = self.base();
        let mut out = vec![0f32; codes.rows() * self.dim];
        out.par_chunks_mut(self.dim)
            .enumerate()
            .for_each(|(i, o)| self.decode_into(&base, codes.row(i), o));
        Ok(FloatMatrix::new(codes.rows(), self.dim, out)?)
    }

    /// `x − x̂` of every row (`xs` already in the decoded space).
    fn residuals(&self, codes: &PackedCodes, xs: &FloatMatrix) -> Vec<f32> {
        let base = self.base();
        let mut out = vec![0f32; xs.rows() * self.dim];
        out.par_chunks_mut(self.dim).enumerate().for_each(|(i, o)| {
            self.decode_into(&base, codes.row(i), o);
            for (r, v) in o.iter_mut().zip(xs.row(i)) {
                *r = v - *r;
            }
        });
        out
    }

    fn check_codes(&self, codes: &PackedCodes) -> Result<()> {
        if codes.bits() != self.bits {
            return Err(HashError::InvalidArgument(format!(
                "the decoder reads {}-bit codes, got {}-bit codes",
                self.bits,
                codes.bits()
            )));
        }
        Ok(())
    }

    /// The residual codes (`[rows, subspaces]` bytes, row-major) of database rows `x` (raw, as
    /// given to the encoder) whose codes are `codes`.
    pub fn residual_codes(&self, codes: &PackedCodes, x: &FloatMatrix) -> Result<Vec<u8>> {
        self.check_codes(codes)?;
        let r = self.residual.as_ref().ok_or_else(|| {
            HashError::InvalidArgument("this decoder has no residual quantizer".into())
        })?;
        if x.cols() != self.dim || x.rows() != codes.rows() {
            return Err(HashError::InvalidArgument(format!(
                "{} × {} vectors for {} codes of a {}-dimensional decoder",
                x.rows(),
                x.cols(),
                codes.rows(),
                self.dim
            )));
        }
        let xs = if self.normalize {
            normalize_rows(x)?
        } else {
            x.clone()
        };
        let resid = self.residuals(codes, &xs);
        let s = self.dim / r.subspaces;
        let mut out = vec![0u8; x.rows() * r.subspaces];
        for j in 0..r.subspaces {
            let sub = subspace(&resid, self.dim, j * s, s);
            let cb = &r.codebooks[j * r.centroids * s..(j + 1) * r.centroids * s];
            for (i, c) in nearest(&sub, s, cb, r.centroids).into_iter().enumerate() {
                out[i * r.subspaces + j] = c;
            }
        }
        Ok(out)
    }

    /// Prepares `db` (and its [`residual_codes`](Self::residual_codes), when given) for
    /// [`DecodedIndex::rerank`]: checks them and computes the norm `‖x̃_i‖` of every decoded row
    /// (`O(rows · bits · dim)`, once; 4 bytes per row in memory, derived from the codes, so
    /// nothing beyond the codes and residual bytes is stored).
    pub fn index<'a>(
        &'a self,
        db: &'a PackedCodes,
        residual: Option<&'a [u8]>,
    ) -> Result<DecodedIndex<'a>> {
        self.check_codes(db)?;
        let m = self.residual_bytes();
        if let Some(res) = residual {
            if m == 0 {
                return Err(HashError::InvalidArgument(
                    "residual codes given, but this decoder has no residual quantizer".into(),
                ));
            }
            if res.len() != db.rows() * m {
                return Err(HashError::InvalidArgument(format!(
                    "{} residual bytes for {} rows × {m} subspaces (expected {})",
                    res.len(),
                    db.rows(),
                    db.rows() * m
                )));
            }
            let c = self.residual.as_ref().map_or(0, |r| r.centroids);
            if let Some(pos) = res.iter().position(|&b| b as usize >= c) {
                return Err(HashError::InvalidArgument(format!(
                    "residual code {} at row {}, subspace {} is not below the {c} centroids",
                    res[pos],
                    pos / m,
                    pos % m
                )));
            }
        }
        let base = self.base();
        let mut norms = vec![0f32; db.rows()];
        norms.par_iter_mut().enumerate().for_each_init(
            || vec![0f32; self.dim],
            |x, (i, n)| {
                self.decode_into(&base, db.row(i), x);
                if let Some(res) = residual {
                    self.add_residual(&res[i * m..(i + 1) * m], x);
                }
                *n = x
                    .iter()
                    .map(|v| f64::from(*v) * f64::from(*v))
                    .sum::<f64>()
                    .sqrt() as f32;
            },
        );
        Ok(DecodedIndex {
            dec: self,
            base,
            db,
            residual,
            norms,
        })
    }

    /// Checks the shapes and values.
    pub fn validate(&self) -> Result<()> {
        let mut ok = self.dim > 0
            && self.bits > 0
            && self.offset.len() == self.dim
            && self.weights.len() == self.bits * self.dim;
        if let Some(r) = &self.residual {
            ok &= r.subspaces > 0
                && self.dim % r.subspaces == 0
                && (1..=PQ_CENTROIDS).contains(&r.centroids)
                && r.codebooks.len() == r.centroids * self.dim;
        }
        if !ok {
            return Err(HashError::InvalidArgument(format!(
                "decoder shapes disagree: dim {}, bits {}, offset {}, weights {}, residual {:?}",
                self.dim,
                self.bits,
                self.offset.len(),
                self.weights.len(),
                self.residual
                    .as_ref()
                    .map(|r| (r.subspaces, r.centroids, r.codebooks.len()))
            )));
        }
        Ok(())
    }

    /// Saves `decoder.safetensors` and `decoder.json` into `dir` (created), atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.validate()?;
        std::fs::create_dir_all(dir).map_err(|e| HashError::File {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
        let (offset, weights) = ([self.dim], [self.bits, self.dim]);
        let codebooks = self.residual.as_ref().map(|r| {
            (
                [r.subspaces, r.centroids, self.dim / r.subspaces],
                &r.codebooks,
            )
        });
        let mut tensors: Vec<(&str, &[usize], &[f32])> = vec![
            ("offset", &offset, &self.offset),
            ("weights", &weights, &self.weights),
        ];
        if let Some((shape, values)) = &codebooks {
            tensors.push(("codebooks", shape, values));
        }
        write_f32_safetensors(&dir.join(DECODER_TENSORS), &tensors)?;
        let json = DecoderJson {
            format: "bllm-code-decoder".into(),
            dim: self.dim,
            bits: self.bits,
            normalize: self.normalize,
            subspaces: self.residual_bytes(),
            centroids: self.residual.as_ref().map_or(0, |r| r.centroids),
            formula: "s_j = +1 if bit j set else -1; x_hat = offset + s @ weights; with subspaces \
                      m > 0, x_hat[j*dim/m:(j+1)*dim/m] += codebooks[j, residual_code[j]]; \
                      score = q . x_hat / ||x_hat||"
                .into(),
            tensors: DECODER_TENSORS.into(),
        };
        let mut text = serde_json::to_vec_pretty(&json)
            .map_err(|e| HashError::InvalidArgument(e.to_string()))?;
        text.push(b'\n');
        bllm_codes::io::write_atomic(&dir.join(DECODER_JSON), &text)?;
        Ok(())
    }

    /// Loads a decoder saved by [`save`](Self::save), checking names, dtypes, shapes and values.
    pub fn load(dir: &Path) -> Result<Self> {
        let jpath = dir.join(DECODER_JSON);
        let bad = |p: &Path, reason: String| HashError::File {
            path: p.to_owned(),
            reason,
        };
        let read =
            |p: &Path, max| bllm_codes::io::read_regular(p, max).map_err(|e| bad(p, e.to_string()));
        let text = read(&jpath, bllm_codes::io::MAX_TEXT_FILE)?;
        let j: DecoderJson = serde_json::from_slice(&text)
            .map_err(|e| bad(&jpath, format!("invalid decoder description: {e}")))?;
        if j.format != "bllm-code-decoder" {
            return Err(bad(
                &jpath,
                format!("format is {:?}, expected \"bllm-code-decoder\"", j.format),
            ));
        }
        let name = Path::new(&j.tensors);
        if name.components().count() != 1 || name.file_name().is_none() {
            return Err(bad(
                &jpath,
                format!(
                    "tensors {:?} must be a plain file name inside the decoder directory",
                    j.tensors
                ),
            ));
        }
        for (key, v) in [("dim", j.dim), ("bits", j.bits)] {
            if v == 0 {
                return Err(bad(&jpath, format!("{key} is 0, expected at least 1")));
            }
        }
        if j.subspaces > 0
            && (j.dim % j.subspaces != 0 || !(1..=PQ_CENTROIDS).contains(&j.centroids))
        {
            return Err(bad(
                &jpath,
                format!(
                    "subspaces {} and centroids {} must divide dim {} and be in 1..={PQ_CENTROIDS}",
                    j.subspaces, j.centroids, j.dim
                ),
            ));
        }
        let tpath = dir.join(name);
        let raw = read(&tpath, bllm_codes::io::MAX_DATA_FILE)?;
        let st =
            safetensors::SafeTensors::deserialize(&raw).map_err(|e| bad(&tpath, e.to_string()))?;
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let v = f32_tensor(&st, &tpath, name, shape)?;
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(bad(&tpath, format!("tensor {name:?} holds non-finite {x}")));
            }
            Ok(v)
        };
        let residual = if j.subspaces > 0 {
            Some(ResidualQuantizer {
                subspaces: j.subspaces,
                centroids: j.centroids,
                codebooks: get(
                    "codebooks",
                    &[j.subspaces, j.centroids, j.dim / j.subspaces],
                )?,
            })
        } else {
            None
        };
        let dec = Self {
            dim: j.dim,
            bits: j.bits,
            normalize: j.normalize,
            offset: get("offset", &[j.dim])?,
            weights: get("weights", &[j.bits, j.dim])?,
            residual,
        };
        dec.validate()?;
        Ok(dec)
    }
}

/// A database prepared for re-scoring through a [`CodeDecoder`] ([`CodeDecoder::index`]).
pub struct DecodedIndex<'a> {
    dec: &'a CodeDecoder,
    base: Vec<f32>,
    db: &'a PackedCodes,
    residual: Option<&'a [u8]>,
    norms: Vec<f32>,
}

impl DecodedIndex<'_> {
    /// Bytes per row a search process holds: the packed code, the residual bytes (when used)
    /// and the f32 norm of the decoded row.
    pub fn bytes_per_row(&self) -> usize {
        self.db.words_per_row() * 8 + self.residual.map_or(0, |_| self.dec.residual_bytes()) + 4
    }

    /// Re-scores each query's Hamming candidates by the cosine between the float query and the
    /// candidate's decoded vector `x̃` (plus its residual when the index has one), keeping the
    /// best `k` (ties to the lower index). Only codes, residual bytes and norms are read:
    /// per query, `u_j = 2·W_j·q̂`, `c₀ = q̂·(μ − Σ_j W_j)` and the table `T[s][c]` of `q̂`'s
    /// products with every residual centroid are computed once, so a candidate costs one add
    /// per set bit plus one lookup per residual byte:
    /// `score = (c₀ + Σ_{j set} u_j + Σ_s T[s][r_s]) / ‖x̃‖`, summed in a fixed order.
    pub fn rerank(
        &self,
        candidates: &Neighbors<u32>,
        queries: &FloatMatrix,
        k: usize,
    ) -> Result<Neighbors<f32>> {
        let (dec, db) = (self.dec, self.db);
        let (d, bits) = (dec.dim, dec.bits);
        let nq = candidates.queries();
        if queries.rows() != nq || queries.cols() != d {
            return Err(HashError::InvalidArgument(format!(
                "{} × {} float queries for {nq} candidate lists of a {d}-dimensional decoder",
                queries.rows(),
                queries.cols()
            )));
        }
        if k == 0 || k > candidates.k {
            return Err(HashError::InvalidArgument(format!(
                "re-rank k ({k}) must be in 1..={} (the candidate count)",
                candidates.k
            )));
        }
        if let Some(&bad) = candidates.ids.iter().find(|&&id| id as usize >= db.rows()) {
            return Err(HashError::InvalidArgument(format!(
                "candidate id {bad} is outside the database ({} rows)",
                db.rows()
            )));
        }
        let m = dec.residual_bytes();
        let per_query: Vec<Vec<(f32, u32)>> = (0..nq)
            .into_par_iter()
            .map(|qi| {
                let raw = queries.row(qi);
                let qn = crate::l2_norm(raw);
                let inv = if qn > 0.0 { 1.0 / qn } else { 1.0 };
                let q: Vec<f32> = raw.iter().map(|v| v * inv).collect();
                let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
                let c0 = dot(&q, &self.base);
                let u: Vec<f32> = dec.weights.chunks(d).map(|w| 2.0 * dot(w, &q)).collect();
                debug_assert_eq!(u.len(), bits);
                let table: Vec<f32> = match (&dec.residual, self.residual) {
                    (Some(r), Some(_)) => {
                        let s = d / r.subspaces;
                        (0..r.subspaces)
                            .flat_map(|j| {
                                let qs = &q[j * s..(j + 1) * s];
                                r.codebooks[j * r.centroids * s..(j + 1) * r.centroids * s]
                                    .chunks(s)
                                    .map(move |c| dot(qs, c))
                            })
                            .collect()
                    }
                    _ => Vec::new(),
                };
                let centroids = dec.residual.as_ref().map_or(0, |r| r.centroids);
                let mut ids: Vec<u32> = candidates.ids_of(qi).to_vec();
                ids.sort_unstable();
                let mut scored: Vec<(f32, u32)> = ids
                    .into_iter()
                    .map(|id| {
                        let i = id as usize;
                        let mut s = c0;
                        for (w, &word) in db.row(i).iter().enumerate() {
                            let mut mask = word;
                            while mask != 0 {
                                s += u[w * 64 + mask.trailing_zeros() as usize];
                                mask &= mask - 1;
                            }
                        }
                        if let Some(res) = self.residual {
                            for (j, &c) in res[i * m..(i + 1) * m].iter().enumerate() {
                                s += table[j * centroids + c as usize];
                            }
                        }
                        let n = self.norms[i];
                        (if n > 0.0 { s / n } else { 0.0 }, id)
                    })
                    .collect();
                // Stable: equal scores keep index order.
                scored.sort_by(|a, b| b.0.total_cmp(&a.0));
                scored.truncate(k);
                scored
            })
            .collect();
        Ok(Neighbors {
            k,
            ids: per_query.iter().flatten().map(|x| x.1).collect(),
            dists: per_query.iter().flatten().map(|x| x.0).collect(),
        })
    }
}

/// Columns `start..start + s` of every row of the row-major `[rows, d]` matrix `x`.
fn subspace(x: &[f32], d: usize, start: usize, s: usize) -> Vec<f32> {
    x.chunks(d)
        .flat_map(|r| r[start..start + s].iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Method;
    use bllm_codes::hamming;

    fn data(n: usize, d: usize, seed: u64) -> FloatMatrix {
        let mut rng = SplitMix64::new(seed);
        // Clustered rows: a few centres plus noise, so codes and residuals carry structure.
        let centres: Vec<f32> = (0..8 * d).map(|_| rng.next_gaussian() as f32).collect();
        let v = (0..n)
            .flat_map(|i| {
                let c = (i * 7) % 8;
                (0..d)
                    .map(|j| centres[c * d + j] + 0.7 * rng.next_gaussian() as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        FloatMatrix::new(n, d, v).unwrap()
    }

    #[test]
    fn least_squares_decoder_beats_the_mean_and_residual_beats_the_decoder() {
        let x = data(600, 16, 3);
        let mut enc = crate::fit(Method::Itq, &x, 16, 0).unwrap();
        enc.normalize = true;
        let dec = CodeDecoder::fit(&enc, &x, 4, 1).unwrap();
        let xs = normalize_rows(&x).unwrap();
        let codes = enc.encode(&x).unwrap();
        let xh = dec.decode(&codes).unwrap();
        let err = |f: &dyn Fn(usize, usize) -> f32| {
            (0..x.rows())
                .map(|i| {
                    (0..16)
                        .map(|j| (xs.row(i)[j] - f(i, j)).powi(2) as f64)
                        .sum::<f64>()
                })
                .sum::<f64>()
        };
        let e_mean = err(&|_, j| dec.offset[j]);
        let e_ls = err(&|i, j| xh.row(i)[j]);
        let pq = dec.residual_codes(&codes, &x).unwrap();
        let mut full = xh.as_slice().to_vec();
        for i in 0..x.rows() {
            dec.add_residual(&pq[i * 4..(i + 1) * 4], &mut full[i * 16..(i + 1) * 16]);
        }
        let e_pq = err(&|i, j| full[i * 16 + j]);
        assert!(e_ls < 0.5 * e_mean, "{e_ls} vs mean {e_mean}");
        assert!(e_pq < 0.7 * e_ls, "{e_pq} vs ls {e_ls}");
        // The least-squares solution: the residual is orthogonal to every sign column.
        let signs = codes.to_signs();
        for b in 0..16 {
            let dot: f64 = (0..x.rows())
                .map(|i| f64::from(signs[i * 16 + b]) * f64::from(xs.row(i)[0] - xh.row(i)[0]))
                .sum();
            assert!(dot.abs() < 1e-2 * x.rows() as f64, "bit {b}: {dot}");
        }
    }

    #[test]
    fn rerank_matches_a_dense_recomputation_and_is_deterministic() {
        let x = data(400, 16, 5);
        let (q, db) = (x.slice_rows(0, 30).unwrap(), x.slice_rows(30, 400).unwrap());
        let enc = crate::fit(Method::Itq, &db, 16, 0).unwrap();
        let dec = CodeDecoder::fit(&enc, &db, 8, 2).unwrap();
        let again = CodeDecoder::fit(&enc, &db, 8, 2).unwrap();
        assert_eq!(dec, again);
        let dbc = enc.encode(&db).unwrap();
        let qc = enc.encode(&q).unwrap();
        let hits = hamming::search(&dbc, &qc, 40).unwrap();
        let pq = dec.residual_codes(&dbc, &db).unwrap();
        let index = dec.index(&dbc, Some(&pq)).unwrap();
        assert_eq!(index.bytes_per_row(), 8 + 8 + 4);
        let got = index.rerank(&hits, &q, 10).unwrap();
        let xh = dec.decode(&dbc).unwrap();
        for qi in 0..q.rows() {
            let mut want: Vec<(f32, u32)> = hits
                .ids_of(qi)
                .iter()
                .map(|&id| {
                    let mut v = xh.row(id as usize).to_vec();
                    dec.add_residual(&pq[id as usize * 8..][..8], &mut v);
                    let qn: f32 = q.row(qi).iter().map(|a| a * a).sum::<f32>().sqrt();
                    let dot: f32 = q.row(qi).iter().zip(&v).map(|(a, b)| a * b).sum();
                    let nn: f32 = v.iter().map(|b| b * b).sum();
                    (dot / (qn * nn.sqrt()), id)
                })
                .collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for (r, (&id, &s)) in got.ids_of(qi).iter().zip(got.dists_of(qi)).enumerate() {
                assert!((s - want[r].0).abs() < 1e-4, "query {qi} rank {r}");
                if (want[r].0 - want.get(r + 1).map_or(f32::MIN, |w| w.0)).abs() > 1e-4 {
                    assert_eq!(id, want[r].1, "query {qi} rank {r}");
                }
            }
        }
        // Without the residual the scores are those of the plain decoded vectors.
        let plain_index = dec.index(&dbc, None).unwrap();
        assert_eq!(plain_index.bytes_per_row(), 8 + 4);
        let plain = plain_index.rerank(&hits, &q, 10).unwrap();
        assert_ne!(plain.dists, got.dists);
        // Bad input is refused, not panicked on.
        assert!(dec.index(&dbc, Some(&pq[1..])).is_err());
        assert!(plain_index.rerank(&hits, &q, 41).is_err());
        assert!(
            plain_index
                .rerank(&hits, &q.slice_rows(0, 5).unwrap(), 10)
                .is_err()
        );
        let mut wrong = pq.clone();
        wrong[3] = 255;
        let small = CodeDecoder::fit(&enc, &db.slice_rows(0, 100).unwrap(), 8, 2).unwrap();
        assert_eq!(small.residual.as_ref().unwrap().centroids, 100);
        assert!(small.index(&dbc, Some(&wrong)).is_err());
        assert!(CodeDecoder::fit(&enc, &db, 5, 0).is_err());
        let no_pq = CodeDecoder::fit(&enc, &db, 0, 0).unwrap();
        assert!(no_pq.residual_codes(&dbc, &db).is_err());
        assert!(no_pq.index(&dbc, Some(&pq)).is_err());
    }

    #[test]
    fn save_load_roundtrip_and_bad_files_are_refused() {
        let x = data(300, 16, 7);
        let enc = crate::fit(Method::Pca, &x, 8, 0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for pq in [0, 4] {
            let dec = CodeDecoder::fit(&enc, &x, pq, 0).unwrap();
            dec.save(dir.path()).unwrap();
            assert_eq!(CodeDecoder::load(dir.path()).unwrap(), dec);
        }
        let j = dir.path().join(DECODER_JSON);
        let text = std::fs::read_to_string(&j).unwrap();
        std::fs::write(&j, text.replace("\"bits\": 8", "\"bits\": 9")).unwrap();
        let e = CodeDecoder::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("weights") && e.contains("[9, 16]"), "{e}");
        std::fs::write(&j, text.replace("\"subspaces\": 4", "\"subspaces\": 5")).unwrap();
        let e = CodeDecoder::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("subspaces 5"), "{e}");
        std::fs::write(&j, "{").unwrap();
        let e = CodeDecoder::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains(DECODER_JSON), "{e}");
    }
}
