//! Activation quantizers: per-token absmax int8 (BitNet) and straight-through rounding.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::ops::round_ste;

/// Per-token absmax int8 quantisation (Wang et al. 2023, BitNet): each row (token) of the last
/// dimension is scaled by `127 / max|x|`, rounded (half to even) and clamped to
/// `[−128, 127]`, then scaled back, with an identity straight-through gradient.
///
/// Returns the dequantised tensor and the fraction of values at the extreme levels ±127 (with
/// an absmax scale nothing is ever clipped, so this measures saturation: how much of the range
/// each token's largest values occupy).
pub fn absmax_int8<B: Backend, const D: usize>(x: Tensor<B, D>) -> (Tensor<B, D>, f64) {
    const Q: f64 = 127.0;
    let gamma = crate::ops::constant(x.clone())
        .abs()
        .max_dim(D - 1)
        .clamp_min(1e-5);
    let scaled = x.mul_scalar(Q).div(gamma.clone());
    let q = round_ste(scaled).clamp(-128.0, Q);
    let n = q.shape().num_elements().max(1) as f64;
    let at_edge: f32 = burn::tensor::ElementConversion::elem(
        q.clone()
            .abs()
            .greater_equal_elem(Q)
            .float()
            .sum()
            .into_scalar(),
    );
    (q.mul(gamma).div_scalar(Q), f64::from(at_edge) / n)
}
