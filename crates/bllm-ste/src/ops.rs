//! Tensor building blocks shared by the estimators.

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn_flex::Flex;
use burn_ndarray::NdArray;

/// The values of `x` as a constant: no gradient and no autodiff graph at all.
///
/// Burn's `detach()` keeps a leaf's `require_grad`, so detaching a parameter yields a *new
/// tracked leaf*; building on it grows a second graph whose merge into the first made backward
/// passes non-deterministic (last-bit differences between identical runs). Every "no gradient"
/// value in this crate goes through here instead.
pub fn constant<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.detach().set_require_grad(false)
}

/// `+1` where `x >= 0` (including 0 and −0.0), `−1` elsewhere (NaN included). No gradient.
///
/// On the CPU backends one pass over `x` (it is taken of every latent weight matrix at every
/// step); elsewhere four Burn ops (compare, cast, scale, shift).
pub fn sign_pm1<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match crate::host::map_constant(x, |v| if v >= 0.0 { 1.0 } else { -1.0 }) {
        Ok(s) => s,
        Err(x) => x
            .greater_equal_elem(0.0)
            .float()
            .mul_scalar(2.0)
            .sub_scalar(1.0),
    }
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
    let (x, q, g) = match inject_node(x, q, g) {
        Ok(y) => return y,
        Err(args) => args,
    };
    let t = x * g;
    // (t − t⁻) is exactly 0 forward and has derivative g backward.
    q + (t.clone() - constant(t))
}

/// [`inject`] as one autodiff node on `Autodiff<Flex>` and `Autodiff<NdArray>`: forward `q`'s
/// values as they are, backward `∂x = grad ⊙ g` (the multiplication the composed form's
/// backward does, so the same bits). The composed form costs three element-wise passes
/// forward (`x·g`, `t − t⁻`, `q + …`) and their nodes backward. Other backends get the
/// arguments back.
#[allow(clippy::type_complexity)]
fn inject_node<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    q: Tensor<B, D>,
    g: Tensor<B, D>,
) -> std::result::Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>)> {
    use crate::host::cast;
    use std::any::TypeId;
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Autodiff<Flex>>() {
        let y = inject_tracked::<Flex, D>(cast(x), cast(q), cast(g));
        Ok(cast(y))
    } else if id == TypeId::of::<Autodiff<NdArray>>() {
        let y = inject_tracked::<NdArray, D>(cast(x), cast(q), cast(g));
        Ok(cast(y))
    } else {
        Err((x, q, g))
    }
}

/// The node of [`inject_node`]; its state is `g`.
#[derive(Debug)]
struct Inject<const D: usize>;

impl<B: Backend, const D: usize> Backward<B, 1> for Inject<D> {
    type State = B::FloatTensorPrimitive;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = Tensor::<B, D>::from_primitive(TensorPrimitive::Float(ops.state));
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            let grad = Tensor::<B, D>::from_primitive(TensorPrimitive::Float(grad));
            (grad * g).into_primitive().tensor()
        });
    }
}

fn inject_tracked<B: Backend, const D: usize>(
    x: Tensor<Autodiff<B>, D>,
    q: Tensor<Autodiff<B>, D>,
    g: Tensor<Autodiff<B>, D>,
) -> Tensor<Autodiff<B>, D> {
    let xt = x.into_primitive().tensor();
    let values = q.inner().into_primitive().tensor();
    let kind = Inject::<D>
        .prepare::<NoCheckpointing>([xt.node.clone()])
        .compute_bound()
        .stateful();
    let out = match kind {
        OpsKind::Tracked(prep) => prep.finish(g.inner().into_primitive().tensor(), values),
        OpsKind::UnTracked(prep) => prep.finish(values),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// [`inject`] with `G = 1`: forward value exactly `q`, the upstream gradient passed to `x`
/// unchanged. On `Autodiff<Flex|NdArray>` one node whose backward hands the gradient on (no
/// multiplication by a tensor of ones: the same bits as `inject(x, q, 1)`); elsewhere the
/// composed `q + (x − x⁻)`. Without autodiff this is just `q`.
pub fn pass_through<B: Backend, const D: usize>(x: Tensor<B, D>, q: Tensor<B, D>) -> Tensor<B, D> {
    if !B::ad_enabled(&x.device()) {
        return q;
    }
    use crate::host::cast;
    use std::any::TypeId;
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Autodiff<Flex>>() {
        cast(pass_tracked::<Flex, D>(cast(x), cast(q)))
    } else if id == TypeId::of::<Autodiff<NdArray>>() {
        cast(pass_tracked::<NdArray, D>(cast(x), cast(q)))
    } else {
        q + (x.clone() - constant(x))
    }
}

/// The node of [`pass_through`].
#[derive(Debug)]
struct PassThrough;

impl<B: Backend> Backward<B, 1> for PassThrough {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<B, _>(ops.parents, ops.node, grads, |grad| grad);
    }
}

fn pass_tracked<B: Backend, const D: usize>(
    x: Tensor<Autodiff<B>, D>,
    q: Tensor<Autodiff<B>, D>,
) -> Tensor<Autodiff<B>, D> {
    let xt = x.into_primitive().tensor();
    let values = q.inner().into_primitive().tensor();
    let out = match PassThrough
        .prepare::<NoCheckpointing>([xt.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((), values),
        OpsKind::UnTracked(prep) => prep.finish(values),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use burn::tensor::backend::AutodiffBackend;

    /// `inject` as one node gives `q` forward and the composed form's gradient, bit for bit.
    fn same_as_composed<B: AutodiffBackend>() {
        let dev = Default::default();
        let vals = |seed: u64| {
            let mut r = bllm_codes::rng::SplitMix64::new(seed);
            let v: Vec<f32> = (0..60).map(|_| (r.next_f64() * 4.0 - 2.0) as f32).collect();
            Tensor::<B, 2>::from_data(TensorData::new(v, [6, 10]), &dev)
        };
        let w = vals(4);
        let run = |node: bool| {
            let x = vals(1).require_grad();
            let q = constant(vals(2));
            let g = constant(vals(3));
            let y = if node {
                inject(x.clone(), q, g)
            } else {
                let t = x.clone() * g;
                q + (t.clone() - constant(t))
            };
            let grads = (y.clone() * w.clone()).sum().backward();
            let dx = x.grad(&grads).unwrap();
            (y.into_data(), dx.into_data())
        };
        let (y, dx) = run(true);
        let (y_ref, dx_ref) = run(false);
        assert_eq!(y, y_ref);
        assert_eq!(dx, dx_ref);
        assert_eq!(y, constant(vals(2)).into_data());
    }

    #[test]
    fn inject_node_matches_the_composed_form() {
        same_as_composed::<Autodiff<Flex>>();
        same_as_composed::<Autodiff<NdArray>>();
    }

    /// `pass_through` gives `q` forward and `inject(x, q, 1)`'s gradient, bit for bit.
    fn pass_through_is_inject_with_unit_grad<B: AutodiffBackend>() {
        let dev = Default::default();
        let v: Vec<f32> = (0..24).map(|i| (i as f32 - 11.5) * 0.37).collect();
        let x = Tensor::<B, 2>::from_data(TensorData::new(v.clone(), [4, 6]), &dev).require_grad();
        let w = Tensor::<B, 2>::from_data(TensorData::new(v, [4, 6]), &dev).sin();
        let q = sign_pm1(constant(x.clone()));
        let a = pass_through(x.clone(), q.clone());
        let b = inject(x.clone(), q.clone(), constant(x.clone()).ones_like());
        assert_eq!(a.clone().into_data(), q.into_data());
        let ga = (a * w.clone()).sum().backward();
        let gb = (b * w).sum().backward();
        assert_eq!(
            x.grad(&ga).unwrap().into_data(),
            x.grad(&gb).unwrap().into_data()
        );
    }

    #[test]
    fn pass_through_matches_inject_with_unit_grad() {
        pass_through_is_inject_with_unit_grad::<Autodiff<Flex>>();
        pass_through_is_inject_with_unit_grad::<Autodiff<NdArray>>();
    }

    #[test]
    fn sign_pm1_one_pass_matches_the_composed_ops() {
        let dev = Default::default();
        let v = vec![
            -2.0,
            -0.0,
            0.0,
            1e-30,
            -1e-30,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        let want = vec![-1.0, 1.0, 1.0, 1.0, -1.0, -1.0, 1.0, -1.0];
        let x = Tensor::<Flex, 1>::from_data(TensorData::new(v.clone(), [8]), &dev);
        let composed = x
            .clone()
            .greater_equal_elem(0.0)
            .float()
            .mul_scalar(2.0)
            .sub_scalar(1.0);
        assert_eq!(composed.to_data().to_vec::<f32>().unwrap(), want);
        assert_eq!(sign_pm1(x.clone()).to_data().to_vec::<f32>().unwrap(), want);
        // Strided and tracked inputs: the same values, and no gradient.
        let m = Tensor::<Flex, 2>::from_data(TensorData::new(v.clone(), [2, 4]), &dev);
        let mt = sign_pm1(m.clone().transpose());
        assert_eq!(mt.into_data(), sign_pm1(m).transpose().into_data());
        let t =
            Tensor::<Autodiff<NdArray>, 1>::from_data(TensorData::new(v, [8]), &Default::default())
                .require_grad();
        let s = sign_pm1(t);
        assert!(!s.is_require_grad());
        assert_eq!(s.into_data().to_vec::<f32>().unwrap(), want);
    }
}
