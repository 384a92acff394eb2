//! Fitting the baselines.

use bllm_codes::FloatMatrix;
use bllm_codes::rng::SplitMix64;
use nalgebra::{DMatrix, SymmetricEigen};

use crate::{HashError, LinearEncoder, Result};

/// A baseline method, by recipe name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Random hyperplanes through the origin (`lsh`).
    Lsh,
    /// Random hyperplanes through the data mean (`lsh_centred`).
    LshCentred,
    /// Top principal directions (`pca`).
    Pca,
    /// PCA + Iterative Quantization (`itq`).
    Itq,
    /// `sign(x − μ)`, bits = dimension (`sign`).
    Sign,
    /// `sign(x)`, bits = dimension, no centring (`sign_raw`): what sentence-transformers'
    /// `quantize_embeddings(precision="binary")` gives (it tests `x > 0`; here `x ≥ 0`, which
    /// differs only on exact zeros).
    SignRaw,
}

impl Method {
    /// Every method with its name.
    pub const ALL: [(Method, &'static str); 6] = [
        (Self::Lsh, "lsh"),
        (Self::LshCentred, "lsh_centred"),
        (Self::Pca, "pca"),
        (Self::Itq, "itq"),
        (Self::Sign, "sign"),
        (Self::SignRaw, "sign_raw"),
    ];

    /// The method called `name`.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(m, _)| *m)
            .ok_or_else(|| {
                HashError::InvalidArgument(format!(
                    "unknown method {name:?}; expected one of {}",
                    Self::ALL
                        .iter()
                        .map(|(_, n)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// The recipe name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(m, _)| *m == self)
            .map_or("?", |(_, n)| n)
    }
}

/// Fits `method` with `bits` bits on the rows of `x` (the training set); `seed` drives the
/// random parts (hyperplanes, ITQ's initial rotation).
pub fn fit(method: Method, x: &FloatMatrix, bits: usize, seed: u64) -> Result<LinearEncoder> {
    match method {
        Method::Lsh => random_hyperplanes(x, bits, seed, false),
        Method::LshCentred => random_hyperplanes(x, bits, seed, true),
        Method::Pca => pca_sign(x, bits),
        Method::Itq => Ok(itq(x, bits, 50, seed)?.0),
        Method::Sign => plain_sign(x, bits, true),
        Method::SignRaw => plain_sign(x, bits, false),
    }
}

fn check(x: &FloatMatrix, bits: usize, max: Option<usize>) -> Result<()> {
    if x.rows() < 2 || x.cols() == 0 {
        return Err(HashError::InvalidArgument(format!(
            "need at least 2 training rows with columns, got {} × {}",
            x.rows(),
            x.cols()
        )));
    }
    if bits == 0 || max.is_some_and(|m| bits > m) {
        return Err(HashError::InvalidArgument(format!(
            "bits = {bits} is out of range (1..={})",
            max.map_or("any".to_owned(), |m| m.to_string())
        )));
    }
    Ok(())
}

fn column_mean(x: &FloatMatrix) -> Vec<f64> {
    let mut mu = vec![0f64; x.cols()];
    for r in 0..x.rows() {
        for (m, v) in mu.iter_mut().zip(x.row(r)) {
            *m += f64::from(*v);
        }
    }
    mu.iter_mut().for_each(|m| *m /= x.rows() as f64);
    mu
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Random-hyperplane LSH: `P[i][j] ~ N(0, 1)` from `seed`; `centred` subtracts the data mean.
pub fn random_hyperplanes(
    x: &FloatMatrix,
    bits: usize,
    seed: u64,
    centred: bool,
) -> Result<LinearEncoder> {
    check(x, bits, None)?;
    let d = x.cols();
    let mut rng = SplitMix64::new(seed ^ 0x15A);
    let projection: Vec<f32> = (0..d * bits).map(|_| rng.next_gaussian() as f32).collect();
    let mean = if centred {
        to_f32(&column_mean(x))
    } else {
        vec![0.0; d]
    };
    Ok(LinearEncoder {
        method: if centred { "lsh_centred" } else { "lsh" }.into(),
        dim: d,
        bits,
        mean,
        projection,
        thresholds: vec![0.0; bits],
        normalize: false,
    })
}

/// `sign(x − μ)` (`centred`) or `sign(x)` (projection = identity); `bits` must equal the
/// dimension.
pub fn plain_sign(x: &FloatMatrix, bits: usize, centred: bool) -> Result<LinearEncoder> {
    check(x, bits, Some(x.cols()))?;
    let d = x.cols();
    let name = if centred { "sign" } else { "sign_raw" };
    if bits != d {
        return Err(HashError::InvalidArgument(format!(
            "{name} needs bits = dimension ({d}), got {bits}"
        )));
    }
    let mut projection = vec![0f32; d * d];
    for i in 0..d {
        projection[i * d + i] = 1.0;
    }
    Ok(LinearEncoder {
        method: name.into(),
        dim: d,
        bits,
        mean: if centred {
            to_f32(&column_mean(x))
        } else {
            vec![0.0; d]
        },
        projection,
        thresholds: vec![0.0; d],
        normalize: false,
    })
}

/// Mean and the top-`k` principal directions (columns of a `d × k` matrix, by decreasing
/// variance; each column's largest-magnitude entry made positive so the result is unique).
pub fn pca(x: &FloatMatrix, k: usize) -> Result<(Vec<f64>, DMatrix<f64>, Vec<f64>)> {
    check(x, k, Some(x.cols()))?;
    let (n, d) = (x.rows(), x.cols());
    let mu = column_mean(x);
    let xc = DMatrix::<f64>::from_fn(n, d, |r, c| f64::from(x.row(r)[c]) - mu[c]);
    let cov = (xc.transpose() * &xc) / (n as f64);
    let eig = SymmetricEigen::new(cov);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| {
        eig.eigenvalues[b]
            .total_cmp(&eig.eigenvalues[a])
            .then(a.cmp(&b))
    });
    let mut p = DMatrix::<f64>::zeros(d, k);
    let mut variances = Vec::with_capacity(k);
    for (j, &col) in order.iter().take(k).enumerate() {
        let v = eig.eigenvectors.column(col);
        let big = v
            .iter()
            .copied()
            .fold(0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        let s = if big < 0.0 { -1.0 } else { 1.0 };
        for i in 0..d {
            p[(i, j)] = s * v[i];
        }
        variances.push(eig.eigenvalues[col]);
    }
    Ok((mu, p, variances))
}

fn encoder_from(method: &str, mu: &[f64], p: &DMatrix<f64>) -> LinearEncoder {
    let (d, k) = p.shape();
    let mut projection = vec![0f32; d * k];
    for i in 0..d {
        for j in 0..k {
            projection[i * k + j] = p[(i, j)] as f32;
        }
    }
    LinearEncoder {
        method: method.into(),
        dim: d,
        bits: k,
        mean: to_f32(mu),
        projection,
        thresholds: vec![0.0; k],
        normalize: false,
    }
}

/// PCA-sign: `sign` of the top-`bits` principal components (bits ≤ dimension).
pub fn pca_sign(x: &FloatMatrix, bits: usize) -> Result<LinearEncoder> {
    let (mu, p, _) = pca(x, bits)?;
    Ok(encoder_from("pca", &mu, &p))
}

/// What ITQ did: the quantisation loss `‖B − V R‖²_F` before each update, the final loss, and
/// the rotation `R`.
#[derive(Clone, Debug)]
pub struct ItqReport {
    /// Loss at every iteration, then the final one.
    pub losses: Vec<f64>,
    /// The learned orthogonal rotation (`bits × bits`).
    pub rotation: DMatrix<f64>,
}

fn sign_pm1(m: &DMatrix<f64>) -> DMatrix<f64> {
    m.map(|v| if v >= 0.0 { 1.0 } else { -1.0 })
}

/// PCA-ITQ (Gong & Lazebnik 2011): project on the top-`bits` principal directions (`V`), then
/// `iterations` times fix `B = sign(V R)` and set `R` to the orthogonal Procrustes solution
/// (`Vᵀ B = S Ω Ŝᵀ` → `R = S Ŝᵀ`). `R` starts from a seeded random rotation.
pub fn itq(
    x: &FloatMatrix,
    bits: usize,
    iterations: usize,
    seed: u64,
) -> Result<(LinearEncoder, ItqReport)> {
    let (mu, p, _) = pca(x, bits)?;
    let (n, d) = (x.rows(), x.cols());
    let xc = DMatrix::<f64>::from_fn(n, d, |r, c| f64::from(x.row(r)[c]) - mu[c]);
    let v = xc * &p;
    let mut rng = SplitMix64::new(seed ^ 0x17C);
    let g = DMatrix::<f64>::from_fn(bits, bits, |_, _| rng.next_gaussian());
    let mut r = g.qr().q();
    let mut losses = Vec::with_capacity(iterations + 1);
    for _ in 0..iterations {
        let vr = &v * &r;
        let b = sign_pm1(&vr);
        losses.push((&b - &vr).norm_squared());
        let svd = (v.transpose() * &b).svd(true, true);
        let (Some(s), Some(st)) = (svd.u, svd.v_t) else {
            return Err(HashError::InvalidArgument(
                "ITQ: the SVD did not converge".into(),
            ));
        };
        r = s * st;
    }
    let vr = &v * &r;
    losses.push((&sign_pm1(&vr) - &vr).norm_squared());
    let enc = encoder_from("itq", &mu, &(p * &r));
    Ok((
        enc,
        ItqReport {
            losses,
            rotation: r,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Anisotropic Gaussian data: variance 16, 9, 4, 1, 0.25 along the axes, offset mean.
    fn aniso(n: usize, seed: u64) -> FloatMatrix {
        let sd = [4.0, 3.0, 2.0, 1.0, 0.5];
        let mut rng = SplitMix64::new(seed);
        let data = (0..n * 5)
            .map(|i| (rng.next_gaussian() * sd[i % 5] + 2.0) as f32)
            .collect();
        FloatMatrix::new(n, 5, data).unwrap()
    }

    #[test]
    fn pca_finds_the_axes_in_order() {
        let (mu, p, var) = pca(&aniso(20_000, 1), 3).unwrap();
        assert!(mu.iter().all(|m| (m - 2.0).abs() < 0.1), "{mu:?}");
        for j in 0..3 {
            assert!(p[(j, j)] > 0.99, "column {j} is not axis {j}: {p}");
        }
        assert!(
            (var[0] - 16.0).abs() < 0.6 && (var[1] - 9.0).abs() < 0.4 && (var[2] - 4.0).abs() < 0.2,
            "{var:?}"
        );
    }

    #[test]
    fn itq_rotation_is_orthogonal_and_its_loss_never_increases() {
        let x = aniso(3000, 2);
        let (enc, report) = itq(&x, 4, 50, 7).unwrap();
        let rtr = report.rotation.transpose() * &report.rotation;
        assert!((rtr - DMatrix::<f64>::identity(4, 4)).norm() < 1e-9);
        for w in report.losses.windows(2) {
            assert!(
                w[1] <= w[0] * (1.0 + 1e-12) + 1e-9,
                "loss went up: {:?}",
                report.losses
            );
        }
        assert!(report.losses.last() < report.losses.first());
        assert_eq!((enc.dim, enc.bits), (5, 4));
        // Deterministic under its seed.
        assert_eq!(itq(&x, 4, 50, 7).unwrap().0, enc);
    }

    #[test]
    fn lsh_and_sign_match_their_definitions() {
        let x = FloatMatrix::new(3, 2, vec![1.0, 5.0, 3.0, 1.0, 2.0, 0.0]).unwrap();
        // mean (2, 2): centred rows (−1, 3), (1, −1), (0, −2) → sign bits.
        let s = plain_sign(&x, 2, true).unwrap().encode(&x).unwrap();
        assert_eq!(s.to_bools(), vec![false, true, true, false, true, false]);
        // Uncentred: every entry ≥ 0 → all bits set; a negative entry clears its bit.
        let raw = fit(Method::SignRaw, &x, 2, 0).unwrap();
        assert_eq!(raw.encode(&x).unwrap().to_bools(), vec![true; 6]);
        let neg = FloatMatrix::new(2, 2, vec![-1.0, 0.5, 2.0, -0.1]).unwrap();
        assert_eq!(
            raw.encode(&neg).unwrap().to_bools(),
            vec![false, true, true, false]
        );
        let lsh = random_hyperplanes(&x, 70, 3, false).unwrap();
        let codes = lsh.encode(&x).unwrap();
        for r in 0..3 {
            for j in 0..70 {
                let dot: f32 = (0..2)
                    .map(|i| x.row(r)[i] * lsh.projection[i * 70 + j])
                    .sum();
                assert_eq!(codes.bit(r, j), dot >= 0.0);
            }
        }
        let centred = random_hyperplanes(&x, 70, 3, true).unwrap();
        assert_eq!(centred.projection, lsh.projection);
        assert_eq!(centred.mean, vec![2.0, 2.0]);
        assert!(
            plain_sign(&x, 1, true).is_err()
                && plain_sign(&x, 1, false).is_err()
                && pca_sign(&x, 3).is_err()
                && Method::from_name("umap").is_err()
        );
    }

    #[test]
    fn encoder_round_trips_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let x = aniso(500, 4);
        let enc = fit(Method::Itq, &x, 3, 1).unwrap();
        enc.save(dir.path()).unwrap();
        let back = LinearEncoder::load(dir.path()).unwrap();
        assert_eq!(back, enc);
        assert_eq!(back.encode(&x).unwrap(), enc.encode(&x).unwrap());
        std::fs::write(dir.path().join(crate::ENCODER_TENSORS), b"junk").unwrap();
        let e = LinearEncoder::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("encoder.safetensors"), "{e}");
    }
}
