//! A seeded mutation suite over every reader: `.bcodes`, codes directories (`manifest.json`),
//! `.npy` (f32, f16, u8, u64; every header field), `.fvecs`, `.safetensors` embeddings, FAISS
//! `IndexBinaryFlat`, encoder directories, text corpora, and recipes with overrides.
//!
//! Each case mutates a valid input (truncation at every header boundary and at random offsets,
//! bit flips, byte edits, header fields set to 0 / −1 / huge / off by one, inserted and deleted
//! bytes, JSON and TOML values of the wrong type or deleted, non-regular files) and asserts:
//! * no panic (`catch_unwind` on a thread of its own) and no hang (10 s per case, far above the
//!   milliseconds a case takes; the slowest case is printed);
//! * either a clean error whose message names the file, or a result equal to the reference:
//!   numpy for `.npy` (all files of a run checked by one `python3
//!   scripts/fuzz_npy_reference.py` call), the contract for codes (a `.bcodes` or codes
//!   directory that still loads passed every check, so it is the original), and for the other
//!   formats an independent decoder of the format's specification written here.
//!
//! `BLLM_FUZZ_CASES=N` sets the random cases per reader (default [`DEFAULT_CASES`]);
//! `BLLM_FUZZ_SEED=S` changes the seed. A failing case is named `reader#i` and reproduces on
//! its own: case `i` draws from its own generator, seeded from (seed, reader, i).
//!
//! Adding a reader is one function `fn fuzz_x(f: &mut Fuzz)` plus a `#[test]` calling
//! `run("x", fuzz_x)`. Checkpoint directories are fuzzed by `fuzz_checkpoints.rs`.
//!
//! Deliberate differences from numpy, counted in the `.npy` line: only 2-D arrays; only the
//! descr spellings `'<f4'`, `'<f2'`, `'|u1'` (also `'<u1'`, `'u1'`) and `'<u8'` (numpy also
//! takes aliases such as `'float32'`, `'f4'`, `'=f4'` and big-endian types); bytes after the
//! data are refused (numpy ignores them).

#![allow(clippy::unwrap_used)] // test code panics on failure by design

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bllm_codes::PackedCodes;
use bllm_codes::io::{self as cio, npy};
use bllm_e2e::{python_with, repo_root};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// Random cases per reader in CI: the whole suite stays well under a minute on 2 cores.
const DEFAULT_CASES: usize = 10_000;
/// The fixed seed (override with `BLLM_FUZZ_SEED`).
const SEED: u64 = 0x15_f022_2026;
/// A case that takes longer is a hang.
const LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The harness.

/// One reader's fuzz run: its scratch directory, counters and the generator of each case.
struct Fuzz {
    reader: &'static str,
    dir: tempfile::TempDir,
    cases: usize,
    errors: usize,
    loads: usize,
    slowest: Duration,
    notes: BTreeMap<String, usize>,
}

fn env_usize(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Fuzz {
    fn new(reader: &'static str) -> Self {
        Self {
            reader,
            dir: tempfile::tempdir().unwrap(),
            cases: 0,
            errors: 0,
            loads: 0,
            slowest: Duration::ZERO,
            notes: BTreeMap::new(),
        }
    }

    /// Random cases to run.
    fn count(&self) -> usize {
        env_usize("BLLM_FUZZ_CASES", DEFAULT_CASES as u64) as usize
    }

    /// The generator of case `i` (independent of the case count).
    fn rng(&self, i: usize) -> ChaCha8Rng {
        let name = self.reader.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let seed = env_usize("BLLM_FUZZ_SEED", SEED);
        ChaCha8Rng::seed_from_u64(seed ^ name ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// A fresh path in the scratch directory.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `read` on a thread of its own: a panic or a run past [`LIMIT`] fails the test,
    /// naming the case.
    fn case<T: Send + 'static>(
        &mut self,
        label: &str,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        self.cases += 1;
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        std::thread::spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(read));
            let _ = tx.send(r);
        });
        match rx.recv_timeout(LIMIT) {
            Ok(Ok(v)) => {
                self.slowest = self.slowest.max(start.elapsed());
                v
            }
            Ok(Err(p)) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                panic!("{}#{label}: the reader panicked: {msg}", self.reader)
            }
            Err(_) => panic!(
                "{}#{label}: the reader hung (more than {LIMIT:?})",
                self.reader
            ),
        }
    }

    /// A clean error: it must name one of `names` (a path or a file name).
    fn error(&mut self, label: &str, e: &str, names: &[&str]) {
        assert!(
            names.iter().any(|n| !n.is_empty() && e.contains(n)),
            "{}#{label}: the error names none of {names:?}: {e}",
            self.reader
        );
        self.errors += 1;
    }

    fn loaded(&mut self) {
        self.loads += 1;
    }

    fn note(&mut self, what: &str) {
        *self.notes.entry(what.to_owned()).or_default() += 1;
    }

    /// Every non-regular file `read` must refuse at once, naming it: `/dev/zero`,
    /// `/dev/urandom`, a FIFO and a directory, each behind a symlink called `name`.
    fn non_regular(
        &mut self,
        name: &str,
        read: impl Fn(&Path) -> Result<(), String> + Send + Sync + Clone + 'static,
    ) {
        self.non_regular_but(name, true, read);
    }

    /// [`non_regular`](Self::non_regular), the directory only when `dirs`.
    fn non_regular_but(
        &mut self,
        name: &str,
        dirs: bool,
        read: impl Fn(&Path) -> Result<(), String> + Send + Sync + Clone + 'static,
    ) {
        let scratch = self.path(&format!("nonregular-{name}"));
        std::fs::create_dir_all(&scratch).unwrap();
        let fifo = scratch.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        assert!(made, "mkfifo failed");
        let sub = scratch.join("subdir");
        std::fs::create_dir_all(&sub).unwrap();
        let link = scratch.join(name);
        let targets = [
            Path::new("/dev/zero"),
            Path::new("/dev/urandom"),
            &fifo,
            &sub,
        ];
        for (i, target) in targets[..if dirs { 4 } else { 3 }].iter().enumerate() {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(target, &link).unwrap();
            let (r, l) = (read.clone(), link.clone());
            let label = format!("non-regular {name} -> {}", target.display());
            match self.case(&label, move || r(&l)) {
                Ok(()) => panic!("{}#{label}: loaded (case {i})", self.reader),
                Err(e) => {
                    assert!(e.contains("not a regular file"), "{label}: {e}");
                    self.error(&label, &e, &[name]);
                }
            }
        }
    }

    /// The one-line summary.
    fn report(&self) {
        let mut line = format!(
            "fuzz {}: {} cases, {} clean errors, {} loads, slowest {:.1} ms",
            self.reader,
            self.cases,
            self.errors,
            self.loads,
            self.slowest.as_secs_f64() * 1e3
        );
        for (k, v) in &self.notes {
            let _ = write!(line, "; {k}: {v}");
        }
        // Straight to the process's stderr, past the test harness's capture, so CI logs show it.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// Runs one reader's fuzz function and prints its summary.
fn run(reader: &'static str, body: fn(&mut Fuzz)) {
    let mut f = Fuzz::new(reader);
    body(&mut f);
    f.report();
}

// ---------------------------------------------------------------------------------------------
// Mutations.

/// A header field: name, offset, width in bytes.
type Field = (&'static str, usize, usize);

/// Interesting values for an integer field of `width` bytes holding `old`.
fn field_value(rng: &mut ChaCha8Rng, width: usize, old: u64) -> u64 {
    let bits = 8 * width as u32;
    let max = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let v = match rng.random_range(0..12) {
        0 => 0,
        1 => 1,
        2 => max,            // -1 as signed
        3 => max >> 1,       // signed max
        4 => (max >> 1) + 1, // signed min
        5 => old.wrapping_add(1),
        6 => old.wrapping_sub(1),
        7 => old.wrapping_mul(2),
        8 => old.wrapping_add(rng.random_range(2..100)),
        9 => 1u64 << rng.random_range(0..bits),
        10 => old ^ (1 << rng.random_range(0..bits)),
        _ => rng.random(),
    };
    v & max
}

fn read_le(b: &[u8], at: usize, width: usize) -> u64 {
    let mut v = 0u64;
    for (i, byte) in b[at..at + width].iter().enumerate() {
        v |= u64::from(*byte) << (8 * i);
    }
    v
}

fn write_le(b: &mut [u8], at: usize, width: usize, v: u64) {
    for i in 0..width {
        b[at + i] = (v >> (8 * i)) as u8;
    }
}

/// One random mutation of `b` (with `fields` describing its header), and what it was.
fn mutate_once(rng: &mut ChaCha8Rng, b: &mut Vec<u8>, fields: &[Field]) -> String {
    let len = b.len();
    match rng.random_range(0..10) {
        0 if len > 0 => {
            let at = rng.random_range(0..len);
            b.truncate(at);
            format!("truncate at {at}")
        }
        1 if !fields.is_empty() => {
            let (name, off, w) = fields[rng.random_range(0..fields.len())];
            let at = (off + [0, w][rng.random_range(0..2)])
                .saturating_add_signed(rng.random_range(-1..=1i64) as isize);
            b.truncate(at.min(len));
            format!("truncate at {at} (around {name})")
        }
        2 if len > 0 => {
            let n = rng.random_range(1..=4);
            for _ in 0..n {
                let at = rng.random_range(0..len);
                b[at] ^= 1 << rng.random_range(0..8);
            }
            format!("{n} bit flips")
        }
        3 if len > 0 => {
            let n = rng.random_range(1..=4);
            for _ in 0..n {
                let at = rng.random_range(0..len);
                b[at] = rng.random();
            }
            format!("{n} random bytes")
        }
        4 | 5 if !fields.is_empty() => {
            let (name, off, w) = fields[rng.random_range(0..fields.len())];
            if off + w > len {
                return "no-op".into();
            }
            let old = read_le(b, off, w);
            let v = field_value(rng, w, old);
            write_le(b, off, w, v);
            format!("{name} {old} -> {v}")
        }
        6 => {
            let at = rng.random_range(0..=len);
            let n = rng.random_range(1..=16);
            let ins: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            b.splice(at..at, ins);
            format!("insert {n} bytes at {at}")
        }
        7 if len > 0 => {
            let at = rng.random_range(0..len);
            let n = rng.random_range(1..=16.min(len - at));
            b.drain(at..at + n);
            format!("delete {n} bytes at {at}")
        }
        8 => {
            let n = rng.random_range(1..=64);
            b.extend((0..n).map(|_| rng.random::<u8>()));
            format!("append {n} bytes")
        }
        _ if len > 0 => {
            let at = rng.random_range(0..len);
            b[at] = [0, 0xff, 0x7f, 0x80, b' ', b'0'][rng.random_range(0..6)];
            format!("byte {at} set")
        }
        _ => "no-op".into(),
    }
}

/// One to three mutations.
fn mutate(rng: &mut ChaCha8Rng, base: &[u8], fields: &[Field]) -> (Vec<u8>, String) {
    let mut b = base.to_vec();
    let n = [1, 1, 1, 2, 3][rng.random_range(0..5)];
    let what: Vec<String> = (0..n).map(|_| mutate_once(rng, &mut b, fields)).collect();
    (b, what.join(", "))
}

/// Every truncation of the first `upto` bytes (plus empty): each header boundary and within.
fn truncations(base: &[u8], upto: usize) -> Vec<(Vec<u8>, String)> {
    (0..upto.min(base.len()))
        .map(|n| (base[..n].to_vec(), format!("truncate at {n}")))
        .collect()
}

/// A JSON edit: a value of the wrong type, 0, negative, huge, a deleted or unknown key, an
/// edited string.
fn json_edit(rng: &mut ChaCha8Rng, v: &mut serde_json::Value) -> String {
    use serde_json::{Value, json};
    // Collect every path to a leaf (objects only; arrays are leaves).
    fn leaves(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if let Value::Object(m) = v {
            for (k, c) in m {
                prefix.push(k.clone());
                out.push(prefix.clone());
                leaves(c, prefix, out);
                prefix.pop();
            }
        }
    }
    let mut paths = Vec::new();
    leaves(v, &mut Vec::new(), &mut paths);
    let path = paths.choose(rng).cloned().unwrap_or_default();
    let (last, parents) = path.split_last().unwrap();
    let mut parent = &mut *v;
    for p in parents {
        parent = parent.get_mut(p).unwrap();
    }
    let obj = parent.as_object_mut().unwrap();
    let old = obj.get(last).cloned().unwrap_or(Value::Null);
    let new = match rng.random_range(0..14) {
        0 => {
            obj.remove(last);
            return format!("delete {}", path.join("."));
        }
        1 => {
            obj.insert(format!("{last}_extra"), json!(1));
            return format!("unknown key beside {}", path.join("."));
        }
        2 => json!(0),
        3 => json!(-1),
        4 => json!(u64::MAX),
        5 => json!(1e300),
        6 => json!("text"),
        7 => json!(null),
        8 => json!([1, 2]),
        9 => json!({"a": 1}),
        10 => json!(true),
        11 => match &old {
            Value::Number(n) => json!(n.as_u64().unwrap_or(0).wrapping_add(1)),
            Value::String(s) => {
                let mut s = s.clone();
                if !s.is_empty() && rng.random_bool(0.5) {
                    let at = rng.random_range(0..s.len());
                    if s.is_char_boundary(at) {
                        s.insert(at, ['x', '/', '.', '0', 'A'][rng.random_range(0..5)]);
                    }
                } else {
                    s.clear();
                }
                json!(s)
            }
            _ => json!(""),
        },
        12 => json!(-0.5),
        _ => json!("../../x"),
    };
    obj.insert(last.clone(), new.clone());
    format!("{} = {new}", path.join("."))
}

/// `path` shown as text, for the names an error may use.
fn show(p: &Path) -> String {
    p.display().to_string()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// .bcodes: the contract is the reference. A mutated file with its original checksum that loads
// must be the original; one whose checksum was recomputed after the mutation (to reach the
// checks behind it) must be exactly what the specification decodes.

const BCODES_FIELDS: [Field; 8] = [
    ("magic", 0, 8),
    ("version", 8, 4),
    ("header length", 12, 4),
    ("bits", 16, 8),
    ("rows", 24, 8),
    ("words per row", 32, 4),
    ("flags", 36, 4),
    ("checksum", 40, 8),
];

fn random_codes(rng: &mut ChaCha8Rng) -> PackedCodes {
    let bits = *[1, 7, 8, 63, 64, 65, 130].choose(rng).unwrap();
    let rows = rng.random_range(1..12);
    let bools: Vec<bool> = (0..rows * bits).map(|_| rng.random()).collect();
    PackedCodes::from_bools(&bools, bits).unwrap()
}

/// Writes the XXH3-64 of the payload into the header (a no-op on a file shorter than it).
fn rechecksum_bcodes(b: &mut [u8]) {
    if b.len() >= 48 {
        let sum = xxhash_rust::xxh3::xxh3_64(&b[48..]);
        b[40..48].copy_from_slice(&sum.to_le_bytes());
    }
}

/// The `.bcodes` specification: magic, version 1, header length 48, 1 ≤ bits ≤ u32::MAX,
/// words per row = ceil(bits / 64), flags 0, payload of exactly rows × words × 8 bytes with
/// the header's checksum, unused high bits zero. Returns (bits, rows, payload).
fn bcodes_spec(b: &[u8]) -> Option<(usize, usize, Vec<u8>)> {
    if b.len() < 48 || &b[..8] != b"BLLMCODE" {
        return None;
    }
    let (version, header, bits) = (read_le(b, 8, 4), read_le(b, 12, 4), read_le(b, 16, 8));
    let (rows, wpr, flags, sum) = (
        read_le(b, 24, 8),
        read_le(b, 32, 4),
        read_le(b, 36, 4),
        read_le(b, 40, 8),
    );
    let ok = version == 1
        && header == 48
        && (1..=u64::from(u32::MAX)).contains(&bits)
        && wpr == bits.div_ceil(64)
        && flags == 0
        && rows.checked_mul(wpr * 8) == Some((b.len() - 48) as u64)
        && xxhash_rust::xxh3::xxh3_64(&b[48..]) == sum;
    if !ok {
        return None;
    }
    let used = bits % 64;
    let clean = used == 0
        || b[48..].chunks_exact(8 * wpr as usize).all(|row| {
            let last = u64::from_le_bytes(row[row.len() - 8..].try_into().unwrap());
            last >> used == 0
        });
    clean.then(|| (bits as usize, rows as usize, b[48..].to_vec()))
}

fn fuzz_bcodes(f: &mut Fuzz) {
    let mut rng = f.rng(usize::MAX);
    let good = f.path("good.bcodes");
    cio::write_bcodes(&good, &random_codes(&mut rng)).unwrap();
    let base = std::fs::read(&good).unwrap();
    let mut cases: Vec<_> = truncations(&base, cio::BCODES_HEADER_LEN + 9)
        .into_iter()
        .map(|(b, w)| (b, w, false))
        .collect();
    for i in 0..f.count() {
        let mut rng = f.rng(i);
        let base = if rng.random_bool(0.5) {
            base.clone()
        } else {
            let c = random_codes(&mut rng);
            let p = f.path("other.bcodes");
            cio::write_bcodes(&p, &c).unwrap();
            std::fs::read(&p).unwrap()
        };
        let (mut b, what) = mutate(&mut rng, &base, &BCODES_FIELDS);
        let resum = rng.random_bool(0.4);
        if resum {
            rechecksum_bcodes(&mut b);
        }
        cases.push((b, what, resum));
    }
    for (i, (bytes, what, resum)) in cases.into_iter().enumerate() {
        let p = f.path(&format!("c{i}.bcodes"));
        std::fs::write(&p, &bytes).unwrap();
        let q = p.clone();
        let label = format!(
            "{i} ({what}{})",
            if resum { ", checksum recomputed" } else { "" }
        );
        match f.case(&label, move || {
            cio::read_bcodes(&q).map_err(|e| e.to_string())
        }) {
            Ok(c) => {
                let (bits, rows, payload) = bcodes_spec(&bytes)
                    .unwrap_or_else(|| panic!("{label}: loaded what the contract refuses"));
                assert_eq!(
                    (c.bits(), c.rows(), c.to_le_bytes()),
                    (bits, rows, payload),
                    "{label}"
                );
                f.loaded();
            }
            Err(e) if bcodes_spec(&bytes).is_some() => {
                panic!("{label}: refused a file the contract accepts: {e}")
            }
            Err(e) => f.error(&label, &e, &[&file_name(&p)]),
        }
        std::fs::remove_file(&p).unwrap();
    }
    f.non_regular("codes.bcodes", |p| {
        cio::read_bcodes(p).map(drop).map_err(|e| e.to_string())
    });
}

// ---------------------------------------------------------------------------------------------
// Codes directories: a manifest that still loads passed every check.

fn fuzz_manifest(f: &mut Fuzz) {
    let mut rng = f.rng(usize::MAX);
    let original = random_codes(&mut rng);
    let good = f.path("good");
    let info = cio::ManifestInfo {
        source: Some(cio::SourceInfo {
            path: "in.npy".into(),
            sha256: "ab".repeat(32),
            dtype: "float32".into(),
            rows: original.rows(),
            dim: original.bits(),
        }),
        encoder: Some(format!("sign(x[:{}])", original.bits())),
        recipe: Some("fuzz".into()),
        tool: Some("bllm fuzz".into()),
    };
    let manifest = cio::write_codes_dir(&good, &original, info).unwrap();
    let mtext = std::fs::read(good.join(cio::MANIFEST_FILE_NAME)).unwrap();
    let codes_bytes = std::fs::read(good.join(cio::CODES_FILE_NAME)).unwrap();
    let mjson: serde_json::Value = serde_json::from_slice(&mtext).unwrap();
    for i in 0..f.count() {
        let mut rng = f.rng(i);
        let dir = f.path(&format!("d{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        // Sometimes the codes are mutated, their checksum recomputed and the manifest made to
        // agree with them (bits, rows, words, checksum), to reach the checks behind those.
        let (codes, cwhat) = if rng.random_bool(0.25) {
            let (mut b, w) = mutate(&mut rng, &codes_bytes, &BCODES_FIELDS);
            rechecksum_bcodes(&mut b);
            (b, w)
        } else {
            (codes_bytes.clone(), String::new())
        };
        let mut mjson = mjson.clone();
        if !cwhat.is_empty() && codes.len() >= 48 {
            let b = &codes;
            mjson["bits"] = read_le(b, 16, 8).into();
            mjson["rows"] = read_le(b, 24, 8).into();
            mjson["words_per_row"] = read_le(b, 32, 4).into();
            mjson["payload_checksum"] = format!("xxh3-64:{:016x}", read_le(b, 40, 8)).into();
            if rng.random_bool(0.7) {
                mjson["source"]["rows"] = read_le(b, 24, 8).into();
                mjson["encoder"] = format!("sign(x[:{}])", read_le(b, 16, 8)).into();
            }
        }
        let mtext = serde_json::to_vec_pretty(&mjson).unwrap();
        let (text, what) = match rng.random_range(0..10) {
            0..=5 => {
                let mut v = mjson.clone();
                let mut what = json_edit(&mut rng, &mut v);
                if rng.random_bool(0.2) {
                    what = format!("{what}, {}", json_edit(&mut rng, &mut v));
                }
                (serde_json::to_vec_pretty(&v).unwrap(), what)
            }
            6..=8 => mutate(&mut rng, &mtext, &[]),
            _ => (mtext.clone(), "manifest unchanged".into()),
        };
        std::fs::write(dir.join(cio::MANIFEST_FILE_NAME), &text).unwrap();
        std::fs::write(dir.join(cio::CODES_FILE_NAME), &codes).unwrap();
        let d = dir.clone();
        let label = format!(
            "{i} ({what}{}{cwhat})",
            if cwhat.is_empty() { "" } else { "; codes: " }
        );
        match f.case(&label, move || {
            cio::read_codes_dir(&d).map_err(|e| e.to_string())
        }) {
            Ok((c, m)) => {
                let (bits, rows, payload) = bcodes_spec(&codes)
                    .unwrap_or_else(|| panic!("{label}: loaded codes the contract refuses"));
                assert_eq!(
                    (c.bits(), c.rows(), c.to_le_bytes()),
                    (bits, rows, payload),
                    "{label}"
                );
                if cwhat.is_empty() {
                    assert_eq!(
                        c, original,
                        "{label}: loaded codes that are not the original"
                    );
                }
                let fixed = (
                    m.format.as_str(),
                    m.format_version,
                    m.codes_file.as_str(),
                    m.layout.as_str(),
                    m.bit_semantics.as_str(),
                );
                let want = (
                    manifest.format.as_str(),
                    manifest.format_version,
                    cio::CODES_FILE_NAME,
                    manifest.layout.as_str(),
                    cio::BIT_SEMANTICS,
                );
                assert_eq!(fixed, want, "{label}: a fixed field changed");
                let agree = (m.bits, m.rows, m.words_per_row, m.payload_checksum.clone());
                let of_codes = (
                    c.bits(),
                    c.rows(),
                    c.words_per_row(),
                    format!("xxh3-64:{:016x}", cio::payload_checksum(&c)),
                );
                assert_eq!(
                    agree, of_codes,
                    "{label}: the manifest disagrees with the codes"
                );
                assert!(!m.tool.trim().is_empty(), "{label}: empty tool loaded");
                if let Some(s) = &m.source {
                    let hex = s.sha256.len() == 64
                        && s.sha256
                            .bytes()
                            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                    assert!(
                        s.rows == c.rows()
                            && s.dim >= 1
                            && cio::SOURCE_DTYPES.contains(&s.dtype.as_str())
                            && !s.path.is_empty()
                            && (hex || (s.sha256.is_empty() && s.path.starts_with("synthetic:"))),
                        "{label}: an invalid source loaded: {s:?}"
                    );
                    if let Some(e) = m.encoder.as_deref().filter(|e| e.starts_with("sign(x[:")) {
                        assert!(
                            e == format!("sign(x[:{}])", c.bits()) && c.bits() <= s.dim,
                            "{label}: sign codes with bits > dim loaded"
                        );
                    }
                }
                f.loaded();
            }
            Err(e) => f.error(
                &label,
                &e,
                &[cio::MANIFEST_FILE_NAME, cio::CODES_FILE_NAME, &show(&dir)],
            ),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    for name in [cio::MANIFEST_FILE_NAME, cio::CODES_FILE_NAME] {
        let g = good.clone();
        f.non_regular(name, move |p| {
            // A codes directory whose `name` is the non-regular file.
            let dir = p.parent().unwrap().join(format!("dir-{name}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for n in [cio::MANIFEST_FILE_NAME, cio::CODES_FILE_NAME] {
                if n != name {
                    std::fs::copy(g.join(n), dir.join(n)).unwrap();
                }
            }
            std::os::unix::fs::symlink(std::fs::read_link(p).unwrap(), dir.join(name)).unwrap();
            cio::read_codes_dir(&dir)
                .map(drop)
                .map_err(|e| e.to_string())
        });
    }
}

// ---------------------------------------------------------------------------------------------
// .npy: numpy is the reference.

/// Element types of the base arrays: numpy descr, element size.
const NPY_TYPES: [(&str, usize); 4] = [("<f4", 4), ("<f2", 2), ("|u1", 1), ("<u8", 8)];

fn npy_file(version: (u8, u8), dict: &str, data: &[u8]) -> Vec<u8> {
    let len_bytes = if version.0 == 1 { 2 } else { 4 };
    let unpadded = 8 + len_bytes + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let header = format!("{dict}{}\n", " ".repeat(pad));
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[version.0, version.1]);
    if len_bytes == 2 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn random_element(rng: &mut ChaCha8Rng, descr: &str) -> Vec<u8> {
    match descr {
        "<f4" => {
            let v: f32 = match rng.random_range(0..10) {
                0 => 0.0,
                1 => -0.0,
                2 => f32::NAN,
                3 => f32::INFINITY,
                4 => f32::MIN_POSITIVE / 4.0,
                _ => rng.random_range(-10.0..10.0),
            };
            v.to_le_bytes().to_vec()
        }
        "<f2" => {
            // 1, -1, 2, 0.5, 0, -0, max, a subnormal, inf, NaN, random.
            let table = [
                0x3c00u16, 0xbc00, 0x4000, 0x3800, 0, 0x8000, 0x7bff, 1, 0x7c00, 0x7e00,
            ];
            let v = if rng.random_bool(0.3) {
                rng.random()
            } else {
                *table.choose(rng).unwrap()
            };
            v.to_le_bytes().to_vec()
        }
        "|u1" => vec![rng.random()],
        _ => rng.random::<u64>().to_le_bytes().to_vec(),
    }
}

/// A shape tuple as Python text: mostly valid, sometimes edited.
fn shape_text(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> String {
    let dim = |rng: &mut ChaCha8Rng, n: usize| -> String {
        match rng.random_range(0..24) {
            0 => "0".into(),
            1 => "-1".into(),
            2 => format!("{}", n + 1),
            3 => format!("{}", n.saturating_sub(1)),
            4 => "1099511627776".into(),
            5 => "18446744073709551616".into(),
            6 => format!("{n}L"),
            7 => format!("+{n}"),
            8 => format!("0{n}"),
            9 => "- 0".into(),
            10 => format!("{n}.0"),
            11 => "True".into(),
            12 => format!("{n}_0"),
            _ => n.to_string(),
        }
    };
    let dims: Vec<String> = match rng.random_range(0..10) {
        0 => vec![],
        1 => vec![dim(rng, rows * cols)],
        2 => vec![dim(rng, rows), dim(rng, cols), "1".into()],
        _ => vec![dim(rng, rows), dim(rng, cols)],
    };
    let sep = [", ", ",", " , ", ",\n "][rng.random_range(0..4)];
    let trailing = if dims.len() == 1 || rng.random_bool(0.3) {
        ","
    } else {
        ""
    };
    let (open, close) = if rng.random_bool(0.05) {
        ("[", "]")
    } else {
        ("(", ")")
    };
    format!("{open}{}{trailing}{close}", dims.join(sep))
}

const DESCRS: [&str; 22] = [
    "<f4", "<f2", "|u1", "<u8", "<u1", "u1", ">f4", ">u8", "f4", "=f4", "float32", "<f8", "<i4",
    "|b1", "|i1", "<U3", "O", "", "<f4 ", "<F4", "<c8", "V8",
];

/// One mutated .npy file: a valid base array, then header edits (descr, fortran_order, shape,
/// version, the header length, inserted characters) and/or byte-level mutations.
fn npy_case(rng: &mut ChaCha8Rng) -> (Vec<u8>, String) {
    let (descr, _) = *NPY_TYPES.choose(rng).unwrap();
    let rows = rng.random_range(0..5);
    let cols = rng.random_range(1..5);
    let data: Vec<u8> = (0..rows * cols)
        .flat_map(|_| random_element(rng, descr))
        .collect();
    let fortran = rng.random_bool(0.3);
    let version = [(1, 0), (2, 0), (3, 0)][rng.random_range(0..3)];
    let mut what = vec![format!(
        "{descr} ({rows}, {cols}) v{}.{} fortran={fortran}",
        version.0, version.1
    )];
    let mut d_descr = format!("'{descr}'");
    let mut d_fortran = if fortran { "True" } else { "False" }.to_owned();
    let mut d_shape = format!("({rows}, {cols})");
    let mut version = version;
    let edits = rng.random_range(0..3);
    for _ in 0..edits {
        match rng.random_range(0..5) {
            0 => {
                d_descr = match rng.random_range(0..4) {
                    0 => format!("u'{}'", DESCRS.choose(rng).unwrap()),
                    1 => format!("\"{}\"", DESCRS.choose(rng).unwrap()),
                    2 => format!("b'{}'", DESCRS.choose(rng).unwrap()),
                    _ => format!("'{}'", DESCRS.choose(rng).unwrap()),
                };
                what.push(format!("descr {d_descr}"));
            }
            1 => {
                d_fortran = [
                    "True", "False", "0", "1", "true", "None", "'False'", "Truex",
                ]
                .choose(rng)
                .unwrap()
                .to_string();
                what.push(format!("fortran_order {d_fortran}"));
            }
            2 | 3 => {
                d_shape = shape_text(rng, rows, cols);
                what.push(format!("shape {d_shape:?}"));
            }
            _ => {
                version = *[
                    (1, 0),
                    (2, 0),
                    (3, 0),
                    (1, 1),
                    (2, 1),
                    (0, 0),
                    (4, 0),
                    (3, 1),
                ]
                .choose(rng)
                .unwrap();
                what.push(format!("version {}.{}", version.0, version.1));
            }
        }
    }
    let keys = if rng.random_bool(0.05) {
        format!("{{'shape': {d_shape}, 'descr': {d_descr}, 'fortran_order': {d_fortran}}}")
    } else {
        format!("{{'descr': {d_descr}, 'fortran_order': {d_fortran}, 'shape': {d_shape}, }}")
    };
    let mut dict = keys;
    if rng.random_bool(0.15) {
        // A character Python may or may not take, anywhere in the dict or after it.
        let c = [
            " ", "#", "\t", "\n", "\r", "\x0c", "\x0b", "L", "_", "+", "-", "0", ",", ")", "(",
            "'", "\"", "u", "b", "\\", "\0", "\u{e9}", "# c\n", "}",
        ]
        .choose(rng)
        .unwrap();
        let mut at = rng.random_range(0..=dict.len());
        while !dict.is_char_boundary(at) {
            at -= 1;
        }
        dict.insert_str(at, c);
        what.push(format!("insert {c:?} at {at}"));
    }
    let mut bytes = npy_file(version, &dict, &data);
    if rng.random_bool(0.5) {
        let len_width = if version.0 == 1 { 2 } else { 4 };
        let fields = [
            ("magic", 0, 6),
            ("major", 6, 1),
            ("minor", 7, 1),
            ("header length", 8, len_width),
        ];
        let (b, w) = mutate(rng, &bytes, &fields);
        bytes = b;
        what.push(w);
    }
    (bytes, what.join("; "))
}

/// One line of `scripts/fuzz_npy_reference.py`.
#[derive(Debug)]
enum Numpy {
    Error(String),
    Ok {
        dtype: String,
        shape: Vec<usize>,
        sha256: String,
        offset: usize,
        size: usize,
        descr: String,
    },
}

fn numpy_verdicts(dir: &Path) -> BTreeMap<String, Numpy> {
    let out = bllm_e2e::python_ok("scripts/fuzz_npy_reference.py", &[&show(dir)]);
    out.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let v = if f[1] == "error" {
                Numpy::Error(f[2].to_owned())
            } else {
                Numpy::Ok {
                    dtype: f[2].to_owned(),
                    shape: f[3]
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| s.parse().unwrap())
                        .collect(),
                    sha256: f[4].to_owned(),
                    offset: f[5].parse().unwrap(),
                    size: f[6].parse().unwrap(),
                    descr: f[7].to_owned(),
                }
            };
            (f[0].to_owned(), v)
        })
        .collect()
}

fn hex_sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn fuzz_npy(f: &mut Fuzz) {
    let dir = f.path("npy");
    std::fs::create_dir_all(&dir).unwrap();
    // Every truncation of one file of each type, then the random cases.
    let mut cases = Vec::new();
    for (i, (descr, size)) in NPY_TYPES.iter().enumerate() {
        let mut rng = f.rng(usize::MAX - i);
        let data: Vec<u8> = (0..6)
            .flat_map(|_| random_element(&mut rng, descr))
            .collect();
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2, 3), }}");
        let base = npy_file((1, 0), &dict, &data);
        assert_eq!((base.len() - 6 * size) % 64, 0);
        cases.extend(truncations(&base, base.len() + 1));
    }
    for i in 0..f.count() {
        cases.push(npy_case(&mut f.rng(i)));
    }
    // Our verdicts: (name, what, result of read_npy as (dtype, rows, cols, sha256)).
    type Ours = Result<(&'static str, usize, usize, String), String>;
    let mut ours: Vec<(String, String, Ours)> = Vec::new();
    for (i, (bytes, what)) in cases.into_iter().enumerate() {
        let name = format!("c{i:06}.npy");
        let p = dir.join(&name);
        std::fs::write(&p, &bytes).unwrap();
        let q = p.clone();
        let label = format!("{i} ({what})");
        let r = f.case(&label, move || {
            // Every entry point, for panics; read_npy's result is compared with numpy.
            let _ = npy::read_float_matrix(&q);
            let _ = npy::read_codes_npy(&q, None);
            let _ = bllm_data::load_embeddings(&q, None);
            npy::read_npy(&q)
                .map(|m| (m.dtype.name(), m.rows, m.cols, hex_sha256(&m.bytes)))
                .map_err(|e| e.to_string())
        });
        if let Err(e) = &r {
            f.error(&label, e, &[&name]);
        } else {
            f.loaded();
        }
        ours.push((name, label, r));
    }
    f.non_regular("x.npy", |p| {
        npy::read_npy(p).map(drop).map_err(|e| e.to_string())
    });
    if !python_with(&["numpy"]) {
        return;
    }
    let numpy = numpy_verdicts(&dir);
    let mut wrong = Vec::new();
    for (name, label, r) in &ours {
        let Some(v) = numpy.get(name) else {
            wrong.push(format!("{label}: numpy printed nothing"));
            continue;
        };
        match (v, r) {
            (Numpy::Error(_), Err(_)) => f.note("both refuse"),
            (Numpy::Error(why), Ok(_)) => {
                wrong.push(format!("{label}: we load, numpy refuses ({why})"));
            }
            (
                Numpy::Ok {
                    dtype,
                    shape,
                    sha256,
                    offset,
                    size,
                    descr,
                },
                r,
            ) => {
                let ours_name = match dtype.as_str() {
                    "<f4" => Some(("float32", 4)),
                    "<f2" => Some(("float16", 2)),
                    "|u1" => Some(("uint8", 1)),
                    "<u8" => Some(("uint64", 8)),
                    _ => None,
                };
                let spelled =
                    ["'<f4'", "'<f2'", "'|u1'", "'<u1'", "'u1'", "'<u8'"].contains(&descr.as_str());
                let why_not = if shape.len() != 2 {
                    Some("not 2-D (we read matrices only)")
                } else if ours_name.is_none() {
                    Some("a dtype we do not read")
                } else if !spelled {
                    Some("a descr alias")
                } else if ours_name.is_some_and(|(_, s)| offset + shape[0] * shape[1] * s != *size)
                {
                    Some("bytes after the data (numpy ignores them)")
                } else {
                    None
                };
                match (why_not, r) {
                    (Some(why), Err(_)) => f.note(&format!("numpy loads, we refuse: {why}")),
                    (Some(why), Ok(_)) => wrong.push(format!(
                        "{label}: we load what we should refuse ({why}); numpy: {v:?}"
                    )),
                    (None, Err(e)) => {
                        wrong.push(format!("{label}: numpy loads {v:?}, we refuse: {e}"))
                    }
                    (None, Ok((dt, rows, cols, hash))) => {
                        let want = (ours_name.unwrap().0, shape[0], shape[1], sha256.as_str());
                        if (*dt, *rows, *cols, hash.as_str()) != want {
                            wrong.push(format!(
                                "{label}: we load {dt} ({rows}, {cols}) {hash}, numpy {v:?}"
                            ));
                        } else {
                            f.note("both load, equal");
                        }
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} disagreements with numpy:\n{}",
        wrong.len(),
        wrong
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// .fvecs: an independent decoder of the format is the reference.

/// Per vector: i32 dimension d > 0 (the same for all), then d finite f32; at least one vector.
fn fvecs_spec(b: &[u8]) -> Option<(usize, usize, Vec<u32>)> {
    let (mut pos, mut dim, mut rows, mut out) = (0usize, None, 0usize, Vec::new());
    while pos < b.len() {
        let head = b.get(pos..pos + 4)?;
        let d = i32::from_le_bytes(head.try_into().unwrap());
        if d <= 0 || dim.is_some_and(|x| x != d) {
            return None;
        }
        dim = Some(d);
        let d = d as usize;
        let body = b.get(pos + 4..pos + 4 + 4 * d)?;
        for c in body.chunks_exact(4) {
            let v = f32::from_le_bytes(c.try_into().unwrap());
            if !v.is_finite() {
                return None;
            }
            out.push(v.to_bits());
        }
        pos += 4 + 4 * d;
        rows += 1;
    }
    (rows > 0).then(|| (rows, dim.unwrap_or(0) as usize, out))
}

fn fuzz_fvecs(f: &mut Fuzz) {
    let mut rng = f.rng(usize::MAX);
    let (rows, dim) = (5, 3);
    let data: Vec<f32> = (0..rows * dim)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let m = bllm_data::FloatMatrix::new(rows, dim, data).unwrap();
    let good = f.path("good.fvecs");
    bllm_data::write_fvecs(&good, &m).unwrap();
    let base = std::fs::read(&good).unwrap();
    let fields: Vec<Field> = (0..rows)
        .flat_map(|r| {
            let at = r * (4 + 4 * dim);
            [("dimension", at, 4), ("value", at + 4, 4)]
        })
        .collect();
    let mut cases = truncations(&base, base.len());
    for i in 0..f.count() {
        cases.push(mutate(&mut f.rng(i), &base, &fields));
    }
    for (i, (bytes, what)) in cases.into_iter().enumerate() {
        let p = f.path(&format!("c{i}.fvecs"));
        std::fs::write(&p, &bytes).unwrap();
        let q = p.clone();
        let label = format!("{i} ({what})");
        let r = f.case(&label, move || {
            bllm_data::load_embeddings(&q, None).map_err(|e| e.to_string())
        });
        match (r, fvecs_spec(&bytes)) {
            (Ok(m), Some((r, d, v))) => {
                let got: Vec<u32> = m.as_slice().iter().map(|x| x.to_bits()).collect();
                assert_eq!((m.rows(), m.cols(), got), (r, d, v), "{label}");
                f.loaded();
            }
            (Ok(m), None) => panic!("{label}: loaded {m:?}, the format says invalid"),
            (Err(e), Some(_)) => panic!("{label}: refused a valid file: {e}"),
            (Err(e), None) => f.error(&label, &e, &[&file_name(&p)]),
        }
        std::fs::remove_file(&p).unwrap();
    }
    f.non_regular("x.fvecs", |p| {
        bllm_data::load_embeddings(p, None)
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

// ---------------------------------------------------------------------------------------------
// .safetensors: an independent decoder of the header and data is the reference of what loads.

/// One tensor of a safetensors file, decoded independently: dtype, shape, data bytes.
type SpecTensor = (String, Vec<usize>, Vec<u8>);

/// The tensors of a safetensors file: u64 header length n, n bytes of JSON (name → {dtype,
/// shape, data_offsets}, optional `__metadata__`), then the data, offsets relative to it.
fn safetensors_spec(b: &[u8]) -> Option<BTreeMap<String, SpecTensor>> {
    let n = usize::try_from(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)).ok()?;
    let header: serde_json::Value =
        serde_json::from_slice(b.get(8..8usize.checked_add(n)?)?).ok()?;
    let data = &b[8 + n..];
    let mut out = BTreeMap::new();
    for (name, t) in header.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t["dtype"].as_str()?.to_owned();
        let shape: Vec<usize> = t["shape"]
            .as_array()?
            .iter()
            .map(|x| x.as_u64().map(|v| v as usize))
            .collect::<Option<_>>()?;
        let off = t["data_offsets"].as_array()?;
        let (s, e) = (
            off.first()?.as_u64()? as usize,
            off.get(1)?.as_u64()? as usize,
        );
        let size = match dtype.as_str() {
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "F64" | "I64" | "U64" => 8,
            "U8" | "I8" | "BOOL" | "F8_E5M2" | "F8_E4M3" => 1,
            _ => return None,
        };
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
        if count.checked_mul(size)? != e.checked_sub(s)? {
            return None;
        }
        out.insert(name.clone(), (dtype, shape, data.get(s..e)?.to_vec()));
    }
    Some(out)
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        _ => sign * (1.0 + frac / 1024.0) * 2f32.powi(exp - 15),
    }
}

/// A 2-D F32/F16 tensor's values as f32 bits.
fn decode_float(t: &SpecTensor) -> Option<(usize, usize, Vec<u32>)> {
    let (dtype, shape, data) = t;
    if shape.len() != 2 {
        return None;
    }
    let v: Vec<f32> = match dtype.as_str() {
        "F32" => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        "F16" => data
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        _ => return None,
    };
    Some((shape[0], shape[1], v.iter().map(|x| x.to_bits()).collect()))
}

fn safetensors_file(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            let dt = match *dtype {
                "F32" => safetensors::Dtype::F32,
                "F16" => safetensors::Dtype::F16,
                _ => safetensors::Dtype::I64,
            };
            (
                (*name).to_owned(),
                safetensors::tensor::TensorView::new(dt, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, &None).unwrap()
}

/// Field edits inside the JSON header of a safetensors file: re-serialised with the edit and
/// a correct (or sometimes wrong) length prefix.
fn safetensors_header_edit(rng: &mut ChaCha8Rng, base: &[u8]) -> (Vec<u8>, String) {
    let n = u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    let mut v: serde_json::Value = serde_json::from_slice(&base[8..8 + n]).unwrap();
    let what = json_edit(rng, &mut v);
    let mut h = serde_json::to_vec(&v).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&base[8 + n..]);
    (out, format!("header {what}"))
}

fn fuzz_safetensors(f: &mut Fuzz) {
    let mut rng = f.rng(usize::MAX);
    let f32s: Vec<u8> = (0..6)
        .flat_map(|_| rng.random_range(-3.0f32..3.0).to_le_bytes())
        .collect();
    let f16s: Vec<u8> = (0..8)
        .flat_map(|_| [0x3c00u16, 0xc000, 0x3555, 0][rng.random_range(0..4)].to_le_bytes())
        .collect();
    let ids: Vec<u8> = (0..3u64).flat_map(|x| x.to_le_bytes()).collect();
    let bases = [
        safetensors_file(&[("emb", "F32", vec![3, 2], f32s.clone())]),
        safetensors_file(&[
            ("emb", "F16", vec![4, 2], f16s),
            ("ids", "I64", vec![3], ids),
        ]),
    ];
    let mut cases = Vec::new();
    for base in &bases {
        let n = u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
        cases.extend(truncations(base, 8 + n + 1));
    }
    for i in 0..f.count() {
        let mut rng = f.rng(i);
        let base = bases.choose(&mut rng).unwrap();
        cases.push(if rng.random_bool(0.4) {
            safetensors_header_edit(&mut rng, base)
        } else {
            mutate(&mut rng, base, &[("header length", 0, 8)])
        });
    }
    for (i, (bytes, what)) in cases.into_iter().enumerate() {
        let p = f.path(&format!("c{i}.safetensors"));
        std::fs::write(&p, &bytes).unwrap();
        let name = if i % 3 == 0 { Some("emb") } else { None };
        let q = p.clone();
        let label = format!("{i} ({what}, tensor {name:?})");
        let r = f.case(&label, move || {
            bllm_data::load_embeddings(&q, name).map_err(|e| e.to_string())
        });
        match r {
            Ok(m) => {
                let spec = safetensors_spec(&bytes)
                    .unwrap_or_else(|| panic!("{label}: loaded what the format calls invalid"));
                let t = match name {
                    Some(n) => spec.get(n).cloned(),
                    None => {
                        let c: Vec<_> = spec.values().filter_map(decode_float).collect();
                        assert_eq!(c.len(), 1, "{label}: loaded with {} candidates", c.len());
                        None
                    }
                };
                let want = match t {
                    Some(t) => decode_float(&t),
                    None => spec.values().find_map(decode_float),
                }
                .unwrap();
                let got: Vec<u32> = m.as_slice().iter().map(|x| x.to_bits()).collect();
                assert_eq!((m.rows(), m.cols(), got), want, "{label}");
                f.loaded();
            }
            Err(e) => f.error(&label, &e, &[&file_name(&p)]),
        }
        std::fs::remove_file(&p).unwrap();
    }
    f.non_regular("x.safetensors", |p| {
        bllm_data::load_embeddings(p, None)
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

// ---------------------------------------------------------------------------------------------
// FAISS IndexBinaryFlat: an independent decoder of the layout is the reference.

const FAISS_FIELDS: [Field; 7] = [
    ("fourcc", 0, 4),
    ("d", 4, 4),
    ("code_size", 8, 4),
    ("ntotal", 12, 8),
    ("is_trained", 20, 1),
    ("metric_type", 21, 4),
    ("byte count", 25, 8),
];

/// `IBxF`, d > 0 a multiple of 8, code_size = d/8, ntotal ≥ 0, is_trained 0/1, METRIC_L2,
/// byte count = ntotal × code_size, exactly that many bytes.
fn faiss_spec(b: &[u8]) -> Option<(usize, usize, Vec<u8>)> {
    if b.len() < 33 || &b[..4] != b"IBxF" {
        return None;
    }
    let i32_at = |at: usize| i32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let (d, cs) = (i32_at(4), i32_at(8));
    let ntotal = i64::from_le_bytes(b[12..20].try_into().unwrap());
    let n = u64::from_le_bytes(b[25..33].try_into().unwrap());
    let ok = d > 0
        && d % 8 == 0
        && cs == d / 8
        && ntotal >= 0
        && b[20] <= 1
        && i32_at(21) == 1
        && (ntotal as u64).checked_mul(cs as u64) == Some(n)
        && (b.len() - 33) as u64 == n;
    ok.then(|| (d as usize, ntotal as usize, b[33..].to_vec()))
}

fn fuzz_faiss(f: &mut Fuzz) {
    let mut rng = f.rng(usize::MAX);
    let bools: Vec<bool> = (0..4 * 24).map(|_| rng.random()).collect();
    let codes = PackedCodes::from_bools(&bools, 24).unwrap();
    let good = f.path("good.faiss");
    cio::write_faiss_binary_flat(&good, &codes).unwrap();
    let base = std::fs::read(&good).unwrap();
    let mut cases = truncations(&base, 34);
    for i in 0..f.count() {
        cases.push(mutate(&mut f.rng(i), &base, &FAISS_FIELDS));
    }
    for (i, (bytes, what)) in cases.into_iter().enumerate() {
        let p = f.path(&format!("c{i}.faiss"));
        std::fs::write(&p, &bytes).unwrap();
        let q = p.clone();
        let label = format!("{i} ({what})");
        let r = f.case(&label, move || {
            cio::read_faiss_binary_flat(&q).map_err(|e| e.to_string())
        });
        match (r, faiss_spec(&bytes)) {
            (Ok(c), Some((d, n, payload))) => {
                assert_eq!(
                    (c.bits(), c.rows(), c.to_packbits_u8()),
                    (d, n, payload),
                    "{label}"
                );
                f.loaded();
            }
            (Ok(_), None) => panic!("{label}: loaded what the layout calls invalid"),
            (Err(e), Some(_)) => panic!("{label}: refused a valid index: {e}"),
            (Err(e), None) => f.error(&label, &e, &[&file_name(&p)]),
        }
        std::fs::remove_file(&p).unwrap();
    }
    f.non_regular("x.faiss", |p| {
        cio::read_faiss_binary_flat(p)
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

// ---------------------------------------------------------------------------------------------
// Encoder directories: what loads must be what the files say, with every field valid.

fn fuzz_encoder(f: &mut Fuzz) {
    let mut rng = f.rng(usize::MAX);
    let (dim, bits) = (3, 5);
    let enc = bllm_hash::LinearEncoder {
        method: "itq".into(),
        dim,
        bits,
        mean: (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect(),
        projection: (0..dim * bits)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect(),
        thresholds: (0..bits).map(|_| rng.random_range(-0.1..0.1)).collect(),
        normalize: true,
    };
    let good = f.path("good");
    enc.save(&good).unwrap();
    let other = f.path("other");
    enc.save(&other).unwrap();
    let jtext = std::fs::read(good.join(bllm_hash::ENCODER_JSON)).unwrap();
    let jvalue: serde_json::Value = serde_json::from_slice(&jtext).unwrap();
    let tbytes = std::fs::read(good.join(bllm_hash::ENCODER_TENSORS)).unwrap();
    for i in 0..f.count() {
        let mut rng = f.rng(i);
        let dir = f.path(&format!("e{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut what = Vec::new();
        let json = match rng.random_range(0..10) {
            0..=4 => {
                let mut v = jvalue.clone();
                what.push(json_edit(&mut rng, &mut v));
                serde_json::to_vec(&v).unwrap()
            }
            5 => {
                let mut v = jvalue.clone();
                let t = [
                    show(&other.join(bllm_hash::ENCODER_TENSORS)),
                    "../other/encoder.safetensors".into(),
                    "/dev/zero".into(),
                    "sub/encoder.safetensors".into(),
                    String::new(),
                    ".".into(),
                ];
                let t = t.choose(&mut rng).unwrap().clone();
                what.push(format!("tensors = {t:?}"));
                v["tensors"] = t.into();
                serde_json::to_vec(&v).unwrap()
            }
            6 | 7 => {
                let (b, w) = mutate(&mut rng, &jtext, &[]);
                what.push(w);
                b
            }
            _ => jtext.clone(),
        };
        let tensors = if what.is_empty() || rng.random_bool(0.3) {
            let (b, w) = if rng.random_bool(0.4) {
                safetensors_header_edit(&mut rng, &tbytes)
            } else {
                mutate(&mut rng, &tbytes, &[("header length", 0, 8)])
            };
            what.push(format!("tensors: {w}"));
            b
        } else {
            tbytes.clone()
        };
        std::fs::write(dir.join(bllm_hash::ENCODER_JSON), &json).unwrap();
        std::fs::write(dir.join(bllm_hash::ENCODER_TENSORS), &tensors).unwrap();
        let d = dir.clone();
        let label = format!("{i} ({})", what.join("; "));
        let r = f.case(&label, move || {
            bllm_hash::LinearEncoder::load(&d).map_err(|e| e.to_string())
        });
        match r {
            Ok(e) => {
                let j: serde_json::Value = serde_json::from_slice(&json).unwrap();
                let tname = j["tensors"].as_str().unwrap();
                assert_eq!(
                    tname,
                    bllm_hash::ENCODER_TENSORS,
                    "{label}: tensors elsewhere"
                );
                assert!(
                    bllm_hash::ENCODER_METHODS.contains(&e.method.as_str())
                        && e.method == j["method"]
                        && j["format"] == "bllm-linear-encoder"
                        && e.dim == j["dim"]
                        && e.bits == j["bits"]
                        && e.dim >= 1
                        && e.bits >= 1,
                    "{label}: loaded an encoder with invalid fields: {j}"
                );
                let spec = safetensors_spec(&tensors)
                    .unwrap_or_else(|| panic!("{label}: loaded invalid tensors"));
                let get = |name: &str, shape: Vec<usize>| -> Vec<u32> {
                    let (dt, s, data) = &spec[name];
                    assert!(dt == "F32" && *s == shape, "{label}: {name} is {dt} {s:?}");
                    data.chunks_exact(4)
                        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                        .collect()
                };
                let bits_of = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits_of(&e.mean), get("mean", vec![e.dim]), "{label}");
                assert_eq!(
                    bits_of(&e.projection),
                    get("projection", vec![e.dim, e.bits]),
                    "{label}"
                );
                assert_eq!(
                    bits_of(&e.thresholds),
                    get("thresholds", vec![e.bits]),
                    "{label}"
                );
                assert!(
                    e.mean
                        .iter()
                        .chain(&e.projection)
                        .chain(&e.thresholds)
                        .all(|v| v.is_finite()),
                    "{label}: non-finite values loaded"
                );
                f.loaded();
            }
            Err(e) => f.error(
                &label,
                &e,
                &[
                    bllm_hash::ENCODER_JSON,
                    bllm_hash::ENCODER_TENSORS,
                    &show(&dir),
                ],
            ),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    for name in [bllm_hash::ENCODER_JSON, bllm_hash::ENCODER_TENSORS] {
        let g = good.clone();
        f.non_regular(name, move |p| {
            let dir = p.parent().unwrap().join(format!("dir-{name}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for n in [bllm_hash::ENCODER_JSON, bllm_hash::ENCODER_TENSORS] {
                if n != name {
                    std::fs::copy(g.join(n), dir.join(n)).unwrap();
                }
            }
            std::os::unix::fs::symlink(std::fs::read_link(p).unwrap(), dir.join(name)).unwrap();
            bllm_hash::LinearEncoder::load(&dir)
                .map(drop)
                .map_err(|e| e.to_string())
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Text corpora: a corpus that loads is exactly the file's bytes, split in two parts of ≥ 2.

fn random_text(rng: &mut ChaCha8Rng) -> Vec<u8> {
    match rng.random_range(0..10) {
        0 => Vec::new(),
        1 => vec![b'a'],
        2 => b"ab".to_vec(),
        3 => b"abc".to_vec(),
        // A huge line: up to 4 MiB without a newline.
        4 => vec![b'x'; rng.random_range(1..=4) << 20],
        5 => vec![b'\n'; rng.random_range(1..3000)],
        // Invalid UTF-8 and binary.
        6 => (0..rng.random_range(0..5000))
            .map(|_| rng.random())
            .collect(),
        7 => b"\xff\xfe\xc3\x28 caf\xe9\r\n\0".repeat(rng.random_range(1..50)),
        _ => (0..rng.random_range(1..300))
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect(),
    }
}

/// What `check_manifest` must accept: source and licence non-empty strings, `files` an object
/// of plain names whose `sha256` matches.
fn manifest_spec(dir: &Path, text: &[u8]) -> bool {
    let Ok(m) = serde_json::from_slice::<serde_json::Value>(text) else {
        return false;
    };
    let named = |k: &str| m[k].as_str().is_some_and(|s| !s.is_empty());
    let Some(files) = m["files"].as_object() else {
        return false;
    };
    named("source")
        && named("licence")
        && files.iter().all(|(name, meta)| {
            let plain =
                Path::new(name).components().count() == 1 && Path::new(name).file_name().is_some();
            plain
                && meta["sha256"].as_str().is_some_and(|want| {
                    std::fs::read(dir.join(name)).is_ok_and(|b| hex_sha256(&b) == want)
                })
        })
}

fn fuzz_text(f: &mut Fuzz) {
    // Huge lines cost time; the count covers fewer cases than the binary readers.
    let n = f.count() / 2;
    for i in 0..n {
        let mut rng = f.rng(i);
        let fraction = *[
            0.1,
            0.5,
            0.0,
            1.0,
            -0.5,
            f64::NAN,
            f64::INFINITY,
            1e-12,
            0.999_999,
        ]
        .choose(&mut rng)
        .unwrap();
        let fraction = if rng.random_bool(0.3) {
            rng.random_range(0.0..1.0)
        } else {
            fraction
        };
        if rng.random_bool(0.5) {
            let p = f.path(&format!("t{i}.txt"));
            let text = random_text(&mut rng);
            std::fs::write(&p, &text).unwrap();
            let q = p.clone();
            let label = format!(
                "{i} (one file of {} bytes, fraction {fraction})",
                text.len()
            );
            let r = f.case(&label, move || {
                bllm_data::TextCorpus::load(&q, fraction).map_err(|e| e.to_string())
            });
            match r {
                Ok(c) => {
                    assert!(fraction > 0.0 && fraction < 1.0, "{label}: loaded");
                    assert!(c.train.len() >= 2 && c.valid.len() >= 2, "{label}");
                    assert_eq!([c.train, c.valid].concat(), text, "{label}: bytes changed");
                    f.loaded();
                }
                Err(e) if e.contains("valid_fraction") => {
                    assert!(!(fraction > 0.0 && fraction < 1.0), "{label}: {e}");
                    f.error(&label, &e, &["valid_fraction"]);
                }
                Err(e) => f.error(&label, &e, &[&file_name(&p)]),
            }
            std::fs::remove_file(&p).unwrap();
        } else {
            let dir = f.path(&format!("corpus{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let (train, valid) = (random_text(&mut rng), random_text(&mut rng));
            let missing = rng.random_range(0..8);
            if missing != 0 {
                std::fs::write(dir.join("train.txt"), &train).unwrap();
            }
            if missing != 1 {
                std::fs::write(dir.join("valid.txt"), &valid).unwrap();
            }
            let mut manifest = None;
            if rng.random_bool(0.5) {
                let mut v = serde_json::json!({
                    "source": "fuzz", "licence": "CC0",
                    "files": {
                        "train.txt": {"sha256": hex_sha256(&train)},
                        "valid.txt": {"sha256": hex_sha256(&valid)},
                    }
                });
                let text = if rng.random_bool(0.5) {
                    serde_json::to_vec(&v).unwrap()
                } else if rng.random_bool(0.5) {
                    json_edit(&mut rng, &mut v);
                    serde_json::to_vec(&v).unwrap()
                } else {
                    mutate(&mut rng, &serde_json::to_vec(&v).unwrap(), &[]).0
                };
                std::fs::write(dir.join("MANIFEST.json"), &text).unwrap();
                manifest = Some(text);
            }
            let d = dir.clone();
            let label = format!(
                "{i} (directory: {} + {} bytes, missing {missing}, manifest {})",
                train.len(),
                valid.len(),
                manifest.is_some()
            );
            let r = f.case(&label, move || {
                bllm_data::TextCorpus::load(&d, fraction).map_err(|e| e.to_string())
            });
            match r {
                Ok(c) => {
                    assert!(missing > 1, "{label}: loaded without a part");
                    assert_eq!(
                        (c.train, c.valid),
                        (train.clone(), valid.clone()),
                        "{label}"
                    );
                    assert!(train.len() >= 2 && valid.len() >= 2, "{label}");
                    if let Some(m) = &manifest {
                        assert!(
                            manifest_spec(&dir, m),
                            "{label}: an invalid MANIFEST.json passed"
                        );
                    }
                    f.loaded();
                }
                Err(e) => f.error(
                    &label,
                    &e,
                    &["train.txt", "valid.txt", "MANIFEST.json", &show(&dir)],
                ),
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
    // (A directory there is a corpus directory, not a single file.)
    f.non_regular_but("corpus.txt", false, |p| {
        bllm_data::TextCorpus::load(p, 0.1)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    for name in ["train.txt", "valid.txt", "MANIFEST.json"] {
        f.non_regular(name, move |p| {
            let dir = p.parent().unwrap().join(format!("corpus-{name}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for n in ["train.txt", "valid.txt"] {
                std::fs::write(dir.join(n), b"some text").unwrap();
            }
            let _ = std::fs::remove_file(dir.join(name));
            std::os::unix::fs::symlink(std::fs::read_link(p).unwrap(), dir.join(name)).unwrap();
            bllm_data::TextCorpus::load(&dir, 0.1)
                .map(drop)
                .map_err(|e| e.to_string())
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Recipes and overrides: no panic, and every error names the recipe file or the override.

fn shipped_recipes() -> Vec<PathBuf> {
    bllm_cli::recipes::shipped(&repo_root().join("recipes")).unwrap()
}

/// Every dotted key of a table (tables recursed, arrays are leaves).
fn toml_keys(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        out.push(key.clone());
        if let toml::Value::Table(sub) = v {
            toml_keys(sub, &key, out);
        }
    }
}

/// A value that is 0, negative, huge, of the wrong type, or a random word.
fn toml_value(rng: &mut ChaCha8Rng) -> String {
    [
        "0",
        "-1",
        "-0.5",
        "1e308",
        "-1e308",
        "inf",
        "nan",
        "9223372036854775807",
        "-9223372036854775808",
        "4294967297",
        "1.5",
        "true",
        "\"\"",
        "\"bogus\"",
        "\"../../etc/passwd\"",
        "\"/dev/zero\"",
        "[]",
        "[0]",
        "[100000000]",
        "[-1, 2]",
        "[\"a\", 1]",
        "{}",
        "{ kind = \"ede\" }",
        "1979-05-27",
    ]
    .choose(rng)
    .unwrap()
    .to_string()
}

fn set_dotted(t: &mut toml::Table, key: &str, v: Option<toml::Value>) {
    let (head, rest) = key.split_once('.').unwrap_or((key, ""));
    if rest.is_empty() {
        match v {
            Some(v) => {
                t.insert(head.to_owned(), v);
            }
            None => {
                t.remove(head);
            }
        }
    } else if let Some(toml::Value::Table(sub)) = t.get_mut(head) {
        set_dotted(sub, rest, v);
    }
}

fn fuzz_recipes(f: &mut Fuzz) {
    let recipes = shipped_recipes();
    assert!(recipes.len() >= 10, "{recipes:?}");
    let texts: Vec<String> = recipes
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    // Each shipped recipe loads as it is.
    for p in &recipes {
        bllm_cli::recipes::load(p, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
    }
    for i in 0..f.count() {
        let mut rng = f.rng(i);
        let k = rng.random_range(0..recipes.len());
        let mut table: toml::Table = texts[k].parse().unwrap();
        let mut keys = Vec::new();
        toml_keys(&table, "", &mut keys);
        let mut what = vec![file_name(&recipes[k])];
        let text = match rng.random_range(0..10) {
            0..=5 => {
                for _ in 0..rng.random_range(1..=3) {
                    let key = keys.choose(&mut rng).unwrap().clone();
                    if rng.random_bool(0.2) {
                        set_dotted(&mut table, &key, None);
                        what.push(format!("delete {key}"));
                    } else {
                        let v = toml_value(&mut rng);
                        let parsed: toml::Table = format!("x = {v}").parse().unwrap();
                        set_dotted(&mut table, &key, parsed.get("x").cloned());
                        what.push(format!("{key} = {v}"));
                    }
                }
                toml::to_string(&table).unwrap()
            }
            6 | 7 => {
                let (b, w) = mutate(&mut rng, texts[k].as_bytes(), &[]);
                what.push(w);
                String::from_utf8_lossy(&b).into_owned()
            }
            _ => texts[k].clone(),
        };
        let overrides: Vec<String> = (0..rng.random_range(0..3))
            .map(|_| {
                let key = if rng.random_bool(0.8) {
                    keys.choose(&mut rng).unwrap().clone()
                } else {
                    [
                        "",
                        ".",
                        "a..b",
                        "train.",
                        "no.such.key",
                        "train.steps.x",
                        " = ",
                    ]
                    .choose(&mut rng)
                    .unwrap()
                    .to_string()
                };
                let o = match rng.random_range(0..8) {
                    0 => key,
                    1 => format!("{key}="),
                    _ => format!("{key}={}", toml_value(&mut rng)),
                };
                what.push(format!("override {o:?}"));
                o
            })
            .collect();
        let p = f.path(&format!("r{i}.toml"));
        std::fs::write(&p, &text).unwrap();
        let q = p.clone();
        let label = format!("{i} ({})", what.join("; "));
        let r = f.case(&label, move || {
            let r = bllm_cli::recipes::load(&q, &overrides).map_err(|e| format!("{e:#}"))?;
            if !r.sweep.is_empty() {
                let ovs: Vec<_> = overrides
                    .iter()
                    .map(|o| bllm_recipe::parse_override(o).unwrap())
                    .collect();
                bllm_recipe::expand_sweep(&q, &ovs, &r, &bllm_cli::recipes::Components)
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(r.resolved_toml())
        });
        match r {
            Ok(resolved) => {
                // What loads re-loads to itself: the resolved recipe is a fixed point.
                let again = f.path(&format!("r{i}.resolved.toml"));
                std::fs::write(&again, &resolved).unwrap();
                let back = bllm_cli::recipes::load(&again, &[])
                    .unwrap_or_else(|e| panic!("{label}: the resolved recipe fails: {e:#}"));
                assert_eq!(back.resolved_toml(), resolved, "{label}");
                std::fs::remove_file(&again).unwrap();
                f.loaded();
            }
            Err(e) => {
                // Every line of the report names the file or an override.
                for line in e.lines().skip(1) {
                    assert!(
                        line.contains(&file_name(&p)) || line.contains("override"),
                        "{label}: a problem that names neither the file nor an override: {line}"
                    );
                }
                f.error(&label, &e, &[&file_name(&p), "override"]);
            }
        }
        std::fs::remove_file(&p).unwrap();
    }
    f.non_regular("recipe.toml", |p| {
        bllm_cli::recipes::load(p, &[])
            .map(drop)
            .map_err(|e| format!("{e:#}"))
    });
}

// ---------------------------------------------------------------------------------------------
// The tests: one per reader.

#[test]
fn fuzz_bcodes_files() {
    run("bcodes", fuzz_bcodes);
}

#[test]
fn fuzz_codes_manifests() {
    run("manifest", fuzz_manifest);
}

#[test]
fn fuzz_npy_files_against_numpy() {
    run("npy", fuzz_npy);
}

#[test]
fn fuzz_fvecs_files() {
    run("fvecs", fuzz_fvecs);
}

#[test]
fn fuzz_safetensors_embeddings() {
    run("safetensors", fuzz_safetensors);
}

#[test]
fn fuzz_faiss_indexes() {
    run("faiss", fuzz_faiss);
}

#[test]
fn fuzz_encoder_directories() {
    run("encoder", fuzz_encoder);
}

#[test]
fn fuzz_text_corpora() {
    run("text", fuzz_text);
}

#[test]
fn fuzz_recipes_and_overrides() {
    run("recipes", fuzz_recipes);
}
