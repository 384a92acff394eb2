//! `kind = "kv_probe"` end to end on a tiny random Llama written to disk (Hugging Face layout:
//! `config.json`, `model.safetensors`, a word-level `tokenizer.json`): the float cache
//! reproduces the float perplexity exactly, coarser caches do more damage, a sweep's table,
//! determinism, and the errors for bad recipes and inputs.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::PathBuf;

use bllm_e2e::{bllm, bllm_ok, repo_root};

use crate::support::{Setup, s, words};

/// The tiny model, a corpus and a plain text file.
fn setup() -> Setup {
    let st = Setup::new(&[("corpus", 1, 600, 2, 400)]);
    std::fs::write(st.root.join("plain.txt"), words(3, 2000)).unwrap();
    st
}

impl Setup {
    fn kv_recipe(&self, cache: &str, sweep: &str) -> PathBuf {
        let text = format!(
            r#"name = "kv-tiny"
kind = "kv_probe"
seed = 0
[model]
pretrained = "{}"
[data]
texts = ["{}", "{}"]
contexts = [16, 64]
tokens = 128
calibration_tokens = 128
[probe]
rows = 8
bucket = 16
[cache]
{cache}
{sweep}
"#,
            s(&self.root.join("model")),
            s(&self.root.join("corpus")),
            s(&self.root.join("plain.txt")),
        );
        let p = self.root.join(format!(
            "r{:x}.toml",
            xxhash_rust::xxh3::xxh3_64(text.as_bytes())
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn run(&self, cache: &str, dir: &str, extra: &[&str]) -> Result<serde_json::Value, String> {
        let r = self.kv_recipe(cache, "");
        let d = self.root.join(dir);
        let (r, ds) = (s(&r), s(&d));
        let mut args = vec!["run", &r];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--run-dir", &ds]);
        bllm(&args)?;
        Ok(serde_json::from_slice(&std::fs::read(d.join("results.json")).unwrap()).unwrap())
    }
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap()
}

#[test]
fn float_cache_is_exact_and_one_bit_caches_hurt_more_than_f16() {
    let st = setup();
    let float = st
        .run(
            "keys = { kind = \"float\" }\nvalues = { kind = \"float\" }",
            "float",
            &[],
        )
        .unwrap();
    let results = float["results"].as_array().unwrap();
    assert_eq!(results.len(), 4, "2 texts × 2 contexts");
    for r in results {
        assert_eq!(r["perplexity"], r["perplexity_float"], "{r}");
        assert_eq!(f(&r["top1_agreement"]), 1.0);
        assert_eq!(f(&r["attention_kl"]), 0.0);
    }
    assert_eq!(results[0]["text"], "corpus");
    assert_eq!(results[2]["text"], "plain");
    assert_eq!(results[1]["windows"], 2);
    // f32 cache: 2 layers × K, V × 8 channels × 4 B; the f16 reference is half of it.
    assert_eq!(float["f16_bytes_per_token"], 64);
    assert_eq!(f(&float["bytes_per_token"][0][1]), 128.0);
    assert_eq!(float["outliers"].as_array().unwrap().len(), 2);

    let f16 = st
        .run(
            "keys = { kind = \"f16\" }\nvalues = { kind = \"f16\" }",
            "f16",
            &[],
        )
        .unwrap();
    let sign = st
        .run("keys = { kind = \"sign\", axis = \"channel\", group = 16 }\nvalues = { kind = \"sign\" }", "sign", &[])
        .unwrap();
    for (a, b) in f16["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(sign["results"].as_array().unwrap())
    {
        assert!(f(&a["perplexity_change"]).abs() < 1e-3, "{a}");
        assert!(
            f(&b["attention_kl"]) > 100.0 * f(&a["attention_kl"]).max(1e-9),
            "{a}\n{b}"
        );
        assert!(f(&b["top1_agreement"]) <= f(&a["top1_agreement"]));
        assert_eq!(
            b["positions"].as_array().unwrap().len(),
            b["context"].as_u64().unwrap() as usize / 16
        );
    }
    assert!(f(&sign["bytes_per_token"][0][1]) < 64.0);
    // Every layer × head, each with its entropy.
    let heads = sign["results"][1]["heads"].as_array().unwrap();
    assert_eq!(heads.len(), 2 * 6);
    assert!(
        heads
            .iter()
            .all(|h| f(&h["entropy"]) >= 0.0 && f(&h["attention_kl"]) >= 0.0)
    );
    // Same recipe and seed → the same results (the wall time aside).
    let again = st
        .run("keys = { kind = \"sign\", axis = \"channel\", group = 16 }\nvalues = { kind = \"sign\" }", "sign2", &[])
        .unwrap();
    assert_eq!(again["results"], sign["results"]);
    assert!(
        std::fs::read_to_string(st.root.join("sign/results.md"))
            .unwrap()
            .contains("| corpus | 64 |")
    );
}

#[test]
fn a_sweep_over_caches_writes_one_table() {
    let st = setup();
    let r = st.kv_recipe(
        "keys = { kind = \"f16\" }\nvalues = { kind = \"f16\" }",
        r#"[sweep]
cache = [
  { name = "f16", keys = { kind = "f16" }, values = { kind = "f16" } },
  { name = "int4-out", window = 4, keys = { kind = "int", bits = 4, axis = "channel", group = 16, outliers = 0.25, pre_rope = true }, values = { kind = "int", bits = 4, outliers = 0.25 } },
  { name = "qjl", keys = { kind = "qjl", sketch = 32 }, values = { kind = "sign", zero_point = true } },
]"#,
    );
    let d = st.root.join("sweep");
    bllm_ok(&["sweep", &s(&r), "--run-dir", &s(&d)]);
    let md = std::fs::read_to_string(d.join("summary.md")).unwrap();
    for name in ["f16", "int4-out", "qjl"] {
        assert!(
            d.join(format!("cache={name}/results.json")).is_file(),
            "{name}"
        );
        assert!(
            md.lines()
                .filter(|l| l.contains(&format!("| {name} |")))
                .count()
                == 4,
            "{md}"
        );
    }
    // `bllm report` regroups the same table.
    std::fs::remove_file(d.join("summary.md")).unwrap();
    bllm_ok(&["report", &s(&d)]);
    assert_eq!(std::fs::read_to_string(d.join("summary.md")).unwrap(), md);
    for plot in [
        "kv_attention_kl_by_position_corpus_64.png",
        "kv_attention_kl_by_layer_plain_64.png",
        "kv_perplexity_vs_bytes_corpus_64.png",
        "kv_outliers_kurtosis.png",
    ] {
        assert!(d.join("plots").join(plot).is_file(), "{plot}");
    }
}

#[test]
fn bad_recipes_and_inputs_name_the_key_or_file() {
    let st = setup();
    let err = |cache: &str, extra: &[&str]| st.run(cache, "bad", extra).unwrap_err();
    let e = err("keys = { kind = \"sign\", groupp = 3 }", &[]);
    assert!(e.contains("cache.keys") && e.contains("groupp"), "{e}");
    let e = err("values = { kind = \"qjl\" }", &[]);
    assert!(e.contains("cache.values.kind"), "{e}");
    let e = err("keys = { kind = \"int\", bits = 3 }", &[]);
    assert!(e.contains("cache.keys.bits"), "{e}");
    let e = err("values = { kind = \"sign\", pre_rope = true }", &[]);
    assert!(e.contains("cache.values.pre_rope"), "{e}");
    let e = err("keys = { kind = \"sign\", axis = \"channel\" }", &[]);
    assert!(e.contains("cache.keys.group"), "{e}");
    let e = err("window = -1", &[]);
    assert!(e.contains("cache.window"), "{e}");
    let e = err("", &["data.tokens=100000"]);
    assert!(
        e.contains("data.tokens") && e.contains("held-out tokens"),
        "{e}"
    );
    let e = err("", &["data.contexts=[16, 1000]", "data.tokens=1000"]);
    assert!(e.contains("max_position_embeddings"), "{e}");
    let missing = s(&st.root.join("nowhere"));
    let e = err("", &[&format!("model.pretrained=\"{missing}\"")]);
    assert!(e.contains("nowhere"), "{e}");
    let e = err("", &[&format!("data.texts=[\"{missing}\"]")]);
    assert!(e.contains("nowhere"), "{e}");
    let e = err("", &["data.texts=[]"]);
    assert!(e.contains("data.texts"), "{e}");
    // Nothing to resume.
    st.run("", "once", &[]).unwrap();
    let r = s(&st.kv_recipe("", ""));
    let e = bllm(&[
        "run",
        &r,
        "--resume",
        "--run-dir",
        &s(&st.root.join("once")),
    ])
    .unwrap_err();
    assert!(e.contains("do not resume"), "{e}");
}

#[test]
fn the_shipped_recipes_validate() {
    for r in ["recipes/kv/sign.toml", "recipes/kv/probe.toml"] {
        bllm_ok(&["validate", &s(&repo_root().join(r))]);
    }
}
