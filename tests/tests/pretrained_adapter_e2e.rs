//! `kind = "adapter"` with `model.pretrained` end to end on a tiny random Llama written to disk
//! (the code path SmolLM2 takes): float LoRA, binary LoRA and BitDelta on every projection,
//! determinism, the byte accounting by hand, the export, and the errors for bad recipes.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::PathBuf;

use crate::support::{Setup, bytes, run, s, summary};

/// The target and source corpora beside the tiny model.
fn setup() -> Setup {
    Setup::new(&[("target", 1, 800, 2, 300), ("source", 3, 800, 4, 300)])
}

impl Setup {
    /// Adapter `kind` of rank 4 on every projection of the tiny model, 8 steps.
    fn adapter_recipe(&self, kind: &str, extra_model: &str) -> PathBuf {
        let text = format!(
            r#"name = "tiny-{kind}"
kind = "adapter"
seed = 5
[data]
path = "{target}"
[source]
path = "{source}"
[model]
pretrained = "{model}"
context = 16
{extra_model}
[adapter]
kind = "{kind}"
rank = 4
distill_steps = 4
[estimator]
kind = "clipped"
[optimizer]
kind = "adam"
lr = 0.01
[schedule]
kind = "constant"
[train]
steps = 8
batch_size = 3
log_every = 1
[export]
weights = true
"#,
            target = s(&self.root.join("target")),
            source = s(&self.root.join("source")),
            model = s(&self.root.join("model")),
        );
        let p = self.root.join(format!("{kind}-{}.toml", text.len()));
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// LoRA parameters of rank 4 on all seven projections of both layers (d 24, kv 8, mlp 40).
const LORA_PARAMS: usize = 2 * 4 * (2 * (24 + 24) + 2 * (24 + 8) + 3 * (24 + 40));

#[test]
fn lora_binary_lora_and_bitdelta_on_a_pretrained_llama() {
    let w = setup();
    for kind in ["lora", "binary_lora", "bitdelta"] {
        let r = w.adapter_recipe(kind, "");
        let (a, b) = (
            w.root.join(format!("{kind}-a")),
            w.root.join(format!("{kind}-b")),
        );
        run(&r, &a, &[]).unwrap();
        let sa = summary(&a);
        let p = &sa["pretrained"];
        let f = |k: &str| sa[k].as_f64().unwrap_or(f64::NAN);
        for k in [
            "target_bpb_base",
            "target_bpb",
            "source_bpb_base",
            "source_bpb",
        ] {
            assert!(f(k).is_finite() && f(k) > 0.0, "{kind} {k}: {sa}");
        }
        assert!((f("forgetting") - (f("source_bpb") - f("source_bpb_base"))).abs() < 1e-12);
        // The tiny model learns the target's word statistics from its adapters alone.
        assert!(f("target_bpb") < f("target_bpb_base"), "{kind}: {sa}");
        assert_eq!(sa["float_lora_bytes"], 4 * LORA_PARAMS, "{kind}: {sa}");
        let tokens_trained = if kind == "bitdelta" { 8 + 4 } else { 8 } * 3 * 16;
        assert_eq!(p["tokens_trained"], tokens_trained, "{kind}: {sa}");
        assert!(p["target_eval_tokens"].as_u64().unwrap() > 100, "{sa}");
        assert!(
            p["target_perplexity"].as_f64().unwrap()
                < p["target_perplexity_base"].as_f64().unwrap()
        );
        let adapter_bytes = sa["adapter_bytes"].as_u64().unwrap() as usize;
        match kind {
            "lora" => {
                assert_eq!(adapter_bytes, 4 * LORA_PARAMS, "{sa}");
                assert_eq!(sa["trainable_params"], LORA_PARAMS);
                assert!(
                    !a.join("final/export").exists(),
                    "float LoRA exports no bit-planes"
                );
            }
            "binary_lora" => {
                // Learnable scales: one per rank and one per output channel, besides the bits.
                let outs = 2 * (2 * 24 + 2 * 8 + 2 * 40 + 24);
                assert_eq!(sa["trainable_params"], LORA_PARAMS + 14 * 4 + outs, "{sa}");
                // By hand, per projection: A's 4 rows of one u64 word (every d_in ≤ 64) and B's
                // d_out rows of one word, 48 B of metadata each, f32 scales r + d_out + 1
                // (α/r): 148 + 12·d_out bytes; the d_out sum over both layers is 336. At this
                // toy width the padding and scales eat most of the saving (1.85×).
                assert_eq!(adapter_bytes, 14 * 148 + 12 * 336, "{sa}");
                assert!(
                    a.join("final/export/layers.1.mlp.gate_proj/scales.json")
                        .is_file(),
                    "binary LoRA bit-planes exported"
                );
            }
            _ => {
                assert_eq!(sa["trainable_params"], 14, "one α per matrix: {sa}");
                let ft = sa["finetune_target_bpb"].as_f64().unwrap();
                assert!(
                    ft < f("target_bpb_base"),
                    "the float fine-tune learned: {sa}"
                );
                assert!(
                    p["finetune_target_perplexity"]
                        .as_f64()
                        .unwrap()
                        .is_finite()
                );
                assert!(
                    a.join("final/export/layers.0.self_attn.k_proj/scales.json")
                        .is_file()
                );
            }
        }
        let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
        assert!(metrics.contains("\"phase\":\"base\""), "{metrics}");
        assert!(metrics.contains("\"phase\":\"adapted\""), "{metrics}");
        // Same recipe and seed: the same bytes (adapters, bit-planes, metrics).
        run(&r, &b, &[]).unwrap();
        let files: &[&str] = match kind {
            // BitDelta writes its export alone (signs packed, α in scales.json).
            "bitdelta" => &[
                "final/export/layers.1.mlp.down_proj/sign/codes.bcodes",
                "final/export/layers.1.mlp.down_proj/scales.json",
                "metrics.jsonl",
            ],
            "binary_lora" => &[
                "final/model.mpk",
                "final/export/layers.0.self_attn.v_proj/b/codes.bcodes",
                "metrics.jsonl",
            ],
            _ => &["final/model.mpk", "metrics.jsonl"],
        };
        for f in files {
            assert!(bytes(a.join(f)) == bytes(b.join(f)), "{kind}: {f} differs");
        }
        assert_eq!(
            a.join("final/model.mpk").is_file(),
            kind != "bitdelta",
            "{kind}: the record"
        );
        let (mut sb, mut sa) = (summary(&b), sa);
        sa["pretrained"]["wall_seconds"] = 0.into();
        sb["pretrained"]["wall_seconds"] = 0.into();
        assert_eq!(sa, sb, "{kind}: summaries differ");
    }
    // Adapters on the MLP gate alone: 1/7 of the projections.
    let r = w.adapter_recipe("lora", "");
    let g = w.root.join("gate");
    run(&r, &g, &["adapter.targets=[\"gate\"]"]).unwrap();
    assert_eq!(summary(&g)["trainable_params"], 2 * 4 * (24 + 40));
    // No resume.
    let err = run(&r, &g, &["--resume"]).unwrap_err();
    assert!(err.contains("do not resume"), "{err}");
}

#[test]
fn bad_pretrained_adapter_recipes_are_refused_with_the_key() {
    let w = setup();
    let r = w.adapter_recipe("lora", "");
    for (overrides, want) in [
        (vec!["source.steps=10"], "source.steps"),
        (vec!["source.cache=\"x\""], "source.cache"),
        (vec!["model.d_model=32"], "model.d_model"),
        (
            vec!["model.projections.gate=\"binary\""],
            "model.projections.gate",
        ),
        (vec!["adapter.targets=[\"gates\"]"], "adapter.targets"),
        (vec!["model.context=1000"], "max_position_embeddings"),
        (vec!["adapter.rank=9"], "rank"),
        (vec!["data.eval_bytes=8"], "fewer than model.context + 1"),
    ] {
        let dir = w
            .root
            .join(format!("bad-{}", want.replace(['.', ' ', '+'], "_")));
        let err = run(&r, &dir, &overrides).unwrap_err();
        assert!(err.contains(want), "{overrides:?}: {err}");
    }
    // `gate` is a projection of pretrained Llamas only.
    let byte = w.root.join("byte.toml");
    std::fs::write(
        &byte,
        format!(
            "name = \"b\"\nkind = \"adapter\"\n[data]\npath = \"{}\"\n[source]\npath = \"{}\"\n[adapter]\ntargets = [\"gate\"]\n",
            s(&w.root.join("target")),
            s(&w.root.join("source"))
        ),
    )
    .unwrap();
    let err = run(&byte, &w.root.join("byte"), &[]).unwrap_err();
    assert!(
        err.contains("adapter.targets") && err.contains("q, k, v, o, up, down"),
        "{err}"
    );
}
