//! Hamming distance and exact top-k Hamming search.
//!
//! The search is exact, multi-threaded (rayon, over blocks of queries), never materialises the
//! query × database distance matrix (each query keeps a sorted list of its best `k`), and is
//! deterministic: results are ordered by `(distance, database index)`, so ties are broken by the
//! lower database index whatever the number of threads.
//!
//! The scan is blocked for the cache: a block of queries walks the database in blocks that fit
//! in L2, so each database block is read from memory once per query block, not once per query.
//! On x86-64 the hot loop is compiled twice, with and without the `popcnt` instruction, and the
//! fast one is chosen at run time.

use rayon::prelude::*;

use crate::{CodesError, PackedCodes, Result};

/// Queries handled together by one task (they share each database block while it is in cache).
const QUERY_BLOCK: usize = 16;
/// Bytes of database codes scanned per block (sized to stay in a 512 KiB+ L2).
const DB_BLOCK_BYTES: usize = 256 * 1024;

/// Hamming distance between two rows of equal length (number of differing bits).
pub fn distance(a: &[u64], b: &[u64]) -> u32 {
    debug_assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// The `k` nearest database rows of each query, row-major: `ids[q * k + i]` is the `i`-th
/// neighbour of query `q` and `dists[q * k + i]` its distance (or score). Each list is sorted
/// best first; ties are ordered by the lower database index.
#[derive(Clone, Debug, PartialEq)]
pub struct Neighbors<D> {
    /// Neighbours per query.
    pub k: usize,
    /// Database indices, `queries × k`.
    pub ids: Vec<u32>,
    /// Distances (Hamming) or scores (float similarity), `queries × k`.
    pub dists: Vec<D>,
}

impl<D: Copy> Neighbors<D> {
    /// Number of queries.
    pub fn queries(&self) -> usize {
        self.ids.len().checked_div(self.k).unwrap_or(0)
    }

    /// Neighbour ids of query `q`, best first.
    pub fn ids_of(&self, q: usize) -> &[u32] {
        &self.ids[q * self.k..(q + 1) * self.k]
    }

    /// Distances (or scores) of query `q`, best first.
    pub fn dists_of(&self, q: usize) -> &[D] {
        &self.dists[q * self.k..(q + 1) * self.k]
    }
}

/// Checks search arguments shared by the Hamming and float searches.
pub(crate) fn check_k(k: usize, db_rows: usize) -> Result<()> {
    if k == 0 {
        return Err(CodesError::InvalidArgument("k must be at least 1".into()));
    }
    if k > db_rows {
        return Err(CodesError::InvalidArgument(format!(
            "k ({k}) exceeds the number of database rows ({db_rows})"
        )));
    }
    if db_rows > u32::MAX as usize {
        return Err(CodesError::InvalidArgument(format!(
            "database has {db_rows} rows; at most {} are supported",
            u32::MAX
        )));
    }
    Ok(())
}

/// Exact top-`k` Hamming search of every query row against every database row.
///
/// Runs on rayon's global pool (all cores unless configured otherwise). The result does not
/// depend on the number of threads.
pub fn search(db: &PackedCodes, queries: &PackedCodes, k: usize) -> Result<Neighbors<u32>> {
    search_with(Kernel::detect(), db, queries, k)
}

/// [`search`] with an explicit scan kernel (which must be in [`Kernel::available`]).
pub fn search_with(
    kernel: Kernel,
    db: &PackedCodes,
    queries: &PackedCodes,
    k: usize,
) -> Result<Neighbors<u32>> {
    if !Kernel::available().contains(&kernel) {
        return Err(CodesError::InvalidArgument(format!(
            "kernel {kernel:?} is not supported by this CPU (available: {:?})",
            Kernel::available()
        )));
    }
    if db.bits() != queries.bits() {
        return Err(CodesError::Mismatch(format!(
            "database codes have {} bits but queries have {}",
            db.bits(),
            queries.bits()
        )));
    }
    check_k(k, db.rows())?;
    let nq = queries.rows();
    let mut ids = vec![0u32; nq * k];
    let mut dists = vec![0u32; nq * k];
    let w = db.words_per_row();
    ids.par_chunks_mut(QUERY_BLOCK * k)
        .zip(dists.par_chunks_mut(QUERY_BLOCK * k))
        .zip(queries.as_words().par_chunks(QUERY_BLOCK * w))
        .for_each(|((ids, dists), qwords)| {
            let mut lists: Vec<TopList> = (0..qwords.len() / w).map(|_| TopList::new(k)).collect();
            scan_dispatch(kernel, db.as_words(), w, qwords, &mut lists);
            for (i, list) in lists.iter().enumerate() {
                list.write(&mut ids[i * k..(i + 1) * k], &mut dists[i * k..(i + 1) * k]);
            }
        });
    Ok(Neighbors { k, ids, dists })
}

/// The best `k` candidates of one query, sorted by `(distance, index)` packed into one `u64`
/// key (`distance << 32 | index`), so one integer comparison orders them.
struct TopList {
    keys: Vec<u64>,
    k: usize,
}

impl TopList {
    fn new(k: usize) -> Self {
        Self {
            keys: Vec::with_capacity(k + 1),
            k,
        }
    }

    /// Key of the current worst kept candidate; `u64::MAX` until the list is full.
    #[inline(always)]
    fn threshold(&self) -> u64 {
        if self.keys.len() < self.k {
            u64::MAX
        } else {
            self.keys[self.k - 1]
        }
    }

    /// Inserts a key known to beat the threshold; returns the new threshold.
    #[inline(never)]
    fn insert(&mut self, key: u64) -> u64 {
        let pos = self.keys.partition_point(|&x| x < key);
        self.keys.insert(pos, key);
        self.keys.truncate(self.k);
        self.threshold()
    }

    fn write(&self, ids: &mut [u32], dists: &mut [u32]) {
        for ((id, d), &key) in ids.iter_mut().zip(dists.iter_mut()).zip(&self.keys) {
            *id = key as u32;
            *d = (key >> 32) as u32;
        }
    }
}

/// Which compiled scan loop runs. All give identical results; they differ only in speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kernel {
    /// Plain Rust, no special instructions (any CPU).
    Portable,
    /// x86-64 with the `popcnt` instruction, 4 queries per database row load.
    Popcnt,
    /// x86-64 with AVX-512F and VPOPCNTDQ (vectorised popcount), 8 queries per row load.
    Avx512,
}

impl Kernel {
    /// Every kernel this CPU can run, slowest first (for parity tests and benchmarks).
    pub fn available() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut kernels = vec![Self::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("popcnt") {
                kernels.push(Self::Popcnt);
                if has!("avx2") && has!("avx512f") && has!("avx512vpopcntdq") {
                    kernels.push(Self::Avx512);
                }
            }
        }
        kernels
    }

    /// The fastest kernel this CPU supports.
    pub fn detect() -> Self {
        Self::available().pop().unwrap_or(Self::Portable)
    }
}

impl std::str::FromStr for Kernel {
    type Err = CodesError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "portable" => Ok(Self::Portable),
            "popcnt" => Ok(Self::Popcnt),
            "avx512" => Ok(Self::Avx512),
            other => Err(CodesError::InvalidArgument(format!(
                "unknown kernel {other:?}; expected portable, popcnt or avx512"
            ))),
        }
    }
}

fn scan_dispatch(kernel: Kernel, db: &[u64], w: usize, queries: &[u64], lists: &mut [TopList]) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `search_with` only accepts kernels listed by `Kernel::available()`, which
        // checked that the CPU has these features.
        Kernel::Avx512 => unsafe { scan_avx512(db, w, queries, lists) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, popcnt was detected.
        Kernel::Popcnt => unsafe { scan_popcnt(db, w, queries, lists) },
        _ => scan_generic::<4>(db, w, queries, lists),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn scan_popcnt(db: &[u64], w: usize, queries: &[u64], lists: &mut [TopList]) {
    scan_generic::<4>(db, w, queries, lists);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt,avx2,avx512f,avx512vpopcntdq")]
fn scan_avx512(db: &[u64], w: usize, queries: &[u64], lists: &mut [TopList]) {
    scan_generic::<8>(db, w, queries, lists);
}

/// Picks a loop specialised for the row width (so the distance is fully unrolled), then scans
/// with `G` queries per database row load.
#[inline(always)]
fn scan_generic<const G: usize>(db: &[u64], w: usize, queries: &[u64], lists: &mut [TopList]) {
    match w {
        1 => scan_fixed::<1, G>(db, queries, lists),
        2 => scan_fixed::<2, G>(db, queries, lists),
        3 => scan_fixed::<3, G>(db, queries, lists),
        4 => scan_fixed::<4, G>(db, queries, lists),
        6 => scan_fixed::<6, G>(db, queries, lists),
        8 => scan_fixed::<8, G>(db, queries, lists),
        12 => scan_fixed::<12, G>(db, queries, lists),
        16 => scan_fixed::<16, G>(db, queries, lists),
        _ => scan_any(db, w, queries, lists),
    }
}

#[inline(always)]
fn scan_fixed<const W: usize, const G: usize>(db: &[u64], queries: &[u64], lists: &mut [TopList]) {
    let block_rows = (DB_BLOCK_BYTES / (8 * W)).max(1);
    for (b, block) in db.chunks(block_rows * W).enumerate() {
        let base = (b * block_rows) as u64;
        let mut qs = queries.chunks_exact(W * G);
        let mut ls = lists.chunks_exact_mut(G);
        for (group, glists) in (&mut qs).zip(&mut ls) {
            let mut q = [[0u64; W]; G];
            for (g, qg) in q.iter_mut().enumerate() {
                qg.copy_from_slice(&group[g * W..(g + 1) * W]);
            }
            let mut thr = [0u64; G];
            for (t, l) in thr.iter_mut().zip(glists.iter()) {
                *t = l.threshold();
            }
            for (i, row) in block.chunks_exact(W).enumerate() {
                let row: &[u64; W] = row.try_into().unwrap_or(&[0; W]);
                let idx = base + i as u64;
                for g in 0..G {
                    let mut d = 0u32;
                    for j in 0..W {
                        d += (q[g][j] ^ row[j]).count_ones();
                    }
                    let key = (u64::from(d) << 32) | idx;
                    if key < thr[g] {
                        thr[g] = glists[g].insert(key);
                    }
                }
            }
        }
        // Leftover queries (fewer than a group) one at a time.
        for (q, list) in qs
            .remainder()
            .chunks_exact(W)
            .zip(ls.into_remainder().iter_mut())
        {
            let q: &[u64; W] = q.try_into().unwrap_or(&[0; W]);
            let mut thr = list.threshold();
            for (i, row) in block.chunks_exact(W).enumerate() {
                let mut d = 0u32;
                for j in 0..W {
                    d += (q[j] ^ row[j]).count_ones();
                }
                let key = (u64::from(d) << 32) | (base + i as u64);
                if key < thr {
                    thr = list.insert(key);
                }
            }
        }
    }
}

#[inline(always)]
fn scan_any(db: &[u64], w: usize, queries: &[u64], lists: &mut [TopList]) {
    let block_rows = (DB_BLOCK_BYTES / (8 * w)).max(1);
    for (b, block) in db.chunks(block_rows * w).enumerate() {
        let base = (b * block_rows) as u64;
        for (q, list) in queries.chunks_exact(w).zip(lists.iter_mut()) {
            let mut thr = list.threshold();
            for (i, row) in block.chunks_exact(w).enumerate() {
                let d: u32 = q.iter().zip(row).map(|(x, y)| (x ^ y).count_ones()).sum();
                let key = (u64::from(d) << 32) | (base + i as u64);
                if key < thr {
                    thr = list.insert(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use proptest::prelude::*;

    fn random_codes(rows: usize, bits: usize, seed: u64, density_shift: u32) -> PackedCodes {
        let mut rng = SplitMix64::new(seed);
        // density_shift > 0 makes bits sparse so that many distances tie.
        let data: Vec<bool> = (0..rows * bits)
            .map(|_| rng.next_u64() >> (64 - 1 - density_shift) == 0)
            .collect();
        PackedCodes::from_bools(&data, bits).unwrap()
    }

    fn naive_distance(a: &PackedCodes, i: usize, b: &PackedCodes, j: usize) -> u32 {
        (0..a.bits())
            .filter(|&t| a.bit(i, t) != b.bit(j, t))
            .count() as u32
    }

    /// Reference: full distance row, full sort by (distance, index), take k.
    fn brute_force(db: &PackedCodes, q: &PackedCodes, k: usize) -> Neighbors<u32> {
        let mut ids = Vec::new();
        let mut dists = Vec::new();
        for qi in 0..q.rows() {
            let mut all: Vec<(u32, u32)> = (0..db.rows())
                .map(|i| (naive_distance(q, qi, db, i), i as u32))
                .collect();
            all.sort();
            for &(d, i) in &all[..k] {
                ids.push(i);
                dists.push(d);
            }
        }
        Neighbors { k, ids, dists }
    }

    #[test]
    fn distance_counts_differing_bits() {
        assert_eq!(distance(&[0b1011, 0], &[0b0001, 1 << 63]), 3);
        assert_eq!(distance(&[u64::MAX; 4], &[0; 4]), 256);
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        // All database rows identical: the top-k must be 0..k in order.
        let db = PackedCodes::from_bools(&[true; 8 * 100], 8).unwrap();
        let q = PackedCodes::from_bools(&[false; 8], 8).unwrap();
        let n = search(&db, &q, 5).unwrap();
        assert_eq!(n.ids, vec![0, 1, 2, 3, 4]);
        assert_eq!(n.dists, vec![8; 5]);
    }

    #[test]
    fn rejects_bad_arguments() {
        let a = PackedCodes::zeros(4, 64).unwrap();
        let b = PackedCodes::zeros(4, 65).unwrap();
        assert!(matches!(search(&a, &b, 1), Err(CodesError::Mismatch(_))));
        assert!(search(&a, &a, 0).is_err());
        assert!(search(&a, &a, 5).is_err());
        assert_eq!(
            search(&a, &PackedCodes::zeros(0, 64).unwrap(), 2)
                .unwrap()
                .queries(),
            0
        );
    }

    #[test]
    fn spans_several_database_blocks_and_query_blocks() {
        // 1 word per row → 32768 rows per block; 70_000 rows cross two block boundaries.
        let db = random_codes(70_000, 64, 1, 0);
        let q = random_codes(40, 64, 2, 0);
        assert_eq!(search(&db, &q, 7).unwrap(), brute_force(&db, &q, 7));
    }

    #[test]
    fn every_kernel_gives_identical_results() {
        for bits in [64, 100, 256, 512, 640, 1024] {
            let db = random_codes(3000, bits, 7, 2);
            let q = random_codes(37, bits, 8, 2); // not a multiple of any query group
            let reference = brute_force(&db, &q, 12);
            for kernel in Kernel::available() {
                assert_eq!(
                    search_with(kernel, &db, &q, 12).unwrap(),
                    reference,
                    "{kernel:?} {bits}"
                );
            }
        }
    }

    #[test]
    fn independent_of_thread_count() {
        let db = random_codes(5000, 256, 3, 3);
        let q = random_codes(70, 256, 4, 3);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let r1 = one.install(|| search(&db, &q, 25).unwrap());
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let r3 = three.install(|| search(&db, &q, 25).unwrap());
        assert_eq!(r1, r3);
    }

    proptest! {
        #[test]
        fn distance_equals_naive_bit_loop(bits in 1usize..=1024, seed in any::<u64>()) {
            let c = random_codes(2, bits, seed, 0);
            prop_assert_eq!(distance(c.row(0), c.row(1)), naive_distance(&c, 0, &c, 1));
        }

        #[test]
        fn top_k_equals_full_sort(
            bits in prop::sample::select(vec![1usize, 7, 64, 100, 128, 192, 256, 384, 512, 700, 1024]),
            db_rows in 1usize..300,
            nq in 0usize..40,
            k_frac in 0.0f64..1.0,
            sparse in 0u32..4,
            seed in any::<u64>(),
        ) {
            let db = random_codes(db_rows, bits, seed, sparse);
            let q = random_codes(nq, bits, seed ^ 0xABCD, sparse);
            let k = 1 + ((db_rows - 1) as f64 * k_frac) as usize;
            prop_assert_eq!(search(&db, &q, k).unwrap(), brute_force(&db, &q, k));
        }
    }
}
