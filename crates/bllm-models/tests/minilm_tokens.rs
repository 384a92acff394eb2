//! all-MiniLM-L6-v2's tokenizer against sentence-transformers' on every line of
//! `datasets/kjv-minilm/verses.txt` (fixture made by `scripts/make_model_references.py`).

use crate::common;

use bllm_models::SentenceEncoder;
use burn_ndarray::NdArray;
use sha2::{Digest, Sha256};

#[test]
fn token_ids_match_sentence_transformers_on_every_verse() {
    let Some(dir) = common::model("minilm") else {
        return;
    };
    let enc = SentenceEncoder::<NdArray<f32>>::load(&dir, &Default::default()).expect("load");
    let fixture = std::fs::read_to_string(
        common::root().join("crates/bllm-models/tests/fixtures/minilm_token_ids.txt"),
    )
    .expect("fixture");
    let mut hashes = Vec::new();
    let mut full = std::collections::BTreeMap::new();
    for l in fixture.lines().filter(|l| !l.starts_with('#')) {
        if let Some(rest) = l.strip_prefix("= ") {
            let mut it = rest.split(' ');
            let i: usize = it.next().expect("index").parse().expect("index");
            full.insert(
                i,
                it.map(|x| x.parse::<u32>().expect("id"))
                    .collect::<Vec<_>>(),
            );
        } else {
            let (n, h) = l.split_once(' ').expect("count hash");
            hashes.push((n.parse::<usize>().expect("count"), h.to_string()));
        }
    }
    let verses = std::fs::read_to_string(common::root().join("datasets/kjv-minilm/verses.txt"))
        .expect("verses");
    let lines: Vec<&str> = verses.lines().collect();
    assert_eq!(lines.len(), 10_000);
    assert_eq!(hashes.len(), lines.len());
    for (i, line) in lines.iter().enumerate() {
        let ids = enc.token_ids(line).expect("ids");
        if let Some(want) = full.get(&i) {
            assert_eq!(&ids, want, "verse {i}");
        }
        let mut h = Sha256::new();
        for id in &ids {
            h.update(id.to_le_bytes());
        }
        let hex: String = h.finalize()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!((ids.len(), hex), hashes[i].clone(), "verse {i}: {line:?}");
    }
}
