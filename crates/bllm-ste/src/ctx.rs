//! [`Ctx`]: what a binarizer may depend on besides its input.

/// What binarizers compute in this forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shadow {
    /// The real binarized forward with straight-through gradients.
    #[default]
    Off,
    /// Every binarizer replaced by its smooth surrogate `F` (`F' = G`): the "shadow" network
    /// whose true gradient the STE gradient is compared with.
    Surrogate,
    /// Every binarizer replaced by the identity.
    Identity,
}

/// Training progress and randomness for one forward pass.
///
/// `progress` is training progress in `[0, 1]` (step / total steps) and drives every schedule;
/// `seed` feeds stochastic binarizers. Layers derive their own seed with [`Ctx::fork`], so two
/// layers never share noise and the same recipe + seed always gives the same noise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ctx {
    /// Training progress in `[0, 1]`.
    pub progress: f64,
    /// Seed for stochastic binarizers.
    pub seed: u64,
    /// Real forward or one of the shadow forwards used by the gradient-mismatch monitor.
    pub shadow: Shadow,
    /// Inference: stochastic binarizers use their deterministic form (`sign(x)`, the expected
    /// sign), as at export.
    pub eval: bool,
}

impl Ctx {
    /// A context at `progress` (clamped to `[0, 1]`) with seed 0.
    pub fn at(progress: f64) -> Self {
        Self {
            progress: if progress.is_nan() {
                0.0
            } else {
                progress.clamp(0.0, 1.0)
            },
            seed: 0,
            shadow: Shadow::Off,
            eval: false,
        }
    }

    /// The same context with another seed.
    pub fn with_seed(self, seed: u64) -> Self {
        Self { seed, ..self }
    }

    /// The same context for inference (deterministic binarizers).
    pub fn for_eval(self) -> Self {
        Self { eval: true, ..self }
    }

    /// The same context in a shadow mode.
    pub fn with_shadow(self, shadow: Shadow) -> Self {
        Self { shadow, ..self }
    }

    /// A context for a sub-component `id` (a layer index, a step): same progress, a seed mixed
    /// from this one and `id`.
    pub fn fork(self, id: u64) -> Self {
        let mut r =
            bllm_codes::rng::SplitMix64::new(self.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Self {
            seed: r.next_u64(),
            ..self
        }
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Self::at(0.0)
    }
}
