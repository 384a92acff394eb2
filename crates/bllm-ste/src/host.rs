//! What the fused CPU kernels share: moving a tensor to the backend type it was matched as, and
//! reading an f32 tensor's elements on the host in place.

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::{Flex, FlexTensor};
use burn_ndarray::NdArray;
use rayon::prelude::*;

use crate::softmax::{host_backend, same};

/// Moves `t` into type `U`, which the caller has matched as the same type (by `TypeId`).
pub(crate) fn cast<T: 'static, U: 'static>(t: T) -> U {
    same::<T, U>(t)
        .unwrap_or_else(|_| unreachable!("a tensor cast to the backend it was matched as"))
}

/// Host values of an f32 tensor of any backend, row-major.
pub(crate) fn values<B: Backend, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    x.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_else(|_| unreachable!("converted to f32"))
}

/// A tensor of `B` holding row-major `v` with `shape` (no copy on Flex: an f32 `Vec` already has
/// the alignment Flex asks for).
pub(crate) fn tensor<B: Backend, const D: usize>(
    v: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// A view of the values of `x` (of its inner tensor under autodiff), or `None` when `x` is not
/// an f32 tensor of a CPU backend handled here.
pub(crate) fn view_of<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Option<View<D>> {
    use std::any::TypeId;
    if x.dtype() != DType::F32 || !host_backend::<B>() {
        return None;
    }
    let id = TypeId::of::<B>();
    Some(if id == TypeId::of::<Autodiff<Flex>>() {
        View::of(cast::<_, Tensor<Autodiff<Flex>, D>>(x.clone()).inner())
    } else if id == TypeId::of::<Autodiff<NdArray>>() {
        View::of(cast::<_, Tensor<Autodiff<NdArray>, D>>(x.clone()).inner())
    } else {
        View::of(x.clone())
    })
}

/// `len` zeros, written in parallel chunks: a large output buffer's zeroing (and the page
/// faults of its first touch) split across the rayon pool instead of on the calling thread,
/// which `vec![0.0; len]` leaves one core idle for.
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    if len < crate::fused::PARALLEL_MIN {
        return vec![0.0; len];
    }
    let mut v = Vec::<f32>::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(1 << 16)
        .for_each(|c| c.fill(std::mem::MaybeUninit::new(0.0)));
    // SAFETY: the chunks above cover all `len` elements and wrote each.
    unsafe { v.set_len(len) };
    v
}

/// `f` of every element of the f32 tensor `x`, as a constant (no autodiff graph): one parallel
/// pass on the host on the CPU backends (reading Flex's memory in place); `Err(x)` elsewhere.
pub(crate) fn map_constant<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    f: impl Fn(f32) -> f32 + Sync,
) -> std::result::Result<Tensor<B, D>, Tensor<B, D>> {
    const CHUNK: usize = 1 << 14;
    let Some(v) = view_of(&x) else {
        return Err(x);
    };
    let (dims, device) = (x.dims(), x.device());
    drop(x);
    let mut out = match v.contiguous() {
        Some(src) => {
            let n = src.len();
            // Written once, so not zeroed first.
            let mut out = Vec::<f32>::with_capacity(n);
            out.spare_capacity_mut()[..n]
                .par_chunks_mut(CHUNK)
                .zip(src.par_chunks(CHUNK))
                .for_each(|(o, s)| {
                    crate::simd::wide(|| {
                        for (o, s) in o.iter_mut().zip(s) {
                            o.write(f(*s));
                        }
                    })
                });
            // SAFETY: the chunks above cover all `n` elements and wrote each.
            unsafe { out.set_len(n) };
            // A new leaf: on an autodiff backend it requires no gradient.
            return Ok(tensor::<B, D>(out, dims, &device));
        }
        None => v.to_vec(),
    };
    out.par_chunks_mut(CHUNK).for_each(|o| {
        crate::simd::wide(|| {
            for o in o.iter_mut() {
                *o = f(*o);
            }
        })
    });
    Ok(tensor::<B, D>(out, dims, &device))
}

/// A rank-`R` f32 tensor's elements on the host: in place through its strides on Flex, copied
/// (row-major) on any other backend or when a stride is negative.
#[derive(Clone, Debug)]
pub(crate) struct View<const R: usize> {
    buf: Buf,
    /// Index of element `[0; R]` in [`View::data`].
    pub(crate) offset: usize,
    /// Elements between neighbours along each dimension.
    pub(crate) strides: [usize; R],
    /// The shape.
    pub(crate) dims: [usize; R],
}

#[derive(Clone, Debug)]
enum Buf {
    Flex(FlexTensor),
    Host(Arc<Vec<f32>>),
}

impl<const R: usize> View<R> {
    /// The view of `x` (f32, checked by the caller).
    pub(crate) fn of<B: Backend>(x: Tensor<B, R>) -> Self {
        let dims = x.dims();
        let x = match same::<_, Tensor<Flex, R>>(x) {
            Ok(x) => {
                let p = x.into_primitive().tensor();
                let l = p.layout();
                let st = l.strides();
                if st.len() == R && st.iter().all(|s| *s >= 0) {
                    let mut strides = [0usize; R];
                    for (d, s) in strides.iter_mut().zip(st) {
                        *d = *s as usize;
                    }
                    return View {
                        offset: l.start_offset(),
                        strides,
                        dims,
                        buf: Buf::Flex(p),
                    };
                }
                values(Tensor::<Flex, R>::from_primitive(
                    burn::tensor::TensorPrimitive::Float(p),
                ))
            }
            Err(x) => values(x),
        };
        let mut strides = [1usize; R];
        for i in (0..R.saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * dims[i + 1];
        }
        View {
            buf: Buf::Host(Arc::new(x)),
            offset: 0,
            strides,
            dims,
        }
    }

    /// The buffer the offset and strides index.
    pub(crate) fn data(&self) -> &[f32] {
        match &self.buf {
            Buf::Flex(t) => t.storage::<f32>(),
            Buf::Host(v) => v,
        }
    }

    /// The elements when they lie row-major and contiguous in the buffer.
    pub(crate) fn contiguous(&self) -> Option<&[f32]> {
        let n: usize = self.dims.iter().product();
        let mut want = 1usize;
        for (d, s) in self.dims.iter().zip(&self.strides).rev() {
            if *d > 1 && *s != want {
                return None;
            }
            want *= d;
        }
        Some(&self.data()[self.offset..self.offset + n])
    }

    /// The row-major elements (copied).
    pub(crate) fn to_vec(&self) -> Vec<f32> {
        if let Some(c) = self.contiguous() {
            return c.to_vec();
        }
        let n: usize = self.dims.iter().product();
        let data = self.data();
        let mut out = Vec::with_capacity(n);
        let mut idx = [0usize; R];
        for _ in 0..n {
            let at: usize = idx.iter().zip(&self.strides).map(|(i, s)| i * s).sum();
            out.push(data[self.offset + at]);
            for d in (0..R).rev() {
                idx[d] += 1;
                if idx[d] < self.dims[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out
    }
}

impl View<2> {
    /// Row `i` when rows are contiguous (column stride 1).
    pub(crate) fn row(&self, i: usize) -> Option<&[f32]> {
        let [_, n] = self.dims;
        (self.strides[1] == 1 || n <= 1).then(|| {
            let s = self.offset + i * self.strides[0];
            &self.data()[s..s + n]
        })
    }

    /// Row `i`: borrowed in place when rows are contiguous, else gathered into `buf` (`n`
    /// elements).
    pub(crate) fn row_or<'a>(&'a self, i: usize, buf: &'a mut [f32]) -> &'a [f32] {
        if self.strides[1] != 1 && self.dims[1] > 1 {
            for (j, v) in buf.iter_mut().enumerate() {
                *v = self.at(i, j);
            }
            return buf;
        }
        let s = self.offset + i * self.strides[0];
        &self.data()[s..s + self.dims[1]]
    }

    /// Element `[i, j]`.
    pub(crate) fn at(&self, i: usize, j: usize) -> f32 {
        self.data()[self.offset + i * self.strides[0] + j * self.strides[1]]
    }
}

/// Seeded test values in `[−scale/2, scale/2)`.
#[cfg(test)]
pub(crate) fn seeded(n: usize, seed: u64, scale: f64) -> Vec<f32> {
    let mut r = bllm_codes::rng::SplitMix64::new(seed);
    (0..n)
        .map(|_| ((r.next_f64() - 0.5) * scale) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_are_zeros_of_the_asked_length() {
        for len in [0, 1, crate::fused::PARALLEL_MIN - 1, 3 * (1 << 16) + 5] {
            let v = zeros(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|x| x.to_bits() == 0), "length {len}");
        }
    }

    #[test]
    fn views_read_the_logical_elements_in_place_or_copied() {
        let dev = Default::default();
        let v: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let x = tensor::<Flex, 2>(v.clone(), [3, 4], &dev);
        let t = x.clone().transpose();
        let want = values(t.clone());
        let view = View::of(t);
        assert_eq!(view.dims, [4, 3]);
        assert_eq!(view.strides, [1, 4], "Flex: read through the strides");
        assert_eq!(view.to_vec(), want);
        let nd = View::of(tensor::<NdArray, 2>(v, [3, 4], &Default::default()).transpose());
        assert_eq!(nd.strides, [3, 1], "NdArray: a row-major copy");
        assert_eq!(nd.to_vec(), want);
        let flipped = View::of(x.flip([1]));
        assert_eq!(flipped.to_vec()[..4], [3.0, 2.0, 1.0, 0.0]);
    }
}
