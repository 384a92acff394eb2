//! The kinds' data as `burn-dataset` [`Dataset`]s, batched by Burn [`Batcher`]s, so a user
//! can put their own dataset behind a kind.
//!
//! * [`Clusters`] — labelled points (`classify`, `moe` on `data.task = "clusters"`): Gaussian
//!   clusters drawn from the [`crate::rng::DATA`] stream.
//! * [`TextWindows`] — every window of `context + 1` bytes of a byte string (`lm`, `moe` on
//!   text, `adapter`): item `i` starts at byte `i`.
//!
//! Batches are drawn with replacement by [`sample`] from the run's [`crate::rng::ORDER`]
//! stream, one step at a time, not through Burn's `DataLoader`: its shuffling is per epoch
//! (a permutation drawn up front, worker threads), while a step-based run must be able to stop
//! after any step and resume bit-exactly from the stream position saved in `trainer.json`.
//! Sampling with replacement from a saved stream gives exactly that with no epoch state.

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// `n` indices in `0..len`, uniform with replacement, from `rng`.
pub fn sample(rng: &mut ChaCha8Rng, len: usize, n: usize) -> Vec<usize> {
    (0..n).map(|_| rng.random_range(0..len)).collect()
}

/// One labelled example.
#[derive(Clone, Debug, PartialEq)]
pub struct Labelled {
    /// Features.
    pub x: Vec<f32>,
    /// Class.
    pub y: i64,
}

/// Labelled points in memory (row-major features, one class per row).
#[derive(Clone, Debug, PartialEq)]
pub struct Clusters {
    /// Feature dimension.
    pub dim: usize,
    /// Features `[n, dim]`, row-major.
    pub x: Vec<f32>,
    /// Classes `[n]`.
    pub y: Vec<i64>,
}

impl Clusters {
    /// Gaussian clusters: `classes` centres (row `k` of `centres`, `[classes, dim]`), `n`
    /// points each with a uniformly drawn class and `N(0, noise²)` per coordinate.
    pub fn draw(rng: &mut ChaCha8Rng, centres: &[f64], dim: usize, noise: f64, n: usize) -> Self {
        let classes = centres.len() / dim.max(1);
        let (mut x, mut y) = (Vec::with_capacity(n * dim), Vec::with_capacity(n));
        for _ in 0..n {
            let k = rng.random_range(0..classes);
            y.push(k as i64);
            x.extend((0..dim).map(|j| (centres[k * dim + j] + noise * normal(rng)) as f32));
        }
        Self { dim, x, y }
    }

    /// The first `n` rows.
    pub fn head(&self, n: usize) -> Self {
        let n = n.min(self.y.len());
        Self {
            dim: self.dim,
            x: self.x[..n * self.dim].to_vec(),
            y: self.y[..n].to_vec(),
        }
    }
}

impl Clusters {
    /// The rows at `indices` as features `[n, dim]` and classes `[n]` ([`LabelledBatcher`]).
    pub fn batch<B: Backend>(
        &self,
        indices: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
        batch_of::<B, Labelled, _, _, _>(self, &LabelledBatcher, indices, device)
    }
}

impl TextWindows {
    /// The windows starting at `indices` as inputs and targets ([`WindowBatcher`]).
    pub fn batch<B: Backend>(
        &self,
        indices: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
        batch_of::<B, Vec<u8>, _, _, _>(self, &WindowBatcher, indices, device)
    }
}

/// A standard normal draw.
pub fn normal(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

impl Dataset<Labelled> for Clusters {
    fn get(&self, index: usize) -> Option<Labelled> {
        let x = self.x.get(index * self.dim..(index + 1) * self.dim)?;
        Some(Labelled {
            x: x.to_vec(),
            y: *self.y.get(index)?,
        })
    }

    fn len(&self) -> usize {
        self.y.len()
    }
}

/// Features `[n, dim]` and classes `[n]` of labelled examples.
#[derive(Clone, Debug, Default)]
pub struct LabelledBatcher;

impl<B: Backend> Batcher<B, Labelled, (Tensor<B, 2>, Tensor<B, 1, Int>)> for LabelledBatcher {
    fn batch(&self, items: Vec<Labelled>, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
        let n = items.len();
        let dim = items.first().map_or(0, |i| i.x.len());
        let x: Vec<f32> = items.iter().flat_map(|i| i.x.iter().copied()).collect();
        let y: Vec<i64> = items.iter().map(|i| i.y).collect();
        (
            Tensor::from_data(TensorData::new(x, [n, dim]), device),
            Tensor::from_data(TensorData::new(y, [n]), device),
        )
    }
}

/// Every window of `context + 1` bytes of `bytes`: item `i` is `bytes[i ..= i + context]`.
#[derive(Clone, Debug)]
pub struct TextWindows {
    /// The bytes.
    pub bytes: Arc<Vec<u8>>,
    /// Input length of a window (the window holds one byte more: the last target).
    pub context: usize,
}

impl Dataset<Vec<u8>> for TextWindows {
    fn get(&self, index: usize) -> Option<Vec<u8>> {
        self.bytes
            .get(index..index.checked_add(self.context + 1)?)
            .map(<[u8]>::to_vec)
    }

    fn len(&self) -> usize {
        self.bytes.len().saturating_sub(self.context)
    }
}

/// Inputs `[n, context]` and next-byte targets `[n · context]` of windows of `context + 1`
/// bytes.
#[derive(Clone, Debug, Default)]
pub struct WindowBatcher;

impl<B: Backend> Batcher<B, Vec<u8>, (Tensor<B, 2, Int>, Tensor<B, 1, Int>)> for WindowBatcher {
    fn batch(
        &self,
        items: Vec<Vec<u8>>,
        device: &B::Device,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
        let n = items.len();
        let context = items.first().map_or(0, |w| w.len().saturating_sub(1));
        let mut x = Vec::with_capacity(n * context);
        let mut y = Vec::with_capacity(n * context);
        for w in &items {
            x.extend(w[..context].iter().map(|&b| i64::from(b)));
            y.extend(w[1..].iter().map(|&b| i64::from(b)));
        }
        (
            Tensor::from_data(TensorData::new(x, [n, context]), device),
            Tensor::from_data(TensorData::new(y, [n * context]), device),
        )
    }
}

/// The items at `indices` of `dataset`, batched by `batcher` on `device`.
///
/// # Panics
/// Never for indices below `dataset.len()`; an index past the end is a bug of the caller and
/// is skipped (the batch is shorter).
pub fn batch_of<B: Backend, I, O, D: Dataset<I>, T: Batcher<B, I, O>>(
    dataset: &D,
    batcher: &T,
    indices: &[usize],
    device: &B::Device,
) -> O {
    let items: Vec<I> = indices.iter().filter_map(|&i| dataset.get(i)).collect();
    batcher.batch(items, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn windows_are_the_bytes_and_their_successors() {
        let w = TextWindows {
            bytes: Arc::new(b"abcdef".to_vec()),
            context: 3,
        };
        assert_eq!(w.len(), 3);
        assert_eq!(w.get(0).unwrap(), b"abcd");
        assert_eq!(w.get(2).unwrap(), b"cdef");
        assert_eq!(w.get(3), None);
        assert_eq!(w.get(usize::MAX), None);
        let (x, y): (Tensor<NdArray, 2, Int>, Tensor<NdArray, 1, Int>) =
            batch_of(&w, &WindowBatcher, &[0, 2], &Default::default());
        assert_eq!(x.dims(), [2, 3]);
        let y: Vec<i64> = y.into_data().to_vec().unwrap();
        assert_eq!(y, [b'b', b'c', b'd', b'd', b'e', b'f'].map(i64::from));
    }

    #[test]
    fn clusters_are_seeded_and_batch_by_row() {
        let centres = [0.0, 0.0, 10.0, 10.0];
        let a = Clusters::draw(&mut crate::rng::stream(3, "t", 0), &centres, 2, 0.1, 50);
        let b = Clusters::draw(&mut crate::rng::stream(3, "t", 0), &centres, 2, 0.1, 50);
        assert_eq!(a, b);
        assert_eq!(a.len(), 50);
        for i in 0..50 {
            let item = a.get(i).unwrap();
            let c = if item.y == 0 { 0.0 } else { 10.0 };
            assert!(item.x.iter().all(|v| (v - c).abs() < 1.0), "{item:?}");
        }
        assert!(a.get(50).is_none());
        let (x, y): (Tensor<NdArray, 2>, Tensor<NdArray, 1, Int>) =
            batch_of(&a, &LabelledBatcher, &[4, 4, 1], &Default::default());
        assert_eq!(x.dims(), [3, 2]);
        assert_eq!(y.dims(), [3]);
        assert_eq!(a.head(10).len(), 10);
    }
}
