//! The covariance kernels (kernels/covariance.cu: `covariance_{diag,lowrank,full}_fwd_f32`)
//! against their CPU twin `covariance_cpu`, on fresh random readouts of realistic scale.
//!
//! All tests need a GPU and are `#[ignore]`d: on a machine with a CUDA device run
//! `cargo test --release --test cuda_covariance -- --ignored`.
//! (The kernels' index arithmetic and algorithms are also checked on the CPU, without a GPU, by
//! the unit tests in src/cuda/covariance.rs.)

use cudarc::driver::CudaSlice;
use handcov::cuda::CudaBackend;
use handcov::ops::covariance::{covariance_cpu, CovParam, DIM, TRIL};
use handcov::tensor::rel_err;
use handcov::Error;

const NN: usize = DIM * DIM;
const JOINTS: usize = DIM / 3;

/// Batch sizes: 1, 2, 7 and 64 as in training/eval, and 1100, which is more samples than the
/// launcher's grid cap on an H100 (132 SMs: 528 blocks for full, 1056 for lowrank, 2112 × 256
/// threads for diag), so the kernels' grid-stride loops run more than one iteration.
const BATCHES: [usize; 5] = [1, 2, 7, 64, 1100];

/// SplitMix64 with Box–Muller normals: fresh inputs per case, reproducible.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self, mean: f64, std: f64) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// A readout `[b, param.raw_len()]` and, for LowRank, W `[63, 63]`:
/// - Diag / LowRank: `s ~ N(−6, 1)` (σ ≈ 5 cm in metres), `W ~ U(±1/√63)` (PyTorch's init);
/// - Full: `d ~ N(mean_d, 0.3)` and off-diagonals of L ~ N(0, (0.1·e^{−mean_d})²), the scaling
///   tests/reference/make_fixtures.py uses (there L·Lᵀ has condition numbers < 1e3).
fn inputs(rng: &mut Rng, param: CovParam, b: usize, mean_d: f64) -> (Vec<f32>, Option<Vec<f32>>) {
    match param {
        CovParam::Diag | CovParam::LowRank => {
            let s = (0..b * DIM).map(|_| rng.normal(-6.0, 1.0)).collect();
            let w = (param == CovParam::LowRank).then(|| {
                let lim = 1.0 / (DIM as f64).sqrt();
                (0..NN)
                    .map(|_| ((2.0 * rng.uniform() - 1.0) * lim) as f32)
                    .collect()
            });
            (s, w)
        }
        CovParam::Full => {
            let off = 0.1 * (-mean_d).exp();
            let mut raw = Vec::with_capacity(b * (DIM + TRIL));
            for _ in 0..b {
                raw.extend((0..DIM).map(|_| rng.normal(mean_d, 0.3)));
                raw.extend((0..TRIL).map(|_| rng.normal(0.0, off)));
            }
            (raw, None)
        }
    }
}

fn backend() -> CudaBackend {
    CudaBackend::new(0).unwrap_or_else(|e| panic!("this test needs a CUDA device: {e}"))
}

/// Runs the kernel on NaN-poisoned output buffers and returns (cov, joint_unc).
fn run_gpu(
    be: &CudaBackend,
    param: CovParam,
    raw: &[f32],
    w: Option<&[f32]>,
    b: usize,
) -> (Vec<f32>, Vec<f32>) {
    let draw = be.htod(raw).unwrap();
    let dw: Option<CudaSlice<f32>> = w.map(|w| be.htod(w).unwrap());
    let mut dcov = be.htod(&vec![f32::NAN; b * NN]).unwrap();
    let mut dunc = be.htod(&vec![f32::NAN; b * JOINTS]).unwrap();
    let wv = dw.as_ref().map(|w| w.as_view());
    be.covariance_fwd(
        param,
        &draw.as_view(),
        wv.as_ref(),
        &mut dcov.as_view_mut(),
        &mut dunc.as_view_mut(),
        b,
    )
    .unwrap();
    be.synchronize().unwrap();
    (be.dtoh(&dcov).unwrap(), be.dtoh(&dunc).unwrap())
}

/// Every element written and finite, and Σ exactly (bitwise) symmetric.
fn check_written_and_symmetric(case: &str, cov: &[f32], unc: &[f32]) {
    if let Some(i) = cov.iter().position(|v| !v.is_finite()) {
        panic!("{case}: cov[{i}] = {} (not written, or overflow)", cov[i]);
    }
    if let Some(i) = unc.iter().position(|v| !v.is_finite()) {
        panic!(
            "{case}: joint_unc[{i}] = {} (not written, or overflow)",
            unc[i]
        );
    }
    for (n, c) in cov.chunks(NN).enumerate() {
        for a in 0..DIM {
            for b in 0..a {
                assert_eq!(
                    c[a * DIM + b].to_bits(),
                    c[b * DIM + a].to_bits(),
                    "{case}: sample {n}: Σ[{a},{b}] = {} but Σ[{b},{a}] = {}",
                    c[a * DIM + b],
                    c[b * DIM + a]
                );
            }
        }
    }
}

/// Kernel vs twin on one fresh input of `b` samples.
fn check_case(be: &CudaBackend, rng: &mut Rng, param: CovParam, b: usize, mean_d: f64) {
    let (raw, w) = inputs(rng, param, b, mean_d);
    let mut want_c = vec![0f32; b * NN];
    let mut want_u = vec![0f32; b * JOINTS];
    covariance_cpu(param, &raw, w.as_deref(), &mut want_c, &mut want_u);
    let (got_c, got_u) = run_gpu(be, param, &raw, w.as_deref(), b);

    let case = format!("{param:?} b={b} mean_d={mean_d}");
    check_written_and_symmetric(&case, &got_c, &got_u);
    let (ec, eu) = (rel_err(&got_c, &want_c), rel_err(&got_u, &want_u));
    let tol = match param {
        // fp32 kernels against the f64 twin. Diag: expf is within 2 ulp, u adds two fp32
        // additions (≈ 2e-7 expected). LowRank: Σ = V·Vᵀ with V = W·e^{s/2} in fp32; each term
        // carries a few ulps and the 63-term fma sum at most ~63 half-ulps of Σ_d|term| ≤ max Σ_jj
        // (bound < 5e-6; a host emulation of the kernel's exact operations measures 2.9e-7).
        CovParam::Diag | CovParam::LowRank => 1e-5,
        // Both sides compute in f64 and round once to f32, so they differ by at most one f32 ulp
        // (2^-23 ≈ 1.2e-7; the host emulation of the kernel matches the twin bitwise). 1e-6
        // leaves room for f64 differences (fma vs mul+add, exp, 1/L_ii) amplified by the
        // conditioning of L·Lᵀ; a wrong index or a missing term shows up at ≥ 1e-3.
        CovParam::Full => 1e-6,
    };
    assert!(
        ec <= tol,
        "{case}: cov max|gpu − cpu| / max|cpu| = {ec:e} > {tol:e}"
    );
    assert!(
        eu <= tol,
        "{case}: joint_unc max|gpu − cpu| / max|cpu| = {eu:e} > {tol:e}"
    );
    if param == CovParam::Diag {
        for (i, v) in got_c.iter().enumerate() {
            let r = i % NN;
            if r / DIM != r % DIM {
                assert_eq!(v.to_bits(), 0, "{case}: off-diagonal cov[{i}] = {v}");
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn diag_matches_cpu_twin() {
    let be = backend();
    let mut rng = Rng(0xd1a9);
    for b in BATCHES {
        check_case(&be, &mut rng, CovParam::Diag, b, 0.0);
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn lowrank_matches_cpu_twin() {
    let be = backend();
    let mut rng = Rng(0x10a4);
    for b in BATCHES {
        check_case(&be, &mut rng, CovParam::LowRank, b, 0.0);
    }
}

/// `full` at two scales of L: d ~ N(0, 0.3) (unit-scale Σ) and d ~ N(−3, 0.3) (L_ii ≈ 20, the
/// scale of a few-centimetre σ).
#[test]
#[ignore = "needs a CUDA device"]
fn full_matches_cpu_twin() {
    let be = backend();
    let mut rng = Rng(0xf011);
    for mean_d in [0.0, -3.0] {
        for b in BATCHES {
            check_case(&be, &mut rng, CovParam::Full, b, mean_d);
        }
    }
}

/// Same inputs, same bits (fixed reduction orders, no atomics).
#[test]
#[ignore = "needs a CUDA device"]
fn covariance_is_deterministic() {
    let be = backend();
    let mut rng = Rng(7);
    for param in [CovParam::Diag, CovParam::LowRank, CovParam::Full] {
        let b = 37;
        let (raw, w) = inputs(&mut rng, param, b, 0.0);
        let a = run_gpu(&be, param, &raw, w.as_deref(), b);
        let c = run_gpu(&be, param, &raw, w.as_deref(), b);
        let same = |p: &[f32], q: &[f32]| p.iter().zip(q).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(
            same(&a.0, &c.0) && same(&a.1, &c.1),
            "{param:?}: runs differ"
        );
    }
}

/// Views at odd offsets into larger buffers (no alignment assumption), and nothing written
/// outside the views.
#[test]
#[ignore = "needs a CUDA device"]
fn covariance_works_on_unaligned_views() {
    let be = backend();
    let mut rng = Rng(0x0ff5e7);
    let b = 5;
    for param in [CovParam::Diag, CovParam::LowRank, CovParam::Full] {
        let (raw, w) = inputs(&mut rng, param, b, 0.0);
        let mut want_c = vec![0f32; b * NN];
        let mut want_u = vec![0f32; b * JOINTS];
        covariance_cpu(param, &raw, w.as_deref(), &mut want_c, &mut want_u);

        let pad = |v: &[f32], front: usize| {
            let mut p = vec![-7.0f32; front];
            p.extend_from_slice(v);
            p.extend([-7.0f32; 3]);
            p
        };
        let draw = be.htod(&pad(&raw, 1)).unwrap();
        let dw = w.as_ref().map(|w| be.htod(&pad(w, 3)).unwrap());
        let mut dcov = be.htod(&vec![-7.0f32; b * NN + 6]).unwrap();
        let mut dunc = be.htod(&vec![-7.0f32; b * JOINTS + 4]).unwrap();
        {
            let rv = draw.slice(1..1 + raw.len());
            let wv = dw.as_ref().map(|d| d.slice(3..3 + NN));
            let mut cv = dcov.slice_mut(3..3 + b * NN);
            let mut uv = dunc.slice_mut(1..1 + b * JOINTS);
            be.covariance_fwd(param, &rv, wv.as_ref(), &mut cv, &mut uv, b)
                .unwrap();
        }
        be.synchronize().unwrap();
        let cov = be.dtoh(&dcov).unwrap();
        let unc = be.dtoh(&dunc).unwrap();
        let case = format!("{param:?} unaligned views");
        assert!(
            cov[..3]
                .iter()
                .chain(&cov[3 + b * NN..])
                .all(|&v| v == -7.0),
            "{case}: cov guard"
        );
        assert!(
            unc[..1]
                .iter()
                .chain(&unc[1 + b * JOINTS..])
                .all(|&v| v == -7.0),
            "{case}: u guard"
        );
        let (got_c, got_u) = (&cov[3..3 + b * NN], &unc[1..1 + b * JOINTS]);
        check_written_and_symmetric(&case, got_c, got_u);
        // Same tolerances as check_case (see there for the reasons).
        let tol = if param == CovParam::Full { 1e-6 } else { 1e-5 };
        let (ec, eu) = (rel_err(got_c, &want_c), rel_err(got_u, &want_u));
        assert!(
            ec <= tol && eu <= tol,
            "{case}: cov {ec:e}, u {eu:e} > {tol:e}"
        );
    }
}

/// Mismatched lengths, a missing or wrong-sized W and an overflowing batch are errors, not
/// panics; b = 0 with empty buffers is a no-op.
#[test]
#[ignore = "needs a CUDA device"]
fn covariance_rejects_bad_arguments() {
    let be = backend();
    let b = 3;
    let s = be.htod(&vec![-6.0; b * DIM]).unwrap();
    let full = be.htod(&vec![0.0; b * (DIM + TRIL)]).unwrap();
    let w = be.htod(&vec![0.1; NN]).unwrap();
    let w_short = be.htod(&vec![0.1; NN - 1]).unwrap();
    let mut cov = be.htod(&vec![0.0; b * NN]).unwrap();
    let mut cov_short = be.htod(&vec![0.0; b * NN - 1]).unwrap();
    let mut unc = be.htod(&vec![0.0; b * JOINTS]).unwrap();
    let mut unc_long = be.htod(&vec![0.0; b * JOINTS + 1]).unwrap();

    let is_input = |r: handcov::Result<()>| matches!(r, Err(Error::Input(_)));
    let (sv, fv, wv, wsv) = (s.as_view(), full.as_view(), w.as_view(), w_short.as_view());

    // LowRank without W, with a short W.
    assert!(is_input(be.covariance_fwd(
        CovParam::LowRank,
        &sv,
        None,
        &mut cov.as_view_mut(),
        &mut unc.as_view_mut(),
        b
    )));
    assert!(is_input(be.covariance_fwd(
        CovParam::LowRank,
        &sv,
        Some(&wsv),
        &mut cov.as_view_mut(),
        &mut unc.as_view_mut(),
        b
    )));
    // raw of the wrong parameterisation / batch.
    assert!(is_input(be.covariance_fwd(
        CovParam::Full,
        &sv,
        None,
        &mut cov.as_view_mut(),
        &mut unc.as_view_mut(),
        b
    )));
    assert!(is_input(be.covariance_fwd(
        CovParam::Diag,
        &fv,
        None,
        &mut cov.as_view_mut(),
        &mut unc.as_view_mut(),
        b
    )));
    assert!(is_input(be.covariance_fwd(
        CovParam::Diag,
        &sv,
        None,
        &mut cov.as_view_mut(),
        &mut unc.as_view_mut(),
        b + 1
    )));
    // outputs of the wrong size.
    assert!(is_input(be.covariance_fwd(
        CovParam::LowRank,
        &sv,
        Some(&wv),
        &mut cov_short.as_view_mut(),
        &mut unc.as_view_mut(),
        b
    )));
    assert!(is_input(be.covariance_fwd(
        CovParam::Full,
        &fv,
        None,
        &mut cov.as_view_mut(),
        &mut unc_long.as_view_mut(),
        b
    )));
    // batches whose sizes overflow.
    for huge in [usize::MAX, usize::MAX / NN + 1, i32::MAX as usize + 1] {
        assert!(is_input(be.covariance_fwd(
            CovParam::Diag,
            &sv,
            None,
            &mut cov.as_view_mut(),
            &mut unc.as_view_mut(),
            huge
        )));
    }
    // b = 0 on empty buffers: nothing to do.
    let empty_raw: CudaSlice<f32> = be.stream().null().unwrap();
    let mut empty_cov: CudaSlice<f32> = be.stream().null().unwrap();
    let mut empty_unc: CudaSlice<f32> = be.stream().null().unwrap();
    for param in [CovParam::Diag, CovParam::LowRank, CovParam::Full] {
        be.covariance_fwd(
            param,
            &empty_raw.as_view(),
            Some(&wv),
            &mut empty_cov.as_view_mut(),
            &mut empty_unc.as_view_mut(),
            0,
        )
        .unwrap();
    }
    be.synchronize().unwrap();
}
