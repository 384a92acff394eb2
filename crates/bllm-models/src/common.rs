//! Building blocks shared by the architectures: projections and tables from checkpoint tensors.

use bllm_nn::Proj;
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::{Checkpoint, Result};

/// A float [`Proj`] from the checkpoint's `{name}.weight` (`[d_out, d_in]`, PyTorch layout) and,
/// when `bias`, `{name}.bias` (`[d_out]`). Burn's `Linear` multiplies by `[d_in, d_out]`, so the
/// weight is transposed once here, into a contiguous buffer.
pub fn proj<B: Backend>(
    ck: &mut Checkpoint,
    weight: &str,
    bias: Option<&str>,
    d_in: usize,
    d_out: usize,
    device: &B::Device,
) -> Result<Proj<B>> {
    let w = ck.take(weight, &[d_out, d_in])?;
    let w = transpose(&w, d_out, d_in);
    let bias = match bias {
        Some(b) => Some(Param::from_tensor(vector::<B>(
            ck.take(b, &[d_out])?,
            device,
        ))),
        None => None,
    };
    Ok(proj_from(w, d_in, d_out, bias, device))
}

/// A float [`Proj`] from a row-major `[d_in, d_out]` weight already in Burn's layout.
pub fn proj_from<B: Backend>(
    w_in_out: Vec<f32>,
    d_in: usize,
    d_out: usize,
    bias: Option<Param<Tensor<B, 1>>>,
    device: &B::Device,
) -> Proj<B> {
    Proj {
        float: Some(Linear {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(w_in_out, [d_in, d_out]),
                device,
            )),
            bias,
        }),
        binary: None,
        bit: None,
        norm: None,
        adapter: None,
    }
}

/// `[rows, cols]` row-major → `[cols, rows]` row-major.
pub fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    // Blocked so both sides stay in cache on the 49,152 × 576 embedding.
    const T: usize = 32;
    for r0 in (0..rows).step_by(T) {
        for c0 in (0..cols).step_by(T) {
            for r in r0..(r0 + T).min(rows) {
                for c in c0..(c0 + T).min(cols) {
                    out[c * rows + r] = w[r * cols + c];
                }
            }
        }
    }
    out
}

/// A 1-D tensor.
pub fn vector<B: Backend>(v: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

/// A 2-D tensor `[rows, cols]`.
pub fn matrix<B: Backend>(
    v: Vec<f32>,
    rows: usize,
    cols: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(v, [rows, cols]), device)
}

/// Reads and parses a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| crate::ModelError::format(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn transpose_is_exact() {
        let (r, c) = (37, 70);
        let w: Vec<f32> = (0..r * c).map(|i| i as f32).collect();
        let t = super::transpose(&w, r, c);
        for i in 0..r {
            for j in 0..c {
                assert_eq!(t[j * r + i], w[i * c + j]);
            }
        }
        assert_eq!(super::transpose(&t, c, r), w);
    }
}
