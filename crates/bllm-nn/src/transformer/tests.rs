use bllm_ste::{Ctx, Estimator, Shadow};
use burn::module::Param;
use burn::tensor::{Int, Tensor, TensorData};

use super::*;

type B = burn_ndarray::NdArray;

fn tokens(rows: &[&[u8]]) -> Tensor<B, 2, Int> {
    let t = rows[0].len();
    let data: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.iter().map(|&b| i64::from(b)))
        .collect();
    Tensor::from_data(TensorData::new(data, [rows.len(), t]), &Default::default())
}

fn to_vec<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn configs() -> Vec<(&'static str, ByteLmConfig)> {
    let base = ByteLmConfig::new(16, 2, 4, 8);
    let mut out = vec![("float", base.clone())];
    let mut c = base.clone();
    c.projections = Projections::blocks(ProjKind::Binary);
    out.push(("binary", c.clone()));
    c.attention = AttentionKind::BinaryMask;
    c.binary.activations = crate::ActBinarization::Rsign;
    c.binary.sub_norm = true;
    out.push(("binary-bibert-rsign-subln", c.clone()));
    c.binary.activations = crate::ActBinarization::Elastic;
    c.projections.embed = ProjKind::Binary;
    c.projections.head = ProjKind::Binary;
    out.push(("binary-all-elastic", c));
    let mut c = base;
    c.projections = Projections::blocks(ProjKind::Bitnet);
    c.projections.head = ProjKind::Bitnet;
    out.push(("bitnet", c));
    out
}

#[test]
fn shapes_and_causality_for_every_variant() {
    let dev = Default::default();
    for (name, cfg) in configs() {
        let m = cfg.init::<B>(&dev, 7).unwrap();
        let a = tokens(&[b"abcdefgh", b"hgfedcba"]);
        let ya = m.forward(a, &Ctx::at(0.3));
        assert_eq!(ya.dims(), [2, 8, 256], "{name}");
        let ya = to_vec(ya);
        assert!(ya.iter().all(|v| v.is_finite()), "{name}");
        // Changing byte j changes nothing at positions < j (and something at j, mostly).
        for j in [1usize, 4, 7] {
            let mut r0 = *b"abcdefgh";
            r0[j] = b'z';
            let yb = to_vec(m.forward(tokens(&[&r0, b"hgfedcba"]), &Ctx::at(0.3)));
            for pos in 0..j {
                let s = pos * 256..(pos + 1) * 256;
                assert!(
                    ya[s.clone()] == yb[s],
                    "{name}: position {pos} saw byte {j}"
                );
            }
            // A fully binary network (sign activations everywhere) may be locally constant.
            if !name.starts_with("binary-all") {
                let later = j * 256..8 * 256;
                assert!(
                    ya[later.clone()] != yb[later],
                    "{name}: changing byte {j} changed nothing"
                );
            }
            // The other sequence of the batch is untouched.
            assert!(
                ya[8 * 256..] == yb[8 * 256..],
                "{name}: batch rows interact"
            );
        }
    }
}

#[test]
fn binarized_model_with_identity_binarizers_equals_the_float_model() {
    let dev = Default::default();
    let float_cfg = ByteLmConfig::new(16, 2, 2, 8);
    let f = float_cfg.init::<B>(&dev, 3).unwrap();
    let mut bin_cfg = float_cfg.clone();
    bin_cfg.projections = Projections::blocks(ProjKind::Binary);
    bin_cfg.projections.embed = ProjKind::Binary;
    bin_cfg.projections.head = ProjKind::Binary;
    bin_cfg.binary.scaling = crate::Scaling::None;
    bin_cfg.binary.estimator = Estimator::from_name("ede").unwrap();
    let mut b = bin_cfg.init::<B>(&dev, 99).unwrap();
    // Copy every float weight into the binary model's latent weights.
    let copy = |from: &Proj<B>, to: &mut Proj<B>| {
        let l = from.float.as_ref().unwrap();
        let t = to.binary.as_mut().unwrap();
        t.weight = Param::from_tensor(l.weight.val());
        t.bias = l.bias.as_ref().map(|p| Param::from_tensor(p.val()));
    };
    b.embed.binary.as_mut().unwrap().weight =
        Param::from_tensor(f.embed.float.as_ref().unwrap().val());
    b.positions = Param::from_tensor(f.positions.val());
    for (fb, bb) in f.blocks.iter().zip(b.blocks.iter_mut()) {
        copy(&fb.attention.q, &mut bb.attention.q);
        copy(&fb.attention.k, &mut bb.attention.k);
        copy(&fb.attention.v, &mut bb.attention.v);
        copy(&fb.attention.o, &mut bb.attention.o);
        copy(fb.up.as_ref().unwrap(), bb.up.as_mut().unwrap());
        copy(fb.down.as_ref().unwrap(), bb.down.as_mut().unwrap());
    }
    copy(&f.head, &mut b.head);
    let t = tokens(&[b"the word", b"was God."]);
    let ctx = Ctx::at(0.5);
    let yf = to_vec(f.forward(t.clone(), &ctx));
    let yb = to_vec(b.forward(t.clone(), &ctx.with_shadow(Shadow::Identity)));
    assert_eq!(yf, yb);
    // …and the real binarized forward is a different function.
    assert_ne!(yf, to_vec(b.forward(t, &ctx)));
}

#[test]
fn quantised_layers_are_listed_and_replaceable() {
    let dev = Default::default();
    let (_, cfg) = configs().pop().unwrap(); // bitnet blocks + bitnet head
    let m = cfg.init::<B>(&dev, 1).unwrap();
    let names: Vec<String> = m.quantised().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 2 * 6 + 1);
    assert_eq!(names[0], "block0.q");
    assert_eq!(names.last().unwrap(), "head");
    assert!(m.quantised().iter().all(|(_, q)| q.ternary()));
    let (_, cfg) = configs().remove(3); // binary everywhere incl. embed and head
    let mut m = cfg.init::<B>(&dev, 1).unwrap();
    let q = m.quantised();
    assert_eq!(q.len(), 1 + 12 + 1);
    assert_eq!(q[0].0, "embed");
    let zeros = q[5].1.latent().val().zeros_like();
    m.set_quantised(5, zeros);
    let w = to_vec(m.quantised()[5].1.latent().val());
    assert!(w.iter().all(|v| *v == 0.0));
    let others = to_vec(m.quantised()[6].1.latent().val());
    assert!(others.iter().any(|v| *v != 0.0));
}

#[test]
fn attention_stats_have_one_value_per_head() {
    let dev = Default::default();
    for (name, cfg) in configs() {
        let m = cfg.init::<B>(&dev, 5).unwrap();
        let mut s = LmStats::default();
        let _ = m.forward_with(tokens(&[b"abcdefgh"]), &Ctx::at(0.0), Some(&mut s));
        assert_eq!(s.attention.len(), 2, "{name}");
        for heads in &s.attention {
            assert_eq!(heads.len(), 4, "{name}");
            for &v in heads {
                match cfg.attention {
                    // Entropy of a causal softmax row i is in [0, ln(i + 1)] ≤ ln 8.
                    AttentionKind::Softmax => {
                        assert!((0.0..=8f64.ln() + 1e-6).contains(&v), "{name}: {v}")
                    }
                    AttentionKind::BinaryMask => assert!((0.0..=1.0).contains(&v), "{name}: {v}"),
                }
            }
        }
        let bitnet = m.quantised().iter().filter(|(_, q)| q.ternary()).count();
        assert_eq!(s.act_clamp.len(), bitnet, "{name}");
    }
}

#[test]
fn invalid_configs_are_errors() {
    let dev = Default::default();
    let mut c = ByteLmConfig::new(30, 1, 4, 8);
    assert!(c.init::<B>(&dev, 0).is_err());
    c.d_model = 32;
    c.projections.embed = ProjKind::Bitnet;
    assert!(c.init::<B>(&dev, 0).is_err());
}
