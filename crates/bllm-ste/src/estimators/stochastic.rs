use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{Binarizer, Levels};
use crate::Ctx;
use crate::ops::inside;

/// Stochastic binarization (Courbariaux et al. 2015, BinaryConnect): `+1` with probability
/// `hard_sigmoid(x) = clip((x + 1)/2, 0, 1)`, else `−1`. Noise comes from [`Ctx::seed`] through
/// a host-side ChaCha8 stream (`rand_chacha`), so it is identical on every backend and run.
///
/// * forward: `q(x) = +1` if `u < clip((x+1)/2, 0, 1)` else `−1`, `u ~ U[0, 1)` (so `x ≥ 1` is
///   always `+1`, `x ≤ −1` always `−1`)
/// * backward: `G(x) = 1[|x| ≤ 1]` (as `clipped`)
/// * inference ([`Ctx::eval`]): `sign(x)`, the deterministic form that export writes
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stochastic {}

impl Binarizer for Stochastic {
    const NAME: &'static str = "stochastic";
    const DESCRIPTION: &'static str = "+1 with probability clip((x+1)/2, 0, 1), seeded; clipped gradient (BinaryConnect, Courbariaux et al. 2015)";
    const LEVELS: Levels = Levels::Sign;

    fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>, ctx: &Ctx) -> Tensor<B, D> {
        if ctx.eval {
            return crate::ops::sign_pm1(x);
        }
        let dims = x.dims();
        let n: usize = dims.iter().product();
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(ctx.seed);
        let u: Vec<f32> = (0..n).map(|_| rand::Rng::random::<f32>(&mut rng)).collect();
        let u = Tensor::<B, D>::from_data(TensorData::new(u, dims), &x.device());
        let p = x.add_scalar(1.0).div_scalar(2.0).clamp(0.0, 1.0);
        u.lower(p).float().mul_scalar(2.0).sub_scalar(1.0)
    }

    fn grad<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        inside(x, 1.0)
    }

    fn surrogate<B: Backend, const D: usize>(&self, x: Tensor<B, D>, _: &Ctx) -> Tensor<B, D> {
        x.clamp(-1.0, 1.0)
    }
}
