//! Tests of the uncertainty losses: hand-computed values, identities between the losses, and
//! central-difference checks of every gradient in f64.
//!
//! Tolerance of the FD checks (unless a test says otherwise): 1e-6 relative. The losses are
//! smooth; with h = 1e-5 the central difference's truncation error is ~h²·|f'''|/6 ≈ 1e-10 and
//! its rounding error ~ε·|f|/h ≈ 1e-11·|f| (|f| ≲ 300 here), so a correct gradient lands near
//! 1e-9 and a wrong term (a missing factor, a dropped branch) is off by ≥ 1e-2.

use super::super::gradcheck::{check, rand_vec, randn_vec, spread};
use super::*;
use crate::ops::covariance::full_precision_factor;

const TOL: f64 = 1e-6;
const H: f64 = 1e-5;

/// GT `[B, 21, 4]`: positions in [−1, 1), confs from `confs` (per batch item: None = random
/// in [0, 1), Some(v) = every joint v).
fn make_gt(seed: u64, confs: &[Option<f64>]) -> Vec<f64> {
    let b = confs.len();
    let mut gt = rand_vec(seed, b * 84, -1.0, 1.0);
    for (bi, c) in confs.iter().enumerate() {
        for j in 0..21 {
            let k = bi * 84 + 4 * j + 3;
            gt[k] = c.unwrap_or(gt[k].abs());
        }
    }
    gt
}

#[test]
fn nll_diag_values_and_gradient() {
    // Hand-computed: zero residual and s = ln 4 for all 63 coordinates, conf 1 → 63·½·ln 4;
    // a residual of 2 at one coordinate adds ½·4/(4 + 1e-6).
    let gt = make_gt(1, &[Some(1.0)]);
    let mut mu: Vec<f64> = (0..63).map(|i| gt[4 * (i / 3) + i % 3]).collect();
    mu[7] += 2.0;
    let s = vec![4f64.ln(); 63];
    let (mut dm, mut ds) = (vec![0f64; 63], vec![0f64; 63]);
    let v = nll_diag(&mu, &s, &gt, 1.0, &mut dm, &mut ds).unwrap();
    let want = 63.0 * 0.5 * 4f64.ln() + 0.5 * 4.0 / (4.0 + 1e-6);
    assert!((v - want).abs() < 1e-12, "{v} vs {want}");
    assert!((dm[7] - 2.0 / (4.0 + 1e-6)).abs() < 1e-15 && dm[6] == 0.0);
    assert!((ds[7] - 0.5 * (1.0 - 4.0 * 4.0 / (4.0 + 1e-6f64).powi(2))).abs() < 1e-15);

    let b = 3;
    let gt = make_gt(2, &[None, None, Some(1.0)]);
    let mu = rand_vec(3, b * 63, -1.0, 1.0);
    let s = rand_vec(4, b * 63, -2.0, 2.0);
    let (mut dm, mut ds) = (vec![0f64; b * 63], vec![0f64; b * 63]);
    nll_diag(&mu, &s, &gt, 1.0, &mut dm, &mut ds).unwrap();
    let (mut t1, mut t2) = (dm.clone(), ds.clone());
    let e_mu = check(
        &mut |x| nll_diag(x, &s, &gt, 1.0, &mut t1, &mut t2).unwrap(),
        &mu,
        &dm,
        None,
        H,
    );
    let e_s = check(
        &mut |x| nll_diag(&mu, x, &gt, 1.0, &mut t1, &mut t2).unwrap(),
        &s,
        &ds,
        None,
        H,
    );
    eprintln!("nll_diag fd rel err: mu {e_mu:.2e}, s {e_s:.2e}");
    assert!(e_mu < TOL && e_s < TOL, "mu {e_mu}, s {e_s}");
    // scale multiplies the gradients only.
    let (mut dm2, mut ds2) = (vec![0f64; b * 63], vec![0f64; b * 63]);
    let v1 = nll_diag(&mu, &s, &gt, 1.0, &mut t1, &mut t2).unwrap();
    let v2 = nll_diag(&mu, &s, &gt, 0.5, &mut dm2, &mut ds2).unwrap();
    assert_eq!(v1, v2);
    assert!(dm2.iter().zip(&dm).all(|(a, b)| *a == 0.5 * b));
    // Extreme but finite log-variances stay finite.
    let s_ext = vec![800.0; b * 63];
    let v = nll_diag(&mu, &s_ext, &gt, 1.0, &mut t1, &mut t2).unwrap();
    assert!(v.is_finite() && t1.iter().chain(&t2).all(|g| g.is_finite()));
    let s_ext = vec![-800.0; b * 63];
    let v = nll_diag(&mu, &s_ext, &gt, 1.0, &mut t1, &mut t2).unwrap();
    assert!(v.is_finite() && t1.iter().chain(&t2).all(|g| g.is_finite()));
    // Shapes.
    assert!(nll_diag(&mu[..62], &s, &gt, 1.0, &mut t1, &mut t2).is_err());
    assert!(nll_diag(&mu, &s[..63], &gt, 1.0, &mut t1, &mut t2).is_err());
    assert!(nll_diag(&mu, &s, &gt[..84], 1.0, &mut t1, &mut t2).is_err());
}

#[test]
fn nll_full_values_and_gradient() {
    let rl = DIM + TRIL;
    // Hand-computed: L = I (d = 0, no off-diagonals), r = (1, 2, 0, …) → ‖r‖² = 5; with d = ½
    // everywhere: 2·63·½ + e^{−1}·5.
    let gt = make_gt(5, &[Some(1.0)]);
    let mut mu: Vec<f64> = (0..63).map(|i| gt[4 * (i / 3) + i % 3]).collect();
    mu[0] -= 1.0;
    mu[1] -= 2.0;
    let mut raw = vec![0f64; rl];
    let (mut dm, mut dr) = (vec![0f64; 63], vec![0f64; rl]);
    assert!((nll_full(&mu, &raw, &gt, 1.0, &mut dm, &mut dr).unwrap() - 5.0).abs() < 1e-12);
    raw[..63].fill(0.5);
    let v = nll_full(&mu, &raw, &gt, 1.0, &mut dm, &mut dr).unwrap();
    assert!((v - (63.0 + 5.0 * (-1f64).exp())).abs() < 1e-12, "{v}");
    // One joint with conf 0.999 → the sample is dropped, gradients zero.
    let mut gt2 = gt.clone();
    gt2[4 * 7 + 3] = 0.999;
    assert_eq!(
        nll_full(&mu, &raw, &gt2, 1.0, &mut dm, &mut dr).unwrap(),
        0.0
    );
    assert!(dm.iter().chain(&dr).all(|&g| g == 0.0));

    // L built here is ops::covariance's factor (same tril order): compare values through it.
    let raw32: Vec<f32> = rand_vec(6, rl, -0.3, 0.3)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let mu32: Vec<f32> = rand_vec(7, 63, -1.0, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let gt32: Vec<f32> = gt.iter().map(|&v| v as f32).collect();
    let (mut dm32, mut dr32) = (vec![0f32; 63], vec![0f32; rl]);
    let v = nll_full(&mu32, &raw32, &gt32, 1.0, &mut dm32, &mut dr32).unwrap();
    let l = full_precision_factor(&raw32);
    let r: Vec<f64> = (0..63)
        .map(|i| gt32[4 * (i / 3) + i % 3] as f64 - mu32[i] as f64)
        .collect();
    let zz: f64 = (0..63)
        .map(|k| (0..63).map(|j| r[j] * l[j * 63 + k]).sum::<f64>().powi(2))
        .sum();
    let want = 2.0 * raw32[..63].iter().map(|&d| d as f64).sum::<f64>() + zz;
    assert!((v - want).abs() < 1e-9 * want.abs(), "{v} vs {want}");

    // FD through μ, d and every off-diagonal entry; the second sample has a conf < 1.
    let b = 2;
    let gt = make_gt(8, &[Some(1.0), None]);
    let mu = rand_vec(9, b * 63, -1.0, 1.0);
    let mut raw = rand_vec(10, b * rl, -0.1, 0.1);
    for bi in 0..b {
        for (i, v) in raw[bi * rl..bi * rl + 63].iter_mut().enumerate() {
            *v = 0.5 * ((i as f64) * 0.37).sin();
        }
    }
    let (mut dm, mut dr) = (vec![0f64; b * 63], vec![0f64; b * rl]);
    nll_full(&mu, &raw, &gt, 1.0, &mut dm, &mut dr).unwrap();
    assert!(dr[rl..].iter().all(|&g| g == 0.0));
    let (mut t1, mut t2) = (dm.clone(), dr.clone());
    let e_mu = check(
        &mut |x| nll_full(x, &raw, &gt, 1.0, &mut t1, &mut t2).unwrap(),
        &mu,
        &dm,
        None,
        H,
    );
    let d_idx: Vec<usize> = (0..63).collect();
    let off_idx: Vec<usize> = (63..rl).collect();
    let mut f = |x: &[f64]| nll_full(&mu, x, &gt, 1.0, &mut t1, &mut t2).unwrap();
    let e_d = check(&mut f, &raw, &dr, Some(&d_idx), H);
    let e_off = check(&mut f, &raw, &dr, Some(&off_idx), H);
    eprintln!("nll_full fd rel err: mu {e_mu:.2e}, d {e_d:.2e}, off-diagonals {e_off:.2e}");
    assert!(
        e_mu < TOL && e_d < TOL && e_off < TOL,
        "mu {e_mu}, d {e_d}, off {e_off}"
    );
}

#[test]
fn sample_mean_values_and_gradient() {
    // Hand-computed: ε = ±e_0 (N = 2), μ = g, s = 0: y_n = ±W[:,0] ⇒ L = Σ_i c_i·W_i0².
    let gt = make_gt(11, &[None]);
    let mu: Vec<f64> = (0..63).map(|i| gt[4 * (i / 3) + i % 3]).collect();
    let w = rand_vec(12, 63 * 63, -0.2, 0.2);
    let s = vec![0f64; 63];
    let mut eps = vec![0f64; 2 * 63];
    eps[0] = 1.0;
    eps[63] = -1.0;
    let (mut dm, mut ds) = (vec![0f64; 63], vec![0f64; 63]);
    let v = sample_mean(&mu, &s, Some(&w), &eps, &gt, 1.0, &mut dm, &mut ds, None).unwrap();
    let want: f64 = (0..63)
        .map(|i| gt[4 * (i / 3) + 3] * w[i * 63].powi(2))
        .sum();
    assert!((v - want).abs() < 1e-14, "{v} vs {want}");
    // W = I is the same as no W (ours_wo_linear).
    let b = 2;
    let n = 3;
    let gt = make_gt(13, &[None, Some(1.0)]);
    let mu = rand_vec(14, b * 63, -1.0, 1.0);
    let s = rand_vec(15, b * 63, -1.0, 1.0);
    let eps = randn_vec(16, b * n * 63);
    let mut eye = vec![0f64; 63 * 63];
    for i in 0..63 {
        eye[i * 64] = 1.0;
    }
    let (mut dm, mut ds) = (vec![0f64; b * 63], vec![0f64; b * 63]);
    let (mut dm2, mut ds2) = (vec![0f64; b * 63], vec![0f64; b * 63]);
    let v1 = sample_mean(&mu, &s, Some(&eye), &eps, &gt, 1.0, &mut dm, &mut ds, None).unwrap();
    let v2 = sample_mean(&mu, &s, None, &eps, &gt, 1.0, &mut dm2, &mut ds2, None).unwrap();
    assert!((v1 - v2).abs() < 1e-12 * v2);
    assert!(dm
        .iter()
        .zip(&dm2)
        .chain(ds.iter().zip(&ds2))
        .all(|(a, b)| (a - b).abs() < 1e-12));

    // FD through μ, s and W (ours), and through μ, s without W (ours_wo_linear).
    let w = rand_vec(17, 63 * 63, -0.126, 0.126);
    let mut dw = vec![0f64; 63 * 63];
    sample_mean(
        &mu,
        &s,
        Some(&w),
        &eps,
        &gt,
        1.0,
        &mut dm,
        &mut ds,
        Some(&mut dw),
    )
    .unwrap();
    let (mut t1, mut t2) = (dm.clone(), ds.clone());
    let e_mu = check(
        &mut |x| sample_mean(x, &s, Some(&w), &eps, &gt, 1.0, &mut t1, &mut t2, None).unwrap(),
        &mu,
        &dm,
        None,
        H,
    );
    let e_s = check(
        &mut |x| sample_mean(&mu, x, Some(&w), &eps, &gt, 1.0, &mut t1, &mut t2, None).unwrap(),
        &s,
        &ds,
        None,
        H,
    );
    let e_w = check(
        &mut |x| sample_mean(&mu, &s, Some(x), &eps, &gt, 1.0, &mut t1, &mut t2, None).unwrap(),
        &w,
        &dw,
        None,
        H,
    );
    eprintln!("sample_mean (ours) fd rel err: mu {e_mu:.2e}, s {e_s:.2e}, W {e_w:.2e}");
    assert!(
        e_mu < TOL && e_s < TOL && e_w < TOL,
        "mu {e_mu}, s {e_s}, W {e_w}"
    );
    // d_W accumulates.
    let dw1 = dw.clone();
    sample_mean(
        &mu,
        &s,
        Some(&w),
        &eps,
        &gt,
        1.0,
        &mut dm,
        &mut ds,
        Some(&mut dw),
    )
    .unwrap();
    assert!(dw
        .iter()
        .zip(&dw1)
        .all(|(a, b)| (a - 2.0 * b).abs() <= 1e-15 * b.abs().max(1.0)));

    sample_mean(&mu, &s, None, &eps, &gt, 1.0, &mut dm, &mut ds, None).unwrap();
    let e_mu = check(
        &mut |x| sample_mean(x, &s, None, &eps, &gt, 1.0, &mut t1, &mut t2, None).unwrap(),
        &mu,
        &dm,
        None,
        H,
    );
    let e_s = check(
        &mut |x| sample_mean(&mu, x, None, &eps, &gt, 1.0, &mut t1, &mut t2, None).unwrap(),
        &s,
        &ds,
        None,
        H,
    );
    eprintln!("sample_mean (ours_wo_linear) fd rel err: mu {e_mu:.2e}, s {e_s:.2e}");
    assert!(e_mu < TOL && e_s < TOL, "mu {e_mu}, s {e_s}");

    // Shapes: eps not a multiple of B·63, d_W without W.
    assert!(sample_mean(&mu, &s, None, &eps[..100], &gt, 1.0, &mut dm, &mut ds, None).is_err());
    assert!(sample_mean(
        &mu,
        &s,
        None,
        &eps,
        &gt,
        1.0,
        &mut dm,
        &mut ds,
        Some(&mut dw)
    )
    .is_err());
    assert!(sample_mean(&mu, &s, None, &[], &gt, 1.0, &mut dm, &mut ds, None).is_err());
}

#[test]
fn sample_mean_matches_its_expectation() {
    // E_ε[L_SM] = Σ c (μ − g)² + Σ_i c_i Σ_d W_id² e^{s_d} (SPEC §6.5). With 4000 samples of the
    // counter-based generator the standard error relative to the second term is ≈ 0.6 % (its
    // quadratic part ≈ 0.3 %, the cross term with the bias ≈ 0.5 %); the bound is ~8 of them.
    let n = 4000;
    let gt = make_gt(18, &[None]);
    let mu = rand_vec(19, 63, -0.5, 0.5);
    let s = rand_vec(20, 63, -1.0, 1.0);
    let w = rand_vec(21, 63 * 63, -0.126, 0.126);
    let eps: Vec<f64> = crate::train::rng::normals(3, 1, 0, 0, n * 63)
        .iter()
        .map(|&v| v as f64)
        .collect();
    let (mut dm, mut ds) = (vec![0f64; 63], vec![0f64; 63]);
    let v = sample_mean(&mu, &s, Some(&w), &eps, &gt, 1.0, &mut dm, &mut ds, None).unwrap();
    let c = |i: usize| gt[4 * (i / 3) + 3];
    let bias: f64 = (0..63)
        .map(|i| c(i) * (mu[i] - gt[4 * (i / 3) + i % 3]).powi(2))
        .sum();
    let var: f64 = (0..63)
        .map(|i| {
            c(i) * (0..63)
                .map(|d| w[i * 63 + d].powi(2) * s[d].exp())
                .sum::<f64>()
        })
        .sum();
    let rel = (v - bias - var).abs() / var;
    eprintln!("sample_mean Monte-Carlo vs expectation: rel {rel:.2e}");
    assert!(rel < 0.05, "{v} vs {} + {}", bias, var);
}

#[test]
fn uncertainty_reg_value_and_gradient() {
    let mut d = vec![0f64; 126];
    assert_eq!(uncertainty_reg(&vec![0f64; 126], 1.0, &mut d).unwrap(), 1.0);
    let s = rand_vec(22, 126, -2.0, 2.0);
    uncertainty_reg(&s, 1.0, &mut d).unwrap();
    let mut t = d.clone();
    let e = check(
        &mut |x| uncertainty_reg(x, 1.0, &mut t).unwrap(),
        &s,
        &d,
        None,
        H,
    );
    eprintln!("uncertainty_reg fd rel err {e:.2e}");
    assert!(e < TOL, "{e}");
    assert!(uncertainty_reg::<f64>(&[], 1.0, &mut []).is_err());
}

/// A Householder reflection `I − 2vvᵀ/‖v‖²` (orthogonal, symmetric).
fn householder(seed: u64) -> Vec<f64> {
    let v = rand_vec(seed, 63, -1.0, 1.0);
    let nn: f64 = v.iter().map(|x| x * x).sum();
    (0..63 * 63)
        .map(|ij| if ij / 63 == ij % 63 { 1.0 } else { 0.0 } - 2.0 * v[ij / 63] * v[ij % 63] / nn)
        .collect()
}

#[test]
fn exact_nll_values() {
    let gt = make_gt(23, &[Some(1.0), Some(1.0)]);
    let mu = rand_vec(24, 126, -1.0, 1.0);
    let s = rand_vec(25, 126, -1.0, 1.0);
    let (mut dm, mut ds) = (vec![0f64; 126], vec![0f64; 126]);
    // W orthogonal: log det Σ = Σ s, rᵀΣ⁻¹r = Σ_d (Qᵀr)_d²·e^{−s_d}.
    let q = householder(26);
    let v = nll_exact_lowrank(&mu, &s, &q, &gt, 0.0, 1.0, &mut dm, &mut ds, None).unwrap();
    let mut want = 0f64;
    for b in 0..2 {
        let r: Vec<f64> = (0..63)
            .map(|i| gt[b * 84 + 4 * (i / 3) + i % 3] - mu[b * 63 + i])
            .collect();
        for d in 0..63 {
            let qr: f64 = (0..63).map(|i| q[i * 63 + d] * r[i]).sum();
            want += 0.5 * (s[b * 63 + d] + qr * qr * (-s[b * 63 + d]).exp());
        }
    }
    assert!((v - want).abs() < 1e-10 * want.abs(), "{v} vs {want}");
    // W = I, no jitter: the diag NLL (up to its 1e-6 in the denominator).
    let mut eye = vec![0f64; 63 * 63];
    for i in 0..63 {
        eye[i * 64] = 1.0;
    }
    let v = nll_exact_lowrank(&mu, &s, &eye, &gt, 0.0, 1.0, &mut dm, &mut ds, None).unwrap();
    let (mut t1, mut t2) = (dm.clone(), ds.clone());
    let vd = nll_diag(&mu, &s, &gt, 1.0, &mut t1, &mut t2).unwrap();
    assert!((v - vd).abs() < 1e-5 * vd.abs(), "{v} vs {vd}");
    assert!(dm.iter().zip(&t1).all(|(a, b)| (a - b).abs() < 1e-5));
    // Singular Σ (W = 0, no jitter) is an error, not a panic; a conf < 1 drops the sample.
    let zero = vec![0f64; 63 * 63];
    assert!(nll_exact_lowrank(&mu, &s, &zero, &gt, 0.0, 1.0, &mut dm, &mut ds, None).is_err());
    let mut gt2 = gt.clone();
    gt2[3] = 0.0;
    let v2 = nll_exact_lowrank(&mu, &s, &eye, &gt2, 0.0, 1.0, &mut dm, &mut ds, None).unwrap();
    assert!(dm[..63].iter().chain(&ds[..63]).all(|&g| g == 0.0));
    assert!(v2 < v);
}

#[test]
fn exact_nll_gradient() {
    let b = 2;
    let gt = make_gt(27, &[Some(1.0), None]);
    let mu = rand_vec(28, b * 63, -1.0, 1.0);
    let s = rand_vec(29, b * 63, -1.0, 1.0);
    // W = I + U(±0.1): well conditioned, fully coupled.
    let mut w = rand_vec(30, 63 * 63, -0.1, 0.1);
    for i in 0..63 {
        w[i * 64] += 1.0;
    }
    let jit = DEFAULT_EXACT_JITTER;
    let (mut dm, mut ds, mut dw) = (vec![0f64; b * 63], vec![0f64; b * 63], vec![0f64; 63 * 63]);
    nll_exact_lowrank(&mu, &s, &w, &gt, jit, 1.0, &mut dm, &mut ds, Some(&mut dw)).unwrap();
    let (mut t1, mut t2) = (dm.clone(), ds.clone());
    let e_mu = check(
        &mut |x| nll_exact_lowrank(x, &s, &w, &gt, jit, 1.0, &mut t1, &mut t2, None).unwrap(),
        &mu,
        &dm,
        None,
        H,
    );
    let e_s = check(
        &mut |x| nll_exact_lowrank(&mu, x, &w, &gt, jit, 1.0, &mut t1, &mut t2, None).unwrap(),
        &s,
        &ds,
        None,
        H,
    );
    let idx = spread(63 * 63, 600);
    let e_w = check(
        &mut |x| nll_exact_lowrank(&mu, &s, x, &gt, jit, 1.0, &mut t1, &mut t2, None).unwrap(),
        &w,
        &dw,
        Some(&idx),
        H,
    );
    eprintln!(
        "nll_exact_lowrank fd rel err: mu {e_mu:.2e}, s {e_s:.2e}, W {e_w:.2e} ({} entries)",
        idx.len()
    );
    assert!(
        e_mu < TOL && e_s < TOL && e_w < TOL,
        "mu {e_mu}, s {e_s}, W {e_w}"
    );
    // The sample with a conf < 1 contributes nothing.
    assert!(dm[63..].iter().chain(&ds[63..]).all(|&g| g == 0.0));
}

#[test]
fn f32_inputs_give_f32_rounded_results() {
    // The f32 path is the same generic code; its gradients are the f64 ones rounded.
    let gt = make_gt(31, &[None, Some(1.0)]);
    let mu = rand_vec(32, 126, -1.0, 1.0);
    let s = rand_vec(33, 126, -1.0, 1.0);
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let back = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let (gt32, mu32, s32) = (f(&gt), f(&mu), f(&s));
    let (mu_r, s_r, gt_r) = (back(&mu32), back(&s32), back(&gt32));
    let (mut dm, mut ds) = (vec![0f64; 126], vec![0f64; 126]);
    let (mut dm32, mut ds32) = (vec![0f32; 126], vec![0f32; 126]);
    let v64 = nll_diag(&mu_r, &s_r, &gt_r, 1.0, &mut dm, &mut ds).unwrap();
    let v32 = nll_diag(&mu32, &s32, &gt32, 1.0, &mut dm32, &mut ds32).unwrap();
    assert_eq!(v64, v32);
    assert_eq!(f(&dm), dm32);
    assert_eq!(f(&ds), ds32);
}

#[test]
fn exact_nll_products_match_the_indexed_loops_bitwise() {
    let gm = randn_vec(0x51, DIM * DIM);
    let wf = randn_vec(0x52, DIM * DIM);
    let mut want = vec![0f64; DIM * DIM];
    for i in 0..DIM {
        for k in 0..DIM {
            for d in 0..DIM {
                want[i * DIM + d] += gm[i * DIM + k] * wf[k * DIM + d];
            }
        }
    }
    let mut gw = vec![0f64; DIM * DIM];
    simd(|| gw_product(&gm, &wf, &mut gw));
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&gw), bits(&want));
    let want: Vec<f64> = (0..DIM)
        .map(|d| (0..DIM).map(|i| wf[i * DIM + d] * gw[i * DIM + d]).sum())
        .collect();
    assert_eq!(bits(&simd(|| column_dots(&wf, &gw))), bits(&want));
    // The sum starts from −0.0 as `Iterator::sum` does: all −0.0 terms give −0.0.
    let neg = vec![-0.0f64; DIM * DIM];
    let want: f64 = (0..DIM).map(|i| neg[i * DIM] * 1.0).sum();
    assert_eq!(
        column_dots(&neg, &vec![1.0; DIM * DIM])[0].to_bits(),
        want.to_bits()
    );
}
