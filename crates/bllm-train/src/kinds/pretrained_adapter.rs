//! `kind = "adapter"` with `model.pretrained`: float LoRA, binary LoRA or BitDelta on a
//! pretrained Llama (SmolLM2), adapted from its own pretraining to the `[data]` corpus through
//! the model's tokenizer; `[source]` names the text the forgetting is measured on (no base is
//! pretrained: the base is the checkpoint).
//!
//! Everything of the checkpoint stays frozen. LoRA kinds train only the adapters on the
//! targeted projections (`adapter.targets`, of `q k v o gate up down`, every layer). BitDelta
//! fine-tunes exactly the targeted weight matrices (everything else frozen, so the deltas are
//! the whole fine-tune) for `train.steps`, turns each delta into `α · sign(Δ)` on the frozen
//! base, and trains only the α values for `adapter.distill_steps` to match the fine-tuned
//! model's logits (mean squared error, as in BitDelta's scale distillation).
//!
//! Like the byte-level adapter kind this runs its phases with [`super::adapter::phase`] (no
//! resume: the runs take minutes; `--resume` is refused), batches of `train.batch_size` windows
//! of `model.context + 1` token ids at seeded offsets, next-token cross-entropy. Held-out
//! numbers are `bllm_models::perplexity` on consecutive windows of `model.context` tokens of the
//! target's and the source's held-out text, before and after — the numbers `bllm lm eval` prints.
//!
//! `final/` holds `model.mpk` (the adapters alone, in `Llama::projections` order of the
//! targeted projections — the frozen base is the checkpoint) and, with `export.weights`, the
//! binary adapters' bit-planes and scales under `export/<projection>/`. BitDelta with
//! `export.weights` writes the export alone: its record would keep every sign as an f32.

use std::path::PathBuf;
use std::time::Instant;

use bllm_models::lm::{Perplexity, perplexity};
use bllm_models::{LLAMA_PROJECTIONS, Llama, TextTokenizer};
use bllm_nn::{AdapterConfig, AdapterKind};
use bllm_recipe::{AdapterTask, Recipe};
use burn::module::{AutodiffModule, Module};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use serde_json::json;

use super::adapter::Split;
use super::adapter::{
    AdapterSummary, PretrainedAdapterReport, Tally, lora_config, phase, write_bits,
};
use super::lm::{lm_loss, load_corpus};
use super::pretrained_lm::{corpus_text, token_windows_at};
use crate::data::sample;
use crate::optim::{save_model, step_ctx};
use crate::rundir::RunDir;
use crate::schedule::learning_rate;
use crate::trainer::estimator;
use crate::{Result, RunOptions, TrainError};

/// The recipe's short name of a checkpoint projection name (`q_proj` → `q`).
fn short(name: &str) -> &str {
    name.strip_suffix("_proj").unwrap_or(name)
}

/// Whether projection `index` (into `Llama::projections`, 7 per layer) is targeted.
fn targeted(t: &AdapterTask, index: usize) -> bool {
    let name = short(LLAMA_PROJECTIONS[index % LLAMA_PROJECTIONS.len()]);
    t.adapter.targets.iter().any(|x| x == name)
}

/// Perplexity of `model` on `text` in windows of `context` tokens.
fn score<B: burn::tensor::backend::Backend>(
    model: &Llama<B>,
    tokenizer: &TextTokenizer,
    text: &str,
    context: usize,
) -> Result<Perplexity> {
    Ok(perplexity(
        model,
        tokenizer,
        text,
        context,
        &Default::default(),
        |_, _| {},
    )?)
}

/// Runs a `kind = "adapter"` recipe whose `model.pretrained` is set (the caller checked it and
/// refused `--resume`).
pub(crate) fn run_pretrained_adapter_on<B: AutodiffBackend>(
    recipe: &Recipe,
    opts: &mut RunOptions,
    t: &AdapterTask,
) -> Result<AdapterSummary> {
    let started = Instant::now();
    let path = PathBuf::from(t.model.pretrained.as_deref().unwrap_or_default());
    crate::trainer::split_check(recipe, opts.dist.as_ref().map_or(1, |d| d.world))?;
    opts.refuse_existing(recipe)?;
    let context = t.model.context;
    let target = load_corpus(&t.data, 1)?;
    let source = load_corpus(&t.source.text, 1)?;
    let device: B::Device = Default::default();
    let loaded = Llama::<B>::load(&path, &device)?;
    let max = loaded.model.config.max_position_embeddings;
    if context > max {
        return Err(TrainError::Unsupported(format!(
            "recipe {:?}: model.context = {context}: {} has max_position_embeddings {max}",
            recipe.name,
            path.display()
        )));
    }
    let a = &t.adapter;
    let kind = AdapterKind::parse(&a.kind).unwrap_or_default();
    if kind != AdapterKind::BitDelta {
        for (i, (name, p)) in loaded.model.projections().into_iter().enumerate() {
            let [d_in, d_out] = p.float.as_ref().map(|l| l.weight.dims()).unwrap_or([0, 0]);
            if targeted(t, i) && a.rank > d_in.min(d_out) {
                return Err(TrainError::Unsupported(format!(
                    "recipe {:?}: adapter.rank = {}: {name} of {} is {d_in} → {d_out}, so the \
                     rank must be at most {}",
                    recipe.name,
                    a.rank,
                    path.display(),
                    d_in.min(d_out)
                )));
            }
        }
    }
    let tokenizer = loaded.tokenizer;
    let train_text = corpus_text(&target.train, "training", &t.data.path)?;
    let train_ids = tokenizer.encode(&train_text, false)?;
    let mut held = Vec::with_capacity(2);
    for (bytes, key, corpus) in [
        (&target.valid, "data", &t.data.path),
        (&source.valid, "source", &t.source.text.path),
    ] {
        let text = corpus_text(bytes, "held-out", corpus)?;
        let n = tokenizer.encode(&text, false)?.len();
        if n < context + 1 {
            return Err(TrainError::Unsupported(format!(
                "{key}.path {corpus}: the held-out text ({key}.eval_bytes) has {n} tokens, fewer \
                 than model.context + 1 ({})",
                context + 1
            )));
        }
        held.push(text);
    }
    if train_ids.len() < context + 1 {
        return Err(TrainError::Unsupported(format!(
            "data.path {}: the training text (data.train_bytes) has {} tokens, fewer than \
             model.context + 1 ({})",
            t.data.path,
            train_ids.len(),
            context + 1
        )));
    }
    let (target_held, source_held) = (&held[0], &held[1]);
    let (group, scratch) =
        crate::dist::join_for_phases::<B::InnerBackend>(recipe, opts.dist.as_ref())?;
    let split = Split::of(recipe, group.as_ref());
    let run = match &scratch {
        None => RunDir::prepare(&opts.run_dir)?,
        Some(s) => RunDir::prepare(s.path())?,
    };
    run.start(recipe)?;
    run.write_json(
        "data.json",
        &json!({"path": t.data.path, "source": t.source.text.path, "model": t.model.pretrained, "train_tokens": train_ids.len(), "eval_bytes": target_held.len(), "source_eval_bytes": source_held.len()}),
    )?;
    let base = loaded.model.no_grad();
    let inner = base.valid();
    let target_base = score(&inner, &tokenizer, target_held, context)?;
    let source_base = score(&inner, &tokenizer, source_held, context)?;
    drop(inner);
    run.append(
        "metrics.jsonl",
        &json!({"step": 0, "split": "eval", "phase": "base", "target_bpb": target_base.bits_per_byte, "source_bpb": source_base.bits_per_byte, "target_perplexity": target_base.perplexity, "source_perplexity": source_base.perplexity}),
    )?;
    tracing::info!(
        target_bpb = target_base.bits_per_byte,
        source_bpb = source_base.bits_per_byte,
        "base model scored"
    );

    let est = estimator(recipe)?;
    let seed = recipe.seed;
    let steps = recipe.train.steps;
    let batch = recipe.train.batch_size;
    let span = train_ids.len() - context;
    let draw = |rng: &mut rand_chacha::ChaCha8Rng| sample(rng, span, batch);
    let ce_loss = |m: &Llama<B>, starts: &[usize], step: usize| {
        let (x, y) = token_windows_at::<B>(&train_ids, context, starts);
        let ctx = step_ctx(recipe, step, steps);
        lm_loss(m.forward(x, None, &ctx), y)
    };
    let lr = |step| learning_rate(&recipe.schedule, recipe.optimizer.lr, step, steps);
    let mut finetune = None;
    let mut tokens_trained = steps * batch * context;
    let adapted = match kind {
        AdapterKind::Lora | AdapterKind::BinaryLora => {
            let acfg = lora_config(a, kind, est);
            let mut m = base;
            for (i, p) in m.projections_mut().into_iter().enumerate() {
                if !targeted(t, i) {
                    continue;
                }
                let [d_in, d_out] = p.float.as_ref().map(|l| l.weight.dims()).unwrap_or([0, 0]);
                p.adapter = Some(acfg.init(
                    d_in,
                    d_out,
                    &device,
                    seed.wrapping_mul(7919).wrapping_add(i as u64 + 1),
                )?);
            }
            let m = bllm_nn::with_deterministic_ids(m, 0);
            phase(
                recipe,
                m,
                steps,
                1,
                lr,
                "adapt",
                Some(&run),
                &split,
                draw,
                ce_loss,
            )?
        }
        AdapterKind::BitDelta => {
            // Fine-tune exactly the matrices BitDelta will carry.
            let mut trainable = base.clone();
            for (i, p) in trainable.projections_mut().into_iter().enumerate() {
                if let (true, Some(l)) = (targeted(t, i), p.float.as_mut()) {
                    l.weight = l.weight.clone().set_require_grad(true);
                }
            }
            let trainable = bllm_nn::with_deterministic_ids(trainable, 0);
            let ft = phase(
                recipe,
                trainable,
                steps,
                2,
                lr,
                "finetune",
                Some(&run),
                &split,
                draw,
                ce_loss,
            )?
            .valid();
            let ft_score = score(&ft, &tokenizer, target_held, context)?;
            run.append(
                "metrics.jsonl",
                &json!({"step": steps, "split": "eval", "phase": "finetune", "target_bpb": ft_score.bits_per_byte, "target_perplexity": ft_score.perplexity}),
            )?;
            finetune = Some(ft_score);
            let mut m = base;
            {
                let tuned: Vec<_> = ft.projections().into_iter().map(|(_, p)| p).collect();
                for (i, p) in m.projections_mut().into_iter().enumerate() {
                    let (true, Some(l), Some(f)) =
                        (targeted(t, i), p.float.as_ref(), tuned[i].float.as_ref())
                    else {
                        continue;
                    };
                    let delta = Tensor::<B, 2>::from_inner(f.weight.val() - l.weight.val().inner());
                    p.adapter = Some(AdapterConfig::bitdelta(delta));
                }
            }
            let m = bllm_nn::with_deterministic_ids(m, 0);
            let d_steps = a.distill_steps;
            tokens_trained += d_steps * batch * context;
            let teacher = &ft;
            phase(
                recipe,
                m,
                d_steps,
                3,
                |_| recipe.optimizer.lr,
                "distill",
                Some(&run),
                &split,
                draw,
                |m, starts, step| {
                    let (x, _) = token_windows_at::<B>(&train_ids, context, starts);
                    let ctx = step_ctx(recipe, step, d_steps.max(1)).for_eval();
                    let want =
                        Tensor::<B, 3>::from_inner(teacher.forward(x.clone().inner(), None, &ctx));
                    (m.forward(x, None, &ctx) - want).square().mean()
                },
            )?
        }
    };
    if let Some(g) = group {
        g.leave()?;
    }
    let inner = adapted.valid();
    let target_after = score(&inner, &tokenizer, target_held, context)?;
    let source_after = score(&inner, &tokenizer, source_held, context)?;
    run.append(
        "metrics.jsonl",
        &json!({"step": steps, "split": "eval", "phase": "adapted", "target_bpb": target_after.bits_per_byte, "source_bpb": source_after.bits_per_byte, "target_perplexity": target_after.perplexity, "source_perplexity": source_after.perplexity}),
    )?;
    let mut tally = Tally::default();
    for (name, p) in adapted.projections() {
        tally.add(&name, p, a, kind, recipe.export.weights)?;
    }
    let adapters: Vec<bllm_nn::Adapter<B>> = adapted
        .projections()
        .into_iter()
        .filter_map(|(_, p)| p.adapter.clone())
        .collect();
    // BitDelta's record would hold each sign matrix as f32 (as large as the fine-tune itself);
    // its export (signs packed, α in scales.json) is the whole adapter.
    let record = !(kind == AdapterKind::BitDelta && recipe.export.weights);
    run.write_checkpoint("final", |dir| {
        if record {
            save_model(&adapters, dir)?;
        }
        for (name, bits) in &tally.exported {
            write_bits(&dir.join("export").join(name), name, bits, recipe)?;
        }
        Ok(())
    })?;
    run.write_file(
        "summary.txt",
        bllm_nn::summary(&adapted).to_string().as_bytes(),
    )?;
    let summary = AdapterSummary {
        name: recipe.name.clone(),
        adapter: a.kind.clone(),
        rank: a.rank,
        steps,
        target_bpb_base: target_base.bits_per_byte,
        target_bpb: target_after.bits_per_byte,
        source_bpb_base: source_base.bits_per_byte,
        source_bpb: source_after.bits_per_byte,
        forgetting: source_after.bits_per_byte - source_base.bits_per_byte,
        finetune_target_bpb: finetune.as_ref().map(|f| f.bits_per_byte),
        adapter_bytes: tally.adapter_bytes,
        float_lora_bytes: tally.float_lora_bytes,
        compression_vs_float_lora: tally.float_lora_bytes as f64
            / tally.adapter_bytes.max(1) as f64,
        trainable_params: tally.trainable,
        pretrained: Some(PretrainedAdapterReport {
            model: path.display().to_string(),
            target_perplexity_base: target_base.perplexity,
            target_perplexity: target_after.perplexity,
            source_perplexity_base: source_base.perplexity,
            source_perplexity: source_after.perplexity,
            finetune_target_perplexity: finetune.map(|f| f.perplexity),
            target_eval_tokens: target_after.predicted,
            source_eval_tokens: source_after.predicted,
            train_tokens: train_ids.len(),
            tokens_trained,
            wall_seconds: started.elapsed().as_secs_f64(),
        }),
    };
    run.write_json("summary.json", &summary)?;
    Ok(summary)
}
