//! The codes benchmark behind `bllm codes bench`: packing throughput, exact Hamming top-k
//! throughput and scan bandwidth, beside this machine's memory bandwidth measured in the same
//! run. Everything runs on rayon's current pool, so `--threads N` (a pool of N) is honoured.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;
use crate::{CodesError, Neighbors, PackedCodes, Result, hamming};

/// What to measure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Database rows of the search benchmark.
    pub db_rows: usize,
    /// Bits per code.
    pub bits: usize,
    /// Query rows.
    pub queries: usize,
    /// Neighbours per query.
    pub k: usize,
    /// Rows of the f32 matrix packed in the packing benchmark (`bits` columns).
    pub pack_rows: usize,
    /// Bytes per buffer of the memcpy measurement.
    pub memcpy_bytes: usize,
    /// Timed repetitions of each measurement; the best (fastest) is reported.
    pub repeats: usize,
    /// Seed of the random data.
    pub seed: u64,
    /// Hamming scan kernel (default: the fastest this CPU supports).
    pub kernel: Option<hamming::Kernel>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            db_rows: 1_000_000,
            bits: 256,
            queries: 1_000,
            k: 10,
            pack_rows: 200_000,
            memcpy_bytes: 256 << 20,
            repeats: 3,
            seed: 42,
            kernel: None,
        }
    }
}

/// Measured numbers (best of `repeats`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// The configuration measured.
    pub config: BenchConfig,
    /// Threads in the pool that ran the benchmark.
    pub threads: usize,
    /// The Hamming scan kernel that ran.
    pub kernel: hamming::Kernel,
    /// Packing throughput from f32, rows per second.
    pub pack_rows_per_s: f64,
    /// Packing throughput from f32, input gigabytes per second.
    pub pack_input_gb_per_s: f64,
    /// Seconds for the whole query batch (best run).
    pub search_seconds: f64,
    /// Queries per second of the exact top-k search.
    pub search_queries_per_s: f64,
    /// Effective scan bandwidth: queries × database bytes / search time, GB/s.
    pub scan_gb_per_s: f64,
    /// Distance computations per second (queries × database rows / search time).
    pub distances_per_s: f64,
    /// Seconds for one query alone (mean over up to 16 single-query searches): the latency of
    /// an unbatched query. A single query runs on one thread.
    pub single_query_seconds: f64,
    /// Database bytes / single-query time, GB/s: the streaming scan rate of one core.
    pub single_query_scan_gb_per_s: f64,
    /// memcpy bandwidth on all threads of the pool (bytes copied / s), GB/s.
    pub memcpy_gb_per_s: f64,
    /// Scan bandwidth as a fraction of memcpy bandwidth.
    pub scan_over_memcpy: f64,
}

/// Random codes: `rows` × `bits`, uniformly random bits from `seed`.
pub fn random_codes(rows: usize, bits: usize, seed: u64) -> Result<PackedCodes> {
    let wpr = crate::words_per_row(bits.max(1));
    let mask = crate::packed::last_word_mask(bits);
    let mut rng = SplitMix64::new(seed);
    let words = (0..rows * wpr)
        .map(|i| rng.next_u64() & if i % wpr == wpr - 1 { mask } else { u64::MAX })
        .collect();
    PackedCodes::from_words(bits, rows, words)
}

fn best_of<T>(repeats: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let out = f()?;
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(out);
    }
    let out = last.ok_or_else(|| CodesError::InvalidArgument("no repetitions".into()))?;
    Ok((best.max(1e-9), out))
}

/// memcpy bandwidth of the current pool: each thread copies its own slice of a buffer.
pub fn memcpy_gb_per_s(bytes: usize, repeats: usize) -> Result<f64> {
    let words = (bytes / 8).max(1);
    let src: Vec<u64> = (0..words as u64).collect();
    let mut dst = vec![0u64; words];
    let chunk = words.div_ceil(rayon::current_num_threads());
    let (secs, ()) = best_of(repeats, || {
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        black_box(&dst);
        Ok(())
    })?;
    Ok((words * 8) as f64 / secs / 1e9)
}

/// Runs the benchmark. With `save_data`, also writes the database and queries as `uint8`
/// `.npy` (`db.npy`, `queries.npy`) and the result as `uint64` `.npy` (`ids.npy`,
/// `dists.npy`) so an external library (FAISS) can be measured and checked on the same data.
pub fn run(config: &BenchConfig, save_data: Option<&Path>) -> Result<BenchReport> {
    if config.repeats == 0 || config.pack_rows == 0 {
        return Err(CodesError::InvalidArgument(
            "repeats and pack_rows must be at least 1".into(),
        ));
    }
    let threads = rayon::current_num_threads();

    let mut rng = SplitMix64::new(config.seed ^ 0x5EED);
    let floats: Vec<f32> = (0..config.pack_rows * config.bits)
        .map(|_| rng.next_gaussian() as f32)
        .collect();
    let (pack_s, packed) = best_of(config.repeats, || {
        PackedCodes::from_f32_rows(&floats, config.bits, config.bits)
    })?;
    black_box(packed);
    drop(floats);

    let db = random_codes(config.db_rows, config.bits, config.seed)?;
    let queries = random_codes(config.queries, config.bits, config.seed.wrapping_add(1))?;
    let kernel = config.kernel.unwrap_or_else(hamming::Kernel::detect);
    let (search_s, result) = best_of(config.repeats, || {
        hamming::search_with(kernel, &db, &queries, config.k)
    })?;
    let singles = config.queries.min(16);
    let (single_s, _) = best_of(config.repeats, || {
        for i in 0..singles {
            black_box(hamming::search_with(
                kernel,
                &db,
                &queries.slice_rows(i, i + 1)?,
                config.k,
            )?);
        }
        Ok(())
    })?;
    let single_s = single_s / singles.max(1) as f64;
    if let Some(dir) = save_data {
        save(dir, &db, &queries, &result)?;
    }
    let memcpy = memcpy_gb_per_s(config.memcpy_bytes, config.repeats)?;
    let scan = (config.queries * db.byte_len()) as f64 / search_s / 1e9;
    Ok(BenchReport {
        config: config.clone(),
        threads,
        kernel,
        pack_rows_per_s: config.pack_rows as f64 / pack_s,
        pack_input_gb_per_s: (config.pack_rows * config.bits * 4) as f64 / pack_s / 1e9,
        search_seconds: search_s,
        search_queries_per_s: config.queries as f64 / search_s,
        scan_gb_per_s: scan,
        distances_per_s: (config.queries * config.db_rows) as f64 / search_s,
        single_query_seconds: single_s,
        single_query_scan_gb_per_s: db.byte_len() as f64 / single_s / 1e9,
        memcpy_gb_per_s: memcpy,
        scan_over_memcpy: scan / memcpy,
    })
}

fn save(dir: &Path, db: &PackedCodes, queries: &PackedCodes, r: &Neighbors<u32>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| CodesError::io(dir, e))?;
    crate::io::npy::write_codes_npy_u8(&dir.join("db.npy"), db)?;
    crate::io::npy::write_codes_npy_u8(&dir.join("queries.npy"), queries)?;
    let as_u64 = |v: &[u32]| v.iter().map(|&x| u64::from(x)).collect::<Vec<_>>();
    crate::io::npy::write_u64_npy(&dir.join("ids.npy"), r.queries(), r.k, &as_u64(&r.ids))?;
    crate::io::npy::write_u64_npy(&dir.join("dists.npy"), r.queries(), r.k, &as_u64(&r.dists))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_run_reports_consistent_numbers_and_saves_data() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = BenchConfig {
            db_rows: 2000,
            bits: 100,
            queries: 20,
            k: 5,
            pack_rows: 100,
            memcpy_bytes: 1 << 16,
            repeats: 1,
            seed: 1,
            kernel: Some(hamming::Kernel::Portable),
        };
        let r = run(&cfg, Some(dir.path())).unwrap();
        assert!(r.search_queries_per_s > 0.0 && r.memcpy_gb_per_s > 0.0);
        assert!((r.scan_over_memcpy - r.scan_gb_per_s / r.memcpy_gb_per_s).abs() < 1e-9);
        let db = crate::io::npy::read_codes_npy(&dir.path().join("db.npy"), Some(100)).unwrap();
        assert_eq!(db, random_codes(2000, 100, 1).unwrap());
        let ids = crate::io::npy::read_npy(&dir.path().join("ids.npy")).unwrap();
        assert_eq!((ids.rows, ids.cols), (20, 5));
    }
}
