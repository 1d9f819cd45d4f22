//! The exact-NLL Cholesky kernels (`cholesky_nll_{fwd,bwd}_f64`) against the CPU twin
//! `train::nll::nll_exact_lowrank`, run in f64 on the same (f32) inputs.

use handcov::cuda::{CudaBackend, NLL_MAX_BLOCKS};
use handcov::tensor::rel_err;
use handcov::train::nll::nll_exact_lowrank;

use super::helpers::*;

const DIM: usize = 63;

struct Case {
    mu: Vec<f32>,
    s: Vec<f32>,
    w: Vec<f32>,
    gt: Vec<f32>,
}

/// Realistic magnitudes: joints within ±0.15 m, errors of a few cm, log-variances in [−9, −3]
/// (σ from 1 to 22 mm), W entries within ±1/√63 (the nn.Linear init bound); every `unconf`-th
/// sample has one joint with confidence 0 (weight 0).
fn case(rng: &mut Rng, b: usize, unconf: usize) -> Case {
    let mut gt = Vec::with_capacity(b * 84);
    for n in 0..b {
        for j in 0..21 {
            gt.extend(rng.vec(3, 0.0, 0.15));
            gt.push(if unconf > 0 && n % unconf == unconf - 1 && j == 7 {
                0.0
            } else {
                1.0
            });
        }
    }
    let mut mu = Vec::with_capacity(b * DIM);
    for n in 0..b {
        for i in 0..DIM {
            mu.push(gt[n * 84 + 4 * (i / 3) + i % 3] + 0.03 * rng.sym());
        }
    }
    Case {
        mu,
        s: rng.vec(b * DIM, -6.0, 3.0),
        w: rng.vec(DIM * DIM, 0.0, 1.0 / 63f32.sqrt()),
        gt,
    }
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

struct GpuOut {
    loss: Vec<f64>,
    status: Vec<i32>,
    d_mu: Vec<f32>,
    d_s: Vec<f32>,
    d_w: Vec<f32>,
}

fn run_bwd(be: &CudaBackend, c: &Case, b: usize, jitter: f64, scale: f64, d_w0: &[f32]) -> GpuOut {
    let (mu, s, w, gt) = (
        upload(be, &c.mu),
        upload(be, &c.s),
        upload(be, &c.w),
        upload(be, &c.gt),
    );
    let mut loss = poisoned_f64(be, b);
    let mut status = upload(be, &vec![-7i32; b]);
    let mut d_mu = poisoned::<f32>(be, b * DIM);
    let mut d_s = poisoned::<f32>(be, b * DIM);
    let mut d_w = upload(be, d_w0);
    let mut scratch = poisoned_f64(be, CudaBackend::cholesky_nll_scratch_len(b));
    be.cholesky_nll_bwd(
        &mu.slice(..),
        &s.slice(..),
        &w.slice(..),
        &gt.slice(..),
        jitter,
        scale,
        &mut loss.slice_mut(..),
        &mut status.slice_mut(..),
        &mut d_mu.slice_mut(..),
        &mut d_s.slice_mut(..),
        &mut d_w.slice_mut(..),
        &mut scratch.slice_mut(..),
        b,
    )
    .expect("cholesky_nll_bwd");
    GpuOut {
        loss: download(be, &loss),
        status: download(be, &status),
        d_mu: download(be, &d_mu),
        d_s: download(be, &d_s),
        d_w: download(be, &d_w),
    }
}

fn run_fwd(be: &CudaBackend, c: &Case, b: usize, jitter: f64) -> (Vec<f64>, Vec<i32>) {
    let (mu, s, w, gt) = (
        upload(be, &c.mu),
        upload(be, &c.s),
        upload(be, &c.w),
        upload(be, &c.gt),
    );
    let mut loss = poisoned_f64(be, b);
    let mut status = upload(be, &vec![-7i32; b]);
    be.cholesky_nll_fwd(
        &mu.slice(..),
        &s.slice(..),
        &w.slice(..),
        &gt.slice(..),
        jitter,
        &mut loss.slice_mut(..),
        &mut status.slice_mut(..),
        b,
    )
    .expect("cholesky_nll_fwd");
    (download(be, &loss), download(be, &status))
}

#[test]
#[ignore = "needs a CUDA device"]
fn cholesky_nll_matches_cpu_twin() {
    let be = backend();
    let mut rng = Rng(0x0c40);
    let jitter = 1e-6;
    // One sample; a few with unconfident ones; more samples than blocks (several per block).
    for &(b, unconf) in &[(1usize, 0usize), (3, 2), (50, 7), (NLL_MAX_BLOCKS + 17, 5)] {
        let c = case(&mut rng, b, unconf);
        let scale = 0.37;
        let d_w0 = rng.vec(DIM * DIM, 0.0, 1e-3);

        // The twin in f64 on the same values: the total, gradients, and d_W from d_w0.
        let (mu, s, w, gt) = (to64(&c.mu), to64(&c.s), to64(&c.w), to64(&c.gt));
        let (mut dm, mut ds) = (vec![0f64; b * DIM], vec![0f64; b * DIM]);
        let mut dw = to64(&d_w0);
        let total = nll_exact_lowrank(
            &mu,
            &s,
            &w,
            &gt,
            jitter,
            scale,
            &mut dm,
            &mut ds,
            Some(&mut dw),
        )
        .expect("CPU twin");
        // Per-sample values from one-sample calls.
        let per: Vec<f64> = (0..b)
            .map(|n| {
                let r = n * DIM..(n + 1) * DIM;
                let (mut a, mut bb) = (vec![0f64; DIM], vec![0f64; DIM]);
                nll_exact_lowrank(
                    &mu[r.clone()],
                    &s[r],
                    &w,
                    &gt[n * 84..(n + 1) * 84],
                    jitter,
                    1.0,
                    &mut a,
                    &mut bb,
                    None,
                )
                .expect("CPU twin, one sample")
            })
            .collect();

        let g = run_bwd(&be, &c, b, jitter, scale, &d_w0);
        assert!(
            g.status.iter().all(|&v| v == 0),
            "b {b}: status {:?}",
            &g.status[..b.min(8)]
        );
        CudaBackend::cholesky_nll_check(&g.status, jitter).expect("all positive definite");
        // Loss in f64 on both sides; Σ's condition number here is ≤ ~1e5, so the two
        // factorisations (explicit inverse vs two triangular solves) agree to ~1e-11 relative.
        let loss_err = g
            .loss
            .iter()
            .zip(&per)
            .map(|(a, w)| (a - w).abs() / w.abs().max(1.0))
            .fold(0f64, f64::max);
        assert!(loss_err < 1e-9, "b {b}: per-sample loss error {loss_err}");
        let gpu_total: f64 = g.loss.iter().sum();
        assert!(
            (gpu_total - total).abs() <= 1e-9 * total.abs().max(1.0),
            "b {b}: total {gpu_total} vs {total}"
        );
        // Gradients: f64 on both sides, rounded once to f32 (2^-24 relative), d_W summed over the
        // batch in fp64 (one rounding of the sum added to d_w0): 1e-6 of max|·|.
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let errs = [
            rel_err(&g.d_mu, &f32s(&dm)),
            rel_err(&g.d_s, &f32s(&ds)),
            rel_err(&g.d_w, &f32s(&dw)),
        ];
        for e in errs {
            assert!(e < 1e-6, "b {b}: d_mu, d_s, d_W errors {errs:?}");
        }

        // The forward kernel gives the same loss (same elimination, only column r carried).
        let (fl, fs) = run_fwd(&be, &c, b, jitter);
        assert!(fs.iter().all(|&v| v == 0));
        let fwd_err = fl
            .iter()
            .zip(&g.loss)
            .map(|(a, w)| (a - w).abs() / w.abs().max(1.0))
            .fold(0f64, f64::max);
        assert!(fwd_err < 1e-12, "b {b}: forward vs backward loss {fwd_err}");

        // Same inputs, same bits (d_W's fixed two-stage reduction included).
        let again = run_bwd(&be, &c, b, jitter, scale, &d_w0);
        assert_bits_eq(&again.d_w, &g.d_w, "d_W rerun");
        assert_bits_eq(&again.d_mu, &g.d_mu, "d_mu rerun");
        assert!(again
            .loss
            .iter()
            .zip(&g.loss)
            .all(|(a, w)| a.to_bits() == w.to_bits()));
    }
}

/// A Σ that is not positive definite (W = 0, no jitter) fails at pivot 0: status 1, NaN loss
/// and gradients, d_W untouched, and `cholesky_nll_check` names the sample.
#[test]
#[ignore = "needs a CUDA device"]
fn cholesky_nll_reports_non_positive_definite_samples() {
    let be = backend();
    let mut rng = Rng(0xbad);
    let mut c = case(&mut rng, 3, 0);
    let good = c.w.clone();
    c.w = vec![0.0; DIM * DIM];
    let d_w0 = vec![0.25f32; DIM * DIM];
    let g = run_bwd(&be, &c, 3, 0.0, 1.0, &d_w0);
    assert_eq!(g.status, vec![1, 1, 1]);
    assert!(g.loss.iter().all(|v| v.is_nan()));
    assert!(g.d_mu.iter().chain(&g.d_s).all(|v| v.is_nan()));
    assert!(
        g.d_w.iter().all(|&v| v == 0.25),
        "failed samples add nothing to d_W"
    );
    let msg = CudaBackend::cholesky_nll_check(&g.status, 0.0)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("sample 0") && msg.contains("pivot 0"), "{msg}");
    // With the real W the same samples factorise.
    c.w = good;
    let g = run_bwd(&be, &c, 3, 1e-6, 1.0, &d_w0);
    assert_eq!(g.status, vec![0, 0, 0]);
}
