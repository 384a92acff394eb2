//! Tiny random BERT and Llama checkpoints written to disk and read back through the real
//! loaders: shapes, padding, causality, KV cache = full forward, rotary positions by hand, and
//! the errors for missing, mis-shaped and unused tensors.

use std::path::Path;

use bllm_models::{Bert, BertConfig, Checkpoint, KvCache, Llama, LlamaConfig, rope_tables};
use bllm_ste::Ctx;
use burn::tensor::{Int, Tensor, TensorData};
use burn_ndarray::NdArray;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};

type B = NdArray<f32>;

fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>)], seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, s)| {
            let n: usize = s.iter().product();
            (0..n)
                .flat_map(|_| (rng.random::<f32>() * 0.4 - 0.2).to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s), b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, &None, path).expect("write");
}

fn bert_config() -> BertConfig {
    BertConfig {
        vocab_size: 50,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 32,
        hidden_act: "gelu".into(),
        max_position_embeddings: 24,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        position_embedding_type: "absolute".into(),
    }
}

fn bert_tensors(c: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let d = c.hidden_size;
    let mut t = vec![
        (
            "embeddings.word_embeddings.weight".to_string(),
            vec![c.vocab_size, d],
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![c.max_position_embeddings, d],
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            vec![c.type_vocab_size, d],
        ),
        ("embeddings.LayerNorm.weight".into(), vec![d]),
        ("embeddings.LayerNorm.bias".into(), vec![d]),
        ("pooler.dense.weight".into(), vec![d, d]),
        ("pooler.dense.bias".into(), vec![d]),
    ];
    for i in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{i}");
        for (n, o, k) in [
            ("attention.self.query", d, d),
            ("attention.self.key", d, d),
            ("attention.self.value", d, d),
            ("attention.output.dense", d, d),
            ("intermediate.dense", c.intermediate_size, d),
            ("output.dense", d, c.intermediate_size),
        ] {
            t.push((format!("{p}.{n}.weight"), vec![o, k]));
            t.push((format!("{p}.{n}.bias"), vec![o]));
        }
        for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
            t.push((format!("{p}.{n}.weight"), vec![d]));
            t.push((format!("{p}.{n}.bias"), vec![d]));
        }
    }
    t
}

fn write_bert(dir: &Path, c: &BertConfig, tensors: &[(String, Vec<usize>)]) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(c).expect("json"),
    )
    .expect("cfg");
    write_safetensors(&dir.join("model.safetensors"), tensors, 7);
}

fn ids(rows: &[Vec<i64>]) -> Tensor<B, 2, Int> {
    let t = rows[0].len();
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), t]), &Default::default())
}

fn floats<const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    x.into_data().into_vec::<f32>().expect("f32")
}

#[test]
fn bert_padding_does_not_change_a_row() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = bert_config();
    write_bert(dir.path(), &c, &bert_tensors(&c));
    let bert = Bert::<B>::load(dir.path(), &Default::default()).expect("load");
    let ctx = Ctx::default().for_eval();
    let alone = bert.forward(
        ids(&[vec![1, 5, 9, 2]]),
        Tensor::ones([1, 4], &Default::default()),
        &ctx,
    );
    assert_eq!(alone.dims(), [1, 4, 16]);
    let mask = Tensor::<B, 2>::from_data(
        TensorData::new(
            vec![1f32, 1., 1., 1., 0., 0., 1., 1., 1., 1., 1., 1.],
            [2, 6],
        ),
        &Default::default(),
    );
    let both = bert.forward(
        ids(&[vec![1, 5, 9, 2, 0, 0], vec![3, 4, 5, 6, 7, 8]]),
        mask.clone(),
        &ctx,
    );
    let a = floats(alone.clone());
    let b = floats(both.clone().slice([0..1, 0..4]));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "padding changed the row by {diff}");
    // Mean pooling ignores the padded positions.
    let pooled = floats(Bert::mean_pool(both, mask));
    let want = floats(alone.mean_dim(1).reshape([1, 16]));
    let diff = want
        .iter()
        .zip(&pooled[..16])
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "pooling {diff}");
    let n = floats(bllm_models::l2_normalize(Tensor::from_data(
        TensorData::new(vec![3f32, 4.], [1, 2]),
        &Default::default(),
    )));
    assert_eq!(n, vec![0.6, 0.8]);
}

#[test]
fn bert_errors_name_the_tensor_and_both_shapes() {
    let c = bert_config();
    let base = bert_tensors(&c);
    // Mis-shaped.
    let dir = tempfile::tempdir().expect("tmp");
    let mut t = base.clone();
    let q = "encoder.layer.0.attention.self.query.weight";
    t.iter_mut().find(|(n, _)| n == q).expect("query").1 = vec![16, 15];
    write_bert(dir.path(), &c, &t);
    let e = Bert::<B>::load(dir.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("`{q}`")) && e.contains("[16, 15]") && e.contains("[16, 16]"),
        "{e}"
    );
    // Missing.
    let dir = tempfile::tempdir().expect("tmp");
    let t: Vec<_> = base
        .iter()
        .filter(|(n, _)| n != "encoder.layer.1.output.dense.bias")
        .cloned()
        .collect();
    write_bert(dir.path(), &c, &t);
    let e = Bert::<B>::load(dir.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing tensor `encoder.layer.1.output.dense.bias`"),
        "{e}"
    );
    // Unused (the pooler is expected and ignored; anything else is not).
    let dir = tempfile::tempdir().expect("tmp");
    let mut t = base.clone();
    t.push(("cls.predictions.bias".into(), vec![50]));
    write_bert(dir.path(), &c, &t);
    let e = Bert::<B>::load(dir.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cls.predictions.bias") && e.contains("does not use"),
        "{e}"
    );
    // Bad config key.
    let dir = tempfile::tempdir().expect("tmp");
    let mut c2 = c.clone();
    c2.hidden_act = "relu".into();
    write_bert(dir.path(), &c2, &base);
    let e = Bert::<B>::load(dir.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.json") && e.contains("hidden_act"), "{e}");
}

fn llama_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 40,
        hidden_size: 24,
        intermediate_size: 40,
        num_hidden_layers: 2,
        num_attention_heads: 6,
        num_key_value_heads: 2,
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 64,
        tie_word_embeddings: true,
        hidden_act: "silu".into(),
    }
}

fn llama(dir: &Path) -> Llama<B> {
    let c = llama_config();
    let (d, dh, ff) = (c.hidden_size, c.head_dim(), c.intermediate_size);
    let mut t = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![c.vocab_size, d],
        ),
        ("model.norm.weight".into(), vec![d]),
    ];
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (n, s) in [
            ("input_layernorm", vec![d]),
            ("post_attention_layernorm", vec![d]),
            ("self_attn.q_proj", vec![c.num_attention_heads * dh, d]),
            ("self_attn.k_proj", vec![c.num_key_value_heads * dh, d]),
            ("self_attn.v_proj", vec![c.num_key_value_heads * dh, d]),
            ("self_attn.o_proj", vec![d, c.num_attention_heads * dh]),
            ("mlp.gate_proj", vec![ff, d]),
            ("mlp.up_proj", vec![ff, d]),
            ("mlp.down_proj", vec![d, ff]),
        ] {
            t.push((format!("{p}.{n}.weight"), s));
        }
    }
    let p = dir.join("model.safetensors");
    write_safetensors(&p, &t, 11);
    let mut ck = Checkpoint::open(&p).expect("open");
    let m = Llama::from_checkpoint(c, &mut ck, &Default::default()).expect("llama");
    ck.finish(|_| false).expect("every tensor used");
    m
}

#[test]
fn llama_is_causal_and_the_kv_cache_equals_the_full_forward() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = llama(dir.path());
    let ctx = Ctx::default().for_eval();
    let seq = vec![3i64, 17, 5, 22, 9, 1, 30, 12];
    let full = m.forward(ids(std::slice::from_ref(&seq)), None, &ctx);
    assert_eq!(full.dims(), [1, 8, 40]);
    let full = floats(full);
    // Changing the last token changes nothing before it.
    let mut other = seq.clone();
    other[7] = 0;
    let changed = floats(m.forward(ids(&[other]), None, &ctx));
    assert_eq!(full[..7 * 40], changed[..7 * 40]);
    assert_ne!(full[7 * 40..], changed[7 * 40..]);
    // Prefill 3 tokens, then decode one at a time.
    let mut cache = KvCache::new(2);
    let mut got = floats(m.forward(ids(&[seq[..3].to_vec()]), Some(&mut cache), &ctx));
    for &tok in &seq[3..] {
        got.extend(floats(m.forward(ids(&[vec![tok]]), Some(&mut cache), &ctx)));
    }
    assert_eq!(cache.len, 8);
    let diff = full
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        diff < 1e-4,
        "cached decode differs from the full forward by {diff}"
    );
}

#[test]
fn rope_tables_match_a_hand_computation() {
    // head_dim 4: frequencies θ^0 = 1 and θ^(-2/4) = 1/100 for θ = 10⁴, repeated twice.
    let (cos, sin) = rope_tables(10_000.0, 4, 2, 2);
    let want = |p: f64| -> Vec<f64> { vec![p, p / 100.0, p, p / 100.0] };
    for (k, p) in [2.0, 3.0].into_iter().enumerate() {
        for (j, a) in want(p).into_iter().enumerate() {
            assert!((cos[k * 4 + j] as f64 - a.cos()).abs() < 1e-7);
            assert!((sin[k * 4 + j] as f64 - a.sin()).abs() < 1e-7);
        }
    }
}

#[test]
fn gguf_rope_rows_are_unpermuted() {
    // llama.cpp's permute: reshape(heads, 2, dh/2, in).swapaxes(1, 2); undo it.
    let (heads, dh, d_in) = (3, 8, 2);
    let hf: Vec<f32> = (0..heads * dh * d_in).map(|i| i as f32).collect();
    let mut gguf = vec![0f32; hf.len()];
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..dh / 2 {
                for c in 0..d_in {
                    gguf[((h * dh) + j * 2 + s) * d_in + c] =
                        hf[((h * dh) + s * dh / 2 + j) * d_in + c];
                }
            }
        }
    }
    assert_eq!(bllm_models::unpermute_rope_rows(&gguf, heads, dh, d_in), hf);
}

mod kv_probe {
    use super::*;
    use bllm_models::kv::probe::{Calibration, ProbeCache, ProbeOptions, probe_text};
    use bllm_models::kv::{Axis, CacheSpec, QuantKind, QuantSpec};
    use burn::tensor::activation::log_softmax;

    fn tokens() -> Vec<u32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        (0..65).map(|_| rng.random_range(0..40u32)).collect()
    }

    fn probe(m: &Llama<B>, spec: &CacheSpec) -> bllm_models::kv::probe::ProbeResult {
        let ids = tokens();
        let calib = Calibration::collect(m, &ids, 16, &Default::default());
        let cache = ProbeCache::build(spec, &m.config, Some(&calib), 3).expect("cache");
        let opts = ProbeOptions { rows: 8, bucket: 8 };
        let mut stats = Calibration::default();
        probe_text(
            m,
            &cache,
            "random",
            &ids,
            16,
            4,
            &opts,
            &mut stats,
            &Default::default(),
            |_, _| {},
        )
        .expect("probe")
    }

    fn q(kind: QuantKind) -> QuantSpec {
        QuantSpec::new(kind)
    }

    #[test]
    fn the_identity_cache_reproduces_the_float_perplexity_exactly() {
        let dir = tempfile::tempdir().expect("tmp");
        let m = llama(dir.path());
        let r = probe(&m, &CacheSpec::float());
        assert_eq!(r.perplexity, r.perplexity_float);
        assert_eq!(r.top1_agreement, 1.0);
        assert_eq!(r.attention_kl, 0.0);
        assert_eq!(r.logit_kl, 0.0);
        // The float run is the model's own forward: the same NLL, computed independently.
        let ids = tokens();
        let ctx = Ctx::default().for_eval();
        let mut nll = 0.0f64;
        for w in 0..4 {
            let win: Vec<i64> = ids[w * 16..w * 16 + 17].iter().map(|&i| i as i64).collect();
            let lp = log_softmax(
                m.forward(ids_of(&win[..16]), None, &ctx).reshape([16, 40]),
                1,
            );
            let v = floats(lp);
            for p in 0..16 {
                nll -= v[p * 40 + win[p + 1] as usize] as f64;
            }
        }
        assert_eq!(r.perplexity_float, (nll / 64.0).exp());
    }

    fn ids_of(x: &[i64]) -> Tensor<B, 2, Int> {
        Tensor::from_data(
            TensorData::new(x.to_vec(), [1, x.len()]),
            &Default::default(),
        )
    }

    #[test]
    fn coarser_caches_do_more_damage_and_a_full_window_undoes_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let m = llama(dir.path());
        let f16 = CacheSpec {
            keys: q(QuantKind::F16),
            values: q(QuantKind::F16),
            window: 0,
        };
        let sign = CacheSpec {
            keys: q(QuantKind::Sign),
            values: q(QuantKind::Sign),
            window: 0,
        };
        let rf = probe(&m, &f16);
        let rs = probe(&m, &sign);
        assert!(
            rf.perplexity_change.abs() < 1e-3,
            "{}",
            rf.perplexity_change
        );
        assert!(rf.attention_kl < 1e-5, "{}", rf.attention_kl);
        assert!(
            rs.attention_kl > 100.0 * rf.attention_kl.max(1e-9),
            "{} vs {}",
            rs.attention_kl,
            rf.attention_kl
        );
        assert!(rs.key_error > 0.1 && rs.value_error > 0.1);
        assert_eq!(rs.layers.len(), 2);
        assert_eq!(rs.positions.len(), 2);
        // Every token inside the window: read back in full precision.
        let wide = CacheSpec {
            window: 16,
            ..sign.clone()
        };
        let rw = probe(&m, &wide);
        assert_eq!(rw.attention_kl, 0.0);
        assert!((rw.perplexity / rw.perplexity_float - 1.0).abs() < 1e-5);
        // A block never completes inside a 16-token window: per-channel blocks of 32 are f16.
        let blocks = CacheSpec {
            keys: QuantSpec {
                axis: Axis::Channel,
                group: 32,
                ..q(QuantKind::Sign)
            },
            values: q(QuantKind::Float),
            window: 0,
        };
        assert_eq!(probe(&m, &blocks).attention_kl, 0.0);
        // Outlier channels and keys before RoPE build from the calibration and run.
        let out = CacheSpec {
            keys: QuantSpec {
                outliers: 0.25,
                pre_rope: true,
                ..q(QuantKind::Int)
            },
            values: QuantSpec {
                outliers: 0.25,
                ..q(QuantKind::Int)
            },
            window: 2,
        };
        let ro = probe(&m, &out);
        assert!(ro.perplexity.is_finite() && ro.attention_kl > 0.0);
        let qjl = CacheSpec {
            keys: QuantSpec {
                sketch: 64,
                ..q(QuantKind::Qjl)
            },
            values: q(QuantKind::F16),
            window: 0,
        };
        assert!(probe(&m, &qjl).perplexity.is_finite());
    }

    #[test]
    fn cache_bytes_count_the_window_and_every_scale() {
        let c = llama_config();
        // 2 layers × (K + V) × 8 channels.
        let f16 = CacheSpec {
            keys: q(QuantKind::F16),
            values: q(QuantKind::F16),
            window: 0,
        };
        let cache = ProbeCache::build(&f16, &c, None, 0).unwrap();
        assert_eq!(cache.bytes_per_token(16), 2.0 * 2.0 * 2.0 * 8.0);
        assert_eq!(bllm_models::kv::probe::f16_bytes_per_token(&c), 64);
        // sign per head (4 channels): 8 bits pad to one word = 8 B + 2 scales × 2 B = 12 B per
        // token and layer side; window 4 of 16 tokens in f16 (16 B each).
        let sign = CacheSpec {
            keys: q(QuantKind::Sign),
            values: q(QuantKind::Sign),
            window: 4,
        };
        let cache = ProbeCache::build(&sign, &c, None, 0).unwrap();
        assert_eq!(
            cache.bytes_per_token(16),
            4.0 * (12.0 * 12.0 + 4.0 * 16.0) / 16.0
        );
        let bad = CacheSpec {
            values: QuantSpec {
                outliers: 0.1,
                ..q(QuantKind::Sign)
            },
            ..sign
        };
        let e = ProbeCache::build(&bad, &c, None, 0)
            .err()
            .expect("needs calibration")
            .to_string();
        assert!(e.contains("values.outliers"), "{e}");
    }
}
