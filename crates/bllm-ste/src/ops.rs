//! Tensor building blocks shared by the estimators.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// The values of `x` as a constant: no gradient and no autodiff graph at all.
///
/// Burn's `detach()` keeps a leaf's `require_grad`, so detaching a parameter yields a *new
/// tracked leaf*; building on it grows a second graph whose merge into the first made backward
/// passes non-deterministic (last-bit differences between identical runs). Every "no gradient"
/// value in this crate goes through here instead.
pub fn constant<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.detach().set_require_grad(false)
}

/// `+1` where `x >= 0` (including 0 and −0.0), `−1` elsewhere. No gradient.
pub fn sign_pm1<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.greater_equal_elem(0.0)
        .float()
        .mul_scalar(2.0)
        .sub_scalar(1.0)
}

/// `1` where `x >= 0`, `0` elsewhere. No gradient.
pub fn heaviside<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.greater_equal_elem(0.0).float()
}

/// `1` where `|x| <= c`, `0` elsewhere.
pub fn inside<B: Backend, const D: usize>(x: Tensor<B, D>, c: f64) -> Tensor<B, D> {
    x.abs().lower_equal_elem(c).float()
}

/// Gradient injection: forward value exactly `q`, gradient with respect to `x` exactly `g`
/// (element-wise, times the upstream gradient). `q` and `g` must carry no gradient of their own
/// (compute them from `x.detach()`). Without autodiff this is just `q`.
///
/// The injection is built whenever the backend tracks gradients — not only for leaves, since
/// `is_require_grad()` is false for intermediate tensors that do carry gradient.
pub fn inject<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    q: Tensor<B, D>,
    g: Tensor<B, D>,
) -> Tensor<B, D> {
    if !B::ad_enabled(&x.device()) {
        return q;
    }
    let t = x * g;
    // (t − t⁻) is exactly 0 forward and has derivative g backward.
    q + (t.clone() - constant(t))
}

/// Straight-through rounding: forward `round(x)` (half to even), gradient 1.
pub fn round_ste<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let r = constant(x.clone()).round();
    r + (x.clone() - constant(x))
}

/// A scalar mean of `|x|` broadcastable against `x` (shape `[1; D]`).
pub fn mean_abs<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.abs().mean().unsqueeze::<D>()
}
