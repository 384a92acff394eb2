//! The Bop optimizer (Helwegen et al. 2019, "Latent Weights Do Not Exist"; Larq's `Bop`) and a
//! mixed optimizer that runs it beside Adam/AdamW.

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, LearningRate, Optimizer, SimpleOptimizer};
use burn::record::Record;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

/// Bop: binary weights flip when their gradient momentum consistently pushes against them.
///
/// * `m ← m + γ(g − m)` (exponential moving average of the gradient, rate γ)
/// * flip `w → −w` where `sign(w)·m > τ` (the momentum agrees with the weight's sign, so the
///   loss would fall if it flipped, and the evidence exceeds the threshold τ)
///
/// The learning rate is ignored (Bop has none). Managed weights should be ±1; a latent weight
/// of any magnitude flips its sign. Defaults: `γ = 1e-4`, `τ = 1e-8` (Larq's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bop {
    /// Adaptivity rate γ of the gradient moving average.
    #[serde(default = "gamma")]
    pub gamma: f64,
    /// Flip threshold τ.
    #[serde(default = "tau")]
    pub tau: f64,
}

fn gamma() -> f64 {
    1e-4
}

fn tau() -> f64 {
    1e-8
}

impl Default for Bop {
    fn default() -> Self {
        Self {
            gamma: gamma(),
            tau: tau(),
        }
    }
}

/// Bop's per-tensor state: the gradient moving average.
#[derive(Record, Clone)]
pub struct BopState<B: Backend, const D: usize> {
    /// Moving average `m` of the gradient.
    pub momentum: Tensor<B, D>,
}

impl<B: Backend> SimpleOptimizer<B> for Bop {
    type State<const D: usize> = BopState<B, D>;

    fn step<const D: usize>(
        &self,
        _lr: LearningRate,
        w: Tensor<B, D>,
        g: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let m = match state {
            Some(s) => s.momentum.clone() + (g - s.momentum).mul_scalar(self.gamma),
            None => g.mul_scalar(self.gamma),
        };
        let sign = bllm_ste::ops::sign_pm1(w.clone());
        let flip = (sign * m.clone()).greater_elem(self.tau);
        let flipped = w.clone().neg();
        (w.mask_where(flip, flipped), Some(BopState { momentum: m }))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

/// Collects the ids of every `BinaryLinear` latent weight in a module (the parameters Bop
/// should manage).
struct BinaryIds {
    stack: Vec<String>,
    ids: Vec<ParamId>,
}

impl<B: Backend> ModuleVisitor<B> for BinaryIds {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.push(format!("{container_type}.{name}"));
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self
            .stack
            .last()
            .is_some_and(|s| s == "Struct:BinaryLinear.weight")
        {
            self.ids.push(param.id);
        }
    }
}

/// Ids of the latent weights of every `BinaryLinear` in `module`.
pub fn binary_param_ids<B: Backend, M: burn::module::Module<B>>(module: &M) -> Vec<ParamId> {
    let mut v = BinaryIds {
        stack: Vec::new(),
        ids: Vec::new(),
    };
    module.visit(&mut v);
    v.ids
}

/// The saved state of the Bop half of a [`MixedOptimizer`].
pub type BopRecord<M, B> = <OptimizerAdaptor<Bop, M, B> as Optimizer<M, B>>::Record;

/// Bop for the binary weights, any other optimizer (Adam, AdamW, …) for everything else.
pub struct MixedOptimizer<M, B, O>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
    O: Optimizer<M, B>,
{
    bop: OptimizerAdaptor<Bop, M, B>,
    float: O,
    binary_ids: Vec<ParamId>,
}

impl<M, B, O> MixedOptimizer<M, B, O>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
    O: Optimizer<M, B>,
{
    /// Bop on `binary_ids` (usually [`binary_param_ids`] of the model), `float` on the rest.
    pub fn new(bop: Bop, float: O, binary_ids: Vec<ParamId>) -> Self {
        Self {
            bop: OptimizerAdaptor::from(bop),
            float,
            binary_ids,
        }
    }

    /// The optimizer states (Bop's, then the float optimizer's), for checkpoints.
    pub fn to_records(&self) -> (BopRecord<M, B>, O::Record) {
        (self.bop.to_record(), self.float.to_record())
    }

    /// Restores the states saved by [`to_records`](Self::to_records).
    pub fn load_records(self, bop: BopRecord<M, B>, float: O::Record) -> Self {
        Self {
            bop: self.bop.load_record(bop),
            float: self.float.load_record(float),
            binary_ids: self.binary_ids,
        }
    }

    /// One step: splits the gradients by parameter id and applies each optimizer to its part.
    pub fn step(&mut self, lr: LearningRate, module: M, grads: B::Gradients) -> M {
        let mut grads = grads;
        let binary = GradientsParams::from_params(&mut grads, &module, &self.binary_ids);
        let rest = GradientsParams::from_grads(grads, &module);
        let module = self.float.step(lr, module, rest);
        self.bop.step(lr, module, binary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BinaryLinear, BinaryLinearConfig};
    use bllm_ste::Ctx;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Module;
    use burn::optim::AdamConfig;

    type Ad = Autodiff<NdArray>;

    fn v<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn flips_exactly_the_weights_its_rule_says() {
        let dev = Default::default();
        let bop = Bop {
            gamma: 0.5,
            tau: 0.1,
        };
        let w = Tensor::<NdArray, 1>::from_floats([1.0, 1.0, -1.0, -1.0, 1.0, -1.0], &dev);
        let g = Tensor::<NdArray, 1>::from_floats([0.4, 0.1, -0.4, 0.4, -0.4, -0.1], &dev);
        // m = 0.5·g = [0.2, 0.05, -0.2, 0.2, -0.2, -0.05]; sign(w)·m = [0.2, 0.05, 0.2, -0.2, -0.2, 0.05]
        let (w1, s) = SimpleOptimizer::<NdArray>::step(&bop, 1.0, w, g.clone(), None);
        assert_eq!(v(w1.clone()), vec![-1.0, 1.0, 1.0, -1.0, 1.0, -1.0]);
        // Second step: m = 0.2·… moving average; m = m + 0.5(g − m) = 0.75·g·… check one entry.
        let (w2, s2) = SimpleOptimizer::<NdArray>::step(&bop, 1.0, w1, g, s);
        let m = v(s2.unwrap().momentum);
        assert!((m[1] - 0.075).abs() < 1e-7);
        // Entry 1: sign(+1)·0.075 = 0.075 < τ: still no flip. Entry 0 (now −1): −0.3 < τ: stays.
        assert_eq!(v(w2), vec![-1.0, 1.0, 1.0, -1.0, 1.0, -1.0]);
    }

    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        layer: BinaryLinear<B>,
    }

    #[test]
    fn mixed_optimizer_sends_binary_weights_to_bop_and_the_rest_to_adam() {
        let dev = Default::default();
        let layer = BinaryLinearConfig::new(4, 2).init::<Ad>(&dev, 9).unwrap();
        let mut net = Net { layer };
        // Bop wants ±1 weights.
        net.layer.weight = net
            .layer
            .weight
            .map(|w| bllm_ste::ops::sign_pm1(w.detach()).require_grad());
        let ids = binary_param_ids(&net);
        assert_eq!(ids, vec![net.layer.weight.id]);
        let mut opt = MixedOptimizer::new(
            Bop {
                gamma: 1.0,
                tau: 0.0,
            },
            AdamConfig::new().init::<Ad, Net<Ad>>(),
            ids,
        );
        let before_w = v(net.layer.weight.val());
        let x = Tensor::<Ad, 2>::from_floats([[1.0, -1.0, 0.5, 0.2]], &dev);
        // Loss = sum of outputs: dL/dW[i][j] = x_i (clipped STE passes at |w| = 1), dL/db = 1.
        let grads = net.layer.forward(x, &Ctx::default()).sum().backward();
        let net = opt.step(0.1, net, grads);
        let after_w = v(net.layer.weight.val());
        // γ = 1: m = g; flip where sign(w)·x_i > 0.
        let xs = [1.0f32, -1.0, 0.5, 0.2];
        for i in 0..4 {
            for j in 0..2 {
                let w0 = before_w[i * 2 + j];
                let want = if w0 * xs[i] > 0.0 { -w0 } else { w0 };
                assert_eq!(after_w[i * 2 + j], want);
            }
        }
        // Adam moved the bias down (gradient +1).
        assert!(
            v(net.layer.bias.as_ref().unwrap().val())
                .iter()
                .all(|b| *b < 0.0)
        );
    }
}
