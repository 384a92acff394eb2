//! SmolLM2-135M-Instruct (the Q4_1 GGUF dequantised to f32) against references computed once in
//! Python by `scripts/make_model_references.py`: `transformers` loading the same GGUF (logits,
//! perplexity) and the model's own tokenizer pipeline, checked there against llama.cpp's.

use crate::common;

use bllm_models::lm::perplexity;
use bllm_models::{Llama, LoadedLlama};
use bllm_ste::Ctx;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_flex::Flex;
use burn_ndarray::NdArray;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn reference() -> Value {
    let p = common::root().join("crates/bllm-models/tests/fixtures/smollm2_reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("fixture")).expect("json")
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn load<B: Backend>() -> Option<LoadedLlama<B>> {
    let dir = common::model("smollm2")?;
    Some(Llama::<B>::load(&dir, &Default::default()).expect("load"))
}

#[test]
fn tokenizer_matches_the_reference_and_the_gpt2_fallback_differs() {
    let Some(dir) = common::model("smollm2") else {
        return;
    };
    let gguf = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let ck = bllm_models::Checkpoint::open(&gguf).expect("open");
    let tok = bllm_models::TextTokenizer::from_gguf(ck.gguf().expect("gguf"), &gguf).expect("tok");
    let r = reference();
    let text = r["tokenizer_text"].as_str().expect("text");
    let got = tok.encode(text, false).expect("encode");
    let want = ids_of(&r["tokenizer_ids"]);
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "first difference at token {i}: got {:?}, want {:?}",
            &got[i..(i + 8).min(got.len())],
            &want[i..(i + 8).min(want.len())]
        );
    }
    assert_eq!(got.len(), want.len());
    assert_ne!(got, ids_of(&r["tokenizer_ids_gpt2_fallback"]));
    assert_eq!(tok.decode(&got, false).expect("decode"), text);
    // Digits are split one by one, spaces before them stay one token.
    let a = tok.encode("a  1   22    333", false).expect("a");
    assert_eq!(a, vec![81, 256, 33, 333, 34, 34, 289, 35, 35, 35]);
}

/// On burn-flex (what `bllm lm` runs on) and burn-ndarray.
#[test]
fn logits_match_transformers() {
    logits::<Flex>();
    logits::<NdArray<f32>>();
}

fn logits<B: Backend>() {
    let Some(m) = load::<B>() else {
        return;
    };
    let r = reference();
    let device = Default::default();
    let probe = ids_of(&r["probe_ids"]);
    let ctx = Ctx::default().for_eval();
    let mut worst = 0f64;
    for (k, p) in r["prompts"].as_array().expect("prompts").iter().enumerate() {
        let ids = ids_of(&p["ids"]);
        assert_eq!(
            m.tokenizer
                .encode(p["text"].as_str().expect("text"), false)
                .expect("ids"),
            ids,
            "prompt {k} token ids"
        );
        let t = ids.len();
        let x = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, t]),
            &device,
        );
        let logits = m
            .model
            .forward(x, None, &ctx)
            .into_data()
            .into_vec::<f32>()
            .expect("f32");
        let v = 49152;
        for pos in 0..t {
            let row = &logits[pos * v..(pos + 1) * v];
            let mut order: Vec<usize> = (0..v).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let top5: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
            let want_top5 = ids_of(&p["top5_ids"][pos]);
            let want_logits: Vec<f64> = p["top5_logits"][pos]
                .as_array()
                .expect("logits")
                .iter()
                .map(|x| x.as_f64().expect("f"))
                .collect();
            // Near-ties between the 5th and 6th logit may swap within the tolerance.
            let gap = want_logits[4] - p["sixth_logit"][pos].as_f64().expect("sixth");
            if gap > 1e-2 {
                let mut a = top5.clone();
                let mut b = want_top5.clone();
                a.sort();
                b.sort();
                assert_eq!(a, b, "prompt {k} position {pos}: top-5");
            }
            for (id, want) in want_top5.iter().zip(&want_logits) {
                worst = worst.max((row[*id as usize] as f64 - want).abs());
            }
            for (j, id) in probe.iter().enumerate() {
                let want = p["probe_logits"][pos][j].as_f64().expect("probe");
                worst = worst.max((row[*id as usize] as f64 - want).abs());
            }
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
            worst = worst.max((lse - p["logsumexp"][pos].as_f64().expect("lse")).abs());
        }
        if k == 0 {
            let npy = common::root()
                .join("crates/bllm-models/tests/fixtures/smollm2_prompt0_last_logits.npy");
            let bytes = std::fs::read(npy).expect("npy");
            // A 1-D `<f4` array: the header ends at the first newline after the magic.
            let start = bytes.iter().position(|&b| b == b'\n').expect("header") + 1;
            let want: Vec<f32> = bytes[start..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert_eq!(want.len(), v);
            let row = &logits[(t - 1) * v..t * v];
            for (a, b) in row.iter().zip(&want) {
                worst = worst.max((a - b).abs() as f64);
            }
        }
    }
    eprintln!(
        "{}: max |Δlogit| vs transformers: {worst:.2e}",
        std::any::type_name::<B>()
    );
    assert!(worst <= 1e-2, "max |Δlogit| {worst}");
}

#[test]
fn perplexity_on_held_out_kjv_matches_transformers() {
    let Some(m) = load::<Flex>() else {
        return;
    };
    let r = &reference()["perplexity"];
    let text = std::fs::read(common::root().join("datasets/kjv-text/valid.txt")).expect("valid");
    let cut = text[..16_000]
        .iter()
        .rposition(|&b| b == b'\n')
        .expect("newline")
        + 1;
    let text = String::from_utf8(text[..cut].to_vec()).expect("utf8");
    assert_eq!(text.len() as u64, r["bytes_used"].as_u64().expect("bytes"));
    // The 4,141 token ids of the held-out slice equal the reference tokenizer's.
    let ids = m.tokenizer.encode(&text, false).expect("ids");
    let mut h = Sha256::new();
    for id in &ids {
        h.update(id.to_le_bytes());
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(ids[..64], ids_of(&r["first_ids"])[..], "first ids");
    assert_eq!(
        hex,
        r["ids_sha256"].as_str().expect("sha"),
        "token ids of the slice"
    );
    let p = perplexity(
        &m.model,
        &m.tokenizer,
        &text,
        256,
        &Default::default(),
        |_, _| {},
    )
    .expect("ppl");
    assert_eq!(p.tokens as u64, r["tokens"].as_u64().expect("tokens"));
    assert_eq!(
        p.predicted as u64,
        r["predicted"].as_u64().expect("predicted")
    );
    let want = r["perplexity"].as_f64().expect("ppl");
    let rel = (p.perplexity - want).abs() / want;
    eprintln!(
        "perplexity {:.4} vs transformers {want:.4} ({:.4} %), {:.4} bits/byte",
        p.perplexity,
        rel * 100.0,
        p.bits_per_byte
    );
    assert!(rel <= 0.005, "perplexity {} vs {want}", p.perplexity);
}

#[test]
fn kv_probe_with_the_float_cache_is_exact_and_one_bit_keys_are_not() {
    use bllm_models::kv::probe::{Calibration, ProbeCache, ProbeOptions, probe_text};
    use bllm_models::kv::{Axis, CacheSpec, QuantKind, QuantSpec};
    let Some(m) = load::<Flex>() else {
        return;
    };
    let text =
        std::fs::read_to_string(common::root().join("datasets/kjv-text/valid.txt")).expect("kjv");
    let ids = m.tokenizer.encode(&text[..4000], false).expect("encode");
    let opts = ProbeOptions {
        rows: 16,
        bucket: 64,
    };
    let run = |spec: &CacheSpec| {
        let cache = ProbeCache::build(spec, &m.model.config, None, 0).expect("cache");
        let mut stats = Calibration::default();
        probe_text(
            &m.model,
            &cache,
            "kjv",
            &ids,
            128,
            2,
            &opts,
            &mut stats,
            &Default::default(),
            |_, _| {},
        )
        .expect("probe")
    };
    let float = run(&CacheSpec::float());
    assert_eq!(float.perplexity, float.perplexity_float);
    assert_eq!(float.top1_agreement, 1.0);
    assert!(
        float.perplexity_float > 2.0 && float.perplexity_float < 60.0,
        "{}",
        float.perplexity_float
    );
    let f16 = run(&CacheSpec {
        keys: QuantSpec::new(QuantKind::F16),
        values: QuantSpec::new(QuantKind::F16),
        window: 0,
    });
    assert!(
        f16.perplexity_change.abs() < 0.01,
        "{}",
        f16.perplexity_change
    );
    let sign = CacheSpec {
        keys: QuantSpec {
            axis: Axis::Channel,
            group: 64,
            ..QuantSpec::new(QuantKind::Sign)
        },
        values: QuantSpec::new(QuantKind::F16),
        window: 0,
    };
    let sign = run(&sign);
    assert!(sign.perplexity_change > 0.05, "{}", sign.perplexity_change);
    assert!(sign.attention_kl > 100.0 * f16.attention_kl);
}
