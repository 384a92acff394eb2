//! Golden vectors: committed files that pin the contract layout byte for byte. If any of these
//! tests fails, the on-disk contract changed — that is a breaking change for every consumer.
//!
//! The golden input is regenerated from a fixed seed and compared with the committed copy, so
//! neither the input nor the outputs can drift silently. To (re)create the files after a
//! deliberate, versioned format change: `BLLM_BLESS=1 cargo test --release -p bllm-codes --test golden`.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::{Path, PathBuf};

use bllm_codes::io::{self, npy};
use bllm_codes::rng::SplitMix64;
use bllm_codes::{FloatMatrix, PackedCodes};

const ROWS: usize = 6;
const DIM: usize = 130;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
}

/// Gaussian values with exact zeros, negative zeros and tiny values mixed in.
fn golden_input() -> FloatMatrix {
    let mut rng = SplitMix64::new(0x601D);
    let data = (0..ROWS * DIM)
        .map(|i| match i % 17 {
            0 => 0.0,
            5 => -0.0,
            9 => -1e-30,
            _ => rng.next_gaussian() as f32,
        })
        .collect();
    FloatMatrix::new(ROWS, DIM, data).unwrap()
}

/// Writes every golden output for `bits` into `dir`.
fn write_outputs(dir: &Path, input: &FloatMatrix, bits: usize) {
    let codes = PackedCodes::from_f32_rows(input.as_slice(), DIM, bits).unwrap();
    io::write_bcodes(&dir.join(format!("codes-{bits}.bcodes")), &codes).unwrap();
    npy::write_codes_npy_u64(&dir.join(format!("codes-{bits}-u64.npy")), &codes).unwrap();
    npy::write_codes_npy_u8(&dir.join(format!("codes-{bits}-u8.npy")), &codes).unwrap();
    if bits % 8 == 0 {
        io::write_faiss_binary_flat(&dir.join(format!("codes-{bits}.faiss")), &codes).unwrap();
    }
}

const BITS: [usize; 3] = [1, 128, 130];

#[test]
fn golden_files_are_unchanged() {
    let dir = golden_dir();
    let input = golden_input();
    if std::env::var("BLLM_BLESS").as_deref() == Ok("1") {
        npy::write_f32_npy(&dir.join("input.npy"), &input).unwrap();
        for bits in BITS {
            write_outputs(&dir, &input, bits);
        }
    }
    let fresh = tempfile::tempdir().unwrap();
    npy::write_f32_npy(&fresh.path().join("input.npy"), &input).unwrap();
    for bits in BITS {
        write_outputs(fresh.path(), &input, bits);
    }
    let mut compared = 0;
    for entry in std::fs::read_dir(fresh.path()).unwrap() {
        let name = entry.unwrap().file_name();
        let want = std::fs::read(dir.join(&name))
            .unwrap_or_else(|e| panic!("golden file {name:?} missing ({e}); see the module docs"));
        let got = std::fs::read(fresh.path().join(&name)).unwrap();
        assert!(
            want == got,
            "{name:?} differs from the committed golden file"
        );
        compared += 1;
    }
    assert_eq!(compared, 1 + 3 * BITS.len() + 1);
}

#[test]
fn golden_files_read_back() {
    let dir = golden_dir();
    let input = npy::read_float_matrix(&dir.join("input.npy")).unwrap();
    assert_eq!(input, golden_input());
    for bits in BITS {
        let codes = PackedCodes::from_f32_rows(input.as_slice(), DIM, bits).unwrap();
        assert_eq!(
            io::read_bcodes(&dir.join(format!("codes-{bits}.bcodes"))).unwrap(),
            codes
        );
        let u64s = dir.join(format!("codes-{bits}-u64.npy"));
        assert_eq!(npy::read_codes_npy(&u64s, Some(bits)).unwrap(), codes);
        let u8s = dir.join(format!("codes-{bits}-u8.npy"));
        assert_eq!(npy::read_codes_npy(&u8s, Some(bits)).unwrap(), codes);
    }
    let faiss = io::read_faiss_binary_flat(&dir.join("codes-128.faiss")).unwrap();
    assert_eq!(
        faiss,
        PackedCodes::from_f32_rows(input.as_slice(), DIM, 128).unwrap()
    );
}

/// A hand-computed vector, independent of any file: documents the layout in code.
#[test]
fn hand_computed_layout() {
    // Row 0: bits 0, 2, 64 and 129 set; row 1: every bit set.
    let mut row0 = vec![-1.0f32; DIM];
    for j in [0, 2, 64, 129] {
        row0[j] = 0.25;
    }
    let row1 = vec![0.0f32; DIM]; // sign(0) = +1: all ones
    let codes = PackedCodes::from_f32_rows(&[row0, row1].concat(), DIM, 130).unwrap();
    assert_eq!(
        codes.as_words(),
        &[0b101, 1, 1 << 1, u64::MAX, u64::MAX, 0b11]
    );
    let bytes = codes.to_le_bytes();
    assert_eq!(&bytes[..9], &[0b101, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(
        codes.to_packbits_u8()[..17],
        [5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    );
}
