//! A tiny random Llama in the Hugging Face layout and seeded word text, shared by the tests
//! that run pretrained-model kinds without the real checkpoints.

// Each test file uses a part of these helpers.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // test helpers panic on failure by design
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};

/// The tiny model's vocabulary size.
pub const VOCAB: usize = 40;

/// A 2-layer Llama (d 24, 6 query heads, 2 key/value heads of 4 channels) and its tokenizer.
pub fn tiny_llama(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "vocab_size": VOCAB, "hidden_size": 24, "intermediate_size": 40,
        "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
        "tie_word_embeddings": true, "hidden_act": "silu"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut shapes = vec![
        ("model.embed_tokens.weight".to_string(), vec![VOCAB, 24]),
        ("model.norm.weight".into(), vec![24]),
    ];
    for i in 0..2 {
        for (n, sh) in [
            ("input_layernorm", vec![24]),
            ("post_attention_layernorm", vec![24]),
            ("self_attn.q_proj", vec![24, 24]),
            ("self_attn.k_proj", vec![8, 24]),
            ("self_attn.v_proj", vec![8, 24]),
            ("self_attn.o_proj", vec![24, 24]),
            ("mlp.gate_proj", vec![40, 24]),
            ("mlp.up_proj", vec![40, 24]),
            ("mlp.down_proj", vec![24, 40]),
        ] {
            shapes.push((format!("model.layers.{i}.{n}.weight"), sh));
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let bytes: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(n, sh)| {
            let k: usize = sh.iter().product();
            (0..k)
                .flat_map(|_| {
                    let v = if n.ends_with("norm.weight") {
                        1.0
                    } else {
                        rng.random::<f32>() * 1.2 - 0.6
                    };
                    v.to_le_bytes()
                })
                .collect()
        })
        .collect();
    let views: Vec<(String, TensorView)> = shapes
        .iter()
        .zip(&bytes)
        .map(|((n, sh), b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, sh.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, &None, &dir.join("model.safetensors")).unwrap();
    let mut vocab = serde_json::Map::new();
    vocab.insert("[UNK]".into(), 0.into());
    for i in 1..VOCAB {
        vocab.insert(format!("w{i}"), i.into());
    }
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
}

/// Words with a repeating structure (so attention has something to find), seeded.
pub fn words(seed: u64, n: usize) -> String {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = String::new();
    for i in 0..n {
        let w = if i % 7 == 3 {
            5
        } else {
            rng.random_range(1..VOCAB)
        };
        out.push_str(&format!("w{w}"));
        out.push(if i % 12 == 11 { '\n' } else { ' ' });
    }
    out
}

/// A temporary directory with the tiny model under `model/` and word corpora beside it; the
/// tests add their recipes (`impl Setup` in each test file).
pub struct Setup {
    _tmp: tempfile::TempDir,
    /// The directory.
    pub root: PathBuf,
}

impl Setup {
    /// The model and, per `(name, train seed, train words, valid seed, valid words)`, a corpus
    /// directory `name/` with `train.txt` and `valid.txt`.
    pub fn new(corpora: &[(&str, u64, usize, u64, usize)]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        tiny_llama(&root.join("model"));
        for &(name, ts, tn, vs, vn) in corpora {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("train.txt"), words(ts, tn)).unwrap();
            std::fs::write(dir.join("valid.txt"), words(vs, vn)).unwrap();
        }
        Self { _tmp: tmp, root }
    }
}

/// A path as a `&str`-able string (the CLI's arguments).
pub fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// `bllm run RECIPE ARGS… --run-dir DIR` (overrides and flags in `args`).
pub fn run(recipe: &Path, dir: &Path, args: &[&str]) -> Result<(), String> {
    let mut argv = vec!["run".to_owned(), s(recipe)];
    argv.extend(args.iter().map(|o| o.to_string()));
    argv.extend(["--run-dir".to_owned(), s(dir)]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    bllm_e2e::bllm(&argv)
}

/// A run directory's `summary.json`.
pub fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// A file's bytes (panics naming the file).
pub fn bytes(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}
