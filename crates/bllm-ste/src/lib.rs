//! # bllm-ste — binarizers and straight-through estimators for Burn
//!
//! A binarizer has a forward value `q(x)` (sign, ternary, {0,1}, …) whose true derivative is
//! zero almost everywhere. A straight-through estimator (STE) replaces that derivative with a
//! surrogate factor `G(x)` that multiplies the incoming gradient. Each estimator here documents
//! its forward, its `G`, its defaults and its source paper, and [`Estimator::apply`] builds the
//! op so that autodiff returns exactly `upstream · G(x)`:
//!
//! ```text
//! y = q(x)  +  (x·G(x)⁻ − (x·G(x)⁻)⁻)        (⁻ = detached, no gradient)
//! forward:  y = q(x) exactly (the bracket is a − a = 0 in IEEE arithmetic)
//! backward: ∂y/∂x = G(x) exactly (the only tracked path is x · constant G)
//! ```
//!
//! `sign(0) = +1` everywhere (Burn's `sign()` gives 0 at 0 and is never used raw). Schedules take
//! training progress `p ∈ [0, 1]` explicitly through [`Ctx`]; nothing reads global state.
//!
//! ```
//! use bllm_ste::{Ctx, Estimator};
//! let est: Estimator = serde_json::from_str(r#"{"kind": "swish_sign", "beta": 5.0}"#).unwrap();
//! assert_eq!(est.name(), "swish_sign");
//! # type B = burn::backend::NdArray;
//! let x = burn::tensor::Tensor::<B, 1>::from_floats([-0.5, 0.0, 2.0], &Default::default());
//! let y = est.apply(x, &Ctx::at(0.0));
//! assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![-1.0, 1.0, 1.0]);
//! ```

pub mod attention;
mod ctx;
mod error;
mod estimator;
pub mod estimators;
pub mod fused;
mod host;
pub mod linear;
pub mod norm;
pub mod ops;
pub mod quant;
pub mod rope;
pub mod scale;
pub mod schedule;
mod simd;
pub mod softmax;
pub mod swiglu;

pub use ctx::{Ctx, Shadow};
pub use error::{Result, SteError};
pub use estimator::{Estimator, EstimatorInfo, ParamInfo};
