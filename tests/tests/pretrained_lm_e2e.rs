//! `kind = "lm"` with `model.pretrained` end to end on a tiny random Llama written to disk (the
//! code path SmolLM2 takes): SVID / XNOR / BitNet initialisation from the float weights,
//! distillation (logits + hidden states), the float parts frozen, determinism, exact resume,
//! the export, the extra held-out texts, and the errors for bad recipes.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::{Path, PathBuf};

use crate::support::{Setup, bytes, s, summary};

/// The training corpus and one more held-out text beside the tiny model.
fn setup() -> Setup {
    Setup::new(&[("corpus", 1, 800, 2, 300), ("other", 3, 800, 4, 300)])
}

impl Setup {
    /// The recipe: every block projection 1-bit with SVID, distilled, 6 steps.
    fn lm_recipe(&self, extra: &str) -> PathBuf {
        let text = format!(
            r#"name = "tiny-onebit"
kind = "lm"
seed = 3
[data]
path = "{corpus}"
eval_texts = ["{other}"]
[model]
pretrained = "{model}"
context = 16
scaling = "svid"
monitor_layers = 1
[model.projections]
q = "binary"
k = "binary"
v = "binary"
o = "binary"
up = "binary"
down = "binary"
[estimator]
kind = "identity"
[distill]
temperature = 2.0
kl = 1.0
ce = 0.5
hidden = 1.0
[optimizer]
kind = "adam"
lr = 0.01
[schedule]
kind = "constant"
[train]
steps = 6
batch_size = 3
log_every = 1
[eval]
every = 3
[checkpoint]
every = 2
keep_last = 2
[monitors]
every = 2
fd_directions = 2
[export]
weights = true
{extra}
"#,
            corpus = s(&self.root.join("corpus")),
            other = s(&self.root.join("other")),
            model = s(&self.root.join("model")),
        );
        let p = self.root.join(format!("r{}.toml", text.len()));
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn run(recipe: &Path, dir: &Path, overrides: &[&str], flags: &[&str]) -> Result<(), String> {
    let args: Vec<&str> = overrides.iter().chain(flags).copied().collect();
    crate::support::run(recipe, dir, &args)
}

#[test]
fn distilled_onebit_run_is_deterministic_resumes_exactly_and_exports() {
    let w = setup();
    let r = w.lm_recipe("");
    let (a, b, c) = (w.root.join("a"), w.root.join("b"), w.root.join("c"));
    run(&r, &a, &[], &[]).unwrap();
    let sa = summary(&a);
    let p = &sa["pretrained"];
    assert_eq!(sa["steps"], 6);
    assert_eq!(p["binary_projections"], 14, "{sa}");
    assert_eq!(p["distilled"], true);
    assert_eq!(p["tokens_trained"], 6 * 3 * 16);
    // Bytes by hand: the f32 embedding (40 × 24), norms (2 per layer + final, 24 each), and per
    // projection `out` rows of one u64 word (every d_in ≤ 64) + 48 B metadata + SVID's value
    // vectors g [d_in], h [d_out] in f32.
    let proj = |d_in: usize, d_out: usize| d_out * 8 + 48 + 4 * (d_in + d_out);
    let layer = 2 * proj(24, 24) + 2 * proj(24, 8) + 2 * proj(24, 40) + proj(40, 24);
    let want = 4 * 40 * 24 + 4 * (2 * 2 * 24 + 24) + 2 * layer;
    assert_eq!(sa["model_bytes"], want, "{sa}");
    let (bpb, teacher) = (
        sa["eval_bpb"].as_f64().unwrap(),
        p["teacher_bpb"].as_f64().unwrap(),
    );
    assert!(bpb.is_finite() && teacher.is_finite() && bpb > 0.0, "{sa}");
    let also = p["also"].as_array().unwrap();
    assert_eq!(also.len(), 1);
    assert!(also[0]["bpb"].as_f64().unwrap().is_finite());
    // The three loss terms are logged, and the monitors watched the one sampled layer.
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for k in ["ce", "kl", "hidden"] {
        assert!(first[k].as_f64().unwrap() >= 0.0, "{k}: {first}");
    }
    for m in [
        "shadow_cosine/",
        "fd_sign_agreement/",
        "flip_ratio/",
        "quant_error/",
    ] {
        assert!(
            metrics.contains(&format!("{m}layers.0.self_attn.q_proj")),
            "{metrics}"
        );
        assert!(!metrics.contains(&format!("{m}layers.1.")), "{metrics}");
    }
    for m in ["flip_ratio", "pass_through", "quant_error"] {
        assert!(metrics.contains(m), "{metrics}");
    }
    // Every 1-bit projection exported in the code contract, with SVID's two value vectors.
    let q = a.join("final/export/layers.1.mlp.down_proj");
    let scales: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(q.join("scales.json")).unwrap()).unwrap();
    assert_eq!(scales["scales"].as_array().unwrap().len(), 24);
    assert_eq!(scales["input_scales"].as_array().unwrap().len(), 40);
    assert!(q.join("codes.bcodes").is_file());

    // Same recipe and seed: the same bytes.
    run(&r, &b, &[], &[]).unwrap();
    for f in ["final/model.mpk", "final/optimizer.mpk", "metrics.jsonl"] {
        assert!(bytes(a.join(f)) == bytes(b.join(f)), "{f} differs");
    }
    // Stopped after 3 steps (past the checkpoint at 2) and resumed: the same bytes.
    run(&r, &c, &[], &["--max-steps", "3"]).unwrap();
    run(&r, &c, &[], &["--resume"]).unwrap();
    for f in ["final/model.mpk", "metrics.jsonl"] {
        assert!(
            bytes(a.join(f)) == bytes(c.join(f)),
            "{f} differs after resume"
        );
    }
}

#[test]
fn layer_ranges_xnor_and_bitnet_runs() {
    let w = setup();
    // XNOR with learnable scales on the MLPs of layer 1 only, plain QAT (no [distill]).
    let r = w.lm_recipe("");
    let x = w.root.join("x");
    run(
        &r,
        &x,
        &[
            "model.scaling=\"per_channel\"",
            "model.learnable_scale=true",
            "model.projections.q=\"float\"",
            "model.projections.k=\"float\"",
            "model.projections.v=\"float\"",
            "model.projections.o=\"float\"",
            "model.quantize_layers=[1, 2]",
            "distill.kl=0.0",
            "distill.hidden=0.0",
            "distill.ce=1.0",
        ],
        &[],
    )
    .unwrap();
    let sx = summary(&x);
    assert_eq!(sx["pretrained"]["binary_projections"], 3, "{sx}");
    // Only `distill.ce`: plain QAT, the teacher is not run.
    assert_eq!(sx["pretrained"]["distilled"], false, "{sx}");
    assert!(
        x.join("final/export/layers.1.mlp.gate_proj/codes.bcodes")
            .is_file()
    );
    assert!(!x.join("final/export/layers.0.mlp.gate_proj").exists());
    // A float model has nothing to train: a clear error, not an idle run.
    let all_float: Vec<String> = ["q", "k", "v", "o", "up", "down"]
        .iter()
        .map(|p| format!("model.projections.{p}=\"float\""))
        .collect();
    let ov: Vec<&str> = all_float.iter().map(String::as_str).collect();
    let e = run(&r, &w.root.join("f"), &ov, &[]).unwrap_err();
    assert!(e.contains("model.projections"), "{e}");
    // BitNet b1.58 from the float weights, distilled.
    let t = w.root.join("t");
    let bitnet: Vec<String> = ["q", "k", "v", "o", "up", "down"]
        .iter()
        .map(|p| format!("model.projections.{p}=\"bitnet\""))
        .collect();
    let ov: Vec<&str> = bitnet.iter().map(String::as_str).collect();
    run(&r, &t, &ov, &[]).unwrap();
    let st = summary(&t);
    assert_eq!(st["pretrained"]["ternary_projections"], 14, "{st}");
    assert!(
        t.join("final/export/layers.0.self_attn.k_proj/sign/codes.bcodes")
            .is_file()
    );
}

#[test]
fn bad_pretrained_recipes_name_the_key() {
    let w = setup();
    let r = w.lm_recipe("");
    let d = w.root.join("e");
    let cases: [(&[&str], &str); 7] = [
        (&["model.d_model=32"], "model.d_model"),
        (
            &["model.projections.head=\"binary\""],
            "model.projections.head",
        ),
        (&["model.quantize_layers=[2, 1]"], "model.quantize_layers"),
        (&["model.quantize_layers=[0, 9]"], "has 2 layers"),
        (&["model.context=4096"], "max_position_embeddings"),
        (
            &["distill.kl=0.0", "distill.hidden=0.0", "distill.ce=0.0"],
            "distill.kl",
        ),
        (
            &["model.pretrained=\"/nonexistent/model\""],
            "/nonexistent/model",
        ),
    ];
    for (ov, want) in cases {
        let e = run(&r, &d, ov, &[])
            .err()
            .unwrap_or_else(|| panic!("{ov:?} was accepted"));
        assert!(e.contains(want), "{ov:?}: {e}");
        let _ = std::fs::remove_dir_all(&d);
    }
    // [distill] or eval_texts without a pretrained model.
    let byte_lm = w.root.join("byte.toml");
    std::fs::write(
        &byte_lm,
        format!(
            "name = \"b\"\nkind = \"lm\"\n[data]\npath = \"{}\"\n[distill]\nkl = 1.0\n",
            s(&w.root.join("corpus"))
        ),
    )
    .unwrap();
    let e = run(&byte_lm, &d, &[], &[]).unwrap_err();
    assert!(
        e.contains("distill") && e.contains("model.pretrained"),
        "{e}"
    );
}
