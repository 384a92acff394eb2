//! Language-model evaluation and generation on a [`Llama`]: perplexity and bits per byte over
//! a text, and sampling with a KV cache.

use bllm_ste::Ctx;
use bllm_ste::softmax::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::{KvCache, Llama, ModelError, Result, TextTokenizer};

/// Perplexity of a text.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Perplexity {
    /// UTF-8 bytes of the text.
    pub bytes: usize,
    /// Tokens of the text.
    pub tokens: usize,
    /// Tokens predicted (each window's first token is context only).
    pub predicted: usize,
    /// Window length in tokens.
    pub window: usize,
    /// Mean negative log-likelihood per predicted token, nats.
    pub mean_nll: f64,
    /// `exp(mean_nll)`.
    pub perplexity: f64,
    /// Total NLL in bits divided by the text's bytes.
    pub bits_per_byte: f64,
}

/// Sum of the next-token NLL (nats) over `ids[1..]` given the preceding tokens, computed in one
/// forward pass, and the number of tokens predicted.
pub fn window_nll<B: Backend>(model: &Llama<B>, ids: &[u32], device: &B::Device) -> (f64, usize) {
    let t = ids.len();
    if t < 2 {
        return (0.0, 0);
    }
    let input: Vec<i64> = ids[..t - 1].iter().map(|&i| i as i64).collect();
    let x = Tensor::<B, 2, Int>::from_data(TensorData::new(input, [1, t - 1]), device);
    let logits = model.forward(x, None, &Ctx::default().for_eval());
    let v = model.config.vocab_size;
    let lp = log_softmax(logits.reshape([t - 1, v]), 1);
    let targets: Vec<i64> = ids[1..].iter().map(|&i| i as i64).collect();
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [t - 1, 1]), device);
    let picked = lp.gather(1, idx);
    let vals = picked.into_data().into_vec::<f32>().unwrap_or_default();
    (-vals.iter().map(|&x| x as f64).sum::<f64>(), t - 1)
}

/// Perplexity of `text`: its tokens (no special tokens added) cut into consecutive windows of
/// `window` tokens (the last, shorter one kept when it has at least two), each scored on its own
/// (no context carried between windows). `progress` gets (windows done, windows).
pub fn perplexity<B: Backend>(
    model: &Llama<B>,
    tokenizer: &TextTokenizer,
    text: &str,
    window: usize,
    device: &B::Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    if window < 2 || window > model.config.max_position_embeddings {
        return Err(ModelError::Input(format!(
            "context {window}: expected 2..={}",
            model.config.max_position_embeddings
        )));
    }
    let ids = tokenizer.encode(text, false)?;
    let windows: Vec<&[u32]> = ids.chunks(window).filter(|w| w.len() >= 2).collect();
    if windows.is_empty() {
        return Err(ModelError::Input(format!(
            "the text has {} token(s); at least 2 are needed",
            ids.len()
        )));
    }
    let (mut nll, mut n) = (0.0, 0);
    for (k, w) in windows.iter().enumerate() {
        let (s, c) = window_nll(model, w, device);
        nll += s;
        n += c;
        progress(k + 1, windows.len());
    }
    let mean = nll / n as f64;
    Ok(Perplexity {
        bytes: text.len(),
        tokens: ids.len(),
        predicted: n,
        window,
        mean_nll: mean,
        perplexity: mean.exp(),
        bits_per_byte: nll / std::f64::consts::LN_2 / text.len().max(1) as f64,
    })
}

/// How to pick each next token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 for greedy (argmax); otherwise the softmax temperature.
    pub temperature: f64,
    /// Seed of the sampler (ChaCha8).
    pub seed: u64,
    /// Most new tokens.
    pub max_tokens: usize,
}

/// Continues `prompt` (token ids) for up to `s.max_tokens` tokens or until the tokenizer's
/// end-of-sequence token, prefilling the prompt once and decoding one token at a time through
/// the KV cache. Returns the new ids; `on_token` sees each as it is chosen.
pub fn generate<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    eos: Option<u32>,
    s: Sampling,
    device: &B::Device,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(ModelError::Input("the prompt has no tokens".into()));
    }
    if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
        return Err(ModelError::Input(format!(
            "temperature {}: expected a finite value ≥ 0",
            s.temperature
        )));
    }
    let max_pos = model.config.max_position_embeddings;
    if prompt.len() + s.max_tokens > max_pos {
        return Err(ModelError::Input(format!(
            "{} prompt tokens + {} new tokens exceed the model's context of {max_pos}",
            prompt.len(),
            s.max_tokens
        )));
    }
    let ctx = Ctx::default().for_eval();
    let v = model.config.vocab_size;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s.seed);
    let mut cache = KvCache::new(model.layers.len());
    let mut input: Vec<u32> = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..s.max_tokens {
        let t = input.len();
        let x = Tensor::<B, 2, Int>::from_data(
            TensorData::new(input.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, t]),
            device,
        );
        let logits = model.forward(x, Some(&mut cache), &ctx);
        let last: Vec<f32> = logits
            .slice([0..1, t - 1..t])
            .reshape([v])
            .into_data()
            .into_vec::<f32>()
            .map_err(|e| ModelError::Input(format!("reading logits: {e:?}")))?;
        let next = pick(&last, s.temperature, &mut rng);
        out.push(next);
        on_token(next);
        if Some(next) == eos {
            break;
        }
        input = vec![next];
    }
    Ok(out)
}

/// Argmax (lowest id on ties) at temperature 0, else a draw from `softmax(logits / T)`.
fn pick(logits: &[f32], temperature: f64, rng: &mut impl Rng) -> u32 {
    if temperature == 0.0 {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let w: Vec<f64> = logits
        .iter()
        .map(|&x| ((x as f64 - m) / temperature).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (i, x) in w.iter().enumerate() {
        u -= x;
        if u <= 0.0 {
            return i as u32;
        }
    }
    (logits.len() - 1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_is_argmax_at_zero_and_seeded_otherwise() {
        let l = [0.1f32, 2.0, 2.0, -1.0];
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        assert_eq!(pick(&l, 0.0, &mut r), 1);
        let draw = |seed| {
            let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            (0..50).map(|_| pick(&l, 1.0, &mut r)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        let d = draw(3);
        assert!(d.contains(&1) && d.contains(&2));
    }
}
