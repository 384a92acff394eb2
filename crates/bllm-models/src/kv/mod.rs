//! Key/value cache quantizers for the KV-cache probe (inference only; nothing here trains).
//!
//! A quantizer maps one layer's keys or values, a row-major `[t, c]` matrix (one row per
//! token, `c = kv_heads · head_dim` channels, heads side by side), to the matrix a decoder
//! would read back from the cache ([`KvQuantizer::roundtrip`]), and counts the bytes that
//! cache holds ([`KvQuantizer::bytes`], [`KvQuantizer::static_bytes`]): codes packed into
//! `u64` words per token row (the padding counted), every f16 scale and zero point, outlier
//! values and their channel indices, sketch seeds.
//!
//! One type per file: [`float`] (the reference and f16), [`sign`] (1 bit with a scale per
//! token group or per channel block, optional zero point), [`int`] (KIVI-style asymmetric
//! 2/4/8-bit), [`qjl`] (a Johnson–Lindenstrauss sign sketch of keys scored against the float
//! query), [`outliers`] (any of them with the top r % channels, calibrated, kept in f16).
//! [`CacheSpec`] adds the full-precision window of recent tokens and the choice of quantizing
//! keys before or after RoPE; [`probe`] measures what each does to a real decoder.
//!
//! Time semantics (what the probe enforces): token `j` is read back quantized by query `i`
//! only once its quantized form exists and it has left the window — `i − j ≥ window` and, for
//! per-channel schemes whose scales span a block of `g` tokens, the block holding `j` is
//! complete (`i ≥ (⌊j/g⌋ + 1)·g − 1`, KIVI's residual). Until then it is read in full
//! precision (and counted as f16).

pub mod float;
pub mod int;
pub mod outliers;
pub mod probe;
pub mod qjl;
pub mod sign;

use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// Which quantizer a [`QuantSpec`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantKind {
    /// The float cache itself (f32; the reference).
    Float,
    /// Round to IEEE half precision (the memory baseline).
    F16,
    /// One bit per value: `s·sign(x)` (or `m + s·sign(x − m)` with a zero point).
    Sign,
    /// `bits`-bit asymmetric min/max integers (KIVI).
    Int,
    /// QJL: `sign(S·k)` with `‖k‖`, scored against the float query (keys only).
    Qjl,
}

/// What a scale is shared over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Axis {
    /// Per token: `group` consecutive channels of one token share a scale (KIVI's values).
    #[default]
    Token,
    /// Per channel: one scale per channel for each block of `group` consecutive tokens
    /// (KIVI's keys); a block is quantized once complete, until then it is held in f16.
    Channel,
}

/// One quantizer, as a recipe names it (`{ kind = "sign", axis = "channel", group = 128 }`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantSpec {
    /// The quantizer.
    pub kind: QuantKind,
    /// `int`: bits per value, 2, 4 or 8.
    #[serde(default = "default_bits")]
    pub bits: u32,
    /// `sign` / `int`: what a scale is shared over.
    #[serde(default)]
    pub axis: Axis,
    /// `sign` / `int`: channels per scale on the token axis (0 = one head, `head_dim`), tokens
    /// per scale block on the channel axis (required there).
    #[serde(default)]
    pub group: usize,
    /// `sign`: also store a zero point per group (`m + s·sign(x − m)`, m the group mean).
    #[serde(default)]
    pub zero_point: bool,
    /// `sign` / `int`: fraction of channels kept in f16 (the largest by calibrated max |x|,
    /// per layer), 0 to 0.5.
    #[serde(default)]
    pub outliers: f64,
    /// Keys only: quantize before the rotary embedding (KVQuant) instead of after it.
    #[serde(default)]
    pub pre_rope: bool,
    /// `qjl`: sketch bits per head (0 = `head_dim`).
    #[serde(default)]
    pub sketch: usize,
}

fn default_bits() -> u32 {
    4
}

impl QuantSpec {
    /// A spec of `kind` with every option at its default.
    pub fn new(kind: QuantKind) -> Self {
        Self {
            kind,
            bits: default_bits(),
            axis: Axis::Token,
            group: 0,
            zero_point: false,
            outliers: 0.0,
            pre_rope: false,
            sketch: 0,
        }
    }

    /// Checks the options against the kind; errors name the key (relative to this table).
    pub fn validate(&self) -> std::result::Result<(), (String, String, String)> {
        let bad = |k: &str, e: &str, f: String| Err((k.to_owned(), e.to_owned(), f));
        let q = self.kind;
        let scaled = matches!(q, QuantKind::Sign | QuantKind::Int);
        if q == QuantKind::Int && ![2, 4, 8].contains(&self.bits) {
            return bad("bits", "2, 4 or 8", format!("{}", self.bits));
        }
        if !(0.0..=0.5).contains(&self.outliers) || self.outliers.is_nan() {
            return bad(
                "outliers",
                "a fraction from 0 to 0.5",
                format!("{}", self.outliers),
            );
        }
        if !scaled && self.outliers > 0.0 {
            return bad(
                "outliers",
                "0 (outlier channels apply to `sign` and `int`)",
                format!("{}", self.outliers),
            );
        }
        if scaled && self.axis == Axis::Channel && self.group == 0 {
            return bad(
                "group",
                "tokens per scale block (e.g. 32 or 128) for axis = \"channel\"",
                "0".into(),
            );
        }
        if !scaled && (self.axis != Axis::Token || self.group != 0) {
            return bad(
                "axis",
                "no axis / group (scales apply to `sign` and `int`)",
                format!("{:?} / {}", self.axis, self.group),
            );
        }
        if self.zero_point && q != QuantKind::Sign {
            return bad(
                "zero_point",
                "false (only `sign` has an optional zero point; `int` always stores one)",
                "true".into(),
            );
        }
        if self.sketch != 0 && q != QuantKind::Qjl {
            return bad(
                "sketch",
                "0 (only `qjl` has a sketch)",
                format!("{}", self.sketch),
            );
        }
        if self.sketch > 4096 {
            return bad(
                "sketch",
                "at most 4096 bits per head",
                format!("{}", self.sketch),
            );
        }
        Ok(())
    }

    /// A short label, e.g. `sign/channel128`, `int4/token64+out1%`, `qjl128`.
    pub fn label(&self) -> String {
        let mut s = match self.kind {
            QuantKind::Float => "float".to_owned(),
            QuantKind::F16 => "f16".to_owned(),
            QuantKind::Qjl => format!("qjl{}", self.sketch),
            QuantKind::Sign | QuantKind::Int => {
                let head = if self.kind == QuantKind::Sign {
                    if self.zero_point { "sign+zp" } else { "sign" }.to_owned()
                } else {
                    format!("int{}", self.bits)
                };
                let axis = match self.axis {
                    Axis::Token => "token",
                    Axis::Channel => "channel",
                };
                let g = if self.group == 0 {
                    "head".to_owned()
                } else {
                    self.group.to_string()
                };
                format!("{head}/{axis}{g}")
            }
        };
        if self.outliers > 0.0 {
            s.push_str(&format!("+out{}%", self.outliers * 100.0));
        }
        if self.pre_rope {
            s.push_str("/pre-rope");
        }
        s
    }
}

/// Keys, values and the full-precision window: one cache configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheSpec {
    /// The keys' quantizer.
    pub keys: QuantSpec,
    /// The values' quantizer.
    pub values: QuantSpec,
    /// The newest `window` tokens (the current one included) are read in full precision.
    pub window: usize,
}

impl CacheSpec {
    /// The float cache (the reference).
    pub fn float() -> Self {
        Self {
            keys: QuantSpec::new(QuantKind::Float),
            values: QuantSpec::new(QuantKind::Float),
            window: 0,
        }
    }

    /// Checks both quantizers and what only keys may have; errors name `keys.…` / `values.…`.
    pub fn validate(&self) -> std::result::Result<(), (String, String, String)> {
        self.keys
            .validate()
            .map_err(|(k, e, f)| (format!("keys.{k}"), e, f))?;
        self.values
            .validate()
            .map_err(|(k, e, f)| (format!("values.{k}"), e, f))?;
        if self.values.pre_rope {
            return Err((
                "values.pre_rope".into(),
                "false (values have no rotary embedding)".into(),
                "true".into(),
            ));
        }
        if self.values.kind == QuantKind::Qjl {
            return Err((
                "values.kind".into(),
                "a quantizer that reconstructs values (QJL sketches keys for the query's inner product)".into(),
                "\"qjl\"".into(),
            ));
        }
        Ok(())
    }

    /// `keys=…,values=…,window=…`.
    pub fn label(&self) -> String {
        format!(
            "K {} · V {} · w{}",
            self.keys.label(),
            self.values.label(),
            self.window
        )
    }
}

/// One layer's quantizer for keys or values.
pub trait KvQuantizer: Send + Sync {
    /// What the cache gives back for `x`, row-major `[t, c]`.
    fn roundtrip(&self, x: &[f32], t: usize) -> Vec<f32>;
    /// Tokens per scale block along time (1: a token is quantized alone, when written).
    fn block(&self) -> usize {
        1
    }
    /// Bytes of `t` tokens held in quantized form: codes padded to `u64` words per token row,
    /// scales, zero points, per-token outlier values.
    fn bytes(&self, t: usize) -> usize;
    /// Bytes per layer independent of the length (outlier channel indices, a sketch seed).
    fn static_bytes(&self) -> usize {
        0
    }
}

/// Builds one layer's quantizer for `c = heads · head_dim` channels. `calib` is the layer's
/// calibrated max |x| per channel, needed when `spec.outliers > 0`; `seed` seeds QJL's sketch.
pub fn build(
    spec: &QuantSpec,
    c: usize,
    head_dim: usize,
    calib: Option<&[f32]>,
    seed: u64,
) -> Result<Box<dyn KvQuantizer>> {
    spec.validate()
        .map_err(|(key, expected, found)| ModelError::InvalidCache {
            key,
            msg: format!("expected {expected}, found {found}"),
        })?;
    if c == 0 || head_dim == 0 || c % head_dim != 0 {
        return Err(ModelError::InvalidCache {
            key: "channels".into(),
            msg: format!("{c} channels are not whole heads of {head_dim}"),
        });
    }
    let scaled = |c_in: usize| -> Box<dyn KvQuantizer> {
        let group = if spec.group == 0 && spec.axis == Axis::Token {
            head_dim
        } else {
            spec.group
        };
        match spec.kind {
            QuantKind::Sign => Box::new(sign::Sign {
                channels: c_in,
                axis: spec.axis,
                group,
                zero_point: spec.zero_point,
            }),
            _ => Box::new(int::Int {
                channels: c_in,
                axis: spec.axis,
                group,
                bits: spec.bits,
            }),
        }
    };
    Ok(match spec.kind {
        QuantKind::Float => Box::new(float::Identity { channels: c }),
        QuantKind::F16 => Box::new(float::F16 { channels: c }),
        QuantKind::Qjl => Box::new(qjl::Qjl::new(
            c,
            head_dim,
            if spec.sketch == 0 {
                head_dim
            } else {
                spec.sketch
            },
            seed,
        )),
        QuantKind::Sign | QuantKind::Int if spec.outliers > 0.0 => {
            let calib = calib.ok_or_else(|| ModelError::InvalidCache {
                key: "outliers".into(),
                msg: "outlier channels need a calibration (max |x| per channel)".into(),
            })?;
            if calib.len() != c {
                return Err(ModelError::InvalidCache {
                    key: "outliers".into(),
                    msg: format!("calibration has {} channels, expected {c}", calib.len()),
                });
            }
            let out = outliers::top_channels(calib, spec.outliers);
            let c_in = c - out.len();
            outliers::Outliers::new(c, out, scaled(c_in)).boxed()
        }
        QuantKind::Sign | QuantKind::Int => scaled(c),
    })
}

/// Tokens held in quantized form when the cache holds `t` tokens: those that left the
/// window and whose block is complete.
pub fn quantized_prefix(t: usize, window: usize, block: usize) -> usize {
    let block = block.max(1);
    t.saturating_sub(window).min(t / block * block)
}

/// Whether query `i` reads token `j ≤ i` in full precision (see the module docs).
pub fn reads_float(i: usize, j: usize, window: usize, block: usize) -> bool {
    let block = block.max(1);
    i - j < window || i + 1 < (j / block + 1) * block
}

/// Bytes one layer's keys or values take when the cache holds `t` tokens: the quantized
/// prefix, the newer tokens in f16, the static metadata.
pub fn layer_bytes(q: &dyn KvQuantizer, t: usize, window: usize, channels: usize) -> usize {
    let tq = quantized_prefix(t, window, q.block());
    q.bytes(tq) + (t - tq) * 2 * channels + q.static_bytes()
}

/// Bytes of `n` values of `bits` bits packed into `u64` words.
pub fn packed_bytes(n: usize, bits: usize) -> usize {
    (n * bits).div_ceil(64) * 8
}

/// The groups of a `[t, c]` matrix that share a scale, as `(first index, stride, length)`:
/// on the token axis `group` consecutive channels of one row (the last group of a row may be
/// shorter), on the channel axis one channel over `group` consecutive rows (the last block
/// may be shorter).
pub(crate) fn groups(t: usize, c: usize, axis: Axis, group: usize) -> Vec<(usize, usize, usize)> {
    let g = group.max(1);
    let mut out = Vec::new();
    match axis {
        Axis::Token => {
            for r in 0..t {
                let mut s = 0;
                while s < c {
                    let len = g.min(c - s);
                    out.push((r * c + s, 1, len));
                    s += len;
                }
            }
        }
        Axis::Channel => {
            let mut b = 0;
            while b < t {
                let len = g.min(t - b);
                for ch in 0..c {
                    out.push((b * c + ch, c, len));
                }
                b += len;
            }
        }
    }
    out
}

/// Tokens per scale block along time for a scheme with scales on `axis` (see
/// [`KvQuantizer::block`]).
pub(crate) fn block_of(axis: Axis, group: usize) -> usize {
    match axis {
        Axis::Token => 1,
        Axis::Channel => group,
    }
}

/// Scale groups of `t` tokens of `c` channels (the count [`groups`] yields).
pub(crate) fn group_count(axis: Axis, group: usize, t: usize, c: usize) -> usize {
    match axis {
        Axis::Token => t * c.div_ceil(group.max(1)),
        Axis::Channel => t.div_ceil(group.max(1)) * c,
    }
}

/// Nearest f16 of `v`, as f32.
pub(crate) fn f16_round(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// The largest f16 ≤ `v` (finite `v` within f16 range).
pub(crate) fn f16_down(v: f32) -> f32 {
    let h = half::f16::from_f32(v);
    if h.to_f32() <= v {
        return h.to_f32();
    }
    let b = h.to_bits();
    let down = if b == 0 || b == 0x8000 {
        0x8001
    } else if b & 0x8000 == 0 {
        b - 1
    } else {
        b + 1
    };
    half::f16::from_bits(down).to_f32()
}

/// The smallest f16 ≥ `v`.
pub(crate) fn f16_up(v: f32) -> f32 {
    -f16_down(-v)
}

#[cfg(test)]
mod tests;
