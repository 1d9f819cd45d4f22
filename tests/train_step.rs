//! One training step of the `tiny` model on the CPU against the PyTorch reference
//! (tests/reference/make_train_fixtures.py, float64 autograd): every loss term, every parameter
//! gradient (the backbone's for `none`; for the other types the gradient entering the backbone,
//! whose backward is the same function), and the discriminator's loss and gradients.

mod common;

use common::*;
use handcov::model::config::Uncertainty;
use handcov::model::weights::TensorFile;
use handcov::model::HandModel;
use handcov::tensor::rel_err;
use handcov::train::discriminator::Discriminator;
use handcov::train::step::{train_step, Batch, StepOptions, StepOutput};

/// fp32 forward and backward against float64 autograd: sums over up to 192×5120 products stay
/// well inside 1e-4 relative (the bound).
const TOL: f64 = 1e-4;

fn scalar(f: &TensorFile, name: &str) -> f64 {
    f.f32(name, None).unwrap().data()[0] as f64
}

fn run(u: Uncertainty, exact: bool) -> (StepOutput, TensorFile) {
    let dir = scratch(&format!("train_step_{}_{exact}", u.name()));
    let wf = TensorFile::open(&tiny_weights_for(u, &dir)).unwrap();
    let model = HandModel::load(tiny_config(u), &wf, None).unwrap();
    let disc = Discriminator::<f32>::load(
        &TensorFile::open(&fixture("train_tiny_discriminator.safetensors")).unwrap(),
    )
    .unwrap();
    let batch = Batch::load(
        &TensorFile::open(&fixture("train_tiny_batch.safetensors")).unwrap(),
        128,
    )
    .unwrap();
    let opt = StepOptions {
        ours_nll_exact: exact,
        ..Default::default()
    };
    let out = train_step(&model, Some(&disc), &batch, &opt).unwrap();
    let name = if exact {
        "train_tiny_ours_exact_step.safetensors".to_string()
    } else {
        format!("train_tiny_{}_step.safetensors", u.name())
    };
    (out, TensorFile::open(&fixture(&name)).unwrap())
}

fn check(u: Uncertainty, exact: bool) {
    let (out, want) = run(u, exact);
    let what = format!("{}{}", u.name(), if exact { " (exact NLL)" } else { "" });
    let t = &out.terms;
    let mut scalars = vec![
        ("loss", out.total),
        ("loss_keypoints_2d", t.keypoints_2d),
        ("loss_keypoints_3d", t.keypoints_3d),
        ("loss_global_orient", t.global_orient),
        ("loss_hand_pose", t.hand_pose),
        ("loss_betas", t.betas),
        ("loss_adv", t.adversarial),
        (
            "loss_sample_mean_keypoints_3d",
            t.sample_mean.unwrap_or(0.0),
        ),
    ];
    let nll_name = if exact {
        "loss_keypoints_3d_nll_exact"
    } else {
        "loss_keypoints_3d_nll"
    };
    scalars.push((nll_name, t.nll.unwrap_or(0.0)));
    for (name, got) in scalars {
        let w = scalar(&want, name);
        let err = (got - w).abs() / w.abs().max(1e-12);
        eprintln!("{what:>22} {name:<34} {got:.8e} vs {w:.8e} (rel {err:.1e})");
        assert!(
            err <= TOL || (got - w).abs() < 1e-9,
            "{what}: {name} = {got} vs {w}"
        );
    }
    let mut compared = 0;
    let mut worst = (0f64, String::new());
    for name in want
        .names()
        .filter(|n| n.starts_with("grad."))
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
    {
        let param = &name["grad.".len()..];
        let w = want.f32(&name, None).unwrap();
        let got = out
            .grads
            .map
            .get(param)
            .unwrap_or_else(|| panic!("{what}: no gradient for {param}"));
        assert_eq!(got.len(), w.numel(), "{what}: {param}");
        let err = rel_err(got, w.data());
        assert!(err <= TOL, "{what}: grad {param} rel err {err:.3e}");
        if err > worst.0 {
            worst = (err, param.to_string());
        }
        compared += 1;
    }
    assert!(compared > 20, "{what}: only {compared} gradients compared");
    // The gradient entering the backbone, stored as the feature map [B, C, rows, cols].
    let w = want.f32("grad_out.backbone_features", None).unwrap();
    let (b, c, hw) = (w.dim(0), w.dim(1), w.dim(2) * w.dim(3));
    let mut got = vec![0f32; w.numel()];
    for bi in 0..b {
        for t in 0..hw {
            for ci in 0..c {
                got[(bi * c + ci) * hw + t] = out.d_tokens[(bi * hw + t) * c + ci];
            }
        }
    }
    let err = rel_err(&got, w.data());
    eprintln!(
        "{what:>22} grad_out.backbone_features rel {err:.1e}; {compared} parameter gradients, worst {:.1e} ({})",
        worst.0, worst.1
    );
    assert!(
        err <= TOL,
        "{what}: gradient into the backbone rel err {err:.3e}"
    );
}

#[test]
fn one_step_none() {
    check(Uncertainty::None, false);
}

#[test]
fn one_step_diag() {
    check(Uncertainty::Diag, false);
}

#[test]
fn one_step_full() {
    check(Uncertainty::Full, false);
}

#[test]
fn one_step_ours() {
    check(Uncertainty::Ours, false);
}

#[test]
fn one_step_ours_wo_linear() {
    check(Uncertainty::OursWoLinear, false);
}

#[test]
fn one_step_ours_exact_nll() {
    check(Uncertainty::Ours, true);
}

#[test]
fn discriminator_step() {
    let (out, _) = run(Uncertainty::None, false);
    let want = TensorFile::open(&fixture("train_tiny_disc_step.safetensors")).unwrap();
    let (loss, grads) = out.disc.expect("a MoCap batch gives a discriminator step");
    let w = scalar(&want, "disc_loss");
    assert!((loss - w).abs() / w.abs() <= TOL, "disc loss {loss} vs {w}");
    let ours: std::collections::HashMap<String, Vec<f32>> = grads
        .tensors()
        .into_iter()
        .map(|(n, _, v)| (n, v.to_vec()))
        .collect();
    let mut n = 0;
    for name in want
        .names()
        .filter(|n| n.starts_with("grad_disc."))
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
    {
        let p = &name["grad_disc.".len()..];
        let got = ours
            .get(p)
            .or_else(|| ours.get(p.trim_start_matches("discriminator.")))
            .unwrap_or_else(|| panic!("no disc grad {p}"));
        let err = rel_err(got, want.f32(&name, None).unwrap().data());
        assert!(err <= TOL, "disc grad {p}: {err:.3e}");
        n += 1;
    }
    assert!(n >= 20, "{n}");
}
