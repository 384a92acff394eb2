//! The checkpoint readers: GGUF dequantisation against llama.cpp's own Python reference
//! (`gguf.quants.dequantize`, fixtures made by `scripts/make_model_references.py`), and fuzzing of
//! both readers with corrupted files (every outcome is `Ok` or an error, never a panic).

use crate::common;

use bllm_models::Checkpoint;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixture(name: &str) -> std::path::PathBuf {
    common::root()
        .join("crates/bllm-models/tests/fixtures")
        .join(name)
}

fn dequant_reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("smollm2_dequant.json")).expect("json"))
        .expect("json")
}

fn shape(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("shape")
        .iter()
        .map(|x| x.as_u64().expect("dim") as usize)
        .collect()
}

#[test]
fn every_quant_type_dequantises_as_llama_cpp() {
    let r = dequant_reference();
    let q = &r["quant_types"];
    let mut ck = Checkpoint::open(&fixture("quant_types.gguf")).expect("open");
    let tensors = q["tensors"].as_object().expect("tensors");
    assert_eq!(tensors.len(), 7);
    for (name, t) in tensors {
        let s = shape(&t["shape"]);
        assert_eq!(ck.shape(name), Some(s.clone()), "{name}");
        let got = ck.take(name, &s).expect(name);
        let want: Vec<f64> = t["dequantized"]
            .as_array()
            .expect("rows")
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .expect("row")
                    .iter()
                    .map(|x| x.as_f64().expect("x"))
            })
            .collect();
        assert_eq!(got.len(), want.len(), "{name}");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert_eq!(worst, 0.0, "{name} ({}): max |Δ| {worst}", t["ggml_type"]);
    }
    ck.finish(|_| false).expect("all taken");
}

#[test]
fn smollm2_tensors_dequantise_bit_exactly() {
    let Some(dir) = common::model("smollm2") else {
        return;
    };
    let r = dequant_reference();
    let mut ck = Checkpoint::open(&dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")).expect("open");
    for (name, t) in r["smollm2"]["tensors"].as_object().expect("tensors") {
        let s = shape(&t["shape"]);
        let got = ck.take(name, &s).expect(name);
        let mut h = Sha256::new();
        for x in &got {
            h.update(x.to_le_bytes());
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            t["f32_sha256"].as_str().expect("sha"),
            "{name} ({})",
            t["ggml_type"]
        );
    }
}

/// Opens `bytes` as a checkpoint and reads every tensor; any error is fine, a panic is not.
fn read_all(dir: &std::path::Path, ext: &str, bytes: &[u8], k: usize) {
    let p = dir.join(format!("fuzz{k}.{ext}"));
    std::fs::write(&p, bytes).expect("write");
    if let Ok(mut ck) = Checkpoint::open(&p) {
        for n in ck.names() {
            if let Some(s) = ck.shape(&n) {
                let _ = ck.take(&n, &s);
            }
        }
    }
    let _ = std::fs::remove_file(&p);
}

fn mutate(base: &[u8], rng: &mut impl Rng) -> Vec<u8> {
    let mut b = base.to_vec();
    match rng.random_range(0..4) {
        0 => b.truncate(rng.random_range(0..base.len())),
        1 => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
        }
        2 => {
            // A header byte (counts, lengths, offsets) set to an extreme value.
            let i = rng.random_range(0..b.len().min(512));
            b[i] = if rng.random::<bool>() { 0xff } else { 0 };
        }
        _ => {
            let i = rng.random_range(0..b.len());
            let j = (i + rng.random_range(1..64)).min(b.len());
            b.drain(i..j);
        }
    }
    b
}

#[test]
fn corrupted_gguf_and_safetensors_files_never_panic() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    let gguf = std::fs::read(fixture("quant_types.gguf")).expect("gguf");
    // A small safetensors file written by the reference implementation.
    let data: Vec<u8> = (0..64u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let views = vec![
        (
            "a.weight".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4, 8], &data[..128])
                .expect("view"),
        ),
        (
            "b.bias".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![32], &data[128..])
                .expect("view"),
        ),
    ];
    let st = safetensors::serialize(views, &None).expect("serialize");
    for k in 0..300 {
        read_all(dir.path(), "gguf", &mutate(&gguf, &mut rng), k);
        read_all(dir.path(), "safetensors", &mutate(&st, &mut rng), k);
    }
}
