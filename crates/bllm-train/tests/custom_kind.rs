//! A kind written outside the crate, against the public interface only: a 1-bit linear
//! regression on a user's own `burn-dataset` dataset. It gets the run directory, checkpoints,
//! resume, logs, summary and every generic monitor from `bllm_train::train` without a line of
//! monitor code, and stays bit-exact across a stop and resume.

use std::path::Path;

use bllm_nn::{BinaryLinear, BinaryLinearConfig, QuantRef};
use bllm_recipe::Recipe;
use bllm_ste::Ctx;
use bllm_train::{Inner, Kind, Loss, Metrics, Outcome, RunDir, RunOptions, Site, train};
use burn::backend::{Autodiff, NdArray};
use burn::data::dataset::{Dataset, InMemDataset};
use burn::module::{AutodiffModule, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

type B = Autodiff<NdArray>;

/// One example: 8 features, 2 targets `y = sign(W*) x`.
#[derive(Clone, Debug)]
struct Pair {
    x: [f32; 8],
    y: [f32; 2],
}

fn dataset(n: usize) -> InMemDataset<Pair> {
    let mut rng = bllm_train::rng::stream(5, "user-data", 0);
    let w: Vec<f32> = (0..16)
        .map(|_| if rng.random() { 1.0 } else { -1.0 })
        .collect();
    let items = (0..n)
        .map(|_| {
            let x: [f32; 8] = std::array::from_fn(|_| rng.random_range(-1.0..1.0));
            let y = std::array::from_fn(|o| (0..8).map(|i| x[i] * w[i * 2 + o]).sum());
            Pair { x, y }
        })
        .collect();
    InMemDataset::new(items)
}

struct Regression {
    data: InMemDataset<Pair>,
    seed: u64,
}

#[derive(Serialize)]
struct Summary {
    steps: usize,
    eval_mse: f64,
    monitor_means: std::collections::BTreeMap<String, f64>,
}

fn tensors<BB: Backend>(items: &[Pair]) -> (Tensor<BB, 2>, Tensor<BB, 2>) {
    let n = items.len();
    let x: Vec<f32> = items.iter().flat_map(|p| p.x).collect();
    let y: Vec<f32> = items.iter().flat_map(|p| p.y).collect();
    let dev = Default::default();
    (
        Tensor::from_data(TensorData::new(x, [n, 8]), &dev),
        Tensor::from_data(TensorData::new(y, [n, 2]), &dev),
    )
}

impl<BB: AutodiffBackend> Kind<BB> for Regression {
    type Model = BinaryLinear<BB>;
    type Batch = (Tensor<BB, 2>, Tensor<BB, 2>);
    type Stats = ();
    type Summary = Summary;

    fn name(&self) -> &'static str {
        "regression"
    }

    fn model(&self, device: &BB::Device) -> bllm_train::Result<BinaryLinear<BB>> {
        Ok(BinaryLinearConfig::new(8, 2).init(device, self.seed)?)
    }

    fn batch(&self, order: &mut ChaCha8Rng, _step: usize) -> bllm_train::Result<Self::Batch> {
        let items: Vec<Pair> = (0..16)
            .filter_map(|_| self.data.get(order.random_range(0..self.data.len())))
            .collect();
        Ok(tensors(&items))
    }

    fn loss(
        &self,
        model: &BinaryLinear<BB>,
        (x, y): &Self::Batch,
        ctx: &Ctx,
    ) -> bllm_train::Result<Loss<BB, ()>> {
        let d = model.forward(x.clone(), ctx) - y.clone();
        Ok(Loss::new(d.square().mean()))
    }

    fn sites<'a>(&'a self, model: &'a BinaryLinear<BB>) -> Vec<Site<'a, BB>> {
        vec![Site::Weights {
            name: "w".into(),
            layer: QuantRef::Table(model),
        }]
    }

    fn perturbed_loss(
        &self,
        model: &Inner<BB, Self>,
        (x, y): &Self::Batch,
        ctx: &Ctx,
        _site: usize,
        w: Tensor<BB::InnerBackend, 2>,
    ) -> Option<f64> {
        let mut m = model.clone();
        m.weight = Param::from_tensor(w);
        let d = m.forward(x.clone().inner(), ctx) - y.clone().inner();
        Some(f64::from(d.square().mean().into_scalar().elem::<f32>()))
    }

    fn evaluate(
        &self,
        model: &BinaryLinear<BB>,
        _: usize,
        _: usize,
    ) -> bllm_train::Result<Metrics> {
        let items: Vec<Pair> = self.data.iter().collect();
        let (x, y) = tensors::<BB::InnerBackend>(&items);
        let d = model.valid().forward(x, &Ctx::default().for_eval()) - y;
        let mse = f64::from(d.square().mean().into_scalar().elem::<f32>());
        Ok(Metrics::from([("mse".to_owned(), mse)]))
    }

    fn finish(
        &self,
        _: &BinaryLinear<BB>,
        _: &RunDir,
        o: &Outcome,
        _: Option<&Path>,
    ) -> bllm_train::Result<Summary> {
        Ok(Summary {
            steps: o.steps,
            eval_mse: o.eval["mse"],
            monitor_means: o.monitor_means.clone(),
        })
    }
}

fn recipe() -> Recipe {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../recipes/smoke.toml"
    ))
    .expect("smoke recipe");
    let overrides: Vec<_> = ["train.steps=60", "checkpoint.every=20", "eval.every=30"]
        .iter()
        .map(|o| bllm_recipe::parse_override(o).expect("override"))
        .collect();
    Recipe::parse(&text, "smoke.toml", &overrides, &()).expect("recipe")
}

fn run(dir: &Path, resume: bool, max_steps: Option<usize>) -> Summary {
    let kind = Regression {
        data: dataset(512),
        seed: 3,
    };
    let mut opts = RunOptions {
        dist: None,
        run_dir: dir.to_owned(),
        resume,
        max_steps,
        verbose: false,
        progress: None,
    };
    train::<B, _>(&recipe(), &mut opts, kind).expect("train")
}

#[test]
fn a_user_kind_gets_the_loop_the_monitors_and_exact_resume() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let s = run(&a, false, None);
    assert_eq!(s.steps, 60);
    // Every generic monitor measured the user's layer.
    for k in [
        "shadow_cosine",
        "fd_sign_agreement",
        "flip_ratio",
        "pass_through",
        "quant_error",
    ] {
        assert!(
            s.monitor_means.contains_key(k),
            "{k} missing: {:?}",
            s.monitor_means
        );
    }
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).expect("metrics");
    assert!(
        metrics.contains("\"shadow_cosine/w\""),
        "per-site values are logged"
    );
    let first: f64 = serde_json::from_str::<serde_json::Value>(metrics.lines().next().unwrap())
        .unwrap()["loss"]
        .as_f64()
        .unwrap();
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("summary.json")).unwrap()).unwrap();
    assert!(
        summary["eval_mse"].as_f64().unwrap() < first,
        "it learns: {summary} vs {first}"
    );

    // Stop after 25 steps, resume: the same bytes as the uninterrupted run.
    run(&b, false, Some(25));
    assert!(b.join("checkpoint-25").is_dir());
    run(&b, true, None);
    for f in [
        "final/model.mpk",
        "final/optimizer.mpk",
        "final/trainer.json",
        "metrics.jsonl",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs after stop + resume"
        );
    }
}
