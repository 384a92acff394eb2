//! [`HashHead`]: a learned linear projection from float embeddings to k-bit retrieval codes,
//! and the objectives that train it ([`listwise_loss`], [`similarity_loss`]) with the
//! [`bit_balance`] and [`decorrelation`] regularisers.
//!
//! The head sees *centred* embeddings `x − μ` (the trainer subtracts the training mean) and
//! computes `z = (x − μ)·P + b`; the code bit is `z ≥ 0`. That is exactly the affine encoder of
//! `bllm-hash` (`mean = μ`, `projection = P`, `thresholds = −b`), so a trained head exports to
//! the estimator-free encoder the retrieval engine runs.
//!
//! During training the codes go through a [`bllm_ste::Estimator`] in one of two
//! [`HeadForward`] modes, after scaling `z` by a constant (no-gradient) `1 / mean|z|` so the
//! estimator sees unit-scale inputs whatever the projection's norm:
//!
//! * `Surrogate`: `h = F(z / s)`, the estimator's smooth surrogate (its derivative is the
//!   estimator's `G`): a continuous relaxation, in the spirit of HashNet's tanh continuation
//!   (Cao et al. 2017). With `tanh_onebit`, `F ≈ tanh`.
//! * `Sign`: `h = q(z / s)` in the forward (hard `±1` codes) and `G` in the backward: a
//!   straight-through estimator (GreedyHash, Su et al. 2018, uses the identity).

use bllm_ste::estimators::Levels;
use bllm_ste::{Ctx, Estimator, ops};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};

use crate::{NnError, Result};

/// How the training forward turns projections into codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadForward {
    /// The estimator's smooth surrogate `F` (continuous codes in about `[−1, 1]`).
    Surrogate,
    /// Hard codes from the estimator's forward, its surrogate gradient in the backward.
    Sign,
}

/// Configuration of a [`HashHead`].
#[derive(Clone, Debug, PartialEq)]
pub struct HashHeadConfig {
    /// Input (embedding) dimension `d`.
    pub input_dim: usize,
    /// Code length `k`.
    pub bits: usize,
    /// Train the per-bit thresholds (`false` keeps the initial ones).
    pub learn_bias: bool,
}

impl HashHeadConfig {
    /// A head with projection `P` (`[d, k]` row-major) and bias `b` (`[k]`), e.g. from PCA or ITQ.
    pub fn init_from<B: Backend>(
        &self,
        projection: &[f32],
        bias: &[f32],
        device: &B::Device,
    ) -> Result<HashHead<B>> {
        let (d, k) = (self.input_dim, self.bits);
        if d == 0 || k == 0 || projection.len() != d * k || bias.len() != k {
            return Err(NnError::Config(format!(
                "hash head: projection must hold {d}×{k} and bias {k} values, got {} and {}",
                projection.len(),
                bias.len()
            )));
        }
        if projection.iter().chain(bias).any(|v| !v.is_finite()) {
            return Err(NnError::Config(
                "hash head: initial projection or bias holds NaN or infinity".into(),
            ));
        }
        let p = Tensor::<B, 2>::from_data(TensorData::new(projection.to_vec(), [d, k]), device);
        let b = Tensor::<B, 1>::from_data(TensorData::new(bias.to_vec(), [k]), device);
        let bias = Param::from_tensor(b).set_require_grad(self.learn_bias);
        Ok(HashHead {
            projection: Param::from_tensor(p),
            bias,
        })
    }
}

/// A linear hashing head: `z = x·P + b` on centred inputs, code bit `z ≥ 0`.
#[derive(Module, Debug)]
pub struct HashHead<B: Backend> {
    /// Projection `P`, shape `[d, k]`.
    pub projection: Param<Tensor<B, 2>>,
    /// Bias `b`, shape `[k]` (the exported thresholds are `−b`).
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> HashHead<B> {
    /// Pre-binarization projections: `[n, d]` centred inputs → `[n, k]`.
    pub fn logits(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        bllm_ste::linear::linear(x, self.projection.val(), Some(self.bias.val()))
    }

    /// Training codes `[n, k]` of projections `z` (from [`HashHead::logits`]), in `mode`,
    /// through `estimator`. `{0, 1}` estimators are mapped to `±1`; ternary ones are rejected
    /// (a code bit has two values).
    pub fn codes(
        z: Tensor<B, 2>,
        estimator: &Estimator,
        mode: HeadForward,
        ctx: &Ctx,
    ) -> Result<Tensor<B, 2>> {
        let s = ops::constant(ops::mean_abs(z.clone())).clamp_min(1e-12);
        let u = z / s;
        let h = match mode {
            HeadForward::Surrogate => estimator.surrogate(u, ctx),
            HeadForward::Sign => estimator.apply(u, ctx),
        };
        match estimator.levels() {
            Levels::Sign => Ok(h),
            Levels::ZeroOne => Ok(h.mul_scalar(2.0).sub_scalar(1.0)),
            Levels::Ternary => Err(NnError::Config(format!(
                "estimator {:?} is ternary; hash codes need a two-level estimator",
                estimator.name()
            ))),
        }
    }

    /// The hard code bits `z ≥ 0` of centred inputs, `[n, k]` as `±1` (no gradient).
    pub fn hard_codes(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        ops::sign_pm1(ops::constant(self.logits(x)))
    }

    /// The projection (row-major `[d, k]`) and bias as host vectors, for export.
    pub fn to_host(&self) -> (Vec<f32>, Vec<f32>) {
        let p = self.projection.val().into_data().convert::<f32>();
        let b = self.bias.val().into_data().convert::<f32>();
        (
            p.to_vec().unwrap_or_default(),
            b.to_vec().unwrap_or_default(),
        )
    }
}

/// Listwise neighbour distillation (the default objective): for each anchor `a` and database
/// row `j ≠ a`,
///
/// `L = −mean_a Σ_j softmax_j(cos_aj / τ_f) · log softmax_j(⟨h_a, h_j⟩ / (k τ_c))`,
///
/// the cross-entropy from the cosine-similarity distribution over the whole database to the
/// code-similarity distribution: the true top neighbours must carry the code similarity mass.
/// Related: relational / similarity-distribution distillation for hashing (e.g. Tian et al.
/// 2020 "Contrastive representation distillation"; Su et al. 2018 GreedyHash used MSE instead).
///
/// Shapes: `anchors [B, k]`, `db [N, k]`, `cos [B, N]`, `exclude [B, N]` (true where `j` is
/// the anchor itself).
pub fn listwise_loss<B: Backend>(
    anchors: Tensor<B, 2>,
    db: Tensor<B, 2>,
    cos: Tensor<B, 2>,
    exclude: Tensor<B, 2, Bool>,
    teacher_temperature: f64,
    code_temperature: f64,
) -> Tensor<B, 1> {
    let k = anchors.dims()[1] as f64;
    let sc =
        bllm_ste::linear::linear(anchors, db.transpose(), None).div_scalar(k * code_temperature);
    let teacher = bllm_ste::softmax::softmax(
        ops::constant(cos)
            .div_scalar(teacher_temperature)
            .mask_fill(exclude.clone(), -1e9),
        1,
    );
    bllm_ste::softmax::soft_cross_entropy(sc.mask_fill(exclude, -1e9), teacher)
}

/// Similarity regression: `mean_{a, j ≠ a} (⟨h_a, h_j⟩ / k − t_aj)²` with the cosine rescaled
/// to the code range, `t = (cos − c̄) / (1 − c̄)`, `c̄` the mean cosine of the pairs (so a
/// typical pair targets 0 and an identical pair 1). GreedyHash-style (Su et al. 2018);
/// shapes as [`listwise_loss`].
pub fn similarity_loss<B: Backend>(
    anchors: Tensor<B, 2>,
    db: Tensor<B, 2>,
    cos: Tensor<B, 2>,
    exclude: Tensor<B, 2, Bool>,
) -> Tensor<B, 1> {
    let [b, n] = cos.dims();
    let k = anchors.dims()[1] as f64;
    let keep = exclude.clone().bool_not().float();
    let pairs = (b * n) as f64 - exclude.float().sum().into_scalar_f64();
    let cos = ops::constant(cos);
    let mean_cos = (cos.clone() * keep.clone()).sum().into_scalar_f64() / pairs.max(1.0);
    let target = cos
        .sub_scalar(mean_cos)
        .div_scalar((1.0 - mean_cos).max(1e-6));
    let sc = bllm_ste::linear::linear(anchors, db.transpose(), None).div_scalar(k);
    ((sc - target).square() * keep)
        .sum()
        .div_scalar(pairs.max(1.0))
}

/// Bit balance: `mean_b (mean_n h_nb)²` — zero when every bit is +1 on half the rows.
pub fn bit_balance<B: Backend>(h: Tensor<B, 2>) -> Tensor<B, 1> {
    h.mean_dim(0).square().mean()
}

/// Decorrelation: `‖HᵀH/n − I‖²_F / k²` — zero when the bits are uncorrelated `±1` columns.
pub fn decorrelation<B: Backend>(h: Tensor<B, 2>) -> Tensor<B, 1> {
    let [n, k] = h.dims();
    let gram = bllm_ste::linear::linear(h.clone().transpose(), h, None).div_scalar(n as f64);
    let eye = Tensor::<B, 2>::eye(k, &gram.device());
    (gram - eye).square().sum().div_scalar((k * k) as f64)
}

/// A scalar tensor's value as `f64`.
trait ScalarF64 {
    fn into_scalar_f64(self) -> f64;
}

impl<B: Backend> ScalarF64 for Tensor<B, 1> {
    fn into_scalar_f64(self) -> f64 {
        let v: f32 = burn::tensor::ElementConversion::elem(self.into_scalar());
        f64::from(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type B = NdArray;

    fn t2(v: &[f32], shape: [usize; 2]) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
    }

    fn host(t: Tensor<B, 1>) -> f64 {
        t.into_scalar_f64()
    }

    #[test]
    fn hard_codes_are_the_affine_encoder() {
        let cfg = HashHeadConfig {
            input_dim: 2,
            bits: 3,
            learn_bias: true,
        };
        let head = cfg
            .init_from::<B>(
                &[1.0, 0.0, 1.0, 0.0, 1.0, -1.0],
                &[0.0, -0.5, 0.25],
                &Default::default(),
            )
            .unwrap();
        let x = t2(&[1.0, 1.0, -1.0, 0.25], [2, 2]);
        // z row 0 = [1, 0.5, 0.25], row 1 = [-1, -0.25, -1.0]
        let c = head.hard_codes(x).into_data().to_vec::<f32>().unwrap();
        assert_eq!(c, vec![1.0, 1.0, 1.0, -1.0, -1.0, -1.0]);
        let (p, b) = head.to_host();
        assert_eq!(p.len(), 6);
        assert_eq!(b, vec![0.0, -0.5, 0.25]);
        assert!(
            cfg.init_from::<B>(&[1.0], &[0.0], &Default::default())
                .is_err()
        );
        assert!(
            cfg.init_from::<B>(&[f32::NAN; 6], &[0.0; 3], &Default::default())
                .is_err()
        );
    }

    /// Every two-level estimator gives ±1 codes in sign mode and bounded codes in surrogate
    /// mode; ternary ones are refused.
    #[test]
    fn codes_for_every_estimator() {
        let z = t2(&[0.3, -2.0, 0.0, 1.5, -0.1, 4.0], [2, 3]);
        for e in Estimator::all() {
            let ctx = Ctx::at(0.5).with_seed(3);
            let sign = HashHead::<B>::codes(z.clone(), &e, HeadForward::Sign, &ctx);
            if e.levels() == Levels::Ternary {
                assert!(sign.is_err(), "{}", e.name());
                continue;
            }
            let v = sign.unwrap().into_data().to_vec::<f32>().unwrap();
            assert!(
                v.iter().all(|x| *x == 1.0 || *x == -1.0),
                "{} {v:?}",
                e.name()
            );
            let s = HashHead::<B>::codes(z.clone(), &e, HeadForward::Surrogate, &ctx).unwrap();
            let v = s.into_data().to_vec::<f32>().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{} {v:?}", e.name());
        }
    }

    #[test]
    fn listwise_loss_matches_hand_computation() {
        // One anchor (row 0 of the db), two other rows.
        let h = t2(&[1.0, 1.0, 1.0, -1.0, -1.0, -1.0], [3, 2]);
        let cos = t2(&[1.0, 0.5, 0.0], [1, 3]);
        let excl = Tensor::<B, 2, Bool>::from_data(
            TensorData::new(vec![true, false, false], [1, 3]),
            &Default::default(),
        );
        let l = host(listwise_loss(
            h.clone().slice([0..1, 0..2]),
            h.clone(),
            cos.clone(),
            excl.clone(),
            0.5,
            1.0,
        ));
        // teacher ∝ exp(1), exp(0); code logits ⟨h0,hj⟩/2 = 0, −1.
        let (t1, t2_) = (1f64.exp() / (1f64.exp() + 1.0), 1.0 / (1f64.exp() + 1.0));
        let z = (0f64).exp() + (-1f64).exp();
        let want = -(t1 * (0.0 - z.ln()) + t2_ * (-1.0 - z.ln()));
        assert!((l - want).abs() < 1e-5, "{l} vs {want}");
        // Similarity loss: c̄ = 0.25, targets (0.5−.25)/.75 = 1/3 and −1/3; code sims 0, −1.
        let s = host(similarity_loss(h.clone().slice([0..1, 0..2]), h, cos, excl));
        let want = ((0.0 - 1.0 / 3.0f64).powi(2) + (-1.0 + 1.0 / 3.0f64).powi(2)) / 2.0;
        assert!((s - want).abs() < 1e-5, "{s} vs {want}");
    }

    #[test]
    fn regularisers_vanish_on_balanced_uncorrelated_codes() {
        // Columns of a 4×4 Hadamard matrix without the constant one: balanced and orthogonal.
        let h = t2(
            &[
                1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, -1.0, -1.0, -1.0, 1.0,
            ],
            [4, 3],
        );
        assert!(host(bit_balance(h.clone())).abs() < 1e-7);
        assert!(host(decorrelation(h)).abs() < 1e-7);
        let same = t2(&[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0], [4, 2]);
        assert!((host(bit_balance(same.clone())) - 0.25).abs() < 1e-7);
        // Two identical balanced columns: off-diagonal 1 twice → 2/4.
        assert!((host(decorrelation(same)) - 0.5).abs() < 1e-7);
    }

    /// Gradient flows to both parameters (and not to a frozen bias).
    #[test]
    fn gradients_reach_the_parameters() {
        type A = Autodiff<NdArray>;
        let dev = Default::default();
        for learn_bias in [true, false] {
            let head = HashHeadConfig {
                input_dim: 3,
                bits: 2,
                learn_bias,
            }
            .init_from::<A>(&[0.5, -0.2, 0.1, 0.3, -0.4, 0.2], &[0.1, 0.0], &dev)
            .unwrap();
            let x = Tensor::<A, 2>::from_data(
                TensorData::new(
                    vec![1.0f32, 0.0, -1.0, 0.5, 0.5, 0.5, -1.0, 1.0, 0.0],
                    [3, 3],
                ),
                &dev,
            );
            let z = head.logits(x);
            let e = Estimator::from_name("tanh_onebit").unwrap();
            let h = HashHead::codes(z, &e, HeadForward::Surrogate, &Ctx::at(0.0)).unwrap();
            let cos = Tensor::<A, 2>::from_data(
                TensorData::new(vec![1.0f32, 0.2, -0.3, 0.2, 1.0, 0.4], [2, 3]),
                &dev,
            );
            let excl = Tensor::<A, 2, Bool>::from_data(
                TensorData::new(vec![true, false, false, false, true, false], [2, 3]),
                &dev,
            );
            let loss = listwise_loss(h.clone().slice([0..2, 0..2]), h, cos, excl, 0.1, 0.1);
            let g = loss.backward();
            let gp = head.projection.val().grad(&g).unwrap();
            let gp: f32 = gp.abs().sum().into_scalar();
            assert!(gp > 0.0);
            assert_eq!(head.bias.val().grad(&g).is_some(), learn_bias);
        }
    }
}
