//! The softmax top-k router with 1-bit weights: logits from a [`BinaryLinear`] (any
//! `bllm-ste` estimator, per-channel scales), then exactly the float router's selection and
//! gates (`moe/softmax.rs`). The question it answers: does binarizing the router's weights
//! make routing more fragile?

use bllm_ste::Ctx;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{Moe, MoeConfig, Routing, softmax};
use crate::{BinaryLinear, BinaryLinearConfig, Result, Scaling};

pub(crate) fn init<B: Backend>(
    c: &MoeConfig,
    device: &B::Device,
    seed: u64,
) -> Result<BinaryLinear<B>> {
    BinaryLinearConfig::new(c.d_model, c.experts)
        .with_weight(c.estimator.clone())
        .with_scaling(Scaling::PerChannel { learnable: false })
        .init(device, seed)
}

pub(crate) fn route<B: Backend>(
    m: &Moe<B>,
    x: Tensor<B, 2>,
    bias: &[f32],
    ctx: &Ctx,
) -> Routing<B> {
    let z = match &m.router_binary {
        Some(l) => l.forward(x, &ctx.fork(31)),
        None => unreachable!("a binary router has a BinaryLinear projection"),
    };
    softmax::from_logits(z, bias, m.config.top_k)
}
