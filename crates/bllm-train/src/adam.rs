//! Adam as one parallel pass per parameter on the CPU backends, bit-identical to Burn's `Adam`.
//!
//! Why: Burn 0.21's `Adam` updates each parameter with about a dozen tensor ops (`mul_scalar`,
//! `add`, `square`, `sqrt`, `add_scalar`, `div`, `sub`, …), each a pass over the parameter that
//! burn-flex runs on one thread. With every SmolLM2 projection trained (106 M latent weights)
//! that was most of the time the second core sat idle in a step (`perf`, README). Here one
//! pass over `(p, g, m, v)` in fixed chunks on the rayon pool does the same arithmetic:
//!
//! ```text
//! m ← β₁·m + (1 − β₁)·g          (first step: (1 − β₁)·g)
//! v ← β₂·v + (1 − β₂)·(g·g)      (first step: (g·g)·(1 − β₂))
//! c₂ = √(1 − β₂ᵗ),  f = c₂ / (1 − β₁ᵗ)
//! p ← p − ((m·f) / (√v + ε·c₂))·lr
//! ```
//!
//! in f32 with Burn's operation order and scalar conversions, so parameters and moments are
//! the same bits as Burn's `Adam` (tested over several steps), and the state is Burn's
//! `AdamState`: checkpoints written by either load in the other. Element-wise, so the bits do
//! not depend on the thread count. With weight decay, or on non-f32 or non-CPU tensors, Burn's
//! `Adam` runs.

use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{
    Adam, AdamConfig, AdamState, AdaptiveMomentumState, LearningRate, SimpleOptimizer,
};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// Burn's `Adam` with the one-pass update on the CPU backends (module docs).
#[derive(Clone)]
pub(crate) struct FusedAdam {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    /// Whether the fused pass applies (no weight decay, no AMSGrad).
    fused: bool,
    burn: Adam,
}

impl FusedAdam {
    /// The optimizer with these settings, as the adaptor the trainer steps.
    pub(crate) fn init<B: AutodiffBackend, M: burn::module::AutodiffModule<B>>(
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        weight_decay: f32,
    ) -> OptimizerAdaptor<FusedAdam, M, B> {
        OptimizerAdaptor::from(Self::new(beta_1, beta_2, epsilon, weight_decay))
    }

    fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> Self {
        let mut c = AdamConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon);
        if weight_decay > 0.0 {
            c = c.with_weight_decay(Some(WeightDecayConfig::new(weight_decay)));
        }
        FusedAdam {
            beta_1,
            beta_2,
            epsilon,
            fused: weight_decay <= 0.0,
            burn: c.build(),
        }
    }
}

/// Host values of an f32 tensor (no copy when its buffer is unshared and f32-aligned).
fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .into_vec::<f32>()
        .unwrap_or_else(|_| unreachable!("an f32 tensor (checked) reads back as f32"))
}

impl<B: Backend> SimpleOptimizer<B> for FusedAdam {
    type State<const D: usize> = AdamState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let host_f32 = bllm_ste::fused::on_cpu::<B>()
            && tensor.dtype() == DType::F32
            && grad.dtype() == DType::F32
            && state.as_ref().is_none_or(|s| {
                s.momentum.max_moment_2.is_none()
                    && s.momentum.moment_1.dtype() == DType::F32
                    && s.momentum.moment_2.dtype() == DType::F32
            });
        if !self.fused || !host_f32 {
            return SimpleOptimizer::<B>::step(&self.burn, lr, tensor, grad, state);
        }
        let (shape, device) = (tensor.shape(), tensor.device());
        let mut p = host(tensor);
        let g = host(grad);
        let (mut m, mut v, time, first) = match state {
            Some(s) => {
                let s = s.momentum;
                (host(s.moment_1), host(s.moment_2), s.time + 1, false)
            }
            None => (vec![0f32; g.len()], vec![0f32; g.len()], 1, true),
        };
        let (b1, b2) = (self.beta_1, self.beta_2);
        let (f1, f2) = (1.0 - b1, 1.0 - b2);
        let c2 = (1.0 - b2.powi(time as i32)).sqrt();
        let f = c2 / (1.0 - b1.powi(time as i32));
        let den = self.epsilon * c2;
        let lr = lr as f32;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| {
                for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    let gg = *g * *g;
                    if first {
                        *m = *g * f1;
                        *v = gg * f2;
                    } else {
                        *m = *m * b1 + *g * f1;
                        *v = *v * b2 + gg * f2;
                    }
                    *p -= ((*m * f) / (v.sqrt() + den)) * lr;
                }
            });
        let t = |x: Vec<f32>| Tensor::<B, D>::from_data(TensorData::new(x, shape.clone()), &device);
        let state = AdamState::new(AdaptiveMomentumState::new(time, t(m), t(v)));
        (t(p), Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        <Adam as SimpleOptimizer<B>>::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_flex::Flex;
    use burn_ndarray::NdArray;

    /// Three steps of Burn's `Adam` and of [`FusedAdam`] on the same parameter and gradients:
    /// parameters and both moments, as bits.
    fn same_bits<B: Backend>() {
        let dev = Default::default();
        let vals = |n: usize, seed: u64, s: f64| {
            let mut r = bllm_codes::rng::SplitMix64::new(seed);
            (0..n)
                .map(|_| ((r.next_f64() - 0.5) * s) as f32)
                .collect::<Vec<_>>()
        };
        let fused = FusedAdam::new(0.9, 0.95, 1e-8, 0.0);
        let burn = AdamConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.95)
            .with_epsilon(1e-8)
            .build();
        let shape = [37, 1100];
        let n = shape[0] * shape[1];
        let p0 = Tensor::<B, 2>::from_data(TensorData::new(vals(n, 1, 2.0), shape), &dev);
        let (mut pa, mut pb) = (p0.clone(), p0);
        let (mut sa, mut sb) = (None, None);
        for step in 0..3u64 {
            let mut g = vals(n, 10 + step, 1e-2);
            g[step as usize] = 0.0;
            let g = Tensor::<B, 2>::from_data(TensorData::new(g, shape), &dev);
            let lr = 3e-4 * (step + 1) as f64;
            (pa, sa) = SimpleOptimizer::<B>::step(&fused, lr, pa, g.clone(), sa);
            (pb, sb) = SimpleOptimizer::<B>::step(&burn, lr, pb, g, sb);
            assert_eq!(pa.to_data(), pb.to_data(), "step {step}: parameters");
            let (ma, mb) = (sa.as_ref().unwrap(), sb.as_ref().unwrap());
            assert_eq!(ma.momentum.time, mb.momentum.time);
            assert_eq!(
                ma.momentum.moment_1.to_data(),
                mb.momentum.moment_1.to_data()
            );
            assert_eq!(
                ma.momentum.moment_2.to_data(),
                mb.momentum.moment_2.to_data()
            );
        }
    }

    #[test]
    fn fused_adam_gives_burns_bits() {
        same_bits::<Flex>();
        same_bits::<NdArray>();
    }
}
