//! The trainers' random streams: one named ChaCha8 stream per purpose, each derived from the
//! recipe seed, so that changing how much randomness one purpose draws never moves another.
//!
//! A stream is `ChaCha8Rng` keyed by `(seed, xxh3(purpose))` on stream number `index`
//! ([`stream`]). ChaCha's output is fixed by its key, stream and position, so a stream is
//! value-stable across platforms; the draws built on it (`rand`'s `random_range`,
//! `rand_distr::Normal`) are stable for the versions pinned in `Cargo.lock`.
//!
//! | purpose | index | what it draws |
//! |---|---|---|
//! | [`DATA`] | 0 | synthetic data sets (Gaussian clusters of `classify` and `moe`) |
//! | [`ORDER`] | 0 | batch composition: example indices, window offsets, anchors (stateful, saved in `trainer.json`) |
//! | [`FINITE_DIFFERENCE`] | step | the ±1 directions of the finite-difference monitor |
//! | [`ADAPT`] | phase | batches of the adapter kind's phases (base pretraining, adaptation, distillation) |
//!
//! Initial weights (`bllm_nn::kaiming_uniform`, per layer), stochastic binarizers (through
//! `Ctx::seed`) and hashing baselines keep their own seeded generators in their crates.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// Synthetic data generation.
pub const DATA: &str = "data";
/// Batch composition (which examples, windows or anchors a step sees).
pub const ORDER: &str = "order";
/// Finite-difference directions (stream = step).
pub const FINITE_DIFFERENCE: &str = "finite-difference";
/// Batches of the adapter kind's phases (stream = phase number).
pub const ADAPT: &str = "adapt";

/// The stream of `purpose` number `index` under `seed`.
pub fn stream(seed: u64, purpose: &str, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(purpose.as_bytes()).to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(index);
    rng
}

/// Where a stream stands, as saved in `trainer.json`: its purpose, stream number and position
/// (32-bit words consumed, as a decimal string: JSON numbers cannot hold a `u128`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    /// Purpose name.
    pub purpose: String,
    /// Stream number.
    pub index: u64,
    /// Position in 32-bit words.
    pub word_pos: String,
}

impl StreamState {
    /// The state of `rng`, a stream of `purpose` number `index`.
    pub fn of(rng: &ChaCha8Rng, purpose: &str, index: u64) -> Self {
        Self {
            purpose: purpose.to_owned(),
            index,
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    /// The stream again, at the saved position (under `seed`).
    pub fn restore(&self, seed: u64) -> Result<ChaCha8Rng> {
        let pos: u128 = self.word_pos.parse().map_err(|_| {
            TrainError::Unsupported(format!(
                "trainer.json: stream {:?}: word_pos {:?} is not a non-negative integer",
                self.purpose, self.word_pos
            ))
        })?;
        let mut rng = stream(seed, &self.purpose, self.index);
        rng.set_word_pos(pos);
        Ok(rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore};

    const PINNED: [u64; 2] = [4_385_104_389_020_731_263, 17_655_867_494_301_827_942];

    #[test]
    fn streams_differ_by_purpose_seed_and_index_and_restore_exactly() {
        let a = stream(1, ORDER, 0).next_u64();
        assert_ne!(a, stream(1, DATA, 0).next_u64());
        assert_ne!(a, stream(2, ORDER, 0).next_u64());
        assert_ne!(a, stream(1, ORDER, 1).next_u64());
        assert_eq!(a, stream(1, ORDER, 0).next_u64());
        let mut r = stream(7, ORDER, 0);
        let _: Vec<usize> = (0..13).map(|_| r.random_range(0..1000)).collect();
        let st = StreamState::of(&r, ORDER, 0);
        let mut back = st.restore(7).unwrap();
        for _ in 0..100 {
            assert_eq!(
                r.random_range(0..1_000_000u64),
                back.random_range(0..1_000_000u64)
            );
        }
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(serde_json::from_str::<StreamState>(&json).unwrap(), st);
        let bad = StreamState {
            word_pos: "-1".into(),
            ..st
        };
        assert!(bad.restore(7).unwrap_err().to_string().contains("word_pos"));
    }

    #[test]
    fn a_stream_is_value_stable() {
        // Pinned: ChaCha8 keyed as documented. A change here changes every run's batches.
        let mut r = stream(42, DATA, 3);
        let got = [r.next_u64(), r.next_u64()];
        assert_eq!(got, PINNED);
    }
}
