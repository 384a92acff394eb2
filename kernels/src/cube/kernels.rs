//! The CubeCL kernels. Each kernel reads and writes 32-bit words (WGSL has no 64-bit
//! integers); a row of `bits` bits is `2·ceil(bits/64)` words, the contract's little-endian
//! `u64` words read as little-endian `u32` pairs.
//!
//! Flat kernels index their work item as `ABSOLUTE_POS_Y · (CUBE_COUNT_X · CUBE_DIM_X) +
//! ABSOLUTE_POS_X` so that large launches fold into two grid dimensions (a grid dimension is
//! limited to 65 535 cubes on some APIs).

// `#[cube(launch)]` generates a module, a struct and functions per kernel that cannot carry
// docs; the kernels themselves are documented below.
#![allow(missing_docs)]

use cubecl::prelude::*;

/// Flat work-item index of a 2-D folded 1-D launch.
#[cube]
fn flat_pos() -> u32 {
    ABSOLUTE_POS_Y * (CUBE_COUNT_X * CUBE_DIM_X) + ABSOLUTE_POS_X
}

/// Pack: `out[r · words + w]` = bits `32w … 32w+31` of row `r` of `x` (`rows × dim`, row-major),
/// bit set where the value is `>= 0`; columns at or above `bits` stay 0 (contract padding).
#[cube(launch)]
pub fn pack_signs(
    x: &Array<f32>,
    out: &mut Array<u32>,
    rows: u32,
    dim: u32,
    bits: u32,
    words: u32,
) {
    let pos = flat_pos();
    if pos < rows * words {
        let r = pos / words;
        let w = pos % words;
        let mut word = 0u32;
        for j in 0..32u32 {
            let col = w * 32 + j;
            // Nested on purpose: `&&` does not short-circuit in a kernel, and the read must
            // not happen past the row (or the buffer) when `col >= bits`.
            #[allow(clippy::collapsible_if)]
            if col < bits {
                if x[(r * dim + col) as usize] >= 0.0 {
                    word |= 1u32 << j;
                }
            }
        }
        out[pos as usize] = word;
    }
}

/// Re-pack, contract → GPU layout: `gpu[w · rows + r] = contract[r · words + w]` (one item per
/// word; writes are coalesced).
#[cube(launch)]
pub fn to_gpu_layout(contract: &Array<u32>, gpu: &mut Array<u32>, rows: u32, words: u32) {
    let pos = flat_pos();
    if pos < rows * words {
        let w = pos / rows;
        let r = pos % rows;
        gpu[pos as usize] = contract[(r * words + w) as usize];
    }
}

/// Re-pack, GPU layout → contract: the inverse of [`to_gpu_layout`] (writes are coalesced).
#[cube(launch)]
pub fn from_gpu_layout(gpu: &Array<u32>, contract: &mut Array<u32>, rows: u32, words: u32) {
    let pos = flat_pos();
    if pos < rows * words {
        let r = pos / words;
        let w = pos % words;
        contract[pos as usize] = gpu[(w * rows + r) as usize];
    }
}

/// `(da, ia) < (db, ib)` in the order of `bllm-codes`: distance, then the lower index.
#[cube]
fn before(da: u32, ia: u32, db: u32, ib: u32) -> bool {
    da < db || (da == db && ia < ib)
}

/// Tree merge of the `units` sorted lists of length `k` in shared memory (list `t` at
/// `t · k`) into list 0, keeping the best `k` by `(distance, index)`. Every unit of the cube
/// must call it (it synchronises the cube).
#[cube]
fn tree_merge(
    sd: &mut SharedMemory<u32>,
    si: &mut SharedMemory<u32>,
    t: u32,
    #[comptime] k: usize,
    #[comptime] units: usize,
) {
    let mut md = Array::<u32>::new(k);
    let mut mi = Array::<u32>::new(k);
    let kk = k as u32;
    let mut s = 1u32;
    sync_cube();
    while s < units as u32 {
        if t % (2 * s) == 0 {
            let a = t * kk;
            let b = (t + s) * kk;
            let mut ia = 0u32;
            let mut ib = 0u32;
            for o in 0..kk {
                // Clamp the reads so an exhausted list is never read past its end.
                let ra = a + min(ia, kk - 1);
                let rb = b + min(ib, kk - 1);
                let take_a = ia < kk
                    && (ib >= kk
                        || before(
                            sd[ra as usize],
                            si[ra as usize],
                            sd[rb as usize],
                            si[rb as usize],
                        ));
                if take_a {
                    md[o as usize] = sd[ra as usize];
                    mi[o as usize] = si[ra as usize];
                    ia += 1;
                } else {
                    md[o as usize] = sd[rb as usize];
                    mi[o as usize] = si[rb as usize];
                    ib += 1;
                }
            }
            for o in 0..kk {
                sd[(a + o) as usize] = md[o as usize];
                si[(a + o) as usize] = mi[o as usize];
            }
        }
        sync_cube();
        s *= 2;
    }
}

/// Hamming top-k, pass 1. Cube `(c, q)` scans database rows `[c · chunk, (c+1) · chunk)` for
/// query `q`; each of its `units` units keeps a sorted list of its best `k` (rows visited in
/// increasing order, so ties keep the lower index), the lists are tree-merged in shared memory
/// and written to `out_*[(q · chunks + c) · k ..]`. Empty slots hold `u32::MAX`.
///
/// `db` is in the GPU layout (`words × n`), `queries` in the contract layout (`q × words`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn hamming_topk_partial(
    db: &Array<u32>,
    queries: &Array<u32>,
    out_d: &mut Array<u32>,
    out_i: &mut Array<u32>,
    n: u32,
    words: u32,
    chunk: u32,
    #[comptime] k: usize,
    #[comptime] units: usize,
) {
    let c = CUBE_POS_X;
    let q = CUBE_POS_Y;
    let chunks = CUBE_COUNT_X;
    let t = UNIT_POS_X;
    let kk = k as u32;
    let mut ld = Array::<u32>::new(k);
    let mut li = Array::<u32>::new(k);
    for i in 0..kk {
        ld[i as usize] = u32::MAX;
        li[i as usize] = u32::MAX;
    }
    let start = c * chunk;
    let end = min(start + chunk, n);
    let mut r = start + t;
    while r < end {
        let mut d = 0u32;
        for w in 0..words {
            d += (db[(w * n + r) as usize] ^ queries[(q * words + w) as usize]).count_ones();
        }
        if d < ld[(kk - 1) as usize] {
            // A runtime variable (initialised from a literal), not the comptime `kk - 1`.
            let mut p = 0u32;
            p += kk - 1;
            loop {
                if p == 0 {
                    break;
                }
                if ld[(p - 1) as usize] <= d {
                    break;
                }
                ld[p as usize] = ld[(p - 1) as usize];
                li[p as usize] = li[(p - 1) as usize];
                p -= 1;
            }
            ld[p as usize] = d;
            li[p as usize] = r;
        }
        r += units as u32;
    }
    let mut sd = SharedMemory::<u32>::new(k * units);
    let mut si = SharedMemory::<u32>::new(k * units);
    for i in 0..kk {
        sd[(t * kk + i) as usize] = ld[i as usize];
        si[(t * kk + i) as usize] = li[i as usize];
    }
    tree_merge(&mut sd, &mut si, t, k, units);
    if t == 0 {
        let base = (q * chunks + c) * kk;
        for i in 0..kk {
            out_d[(base + i) as usize] = sd[i as usize];
            out_i[(base + i) as usize] = si[i as usize];
        }
    }
}

/// Hamming top-k, pass 2. Cube `q` merges the `chunks` (≤ `units`) sorted lists of query `q`
/// from pass 1 into its final `k` neighbours.
#[cube(launch)]
pub fn topk_merge(
    in_d: &Array<u32>,
    in_i: &Array<u32>,
    out_d: &mut Array<u32>,
    out_i: &mut Array<u32>,
    chunks: u32,
    #[comptime] k: usize,
    #[comptime] units: usize,
) {
    let q = CUBE_POS_X;
    let t = UNIT_POS_X;
    let kk = k as u32;
    let mut sd = SharedMemory::<u32>::new(k * units);
    let mut si = SharedMemory::<u32>::new(k * units);
    for i in 0..kk {
        let dst = (t * kk + i) as usize;
        if t < chunks {
            let src = ((q * chunks + t) * kk + i) as usize;
            sd[dst] = in_d[src];
            si[dst] = in_i[src];
        } else {
            sd[dst] = u32::MAX;
            si[dst] = u32::MAX;
        }
    }
    tree_merge(&mut sd, &mut si, t, k, units);
    if t == 0 {
        for i in 0..kk {
            out_d[(q * kk + i) as usize] = sd[i as usize];
            out_i[(q * kk + i) as usize] = si[i as usize];
        }
    }
}

/// XNOR-popcount matmul: `y[b, o] = (k_bits − 2·Σ_w popcount(a[b, w] ⊕ w[w, o])) · scale[o] +
/// bias[o]`. `a` is in the contract layout (`batch × words`), `wt` in the GPU layout
/// (`words × out`) so the units of a cube (consecutive `o`) read consecutive weight words.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn xnor_matmul(
    a: &Array<u32>,
    wt: &Array<u32>,
    scale: &Array<f32>,
    bias: &Array<f32>,
    y: &mut Array<f32>,
    batch: u32,
    out: u32,
    words: u32,
    k_bits: u32,
) {
    let o = ABSOLUTE_POS_X;
    let b = ABSOLUTE_POS_Y;
    if o < out && b < batch {
        let mut h = 0u32;
        for w in 0..words {
            h += (a[(b * words + w) as usize] ^ wt[(w * out + o) as usize]).count_ones();
        }
        let dot = i32::cast_from(k_bits) - 2 * i32::cast_from(h);
        y[(b * out + o) as usize] = f32::cast_from(dot) * scale[o as usize] + bias[o as usize];
    }
}

/// Float activations × binary weights: `y[b, o] = (Σ_k ±x[b, k]) · scale[o] + bias[o]`, `+`
/// where weight bit `k` is set. Summed over 8 lanes (`k mod 8`) combined as
/// `((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7))`, the order of the CPU counterpart.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn binary_float_matmul(
    x: &Array<f32>,
    wt: &Array<u32>,
    scale: &Array<f32>,
    bias: &Array<f32>,
    y: &mut Array<f32>,
    batch: u32,
    out: u32,
    words: u32,
    k_dim: u32,
) {
    let o = ABSOLUTE_POS_X;
    let b = ABSOLUTE_POS_Y;
    if o < out && b < batch {
        let mut lanes = Array::<f32>::new(8usize);
        for l in 0..8u32 {
            lanes[l as usize] = 0.0;
        }
        for w in 0..words {
            let word = wt[(w * out + o) as usize];
            for j in 0..32u32 {
                let col = w * 32 + j;
                if col < k_dim {
                    let v = x[(b * k_dim + col) as usize];
                    let l = (col % 8) as usize;
                    if ((word >> j) & 1u32) == 1u32 {
                        lanes[l] += v;
                    } else {
                        lanes[l] -= v;
                    }
                }
            }
        }
        let sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
            + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
        y[(b * out + o) as usize] = sum * scale[o as usize] + bias[o as usize];
    }
}
