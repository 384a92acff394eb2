//! Larq-style model summaries: parameters per precision and the bytes a layer really takes once
//! scales, padding to 64-bit words and per-tensor metadata are counted.

use std::fmt;

use serde::Serialize;

/// Bytes of metadata counted per packed weight tensor: the 48-byte header of a `.bcodes` file
/// (magic, version, shape, checksum), which is what storing the tensor in the contract format
/// costs.
pub const METADATA_BYTES: usize = 48;

/// One layer's parameter counts and storage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerSummary {
    /// Layer path in the model.
    pub name: String,
    /// Layer type.
    pub kind: &'static str,
    /// 1-bit parameters.
    pub binary_params: usize,
    /// Ternary (2-bit stored) parameters.
    pub ternary_params: usize,
    /// float32 parameters kept at inference: bias, scales, thresholds, norm gains.
    pub float_params: usize,
    /// Bytes of the packed weights: rows padded to whole u64 words, bit-planes, and
    /// [`METADATA_BYTES`] per plane.
    pub packed_bytes: usize,
    /// Bytes of the float parameters (4 each).
    pub float_bytes: usize,
    /// Bytes of the same layer in float32 (all weights and float parameters at 4 bytes).
    pub float32_equivalent_bytes: usize,
}

impl LayerSummary {
    /// A row of `n` float32 parameters (embeddings, norms, float layers).
    pub fn float(name: impl Into<String>, kind: &'static str, n: usize) -> Self {
        Self {
            name: name.into(),
            kind,
            binary_params: 0,
            ternary_params: 0,
            float_params: n,
            packed_bytes: 0,
            float_bytes: n * 4,
            float32_equivalent_bytes: n * 4,
        }
    }

    /// Total stored bytes.
    pub fn total_bytes(&self) -> usize {
        self.packed_bytes + self.float_bytes
    }
}

/// A layer or model that can report its [`LayerSummary`] rows.
pub trait Summarize {
    /// Appends this module's rows, named under `name`.
    fn summarize(&self, name: &str, out: &mut Vec<LayerSummary>);
}

impl<B: burn::tensor::backend::Backend> Summarize for burn::nn::Linear<B> {
    fn summarize(&self, name: &str, out: &mut Vec<LayerSummary>) {
        let [d_in, d_out] = self.weight.dims();
        let n = d_in * d_out + self.bias.as_ref().map_or(0, |_| d_out);
        out.push(LayerSummary::float(name, "Linear", n));
    }
}

/// The summary of a whole model; `Display` prints Larq's table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// One row per layer.
    pub layers: Vec<LayerSummary>,
}

/// Summarises `model`.
pub fn summary(model: &impl Summarize) -> Summary {
    let mut layers = Vec::new();
    model.summarize("", &mut layers);
    Summary { layers }
}

impl Summary {
    /// Total stored bytes.
    pub fn total_bytes(&self) -> usize {
        self.layers.iter().map(LayerSummary::total_bytes).sum()
    }

    /// Total float32-equivalent bytes.
    pub fn float32_equivalent_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.float32_equivalent_bytes).sum()
    }

    /// float32 bytes / stored bytes.
    pub fn compression(&self) -> f64 {
        self.float32_equivalent_bytes() as f64 / self.total_bytes().max(1) as f64
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<24} {:<13} {:>10} {:>10} {:>10} {:>12} {:>12} {:>8}",
            "layer", "kind", "1-bit", "ternary", "float32", "bytes", "f32 bytes", "ratio"
        )?;
        for l in &self.layers {
            writeln!(
                f,
                "{:<24} {:<13} {:>10} {:>10} {:>10} {:>12} {:>12} {:>7.2}x",
                l.name,
                l.kind,
                l.binary_params,
                l.ternary_params,
                l.float_params,
                l.total_bytes(),
                l.float32_equivalent_bytes,
                l.float32_equivalent_bytes as f64 / l.total_bytes().max(1) as f64
            )?;
        }
        let sum = |g: fn(&LayerSummary) -> usize| self.layers.iter().map(g).sum::<usize>();
        writeln!(
            f,
            "{:<24} {:<13} {:>10} {:>10} {:>10} {:>12} {:>12} {:>7.2}x",
            "total",
            "",
            sum(|l| l.binary_params),
            sum(|l| l.ternary_params),
            sum(|l| l.float_params),
            self.total_bytes(),
            self.float32_equivalent_bytes(),
            self.compression()
        )?;
        write!(
            f,
            "bytes count packed weights padded to 64-bit words, {METADATA_BYTES} B of metadata per packed tensor, and float32 scales, biases, thresholds and gains"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BinaryLinearConfig, BitLinearConfig, Scaling};
    use burn::backend::NdArray;

    struct Net {
        a: crate::BinaryLinear<NdArray>,
        b: crate::BitLinear<NdArray>,
    }

    impl Summarize for Net {
        fn summarize(&self, name: &str, out: &mut Vec<LayerSummary>) {
            self.a.summarize(&format!("{name}a"), out);
            self.b.summarize(&format!("{name}b"), out);
        }
    }

    #[test]
    fn byte_accounting_on_hand_computed_layers() {
        let dev = Default::default();
        let a = BinaryLinearConfig::new(100, 3)
            .with_scaling(Scaling::PerChannel { learnable: false })
            .init::<NdArray>(&dev, 1)
            .unwrap();
        let b = BitLinearConfig::new(64, 2)
            .init::<NdArray>(&dev, 2)
            .unwrap();
        let s = summary(&Net { a, b });
        // a: 3 rows × ceil(100/64) = 2 words × 8 B = 48 B + 48 B metadata; bias 3 + scales 3 floats.
        let a = &s.layers[0];
        assert_eq!(
            (
                a.binary_params,
                a.float_params,
                a.packed_bytes,
                a.float_bytes
            ),
            (300, 6, 96, 24)
        );
        assert_eq!(a.float32_equivalent_bytes, (300 + 3) * 4);
        // b: 2 planes × (2 rows × 1 word × 8 B + 48 B); gain 64 + γ 1 floats.
        let b = &s.layers[1];
        assert_eq!(
            (
                b.ternary_params,
                b.float_params,
                b.packed_bytes,
                b.float_bytes
            ),
            (128, 65, 128, 260)
        );
        assert_eq!(b.float32_equivalent_bytes, (128 + 64) * 4);
        assert_eq!(s.total_bytes(), 120 + 388);
        assert!((s.compression() - (1212.0 + 768.0) / 508.0).abs() < 1e-12);
        let table = s.to_string();
        assert!(
            table.contains("BinaryLinear") && table.contains("total"),
            "{table}"
        );
    }
}
