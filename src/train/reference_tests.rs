//! The losses and the discriminator against the PyTorch reference's training fixtures
//! (tests/reference/make_train_fixtures.py, computed in float64 from the f32 weights and batch;
//! outputs stored f32, loss values f64): every loss term of every model type, the total, the
//! gradients that only these losses produce (∂/∂uncertainty_raw, ∂/∂W), and the discriminator
//! step (outputs, L_D, every parameter gradient).
//!
//! Tolerance: the reference's inputs to the losses (the model outputs) reach us rounded to f32,
//! a relative perturbation of ≤ 6e-8 per value; the losses are sums of smooth (or piecewise
//! linear) terms of those values, so values and gradients agree to ~1e-7 relative unless a term
//! amplifies the perturbation (stated where it does). A wrong convention (a ½, a mean instead of
//! a sum, a flatten order, a sign) is off by ≥ 1e-2.

use super::discriminator::Discriminator;
use super::losses::*;
use super::nll::*;
use crate::model::config::Uncertainty;
use crate::model::weights::TensorFile;
use crate::ops::geometry::rot6d_to_rotmat;
use crate::tensor::rel_err;
use safetensors::SafeTensors;

struct Fixture(Vec<u8>);

impl Fixture {
    fn open(name: &str) -> Fixture {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        Fixture(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn f64(&self, name: &str) -> f64 {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let d = t.data();
        f64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

/// `aa [n·3]` → rotmats `[n·9]`.
fn rotmats(aa: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; aa.len() * 3];
    axis_angle_to_rotmat_cpu(aa, &mut out).unwrap();
    out
}

#[test]
fn losses_match_the_pytorch_reference() {
    let batch = Fixture::open("train_tiny_batch.safetensors");
    let weights = Fixture::open("tiny_weights.safetensors");
    let dfile = TensorFile::open(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/train_tiny_discriminator.safetensors"),
    )
    .unwrap();
    let disc = Discriminator::load(&dfile).unwrap();
    let w_ours = weights.f32("out_layer_keypoints_3d.weight");
    let kp2 = batch.f32("keypoints_2d");
    let kp3 = batch.f32("keypoints_3d");
    let eps = batch.f32("sample_eps");
    let go_gt = rotmats(&batch.f32("mano_params.global_orient"));
    let hp_gt = rotmats(&batch.f32("mano_params.hand_pose"));
    let betas_gt = batch.f32("mano_params.betas");
    let lw = LossWeights::default();
    let cases = [
        ("none", Uncertainty::None, false),
        ("diag", Uncertainty::Diag, false),
        ("full", Uncertainty::Full, false),
        ("ours", Uncertainty::Ours, false),
        ("ours_wo_linear", Uncertainty::OursWoLinear, false),
        ("ours_exact", Uncertainty::Ours, true),
    ];
    for (name, model, exact) in cases {
        let fx = Fixture::open(&format!("train_tiny_{name}_step.safetensors"));
        let b = 4;
        let mu = fx.f32("out.pred_keypoints_3d");
        let p2 = fx.f32("out.pred_keypoints_2d");
        let hp = fx.f32("out.hand_pose");
        let betas = fx.f32("out.betas");
        let pose6d = fx.f32("out.pose6d");
        let go: Vec<f32> = (0..b)
            .flat_map(|i| {
                let c: [f32; 6] = pose6d[i * 96..i * 96 + 6].try_into().unwrap();
                rot6d_to_rotmat(&c)
            })
            .collect();
        let mut d3 = vec![0f32; mu.len()];
        let mut d2 = vec![0f32; p2.len()];
        let mut terms = LossTerms {
            keypoints_2d: keypoint_2d_l1(&p2, &kp2, 1.0, &mut d2).unwrap(),
            keypoints_3d: keypoint_3d_l1_rootrel(&mu, &kp3, 1.0, &mut d3).unwrap(),
            global_orient: parameter_mse(
                &go,
                &go_gt,
                &batch.f32("has_mano_params.global_orient"),
                1.0,
                &mut vec![0f32; go.len()],
            )
            .unwrap(),
            hand_pose: parameter_mse(
                &hp,
                &hp_gt,
                &batch.f32("has_mano_params.hand_pose"),
                1.0,
                &mut vec![0f32; hp.len()],
            )
            .unwrap(),
            betas: parameter_mse(
                &betas,
                &betas_gt,
                &batch.f32("has_mano_params.betas"),
                1.0,
                &mut vec![0f32; betas.len()],
            )
            .unwrap(),
            adversarial: disc
                .generator_loss(
                    &hp,
                    &betas,
                    1.0,
                    &mut vec![0f32; hp.len()],
                    &mut vec![0f32; betas.len()],
                )
                .unwrap(),
            ..Default::default()
        };
        // The gradients only the uncertainty losses produce, at the weights of the total.
        let wn = lw.weight(model, Term::Nll);
        let ws = lw.weight(model, Term::SampleMean);
        let mut d_raw: Option<Vec<f32>> = None;
        let mut d_w = vec![0f32; 63 * 63];
        let mut dm = vec![0f32; mu.len()];
        let mut extra: Vec<(&str, f64)> = Vec::new();
        match model {
            Uncertainty::None => {}
            Uncertainty::Diag => {
                let s = fx.f32("out.uncertainty_raw");
                let mut ds = vec![0f32; s.len()];
                terms.nll = Some(nll_diag(&mu, &s, &kp3, wn, &mut dm, &mut ds).unwrap());
                d_raw = Some(ds);
            }
            Uncertainty::Full => {
                let raw = fx.f32("out.uncertainty_raw");
                let mut dr = vec![0f32; raw.len()];
                terms.nll = Some(nll_full(&mu, &raw, &kp3, wn, &mut dm, &mut dr).unwrap());
                d_raw = Some(dr);
            }
            Uncertainty::Ours | Uncertainty::OursWoLinear => {
                let s = fx.f32("out.uncertainty_raw");
                let w = (model == Uncertainty::Ours).then_some(&w_ours[..]);
                let (mut ds1, mut ds2) = (vec![0f32; s.len()], vec![0f32; s.len()]);
                let diag = nll_diag(&mu, &s, &kp3, wn, &mut dm, &mut ds1).unwrap();
                if exact {
                    let w = w.unwrap();
                    let v = nll_exact_lowrank(
                        &mu,
                        &s,
                        w,
                        &kp3,
                        DEFAULT_EXACT_JITTER,
                        wn,
                        &mut dm,
                        &mut ds1,
                        Some(&mut d_w),
                    )
                    .unwrap();
                    extra.push(("loss_keypoints_3d_nll_exact", v));
                    extra.push(("loss_keypoints_3d_nll", diag));
                    terms.nll = Some(v);
                } else {
                    terms.nll = Some(diag);
                }
                let dwo = if model == Uncertainty::Ours {
                    Some(&mut d_w[..])
                } else {
                    None
                };
                terms.sample_mean =
                    Some(sample_mean(&mu, &s, w, &eps, &kp3, ws, &mut dm, &mut ds2, dwo).unwrap());
                if model == Uncertainty::Ours {
                    terms.uncertainty_reg =
                        Some(uncertainty_reg(&s, 0.0, &mut vec![0f32; s.len()]).unwrap());
                }
                d_raw = Some(ds1.iter().zip(&ds2).map(|(a, b)| a + b).collect());
            }
        }
        if !exact {
            extra.push(("loss_keypoints_3d_nll", terms.nll.unwrap_or(0.0)));
        }
        let checks = [
            ("loss_keypoints_2d", terms.keypoints_2d),
            ("loss_keypoints_3d", terms.keypoints_3d),
            ("loss_global_orient", terms.global_orient),
            ("loss_hand_pose", terms.hand_pose),
            ("loss_betas", terms.betas),
            ("loss_adv", terms.adversarial),
            (
                "loss_sample_mean_keypoints_3d",
                terms.sample_mean.unwrap_or(0.0),
            ),
            ("loss", lw.total(model, &terms).unwrap()),
        ];
        let mut worst = (0f64, "");
        for (key, v) in checks.into_iter().chain(extra) {
            let e = rel(v, fx.f64(key));
            if fx.f64(key) == 0.0 {
                assert_eq!(v, 0.0, "{name}: {key}");
            } else if e > worst.0 {
                worst = (e, key);
            }
        }
        eprintln!(
            "{name}: loss terms vs reference, worst rel err {:.1e} ({})",
            worst.0, worst.1
        );
        // 1e-6: f32 rounding of the outputs (≤ 6e-8) amplified at most ~10× by cancellations
        // (root-relative differences, parameter residuals, rᵀΣ⁻¹r). Measured ≤ 1e-7.
        assert!(worst.0 < 1e-6, "{name}: {} off by {}", worst.1, worst.0);

        if let Some(dr) = d_raw {
            let want = fx.f32("grad_out.uncertainty_raw");
            let e = rel_err(&dr, &want);
            eprintln!("{name}: ∂/∂uncertainty_raw rel err {e:.1e}");
            // As the values, plus the f32 rounding of both gradients. Measured ≤ 2.1e-7.
            assert!(e < 1e-6, "{name}: grad uncertainty_raw {e}");
        }
        if model == Uncertainty::Ours {
            let want = fx.f32("grad.out_layer_keypoints_3d.weight");
            let e = rel_err(&d_w, &want);
            eprintln!("{name}: ∂/∂W rel err {e:.1e}");
            assert!(e < 1e-6, "{name}: grad W {e}");
        }
    }
}

#[test]
fn discriminator_step_matches_the_pytorch_reference() {
    let batch = Fixture::open("train_tiny_batch.safetensors");
    let fx = Fixture::open("train_tiny_disc_step.safetensors");
    let dfile = TensorFile::open(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/train_tiny_discriminator.safetensors"),
    )
    .unwrap();
    let disc = Discriminator::load(&dfile).unwrap();
    // The mocap batch's axis-angles through our aa_to_rotmat = the reference's rotmats.
    let real = rotmats(&batch.f32("mocap.hand_pose"));
    let e_rot = rel_err(&real, &fx.f32("real.hand_pose"));
    assert!(e_rot < 1e-6, "aa_to_rotmat vs reference: {e_rot}");
    let real_b = batch.f32("mocap.betas");
    let fake = fx.f32("fake.hand_pose");
    let fake_b = fx.f32("fake.betas");
    let e_f = rel_err(
        &disc.forward(&fake, &fake_b).unwrap().out,
        &fx.f32("disc_out_fake"),
    );
    let e_r = rel_err(
        &disc.forward(&real, &real_b).unwrap().out,
        &fx.f32("disc_out_real"),
    );
    let mut grads = Discriminator::<f32>::zeros();
    let v = disc
        .discriminator_loss(
            &fake,
            &fake_b,
            &real,
            &real_b,
            4,
            LossWeights::default().adversarial,
            &mut grads,
        )
        .unwrap();
    let e_v = rel(v, fx.f64("disc_loss"));
    let mut worst = (0f64, String::new());
    for (name, _, g) in grads.tensors() {
        let e = rel_err(g, &fx.f32(&format!("grad_disc.{name}")));
        if e > worst.0 {
            worst = (e, name);
        }
    }
    eprintln!(
        "discriminator vs reference: aa→rotmat {e_rot:.1e}, D(fake) {e_f:.1e}, D(real) {e_r:.1e}, L_D {e_v:.1e}, \
         worst parameter gradient {:.1e} ({})",
        worst.0, worst.1
    );
    // The weights and inputs are f32 in both (exact); we compute in f32 through ≤1024-term sums
    // against the reference's f64: ~1e-7 relative expected (measured ≤ 2.8e-7).
    assert!(e_f < 1e-6 && e_r < 1e-6 && e_v < 1e-6, "{e_f} {e_r} {e_v}");
    assert!(worst.0 < 2e-6, "{} {}", worst.1, worst.0);
}
