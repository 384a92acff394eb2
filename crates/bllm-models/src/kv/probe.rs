//! The KV-cache probe: a decoder run twice over the same window — once with the float cache,
//! once reading keys and values back through a [`CacheSpec`] — and what differs.
//!
//! Measured per window and aggregated per (text, context): perplexity of both runs,
//! next-token top-1 agreement, KL of the next-token distributions, and, inside the quantized
//! run, each layer's and head's attention KL `KL(P_float ‖ P_cache)` between the attention
//! computed from that run's exact keys/values and from what the cache returns (the local
//! damage, with the float head's entropy beside it), the relative errors of keys, values and
//! scores, and all of it by position bucket. The float run also collects every layer's
//! channel statistics (kurtosis, max / median of the per-channel max |x|) of keys before and
//! after RoPE and of values.
//!
//! Attention statistics are computed on `rows` evenly spaced query positions per window
//! (the last included), in f64.

use std::collections::BTreeMap;

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{CacheSpec, KvQuantizer, build, layer_bytes, reads_float};
use crate::llama::{AttentionHook, AttentionInputs, apply_rope, masked_softmax};
use crate::{Llama, LlamaConfig, ModelError, Result};
use bllm_ste::Ctx;

/// Running statistics of one tensor kind (keys before RoPE, keys, values) of one layer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChannelStats {
    /// Max |x| per channel.
    pub max_abs: Vec<f32>,
    /// Values seen.
    pub n: u64,
    /// Σx, Σx², Σx³, Σx⁴.
    pub moments: [f64; 4],
}

impl ChannelStats {
    fn add(&mut self, x: &[f32], c: usize) {
        if self.max_abs.len() != c {
            self.max_abs = vec![0.0; c];
        }
        for row in x.chunks(c) {
            for (m, &v) in self.max_abs.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
        for &v in x {
            let v = v as f64;
            let v2 = v * v;
            self.moments[0] += v;
            self.moments[1] += v2;
            self.moments[2] += v2 * v;
            self.moments[3] += v2 * v2;
        }
        self.n += x.len() as u64;
    }

    /// Kurtosis `E[(x − μ)⁴] / σ⁴` of every value (3 for a Gaussian).
    pub fn kurtosis(&self) -> f64 {
        let n = self.n.max(1) as f64;
        let [s1, s2, s3, s4] = self.moments.map(|m| m / n);
        let var = s2 - s1 * s1;
        let m4 = s4 - 4.0 * s1 * s3 + 6.0 * s1 * s1 * s2 - 3.0 * s1.powi(4);
        if var > 0.0 { m4 / (var * var) } else { 0.0 }
    }

    /// Max over channels of the per-channel max |x|, divided by its median.
    pub fn max_over_median(&self) -> f64 {
        if self.max_abs.is_empty() {
            return 0.0;
        }
        let mut v = self.max_abs.clone();
        v.sort_by(f32::total_cmp);
        let med = v[v.len() / 2] as f64;
        if med > 0.0 {
            v[v.len() - 1] as f64 / med
        } else {
            0.0
        }
    }
}

/// Channel statistics of every layer: `[keys before RoPE, keys, values]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Calibration {
    /// Per layer.
    pub layers: Vec<[ChannelStats; 3]>,
}

fn host<B: Backend, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    x.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

/// `[1, heads, t, dh]` → token-major `[t, heads·dh]` on the host.
fn token_major<B: Backend>(x: Tensor<B, 4>) -> Vec<f32> {
    let [b, h, t, dh] = x.dims();
    host(x.swap_dims(1, 2).reshape([b * t, h * dh]))
}

/// Token-major `[t, heads·dh]` → `[1, heads, t, dh]`.
fn head_major<B: Backend>(
    x: Vec<f32>,
    heads: usize,
    t: usize,
    dh: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    Tensor::<B, 4>::from_data(TensorData::new(x, [1, t, heads, dh]), device).swap_dims(1, 2)
}

/// An [`AttentionHook`] that computes the float attention and adds each layer's keys and
/// values to a [`Calibration`].
pub struct StatsHook<'a> {
    /// Where the statistics go.
    pub stats: &'a mut Calibration,
}

impl<B: Backend> AttentionHook<B> for StatsHook<'_> {
    fn attend(&mut self, model: &Llama<B>, a: AttentionInputs<B>) -> Tensor<B, 4> {
        let c = model.config.num_key_value_heads * model.config.head_dim();
        if self.stats.layers.len() <= a.layer {
            self.stats.layers.resize_with(a.layer + 1, Default::default);
        }
        let s = &mut self.stats.layers[a.layer];
        s[0].add(&token_major(a.k_pre.clone()), c);
        s[1].add(&token_major(a.k.clone()), c);
        s[2].add(&token_major(a.v.clone()), c);
        model.attention(a.q, a.k, a.v, a.future)
    }
}

/// A [`CacheSpec`] built for every layer of a model.
pub struct ProbeCache {
    /// The configuration.
    pub spec: CacheSpec,
    keys: Vec<Box<dyn KvQuantizer>>,
    values: Vec<Box<dyn KvQuantizer>>,
    channels: usize,
}

impl ProbeCache {
    /// Builds the quantizers of every layer; `calib` (from [`StatsHook`] on calibration
    /// text) is needed when a quantizer keeps outlier channels.
    pub fn build(
        spec: &CacheSpec,
        config: &LlamaConfig,
        calib: Option<&Calibration>,
        seed: u64,
    ) -> Result<Self> {
        spec.validate()
            .map_err(|(key, e, f)| ModelError::InvalidCache {
                key,
                msg: format!("expected {e}, found {f}"),
            })?;
        let dh = config.head_dim();
        let c = config.num_key_value_heads * dh;
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for l in 0..config.num_hidden_layers {
            let cal = |i: usize| {
                calib
                    .and_then(|c| c.layers.get(l))
                    .map(|s| s[i].max_abs.as_slice())
            };
            let k_idx = if spec.keys.pre_rope { 0 } else { 1 };
            keys.push(
                build(
                    &spec.keys,
                    c,
                    dh,
                    cal(k_idx),
                    seed ^ (l as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                )
                .map_err(|e| prefix(e, "keys"))?,
            );
            values.push(
                build(
                    &spec.values,
                    c,
                    dh,
                    cal(2),
                    seed ^ (l as u64 + 1000).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                )
                .map_err(|e| prefix(e, "values"))?,
            );
        }
        Ok(Self {
            spec: spec.clone(),
            keys,
            values,
            channels: c,
        })
    }

    /// Bytes per token of the whole cache (every layer, keys and values) when it holds `t`
    /// tokens: quantized codes, scales, zero points, outliers and their indices, padding to
    /// words, the full-precision window and incomplete blocks in f16, per-layer metadata.
    pub fn bytes_per_token(&self, t: usize) -> f64 {
        let w = self.spec.window;
        let total: usize = self
            .keys
            .iter()
            .chain(&self.values)
            .map(|q| layer_bytes(q.as_ref(), t, w, self.channels))
            .sum();
        total as f64 / t.max(1) as f64
    }
}

/// Bytes per token of an f16 cache of `config`'s model: `2 · layers · 2 · kv_heads · dh`.
pub fn f16_bytes_per_token(config: &LlamaConfig) -> usize {
    2 * config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim()
}

fn prefix(e: ModelError, side: &str) -> ModelError {
    match e {
        ModelError::InvalidCache { key, msg } => ModelError::InvalidCache {
            key: format!("{side}.{key}"),
            msg,
        },
        e => e,
    }
}

/// Accumulated sums of one (text, context) cell.
#[derive(Clone, Debug, Default)]
struct Sums {
    predicted: usize,
    nll_float: f64,
    nll_cache: f64,
    agree: usize,
    logit_kl: f64,
    /// (layer, head) → [kl, entropy, rows].
    heads: Vec<[f64; 3]>,
    /// Per layer: key err², key², value err², value², score err², score².
    layers: Vec<[f64; 6]>,
    /// Per bucket: attention kl, attention rows, logit kl, nll delta, positions.
    buckets: BTreeMap<usize, [f64; 5]>,
}

/// What a window of `t` tokens needs in every layer, built once per [`probe_text`].
struct WindowPlan<B: Backend> {
    /// Where queries read keys in full precision `[1, heads, t, t]` (`None`: nowhere).
    key_float: Option<Tensor<B, 4, Bool>>,
    /// Same for values.
    value_float: Option<Tensor<B, 4, Bool>>,
    /// The sampled query rows, ascending.
    rows: Vec<usize>,
    /// The same as an index tensor.
    row_index: Tensor<B, 1, Int>,
    /// Positions per bucket.
    bucket: usize,
}

impl<B: Backend> WindowPlan<B> {
    fn new(
        cache: &ProbeCache,
        heads: usize,
        t: usize,
        rows: Vec<usize>,
        bucket: usize,
        device: &B::Device,
    ) -> Self {
        let w = cache.spec.window;
        let mask = |block: usize| {
            float_mask(t, w, block).map(|m| {
                Tensor::<B, 2, Bool>::from_data(TensorData::new(m, [t, t]), device)
                    .reshape([1, 1, t, t])
                    .expand([1, heads, t, t])
            })
        };
        let row_index = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                [rows.len()],
            ),
            device,
        );
        // Every layer's quantizer is built from the same spec, so one block size serves all.
        Self {
            key_float: mask(cache.keys.first().map_or(1, |q| q.block())),
            value_float: mask(cache.values.first().map_or(1, |q| q.block())),
            rows,
            row_index,
            bucket,
        }
    }
}

struct ProbeHook<'a, B: Backend> {
    cache: &'a ProbeCache,
    plan: &'a WindowPlan<B>,
    sums: &'a mut Sums,
}

fn float_mask(t: usize, window: usize, block: usize) -> Option<Vec<bool>> {
    if window == 0 && block <= 1 {
        return None;
    }
    Some(
        (0..t * t)
            .map(|n| {
                let (i, j) = (n / t, n % t);
                j <= i && reads_float(i, j, window, block)
            })
            .collect(),
    )
}

impl<B: Backend> AttentionHook<B> for ProbeHook<'_, B> {
    fn attend(&mut self, model: &Llama<B>, a: AttentionInputs<B>) -> Tensor<B, 4> {
        let cfg = &model.config;
        let (nh, nkv, dh) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim(),
        );
        let [_, _, t, _] = a.q.dims();
        let device = a.q.device();
        let l = a.layer;
        let plan = self.plan;
        let (kq, vq) = (&self.cache.keys[l], &self.cache.values[l]);
        // What the cache returns, and the keys as attended (after RoPE) on the host for their
        // relative error.
        let k_host = token_major(a.k.clone());
        let (k_hat, kh_host) = if self.cache.spec.keys.pre_rope {
            let k_pre = kq.roundtrip(&token_major(a.k_pre.clone()), t);
            let k_hat = apply_rope(
                head_major::<B>(k_pre, nkv, t, dh, &device),
                a.cos.clone(),
                a.sin.clone(),
            );
            let kh = token_major(k_hat.clone());
            (k_hat, kh)
        } else {
            let kh = kq.roundtrip(&k_host, t);
            (head_major::<B>(kh.clone(), nkv, t, dh, &device), kh)
        };
        let v_host = token_major(a.v.clone());
        let v_hat_host = vq.roundtrip(&v_host, t);
        let err = |x: &[f32], y: &[f32]| -> (f64, f64) {
            x.iter().zip(y).fold((0.0, 0.0), |(e, n), (&a, &b)| {
                (e + ((a - b) as f64).powi(2), n + (a as f64).powi(2))
            })
        };
        let (ke, kn) = err(&k_host, &kh_host);
        let (ve, vn) = err(&v_host, &v_hat_host);
        let v_hat = head_major::<B>(v_hat_host, nkv, t, dh, &device);

        let s_float = model.attention_scores(a.q.clone(), a.k.clone());
        let s_cache = model.attention_scores(a.q, k_hat);
        let s = match &plan.key_float {
            Some(m) => s_cache.mask_where(m.clone(), s_float.clone()),
            None => s_cache,
        };
        let p = masked_softmax(s.clone(), a.future);
        let mut out = p.clone().matmul(model.expand_kv(v_hat.clone()));
        if let Some(m) = &plan.value_float {
            let pf = p.mask_fill(m.clone().bool_not(), 0.0);
            out = out + pf.matmul(model.expand_kv(a.v - v_hat));
        }

        // Attention statistics on the sampled rows.
        let rows = &plan.rows;
        let r = rows.len();
        let sf = host(s_float.select(2, plan.row_index.clone()));
        let sc = host(s.select(2, plan.row_index.clone()));
        let per: Vec<(usize, usize, [f64; 4])> = (0..nh * r)
            .into_par_iter()
            .map(|hr| {
                let (h, k) = (hr / r, hr % r);
                let i = rows[k];
                let off = hr * t;
                let a = &sf[off..off + i + 1];
                let b = &sc[off..off + i + 1];
                let lse = |x: &[f32]| {
                    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                    m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
                };
                let (la, lb) = (lse(a), lse(b));
                let (mut kl, mut ps, mut se, mut sn) = (0.0, 0.0, 0.0, 0.0);
                for (&x, &y) in a.iter().zip(b) {
                    let (x, y) = (x as f64, y as f64);
                    let pf = (x - la).exp();
                    kl += pf * (x - y);
                    ps += pf * x;
                    se += (y - x).powi(2);
                    sn += x * x;
                }
                let kl = (kl - la + lb).max(0.0);
                let ent = la - ps;
                (h, i, [kl, ent, se, sn])
            })
            .collect();
        let sums = &mut *self.sums;
        if sums.heads.len() < cfg.num_hidden_layers * nh {
            sums.heads.resize(cfg.num_hidden_layers * nh, [0.0; 3]);
            sums.layers.resize(cfg.num_hidden_layers, [0.0; 6]);
        }
        let lay = &mut sums.layers[l];
        lay[0] += ke;
        lay[1] += kn;
        lay[2] += ve;
        lay[3] += vn;
        for (h, i, [kl, ent, se, sn]) in per {
            let hs = &mut sums.heads[l * nh + h];
            hs[0] += kl;
            hs[1] += ent;
            hs[2] += 1.0;
            lay[4] += se;
            lay[5] += sn;
            let b = sums
                .buckets
                .entry(i / plan.bucket * plan.bucket)
                .or_insert([0.0; 5]);
            b[0] += kl;
            b[1] += 1.0;
        }
        out
    }
}

/// What the probe measured on one (text, context).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// The text's name.
    pub text: String,
    /// Tokens per window (the cache length at the last position).
    pub context: usize,
    /// Windows scored.
    pub windows: usize,
    /// Tokens predicted.
    pub predicted: usize,
    /// Perplexity with the float cache.
    pub perplexity_float: f64,
    /// Perplexity with this cache.
    pub perplexity: f64,
    /// `perplexity / perplexity_float − 1`.
    pub perplexity_change: f64,
    /// Fraction of positions whose most likely next token equals the float run's.
    pub top1_agreement: f64,
    /// Mean `KL(next-token float ‖ cache)`, nats.
    pub logit_kl: f64,
    /// Mean attention KL over layers, heads and sampled rows, nats.
    pub attention_kl: f64,
    /// Mean attention KL of the third of heads with the lowest float entropy (peaked).
    pub attention_kl_peaked: f64,
    /// … of the middle third.
    pub attention_kl_middle: f64,
    /// … of the third with the highest float entropy (flat).
    pub attention_kl_flat: f64,
    /// Mean float attention entropy of those thirds, nats.
    pub entropy_thirds: [f64; 3],
    /// Spearman correlation of head entropy with head attention KL (negative: peaked heads
    /// suffer more).
    pub entropy_kl_spearman: f64,
    /// `‖k̂ − k‖ / ‖k‖` over all layers (keys as attended, after RoPE).
    pub key_error: f64,
    /// `‖v̂ − v‖ / ‖v‖`.
    pub value_error: f64,
    /// RMS(score error) / RMS(score) on the sampled rows.
    pub score_error: f64,
    /// Per layer: attention KL, key error, value error.
    pub layers: Vec<LayerResult>,
    /// Per layer and head: the exact attention's mean entropy and the attention KL (absent
    /// from results written before it existed).
    #[serde(default)]
    pub heads: Vec<HeadResult>,
    /// By position.
    pub positions: Vec<PositionResult>,
}

/// One layer's row of a [`ProbeResult`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerResult {
    /// Layer.
    pub layer: usize,
    /// Mean attention KL over its heads.
    pub attention_kl: f64,
    /// Max over heads.
    pub attention_kl_max: f64,
    /// `‖k̂ − k‖ / ‖k‖`.
    pub key_error: f64,
    /// `‖v̂ − v‖ / ‖v‖`.
    pub value_error: f64,
}

/// One head's row of a [`ProbeResult`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadResult {
    /// Layer.
    pub layer: usize,
    /// Query head.
    pub head: usize,
    /// Mean entropy of the exact attention over the sampled rows, nats.
    pub entropy: f64,
    /// Mean attention KL, nats.
    pub attention_kl: f64,
}

/// One position bucket of a [`ProbeResult`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PositionResult {
    /// First position of the bucket.
    pub start: usize,
    /// Mean attention KL of its sampled rows.
    pub attention_kl: f64,
    /// Mean next-token KL.
    pub logit_kl: f64,
    /// Mean NLL change, nats.
    pub nll_change: f64,
}

/// Options of [`probe_text`].
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Query rows per window for the attention statistics.
    pub rows: usize,
    /// Positions per bucket.
    pub bucket: usize,
}

/// Probes `cache` on `ids` cut into `windows` consecutive windows of `context` tokens (each
/// window also needs the token after it, as the last target; no context carries over).
/// `stats` receives the float run's channel statistics. `progress` gets (windows done, windows).
#[allow(clippy::too_many_arguments)]
pub fn probe_text<B: Backend>(
    model: &Llama<B>,
    cache: &ProbeCache,
    text: &str,
    ids: &[u32],
    context: usize,
    windows: usize,
    opts: &ProbeOptions,
    stats: &mut Calibration,
    device: &B::Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<ProbeResult> {
    if context < 2 || context > model.config.max_position_embeddings {
        return Err(ModelError::Input(format!(
            "context {context}: expected 2..={}",
            model.config.max_position_embeddings
        )));
    }
    let have = ids.len().saturating_sub(1) / context;
    if windows == 0 || have < windows {
        return Err(ModelError::Input(format!(
            "{text}: {} tokens hold {have} window(s) of {context} (+1 target), {windows} wanted",
            ids.len()
        )));
    }
    let rows: Vec<usize> = {
        let r = opts.rows.clamp(1, context);
        let mut v: Vec<usize> = (0..r).map(|k| (k + 1) * context / r - 1).collect();
        v.dedup();
        v
    };
    let bucket = opts.bucket.max(1);
    let plan = WindowPlan::new(
        cache,
        model.config.num_attention_heads,
        context,
        rows,
        bucket,
        device,
    );
    let mut sums = Sums::default();
    let ctx = Ctx::default().for_eval();
    let vocab = model.config.vocab_size;
    for wi in 0..windows {
        let w = &ids[wi * context..wi * context + context + 1];
        let input: Vec<i64> = w[..context].iter().map(|&i| i as i64).collect();
        let targets: Vec<i64> = w[1..].iter().map(|&i| i as i64).collect();
        let x = Tensor::<B, 2, Int>::from_data(TensorData::new(input, [1, context]), device);
        let tgt = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [context, 1]), device);
        let h = model.forward_hooked(x.clone(), &mut StatsHook { stats }, &ctx);
        let lp_f = log_softmax(model.logits(h, &ctx).reshape([context, vocab]), 1);
        let h = model.forward_hooked(
            x,
            &mut ProbeHook {
                cache,
                plan: &plan,
                sums: &mut sums,
            },
            &ctx,
        );
        let lp_c = log_softmax(model.logits(h, &ctx).reshape([context, vocab]), 1);
        let nll_f = host(lp_f.clone().gather(1, tgt.clone()));
        let nll_c = host(lp_c.clone().gather(1, tgt));
        let top_f = host(lp_f.clone().argmax(1).float());
        let top_c = host(lp_c.clone().argmax(1).float());
        let kl = host((lp_f.clone().exp() * (lp_f - lp_c)).sum_dim(1));
        for p in 0..context {
            let (f, c) = (-nll_f[p] as f64, -nll_c[p] as f64);
            sums.nll_float += f;
            sums.nll_cache += c;
            sums.agree += usize::from(top_f[p] == top_c[p]);
            let k = (kl[p] as f64).max(0.0);
            sums.logit_kl += k;
            let b = sums.buckets.entry(p / bucket * bucket).or_insert([0.0; 5]);
            b[2] += k;
            b[3] += c - f;
            b[4] += 1.0;
        }
        sums.predicted += context;
        progress(wi + 1, windows);
    }
    Ok(summarise(text, context, windows, &sums, &model.config))
}

fn summarise(
    text: &str,
    context: usize,
    windows: usize,
    s: &Sums,
    cfg: &LlamaConfig,
) -> ProbeResult {
    let n = s.predicted.max(1) as f64;
    let nh = cfg.num_attention_heads;
    let mean = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let heads: Vec<(f64, f64)> = s
        .heads
        .iter()
        .map(|h| (mean(h[1], h[2]), mean(h[0], h[2])))
        .collect();
    let mut order: Vec<usize> = (0..heads.len()).collect();
    order.sort_by(|&a, &b| heads[a].0.total_cmp(&heads[b].0).then(a.cmp(&b)));
    let third = |k: usize| -> (f64, f64) {
        let lo = k * order.len() / 3;
        let hi = (k + 1) * order.len() / 3;
        let sel = &order[lo..hi];
        let m = sel.len().max(1) as f64;
        (
            sel.iter().map(|&i| heads[i].0).sum::<f64>() / m,
            sel.iter().map(|&i| heads[i].1).sum::<f64>() / m,
        )
    };
    let (t0, t1, t2) = (third(0), third(1), third(2));
    let all_rows: f64 = s.heads.iter().map(|h| h[2]).sum();
    let all_kl: f64 = s.heads.iter().map(|h| h[0]).sum();
    let tot = s.layers.iter().fold([0.0; 6], |mut a, l| {
        for k in 0..6 {
            a[k] += l[k];
        }
        a
    });
    let rel = |e: f64, n: f64| if n > 0.0 { (e / n).sqrt() } else { 0.0 };
    let ppl_f = (s.nll_float / n).exp();
    let ppl_c = (s.nll_cache / n).exp();
    ProbeResult {
        text: text.to_owned(),
        context,
        windows,
        predicted: s.predicted,
        perplexity_float: ppl_f,
        perplexity: ppl_c,
        perplexity_change: ppl_c / ppl_f - 1.0,
        top1_agreement: s.agree as f64 / n,
        logit_kl: s.logit_kl / n,
        attention_kl: mean(all_kl, all_rows),
        attention_kl_peaked: t0.1,
        attention_kl_middle: t1.1,
        attention_kl_flat: t2.1,
        entropy_thirds: [t0.0, t1.0, t2.0],
        entropy_kl_spearman: bllm_monitor::spearman(
            &heads.iter().map(|h| h.0).collect::<Vec<_>>(),
            &heads.iter().map(|h| h.1).collect::<Vec<_>>(),
        ),
        key_error: rel(tot[0], tot[1]),
        value_error: rel(tot[2], tot[3]),
        score_error: rel(tot[4], tot[5]),
        layers: s
            .layers
            .iter()
            .enumerate()
            .map(|(l, v)| {
                let hs = &heads[l * nh..(l + 1) * nh];
                LayerResult {
                    layer: l,
                    attention_kl: hs.iter().map(|h| h.1).sum::<f64>() / nh as f64,
                    attention_kl_max: hs.iter().map(|h| h.1).fold(0.0, f64::max),
                    key_error: rel(v[0], v[1]),
                    value_error: rel(v[2], v[3]),
                }
            })
            .collect(),
        heads: heads
            .iter()
            .enumerate()
            .map(|(i, &(entropy, attention_kl))| HeadResult {
                layer: i / nh,
                head: i % nh,
                entropy,
                attention_kl,
            })
            .collect(),
        positions: s
            .buckets
            .iter()
            .map(|(&start, b)| PositionResult {
                start,
                attention_kl: mean(b[0], b[1]),
                logit_kl: mean(b[2], b[4]),
                nll_change: mean(b[3], b[4]),
            })
            .collect(),
    }
}

/// Per-layer outlier statistics of a [`Calibration`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutlierStats {
    /// Layer.
    pub layer: usize,
    /// Kurtosis of keys before RoPE, keys, values.
    pub kurtosis: [f64; 3],
    /// Max / median of the per-channel max |x|, same order.
    pub max_over_median: [f64; 3],
}

impl Calibration {
    /// The per-layer summary.
    pub fn outliers(&self) -> Vec<OutlierStats> {
        self.layers
            .iter()
            .enumerate()
            .map(|(layer, s)| OutlierStats {
                layer,
                kurtosis: [s[0].kurtosis(), s[1].kurtosis(), s[2].kurtosis()],
                max_over_median: [
                    s[0].max_over_median(),
                    s[1].max_over_median(),
                    s[2].max_over_median(),
                ],
            })
            .collect()
    }

    /// Channel statistics of the float model on `ids` in windows of `context` (+1) tokens.
    pub fn collect<B: Backend>(
        model: &Llama<B>,
        ids: &[u32],
        context: usize,
        device: &B::Device,
    ) -> Self {
        let mut stats = Self::default();
        let ctx = Ctx::default().for_eval();
        for w in ids.chunks(context).filter(|w| w.len() >= 2) {
            let input: Vec<i64> = w.iter().map(|&i| i as i64).collect();
            let x = Tensor::<B, 2, Int>::from_data(TensorData::new(input, [1, w.len()]), device);
            let _ = model.forward_hooked(x, &mut StatsHook { stats: &mut stats }, &ctx);
        }
        stats
    }
}
