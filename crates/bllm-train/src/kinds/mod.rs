//! The kinds of run, one file each: what is trained, on what data, and what it reports. Each
//! implements [`crate::Kind`] (except `adapter` and `pretrained_adapter`, sequences of phases, see their docs) and
//! exposes one `run_*` entry point that picks the backend and calls [`crate::train`].

pub(crate) mod adapter;
pub(crate) mod classify;
pub(crate) mod kv_probe;
pub(crate) mod lm;
pub(crate) mod moe;
pub(crate) mod pretrained_adapter;
pub(crate) mod pretrained_lm;
pub(crate) mod retrieval;
pub(crate) mod text_retrieval;
