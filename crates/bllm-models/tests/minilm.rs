//! all-MiniLM-L6-v2 against sentence-transformers: token ids on every verse and embeddings of
//! `datasets/kjv-minilm` (made by sentence-transformers from the same weights).

use crate::common;

use bllm_models::SentenceEncoder;
use burn::tensor::backend::Backend;
use burn_flex::Flex;
use burn_ndarray::NdArray;

/// Every 5th verse (2,000) on burn-flex (what `bllm embed` runs on), every 20th (500) on
/// burn-ndarray; `BLLM_MINILM_ALL=1` checks all 10,000 on both (≈ 3 min on 2 cores).
#[test]
fn embeddings_match_sentence_transformers() {
    let Some(dir) = common::model("minilm") else {
        return;
    };
    let all = std::env::var("BLLM_MINILM_ALL").as_deref() == Ok("1");
    parity::<Flex>(&dir, if all { 1 } else { 5 });
    parity::<NdArray<f32>>(&dir, if all { 1 } else { 20 });
}

/// The same bytes with 1 and 2 threads.
#[test]
fn embeddings_do_not_depend_on_the_thread_count() {
    let Some(dir) = common::model("minilm") else {
        return;
    };
    let enc = SentenceEncoder::<Flex>::load(&dir, &Default::default()).expect("load");
    let verses = std::fs::read_to_string(common::root().join("datasets/kjv-minilm/verses.txt"))
        .expect("verses");
    let texts: Vec<&str> = verses.lines().take(96).collect();
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        pool.install(|| {
            enc.encode(&texts, 32, &Default::default(), |_| {})
                .expect("encode")
        })
    };
    let one = run(1);
    let two = run(2);
    assert!(
        one.iter()
            .zip(&two)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

fn parity<B: Backend>(dir: &std::path::Path, stride: usize) {
    let device = Default::default();
    let enc = SentenceEncoder::<B>::load(dir, &device).expect("load");
    assert_eq!((enc.dim(), enc.max_len, enc.normalize), (384, 256, true));
    let verses = std::fs::read_to_string(common::root().join("datasets/kjv-minilm/verses.txt"))
        .expect("verses");
    // Each line is `reference<TAB>text`; the text was embedded (datasets/kjv-minilm/generate.py).
    let rows: Vec<(usize, &str)> = verses
        .lines()
        .map(|l| l.split_once('\t').map_or(l, |(_, t)| t))
        .enumerate()
        .step_by(stride)
        .collect();
    let texts: Vec<&str> = rows.iter().map(|&(_, t)| t).collect();
    let n = texts.len();
    let npy = common::root().join("datasets/kjv-minilm/embeddings.npy");
    let reference = bllm_codes::io::npy::read_npy(&npy).expect("npy");
    assert_eq!((reference.rows, reference.cols), (10_000, 384));
    let all = reference.to_f32(&npy).expect("f32");
    let want: Vec<f32> = rows
        .iter()
        .flat_map(|&(i, _)| all[i * 384..(i + 1) * 384].iter().copied())
        .collect();
    let t0 = std::time::Instant::now();
    let got = enc.encode(&texts, 128, &device, |_| {}).expect("encode");
    eprintln!("{n} texts in {:.2?}", t0.elapsed());
    let (mut min, mut sum) = (f64::MAX, 0.0);
    let mut worst = 0;
    for i in 0..n {
        let a = &got[i * 384..(i + 1) * 384];
        let b = &want[i * 384..(i + 1) * 384];
        let dot: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (*x as f64) * (*y as f64))
            .sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let c = dot / (na * nb);
        if c < min {
            min = c;
            worst = rows[i].0;
        }
        sum += c;
    }
    let mean = sum / n as f64;
    eprintln!(
        "{}: cosine vs sentence-transformers over {n} verses: min {min:.8} (verse {worst}), mean {mean:.9}",
        std::any::type_name::<B>()
    );
    assert!(min >= 0.9995, "min cosine {min} at verse {worst}");
    assert!(mean >= 0.9999, "mean cosine {mean}");
}

/// Token-id inputs the model cannot run are errors naming what was expected, not panics; an
/// input alone and inside a packed batch gets the same embedding bits.
#[test]
fn bad_token_inputs_are_errors_and_batching_does_not_change_a_row() {
    let Some(dir) = common::model("minilm") else {
        return;
    };
    let dev = Default::default();
    let enc = SentenceEncoder::<Flex>::load(&dir, &dev).expect("load");
    let ok = enc
        .token_ids("In the beginning God created the heaven and the earth.")
        .expect("ids");
    let err = |ids: Vec<Vec<u32>>| {
        enc.embed_ids(&ids, &dev)
            .expect_err("must fail")
            .to_string()
    };
    let e = err(vec![ok.clone(), vec![]]);
    assert!(e.contains("an input of 0 tokens; expected 1..=256"), "{e}");
    let e = err(vec![vec![101; 257]]);
    assert!(
        e.contains("an input of 257 tokens; expected 1..=256"),
        "{e}"
    );
    let e = err(vec![vec![101, 40_000, 102]]);
    assert!(
        e.contains("token id 40000 outside the vocabulary of 30522"),
        "{e}"
    );
    let other = enc.token_ids("Jesus wept.").expect("ids");
    let alone = enc
        .embed_ids(std::slice::from_ref(&other), &dev)
        .expect("alone");
    let batch = enc.embed_ids(&[ok, other], &dev).expect("batch");
    let d = enc.dim();
    let close = alone
        .iter()
        .zip(&batch[d..])
        .all(|(a, b)| (a - b).abs() <= 1e-6);
    assert!(close, "a row's embedding changed with its batch");
}
