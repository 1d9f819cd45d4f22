//! Tests of the discriminator: a literal re-implementation of the PyTorch forward, hand-built
//! weights that pin the channel-major flatten, and central-difference checks (f64) of the
//! gradients with respect to the inputs and to every parameter tensor.
//!
//! FD tolerance: 1e-6 relative (per tensor). In one coordinate the network is piecewise linear
//! and the losses quadratic in its output, so inside one ReLU pattern the central difference is
//! exact up to rounding, ε·|L|/h. Coordinates whose ±h perturbation changes the ReLU pattern
//! are not differentiable there and are skipped (and counted). Steps: h = 1e-6 for the inputs
//! (a pose entry feeds 32 conv channels and, through them, every all-joints unit, so a larger
//! step crosses many kinks); h = 1e-4 for the parameters (each enters one unit; the larger step
//! keeps rounding at ~1e-9 even for the small gradients of `D_alljoints_fc1.weight`).

use super::super::gradcheck::{rand_vec, spread};
use super::*;
use crate::model::weights::TensorFile;

const H_INPUT: f64 = 1e-6;
const H_PARAM: f64 = 1e-4;
const TOL: f64 = 1e-6;

/// A discriminator with xavier weights and small random biases (so that ReLUs are mixed).
fn test_disc(seed: u64) -> Discriminator<f64> {
    let mut d = Discriminator::<f64>::xavier_uniform(seed);
    for (k, t) in d.tensors_mut().into_iter().enumerate() {
        if k % 2 == 1 {
            let r = rand_vec(seed * 1000 + k as u64, t.len(), -0.1, 0.1);
            t.copy_from_slice(&r);
        }
    }
    d
}

/// The forward exactly as PyTorch's module spells it: 1×1 convs over (B, C, 15, 1), per-joint
/// heads on `poses[:, :, i, 0]`, `poses.reshape(bn, -1)` of the (B, 32, 15, 1) tensor.
fn literal_forward(d: &Discriminator<f64>, pose: &[f64], betas: &[f64]) -> Vec<f64> {
    let b = pose.len() / 135;
    let relu = |v: f64| v.max(0.0);
    let lin = |l: &Dense<f64>, x: &[f64], act: bool| -> Vec<f64> {
        (0..l.d_out)
            .map(|o| {
                let v = l.bias[o]
                    + (0..l.d_in)
                        .map(|i| l.weight[o * l.d_in + i] * x[i])
                        .sum::<f64>();
                if act {
                    relu(v)
                } else {
                    v
                }
            })
            .collect()
    };
    let mut out = Vec::new();
    for bi in 0..b {
        // x[ch][j] = pose[b, j, ch] after permute(0, 3, 1, 2).
        let x: Vec<Vec<f64>> = (0..9)
            .map(|ch| (0..15).map(|j| pose[bi * 135 + j * 9 + ch]).collect())
            .collect();
        let conv = |l: &Dense<f64>, x: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
            (0..l.d_out)
                .map(|o| {
                    (0..15)
                        .map(|j| {
                            relu(
                                l.bias[o]
                                    + (0..l.d_in)
                                        .map(|i| l.weight[o * l.d_in + i] * x[i][j])
                                        .sum::<f64>(),
                            )
                        })
                        .collect()
                })
                .collect()
        };
        let p = conv(&d.d_conv2, &conv(&d.d_conv1, &x)); // [32][15]
        for (j, head) in d.pose_out.iter().enumerate() {
            let col: Vec<f64> = p.iter().map(|row| row[j]).collect(); // poses[:, :, j, 0]
            out.push(lin(head, &col, false)[0]);
        }
        let g = lin(
            &d.betas_fc2,
            &lin(&d.betas_fc1, &betas[bi * 10..bi * 10 + 10], true),
            true,
        );
        out.push(lin(&d.betas_out, &g, false)[0]);
        let flat: Vec<f64> = p.iter().flatten().copied().collect(); // reshape(bn, -1)
        let a = lin(
            &d.d_alljoints_fc2,
            &lin(&d.d_alljoints_fc1, &flat, true),
            true,
        );
        out.push(lin(&d.d_alljoints_out, &a, false)[0]);
    }
    out
}

#[test]
fn forward_matches_the_literal_module() {
    let d = test_disc(1);
    let pose = rand_vec(2, 3 * 135, -1.0, 1.0);
    let betas = rand_vec(3, 30, -2.0, 2.0);
    let acts = d.forward(&pose, &betas).unwrap();
    let want = literal_forward(&d, &pose, &betas);
    let err = acts
        .out
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f64, f64::max);
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    // Same sums in a different order: f64 rounding only.
    assert!(err <= 1e-12 * scale, "{err}");
    // The f32 path (gemm crate) agrees to f32 precision.
    let d32: Discriminator<f32> = d.cast();
    let p32: Vec<f32> = pose.iter().map(|&v| v as f32).collect();
    let b32: Vec<f32> = betas.iter().map(|&v| v as f32).collect();
    let o32 = d32.forward(&p32, &b32).unwrap().out;
    let e32 = o32
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0f64, f64::max)
        / scale;
    eprintln!(
        "discriminator forward: f64 vs literal {:.2e}, f32 vs literal {e32:.2e}",
        err / scale
    );
    // f32 rounding of inputs/weights and 1024-long dot products: ~1e-6 relative.
    assert!(e32 < 2e-5, "{e32}");
}

#[test]
fn hand_built_weights_pin_the_layout() {
    let mut d = Discriminator::<f64>::zeros();
    // Zero weights: the outputs are the output biases.
    for (j, l) in d.pose_out.iter_mut().enumerate() {
        l.bias[0] = j as f64;
    }
    d.betas_out.bias[0] = -3.0;
    d.d_alljoints_out.bias[0] = 7.5;
    let out = d.forward(&[0.0; 135], &[0.0; 10]).unwrap().out;
    let mut want: Vec<f64> = (0..15).map(|j| j as f64).collect();
    want.extend([-3.0, 7.5]);
    assert_eq!(out, want);
    // h1[j, c] = x[j, 0] + 100c with x[j, 0] = j; conv2 = identity; fc1 row 0 picks flat index
    // 37 = c·15 + j for (c, j) = (2, 7) → 207 (a joint-major flatten would read (1, 5) → 501).
    let mut d = Discriminator::<f64>::zeros();
    for c in 0..32 {
        d.d_conv1.weight[c * 9] = 1.0;
        d.d_conv1.bias[c] = 100.0 * c as f64;
        d.d_conv2.weight[c * 32 + c] = 1.0;
    }
    d.d_alljoints_fc1.weight[37] = 1.0;
    d.d_alljoints_fc2.weight[0] = 1.0;
    d.d_alljoints_out.weight[0] = 1.0;
    d.pose_out[4].weight[3] = 1.0; // joint 4, channel 3 → 4 + 300
    let mut pose = vec![0f64; 135];
    for j in 0..15 {
        pose[j * 9] = j as f64;
    }
    let out = d.forward(&pose, &[0.0; 10]).unwrap().out;
    assert_eq!(out[16], 207.0);
    assert_eq!(out[4], 304.0);
    // Betas: ReLU MLP by hand: fc1 = I, fc2 picks β0 − β1, out = 2·(·) + 1.
    for i in 0..10 {
        d.betas_fc1.weight[i * 11] = 1.0;
    }
    d.betas_fc2.weight[0] = 1.0;
    d.betas_fc2.weight[1] = -1.0;
    d.betas_out.weight[0] = 2.0;
    d.betas_out.bias[0] = 1.0;
    let mut betas = [0f64; 10];
    betas[0] = 3.0;
    betas[1] = 1.0;
    assert_eq!(d.forward(&pose, &betas).unwrap().out[15], 5.0);
    betas[1] = 5.0; // fc2 output −2 → ReLU 0
    assert_eq!(d.forward(&pose, &betas).unwrap().out[15], 1.0);
}

fn masks(acts: &DiscActs<f64>) -> Vec<bool> {
    [&acts.h1, &acts.h2, &acts.g1, &acts.g2, &acts.a1, &acts.a2]
        .iter()
        .flat_map(|v| v.iter().map(|&x| x > 0.0))
        .collect()
}

/// Central differences of `f` at the indices `idx` of `x`, skipping those whose ±h changes the
/// ReLU pattern. Returns (max |a − fd| / max |fd|, skipped).
/// A loss evaluation: (value, ReLU pattern).
type Probe<'a> = &'a mut dyn FnMut(&[f64]) -> (f64, Vec<bool>);

fn fd(f: Probe, x: &[f64], analytic: &[f64], idx: &[usize], h: f64) -> (f64, usize) {
    let base = f(x).1;
    let mut xp = x.to_vec();
    let (mut num, mut den, mut skipped) = (0f64, 0f64, 0);
    for &i in idx {
        xp[i] = x[i] + h;
        let (fp, mp) = f(&xp);
        xp[i] = x[i] - h;
        let (fm, mm) = f(&xp);
        xp[i] = x[i];
        if mp != base || mm != base {
            skipped += 1;
            continue;
        }
        let g = (fp - fm) / (2.0 * h);
        num = num.max((analytic[i] - g).abs());
        den = den.max(g.abs());
    }
    (if den > 0.0 { num / den } else { num }, skipped)
}

#[test]
fn generator_loss_gradient_to_the_inputs() {
    let d = test_disc(4);
    let b = 3;
    let pose = rand_vec(5, b * 135, -1.0, 1.0);
    let betas = rand_vec(6, b * 10, -2.0, 2.0);
    let (mut dp, mut db) = (vec![0f64; b * 135], vec![0f64; b * 10]);
    let v = d
        .generator_loss(&pose, &betas, 1.0, &mut dp, &mut db)
        .unwrap();
    let out = d.forward(&pose, &betas).unwrap().out;
    let want: f64 = out.iter().map(|o| (o - 1.0).powi(2)).sum::<f64>() / b as f64;
    assert!((v - want).abs() < 1e-13 * want);
    let value = |p: &[f64], be: &[f64]| -> (f64, Vec<bool>) {
        let a = d.forward(p, be).unwrap();
        (
            a.out.iter().map(|o| (o - 1.0).powi(2)).sum::<f64>() / b as f64,
            masks(&a),
        )
    };
    let all_p: Vec<usize> = (0..b * 135).collect();
    let all_b: Vec<usize> = (0..b * 10).collect();
    let (e_p, s_p) = fd(&mut |x| value(x, &betas), &pose, &dp, &all_p, H_INPUT);
    let (e_b, s_b) = fd(&mut |x| value(&pose, x), &betas, &db, &all_b, H_INPUT);
    eprintln!("generator_loss fd rel err: hand_pose {e_p:.2e} ({s_p} skipped), betas {e_b:.2e} ({s_b} skipped)");
    assert!(e_p < TOL && e_b < TOL, "pose {e_p}, betas {e_b}");
    assert!(s_p + s_b < 10);
    // scale multiplies the gradients.
    let (mut dp2, mut db2) = (vec![0f64; b * 135], vec![0f64; b * 10]);
    d.generator_loss(&pose, &betas, 0.25, &mut dp2, &mut db2)
        .unwrap();
    assert!(dp2
        .iter()
        .zip(&dp)
        .all(|(a, b)| (a - 0.25 * b).abs() <= 1e-15 * b.abs().max(1e-300)));
}

#[test]
fn discriminator_loss_gradient_to_every_parameter() {
    let d = test_disc(7);
    let (bf, br, div) = (2, 3, 2);
    let fake_p = rand_vec(8, bf * 135, -1.0, 1.0);
    let fake_b = rand_vec(9, bf * 10, -2.0, 2.0);
    let real_p = rand_vec(10, br * 135, -1.0, 1.0);
    let real_b = rand_vec(11, br * 10, -2.0, 2.0);
    let mut grads = Discriminator::<f64>::zeros();
    let v = d
        .discriminator_loss(&fake_p, &fake_b, &real_p, &real_b, div, 1.0, &mut grads)
        .unwrap();
    let value = |dd: &Discriminator<f64>| -> (f64, Vec<bool>) {
        let af = dd.forward(&fake_p, &fake_b).unwrap();
        let ar = dd.forward(&real_p, &real_b).unwrap();
        let l = af.out.iter().map(|o| o * o).sum::<f64>() / div as f64
            + ar.out.iter().map(|o| (o - 1.0).powi(2)).sum::<f64>() / div as f64;
        let mut m = masks(&af);
        m.extend(masks(&ar));
        (l, m)
    };
    assert!((v - value(&d).0).abs() < 1e-13 * v);
    let names: Vec<(String, usize)> = d
        .tensors()
        .into_iter()
        .map(|(n, _, t)| (n, t.len()))
        .collect();
    let grad_vals: Vec<Vec<f64>> = grads
        .tensors()
        .into_iter()
        .map(|(_, _, t)| t.to_vec())
        .collect();
    let (mut worst, mut skipped_all, mut checked) = (0f64, 0, 0);
    for (k, (name, len)) in names.iter().enumerate() {
        let idx = spread(*len, 12);
        let x0 = d.tensors()[k].2.to_vec();
        let mut dd = d.clone();
        let (e, skipped) = fd(
            &mut |x| {
                dd.tensors_mut()[k].copy_from_slice(x);
                value(&dd)
            },
            &x0,
            &grad_vals[k],
            &idx,
            H_PARAM,
        );
        assert!(e < TOL, "{name}: fd rel err {e}");
        worst = worst.max(e);
        skipped_all += skipped;
        checked += idx.len();
    }
    eprintln!(
        "discriminator_loss fd rel err (worst tensor) {worst:.2e}; {checked} entries of {} tensors, {skipped_all} skipped",
        names.len()
    );
    assert!(skipped_all < checked / 20);
    // Gradients accumulate.
    let g1 = grads.clone();
    d.discriminator_loss(&fake_p, &fake_b, &real_p, &real_b, div, 1.0, &mut grads)
        .unwrap();
    for ((_, _, a), (_, _, b)) in grads.tensors().into_iter().zip(g1.tensors()) {
        assert!(a
            .iter()
            .zip(b)
            .all(|(x, y)| (x - 2.0 * y).abs() <= 1e-14 * y.abs().max(1e-300)));
    }
    // The f32 path agrees with the f64 gradients to f32 precision.
    let d32: Discriminator<f32> = d.cast();
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let mut g32 = Discriminator::<f32>::zeros();
    d32.discriminator_loss(
        &f(&fake_p),
        &f(&fake_b),
        &f(&real_p),
        &f(&real_b),
        div,
        1.0,
        &mut g32,
    )
    .unwrap();
    let mut e32 = 0f64;
    for ((_, _, a), b) in g32.tensors().into_iter().zip(&grad_vals) {
        let a: Vec<f32> = a.to_vec();
        e32 = e32.max(crate::tensor::rel_err(&a, &f(b)));
    }
    eprintln!("discriminator_loss f32 vs f64 gradients: worst tensor rel err {e32:.2e}");
    // f32 rounding through 4 layers of ≤1024-term sums: ~1e-5 relative per tensor.
    assert!(e32 < 1e-3, "{e32}");
}

#[test]
fn xavier_init_and_names() {
    let d = Discriminator::<f32>::xavier_uniform(3);
    assert_eq!(d, Discriminator::<f32>::xavier_uniform(3));
    assert_ne!(d, Discriminator::<f32>::xavier_uniform(4));
    let t = d.tensors();
    assert_eq!(t.len(), 46);
    assert_eq!(t[0].0, "discriminator.D_conv1.weight");
    assert_eq!(t[0].1, vec![32, 9, 1, 1]);
    assert_eq!(t[4].0, "discriminator.pose_out.0.weight");
    assert_eq!(t[4].1, vec![1, 32]);
    assert_eq!(t[40].0, "discriminator.D_alljoints_fc1.weight");
    assert_eq!(t[40].1, vec![1024, 480]);
    for (name, shape, v) in &t {
        if name.ends_with("bias") {
            assert!(v.iter().all(|&x| x == 0.0), "{name}");
        } else {
            let (fo, fi) = (shape[0], shape[1]);
            let bound = (6.0 / (fi + fo) as f64).sqrt();
            assert!(v.iter().all(|&x| (x as f64).abs() <= bound), "{name}");
            if v.len() > 1000 {
                // U(±a) has standard deviation a/√3; 5 % covers sampling error at ≥ 4800 values.
                let sd =
                    (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
                assert!(
                    (sd / (bound / 3f64.sqrt()) - 1.0).abs() < 0.05,
                    "{name}: sd {sd}"
                );
            }
        }
    }
}

#[test]
fn loads_the_reference_state_dict_and_rejects_bad_input() {
    // The PyTorch reference's discriminator state dict (tests/reference/make_train_fixtures.py):
    // every name and shape of SPEC §12 must be found, and nothing else is in the file.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/train_tiny_discriminator.safetensors");
    let file = TensorFile::open(&path).unwrap();
    let d = Discriminator::load(&file).unwrap();
    assert!(file.unused().is_empty(), "unused: {:?}", file.unused());
    let w = file
        .f32("discriminator.D_alljoints_fc1.weight", None)
        .unwrap();
    assert_eq!(&d.d_alljoints_fc1.weight[..], w.data());

    // Missing tensors and shape mismatches are errors.
    struct Empty;
    impl TensorSource for Empty {
        fn tensor(&self, name: &str, _shape: &[usize]) -> Result<crate::tensor::Tensor> {
            Err(Error::Weights(format!("missing {name}")))
        }
    }
    assert!(Discriminator::load(&Empty).is_err());
    let mut g = Discriminator::<f32>::zeros();
    assert!(d.forward(&[0.0; 134], &[0.0; 10]).is_err());
    assert!(d.forward(&[0.0; 135], &[0.0; 9]).is_err());
    let acts = d.forward(&[0.0; 270], &[0.0; 20]).unwrap();
    assert!(d.backward(&acts, &[0.0; 17], None, None, None).is_err());
    assert!(d
        .backward(&acts, &[0.0; 34], None, Some(&mut [0.0; 135]), None)
        .is_err());
    assert!(d
        .discriminator_loss(
            &[0.0; 135],
            &[0.0; 10],
            &[0.0; 135],
            &[0.0; 10],
            0,
            1.0,
            &mut g
        )
        .is_err());
    // An empty batch is no error and no loss.
    assert_eq!(
        d.generator_loss(&[], &[], 1.0, &mut [], &mut []).unwrap(),
        0.0
    );
}
