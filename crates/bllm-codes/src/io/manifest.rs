//! A codes directory: `codes.bcodes` plus a `manifest.json` describing it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::bcodes::{payload_checksum, read_bcodes, write_bcodes};
use super::{read_all, write_atomic};
use crate::{CodesError, LAYOUT_NAME, PackedCodes, Result};

/// File name of the codes inside a codes directory.
pub const CODES_FILE_NAME: &str = "codes.bcodes";
/// File name of the manifest inside a codes directory.
pub const MANIFEST_FILE_NAME: &str = "manifest.json";
/// Value of [`Manifest::format`].
const FORMAT: &str = "bllm-codes";
/// Current manifest version.
const MANIFEST_VERSION: u32 = 1;
/// Value of [`Manifest::bit_semantics`].
const BIT_SEMANTICS: &str = "1 = value >= 0 (sign(0) = +1)";

/// Where the codes came from: the input file and its checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceInfo {
    /// Input path as given by the user.
    pub path: String,
    /// SHA-256 of the input file, lowercase hex.
    pub sha256: String,
    /// Input element type (`float32`, `float16`, …).
    pub dtype: String,
    /// Input rows.
    pub rows: usize,
    /// Input columns (the embedding dimension).
    pub dim: usize,
}

/// What the writer knows about the codes beyond the codes themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestInfo {
    /// The input the codes were made from.
    pub source: Option<SourceInfo>,
    /// How the codes were made: `"sign"` for plain sign binarization, or an encoder identifier.
    pub encoder: Option<String>,
    /// Recipe identifier (name and checksum) when the codes come from a training run.
    pub recipe: Option<String>,
    /// The program that wrote the codes, e.g. `"bllm 0.1.0"`.
    pub tool: Option<String>,
}

/// `manifest.json` of a codes directory. Unknown keys are rejected when reading.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `"bllm-codes"`.
    pub format: String,
    /// Manifest version (1).
    pub format_version: u32,
    /// Name of the codes file in the same directory.
    pub codes_file: String,
    /// Bits per code.
    pub bits: usize,
    /// Number of codes.
    pub rows: usize,
    /// `ceil(bits / 64)`.
    pub words_per_row: usize,
    /// Layout name, [`LAYOUT_NAME`].
    pub layout: String,
    /// What a set bit means.
    pub bit_semantics: String,
    /// Payload checksum, `"xxh3-64:<16 hex digits>"`.
    pub payload_checksum: String,
    /// The input the codes were made from, when known.
    pub source: Option<SourceInfo>,
    /// Encoder identifier, when known.
    pub encoder: Option<String>,
    /// Recipe identifier, when known.
    pub recipe: Option<String>,
    /// Writing program and version.
    pub tool: String,
}

fn checksum_string(codes: &PackedCodes) -> String {
    format!("xxh3-64:{:016x}", payload_checksum(codes))
}

impl Manifest {
    /// The manifest describing `codes`.
    pub fn describe(codes: &PackedCodes, info: ManifestInfo) -> Self {
        Self {
            format: FORMAT.into(),
            format_version: MANIFEST_VERSION,
            codes_file: CODES_FILE_NAME.into(),
            bits: codes.bits(),
            rows: codes.rows(),
            words_per_row: codes.words_per_row(),
            layout: LAYOUT_NAME.into(),
            bit_semantics: BIT_SEMANTICS.into(),
            payload_checksum: checksum_string(codes),
            source: info.source,
            encoder: info.encoder,
            recipe: info.recipe,
            tool: info
                .tool
                .unwrap_or_else(|| format!("bllm-codes {}", env!("CARGO_PKG_VERSION"))),
        }
    }
}

/// Writes `dir/codes.bcodes` and `dir/manifest.json` (creating `dir`), both atomically; the
/// manifest is written last, so a directory with a manifest always has complete codes.
pub fn write_codes_dir(dir: &Path, codes: &PackedCodes, info: ManifestInfo) -> Result<Manifest> {
    std::fs::create_dir_all(dir).map_err(|e| CodesError::io(dir, e))?;
    let manifest = Manifest::describe(codes, info);
    write_bcodes(&dir.join(CODES_FILE_NAME), codes)?;
    let mut json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| CodesError::io(dir.join(MANIFEST_FILE_NAME), std::io::Error::other(e)))?;
    json.push(b'\n');
    write_atomic(&dir.join(MANIFEST_FILE_NAME), &json)?;
    Ok(manifest)
}

/// Reads a codes directory and checks that the manifest and the codes file agree (format,
/// layout, bits, rows, words per row, checksum).
pub fn read_codes_dir(dir: &Path) -> Result<(PackedCodes, Manifest)> {
    let mpath = dir.join(MANIFEST_FILE_NAME);
    if !dir.is_dir() {
        return Err(CodesError::format(
            dir,
            "not a codes directory (expected a directory holding manifest.json and codes.bcodes)",
        ));
    }
    let text = read_all(&mpath)?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| CodesError::format(&mpath, format!("invalid manifest: {e}")))?;
    let bad = |reason: String| CodesError::format(&mpath, reason);
    if manifest.format != FORMAT {
        return Err(bad(format!(
            "format is {:?}, expected {FORMAT:?}",
            manifest.format
        )));
    }
    if manifest.format_version != MANIFEST_VERSION {
        return Err(bad(format!(
            "unsupported manifest version {}; this build reads version {MANIFEST_VERSION}",
            manifest.format_version
        )));
    }
    if manifest.layout != LAYOUT_NAME {
        return Err(bad(format!(
            "layout is {:?}, expected {LAYOUT_NAME:?}",
            manifest.layout
        )));
    }
    let name = Path::new(&manifest.codes_file);
    if name.components().count() != 1 || name.file_name().is_none() {
        return Err(bad(format!(
            "codes_file {:?} must be a plain file name inside the directory",
            manifest.codes_file
        )));
    }
    let codes = read_bcodes(&dir.join(name))?;
    let fields = [
        ("bits", manifest.bits, codes.bits()),
        ("rows", manifest.rows, codes.rows()),
        (
            "words_per_row",
            manifest.words_per_row,
            codes.words_per_row(),
        ),
    ];
    for (key, m, c) in fields {
        if m != c {
            return Err(bad(format!(
                "{key} is {m} in the manifest but {c} in {}",
                manifest.codes_file
            )));
        }
    }
    let sum = checksum_string(&codes);
    if manifest.payload_checksum != sum {
        return Err(bad(format!(
            "payload_checksum is {:?} but {} hashes to {sum:?}",
            manifest.payload_checksum, manifest.codes_file
        )));
    }
    Ok((codes, manifest))
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = read_all(path)?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PackedCodes) {
        let dir = tempfile::tempdir().unwrap();
        let c = PackedCodes::from_bools(&[true, false, true, true, true, false], 3).unwrap();
        write_codes_dir(dir.path(), &c, ManifestInfo::default()).unwrap();
        (dir, c)
    }

    #[test]
    fn round_trip() {
        let (dir, c) = setup();
        let (back, m) = read_codes_dir(dir.path()).unwrap();
        assert_eq!(back, c);
        assert_eq!((m.bits, m.rows, m.words_per_row), (3, 2, 1));
        assert_eq!(m.layout, LAYOUT_NAME);
    }

    fn edit_manifest(f: impl FnOnce(&mut serde_json::Value)) -> String {
        let (dir, _) = setup();
        let p = dir.path().join(MANIFEST_FILE_NAME);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        let e = read_codes_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("manifest.json"), "{e}");
        e
    }

    #[test]
    fn mismatched_or_malformed_manifests_are_rejected() {
        assert!(edit_manifest(|v| v["bits"] = 4.into()).contains("bits is 4"));
        assert!(edit_manifest(|v| v["rows"] = 3.into()).contains("rows is 3"));
        assert!(edit_manifest(|v| v["layout"] = "col-major".into()).contains("layout"));
        assert!(edit_manifest(|v| v["format_version"] = 2.into()).contains("version 2"));
        assert!(edit_manifest(|v| v["payload_checksum"] = "xxh3-64:00".into()).contains("hashes"));
        assert!(edit_manifest(|v| v["codes_file"] = "../x".into()).contains("plain file name"));
        assert!(edit_manifest(|v| v["surprise"] = 1.into()).contains("unknown field"));
        assert!(edit_manifest(|v| v["bits"] = "many".into()).contains("invalid manifest"));
    }

    #[test]
    fn missing_pieces_are_named() {
        let (dir, _) = setup();
        std::fs::remove_file(dir.path().join(CODES_FILE_NAME)).unwrap();
        assert!(
            read_codes_dir(dir.path())
                .unwrap_err()
                .to_string()
                .contains("codes.bcodes")
        );
        let e = read_codes_dir(&dir.path().join("nothing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a codes directory"), "{e}");
    }
}
