//! The CPU engine against the PyTorch reference (tests/reference/make_fixtures.py): the `tiny`
//! config with every uncertainty type, random weights and a random MANO-shaped model of the real
//! sizes, batch 2. The reference ran in float64; its dumps are the truth for our fp32 engine.

mod common;

use common::*;
use handcov::model::config::{ModelConfig, Uncertainty};
use handcov::model::weights::TensorFile;
use handcov::model::HandModel;
use handcov::tensor::rel_err;

/// fp32 forward against an f64 reference: the error of a deep fp32 pipeline stays well below
/// 1e-4 relative (the reference script measures its own fp32 noise floor at ~1e-6).
const TOL: f64 = 1e-4;
/// Σ amplifies rounding through exp() and (for `full`) a 63×63 triangular inverse.
const TOL_COV: f64 = 1e-3;

fn check(u: Uncertainty) {
    let dir = scratch(&format!("reference_{}", u.name()));
    let wpath = tiny_weights_for(u, &dir);
    let weights = TensorFile::open(&wpath).unwrap();
    let model = HandModel::load(tiny_config(u), &weights, None).unwrap();
    let input = TensorFile::open(&fixture("tiny_input.safetensors")).unwrap();
    let img = input.f32("img", None).unwrap();
    let pred = model.forward(&img).unwrap();
    let want = TensorFile::open(&fixture(&format!("tiny_{}_out.safetensors", u.name()))).unwrap();
    let ours: std::collections::HashMap<_, _> = pred.named().into_iter().collect();
    let mut compared = 0;
    for name in want.names().map(|s| s.to_string()).collect::<Vec<_>>() {
        let w = want.f32(&name, None).unwrap();
        let got = ours
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{}: engine has no output `{name}`", u.name()));
        assert_eq!(got.shape(), w.shape(), "{}: shape of `{name}`", u.name());
        let err = rel_err(got.data(), w.data());
        let tol = if name == "keypoint_3d_cov" {
            TOL_COV
        } else {
            TOL
        };
        eprintln!("{:>15} {:<20} rel err {err:.3e}", u.name(), name);
        assert!(
            err <= tol,
            "{}: `{name}` rel err {err:.3e} > {tol:e}",
            u.name()
        );
        compared += 1;
    }
    let expected = if u == Uncertainty::None { 10 } else { 13 };
    assert_eq!(
        compared,
        expected,
        "{}: the fixture should hold every output",
        u.name()
    );
}

#[test]
fn tiny_none_matches_pytorch() {
    check(Uncertainty::None);
}

#[test]
fn tiny_diag_matches_pytorch() {
    check(Uncertainty::Diag);
}

#[test]
fn tiny_full_matches_pytorch() {
    check(Uncertainty::Full);
}

#[test]
fn tiny_ours_matches_pytorch() {
    check(Uncertainty::Ours);
}

#[test]
fn tiny_ours_wo_linear_matches_pytorch() {
    check(Uncertainty::OursWoLinear);
}

#[test]
fn fixture_config_is_the_tiny_preset() {
    let mut cfg = ModelConfig::from_file(&fixture("tiny_config.json")).unwrap();
    cfg.uncertainty = Uncertainty::None;
    assert_eq!(cfg, ModelConfig::tiny());
}
