//! A codes directory: `codes.bcodes` plus a `manifest.json` describing it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::bcodes::{payload_checksum, read_bcodes, write_bcodes};
use super::{MAX_TEXT_FILE, open_regular, read_all, write_atomic};
use crate::{CodesError, LAYOUT_NAME, PackedCodes, Result};

/// File name of the codes inside a codes directory.
pub const CODES_FILE_NAME: &str = "codes.bcodes";
/// File name of the manifest inside a codes directory.
pub const MANIFEST_FILE_NAME: &str = "manifest.json";
/// Value of [`Manifest::format`].
const FORMAT: &str = "bllm-codes";
/// Current manifest version.
const MANIFEST_VERSION: u32 = 1;
/// Value of [`Manifest::bit_semantics`]: the contract's meaning of a set bit. Readers refuse any
/// other value.
pub const BIT_SEMANTICS: &str = "1 = value >= 0 (sign(0) = +1)";
/// The values [`SourceInfo::dtype`] may take: the element types of float embeddings that the
/// writers read (`npy::Dtype::name` of float32/float16 inputs, and `bllm-data`'s loaders).
pub const SOURCE_DTYPES: [&str; 2] = ["float32", "float16"];
/// Prefix of [`SourceInfo::path`] for generated data (the retrieval trainer's
/// `[data.synthetic]`), which has no file and so an empty `sha256`.
pub const SYNTHETIC_SOURCE_PREFIX: &str = "synthetic:";

/// Where the codes came from: the input file and its checksum.
///
/// Readers check it against the codes: `rows` equals the codes' rows (every writer — `bllm
/// codes pack`/`encode` and the retrieval trainer, whose codes are the database rows — records
/// the rows it encoded); `dim ≥ 1`; `dtype` is one of [`SOURCE_DTYPES`]; `sha256` is 64 lowercase
/// hex digits, or empty for generated data (`path` starting with [`SYNTHETIC_SOURCE_PREFIX`]);
/// `path` is not empty. `bits ≤ dim` is not a rule in general — random hyperplanes and learned
/// heads may have more bits than input dimensions — but codes whose `encoder` is sign
/// binarization, `sign(x[:B])`, must have `B = bits ≤ dim`.
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
    let text = read_all(&mpath, MAX_TEXT_FILE)?;
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
    if manifest.bit_semantics != BIT_SEMANTICS {
        return Err(bad(format!(
            "bit_semantics is {:?}, expected {BIT_SEMANTICS:?} (the contract's meaning of a set bit)",
            manifest.bit_semantics
        )));
    }
    if manifest.tool.trim().is_empty() {
        return Err(bad(
            "tool is empty; it names the program that wrote the codes".into(),
        ));
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
    if let Some(source) = &manifest.source {
        check_source(source, &manifest, &codes).map_err(bad)?;
    }
    Ok((codes, manifest))
}

/// The rules of [`SourceInfo`], against the codes read; the error names the key.
fn check_source(
    s: &SourceInfo,
    m: &Manifest,
    codes: &PackedCodes,
) -> std::result::Result<(), String> {
    if s.rows != codes.rows() {
        return Err(format!(
            "source.rows is {} but {} holds {} rows (the codes are the encoded source rows)",
            s.rows,
            m.codes_file,
            codes.rows()
        ));
    }
    if s.dim == 0 {
        return Err("source.dim is 0, expected at least 1".into());
    }
    if !SOURCE_DTYPES.contains(&s.dtype.as_str()) {
        return Err(format!(
            "source.dtype is {:?}, expected one of {SOURCE_DTYPES:?}",
            s.dtype
        ));
    }
    if s.path.is_empty() {
        return Err("source.path is empty".into());
    }
    let hex = s.sha256.len() == 64
        && s.sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let synthetic = s.path.starts_with(SYNTHETIC_SOURCE_PREFIX) && s.sha256.is_empty();
    if !hex && !synthetic {
        return Err(format!(
            "source.sha256 is {:?}, expected 64 lowercase hex digits (empty only for a {SYNTHETIC_SOURCE_PREFIX}… source)",
            s.sha256
        ));
    }
    if let Some(e) = m.encoder.as_deref().filter(|e| e.starts_with("sign(x[:")) {
        // Exactly what `bllm codes pack` writes (`064` or `+64` is not B = 64).
        if e != format!("sign(x[:{}])", m.bits) || m.bits > s.dim {
            return Err(format!(
                "encoder is {e:?} with {} bits from source.dim {}: sign codes take bits = B ≤ dim",
                m.bits, s.dim
            ));
        }
    }
    Ok(())
}

/// SHA-256 of a regular file, lowercase hex, streamed (never held in memory whole). Devices and
/// FIFOs are refused; a file that grows while being hashed is an error.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let io_err = |e| CodesError::io(path, e);
    let (file, len) = open_regular(path, u64::MAX).map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut reader = file.take(len.saturating_add(1));
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    if total > len {
        return Err(io_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("grew while being hashed (it was {len} bytes)"),
        )));
    }
    Ok(hasher
        .finalize()
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

    /// Defect 6 of issue 15: any bit semantics but the contract's is refused; and `tool` must
    /// name a program.
    #[test]
    fn bit_semantics_and_tool_are_checked() {
        for bad in [
            "1 = value < 0",
            "",
            "inverted",
            " 1 = value >= 0 (sign(0) = +1)",
        ] {
            let e = edit_manifest(|v| v["bit_semantics"] = bad.into());
            assert!(
                e.contains("bit_semantics")
                    && e.contains(&format!("{bad:?}"))
                    && e.contains(BIT_SEMANTICS),
                "{e}"
            );
        }
        for bad in ["", "  "] {
            let e = edit_manifest(|v| v["tool"] = bad.into());
            assert!(e.contains("tool is empty"), "{e}");
        }
    }

    fn source() -> serde_json::Value {
        serde_json::json!({
            "path": "x.npy", "sha256": "0123456789abcdef".repeat(4), "dtype": "float32",
            "rows": 2, "dim": 3,
        })
    }

    /// Defect 7 of issue 15: `source.*` is checked against the codes and for well-formedness.
    #[test]
    fn source_fields_are_checked() {
        let (dir, c) = setup();
        let p = dir.path().join(MANIFEST_FILE_NAME);
        let with = |src: serde_json::Value, encoder: Option<&str>| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            v["source"] = src;
            v["encoder"] = encoder.into();
            std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
            read_codes_dir(dir.path()).map(|(codes, _)| codes)
        };
        let edit = |key: &str, value: serde_json::Value| {
            let mut s = source();
            s[key] = value;
            s
        };
        assert_eq!(with(source(), None).unwrap(), c);
        assert_eq!(with(source(), Some("sign(x[:3])")).unwrap(), c);
        assert_eq!(
            with(edit("dtype", "float16".into()), Some("lsh")).unwrap(),
            c
        );
        // Random hyperplanes and learned heads may have more bits than dimensions.
        assert_eq!(with(edit("dim", 1.into()), Some("lsh (enc)")).unwrap(), c);
        let synthetic = serde_json::json!({
            "path": "synthetic:HardCase { rows: 2 }", "sha256": "", "dtype": "float32",
            "rows": 2, "dim": 3,
        });
        assert_eq!(with(synthetic, None).unwrap(), c);
        let cases = [
            (
                edit("rows", 0.into()),
                None,
                "source.rows is 0 but codes.bcodes holds 2 rows",
            ),
            (
                edit("rows", 1_000_000_000.into()),
                None,
                "source.rows is 1000000000",
            ),
            (edit("dim", 0.into()), None, "source.dim is 0"),
            (
                edit("dtype", "bogus".into()),
                None,
                "source.dtype is \"bogus\"",
            ),
            (edit("dtype", "uint8".into()), None, "source.dtype"),
            (edit("sha256", "abc".into()), None, "source.sha256"),
            (
                edit("sha256", "0123456789ABCDEF".repeat(4).into()),
                None,
                "source.sha256",
            ),
            (edit("sha256", "".into()), None, "source.sha256"),
            (edit("path", "".into()), None, "source.path is empty"),
            (source(), Some("sign(x[:4])"), "sign codes take bits"),
            (source(), Some("sign(x[:03])"), "sign codes take bits"),
            (source(), Some("sign(x[:+3])"), "sign codes take bits"),
            (
                edit("dim", 2.into()),
                Some("sign(x[:3])"),
                "sign codes take bits",
            ),
        ];
        for (src, encoder, needle) in cases {
            let e = with(src, encoder).unwrap_err().to_string();
            assert!(
                e.contains("manifest.json") && e.contains(needle),
                "{needle}: {e}"
            );
        }
    }

    /// Defects 4 and 5 of issue 15 for a codes directory: a manifest or codes file that is a
    /// device or a FIFO is refused at once, naming it.
    #[cfg(unix)]
    #[test]
    fn non_regular_manifest_or_codes_are_refused() {
        let scratch = tempfile::tempdir().unwrap();
        for target in crate::io::tests::non_regular_files(scratch.path()) {
            for name in [MANIFEST_FILE_NAME, CODES_FILE_NAME] {
                let (dir, _) = setup();
                let p = dir.path().join(name);
                std::fs::remove_file(&p).unwrap();
                std::os::unix::fs::symlink(&target, &p).unwrap();
                let d = dir.path().to_owned();
                let e = crate::io::tests::within_10s(move || read_codes_dir(&d).map(drop))
                    .unwrap_err()
                    .to_string();
                assert!(e.contains(name) && e.contains("not a regular file"), "{e}");
            }
        }
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
