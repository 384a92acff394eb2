//! Seeded, host-side initialisation: the same seed gives the same weights on every backend and
//! in every process (Burn's own random initialisers share one process-global generator).

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Kaiming-uniform weights `U(−b, b)`, `b = 1/sqrt(fan_in)` (Burn's `Linear` default), of shape
/// `[fan_in, fan_out]`, from the ChaCha8 stream of `seed` (`rand_chacha`, value-stable).
/// Callers give each layer its own seed.
pub fn kaiming_uniform<B: Backend>(
    fan_in: usize,
    fan_out: usize,
    seed: u64,
    device: &B::Device,
) -> Tensor<B, 2> {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data: Vec<f32> = (0..fan_in * fan_out)
        .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
        .collect();
    Tensor::from_data(TensorData::new(data, [fan_in, fan_out]), device)
}

/// Gives every parameter of `module` the id `base + i` (`i` = visit order). Burn draws random
/// parameter ids, which end up in saved records; fixed ids make checkpoints of the same recipe
/// and seed byte-identical.
pub fn with_deterministic_ids<B: Backend, M: Module<B>>(module: M, base: u64) -> M {
    struct Ids(u64);
    impl<B: Backend> ModuleMapper<B> for Ids {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (_, value, mapper) = param.consume();
            self.0 += 1;
            Param::from_mapped_value(ParamId::from(self.0), value, mapper)
        }
    }
    module.map(&mut Ids(base))
}
