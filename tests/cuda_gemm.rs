//! The cuBLASLt linear layer (`Gemm::linear`, src/cuda/gemm.rs) against its CPU twin
//! `linear_cpu`, for f32 → f32, bf16 → bf16 and bf16 → f32, at the model's shapes and awkward
//! ones; plan reuse, determinism, offset views and argument checks.
//!
//! Every test needs a GPU and is `#[ignore]`d: on a machine with a CUDA device run
//! `cargo test --release --test cuda_gemm -- --ignored`.
//!
//! Tolerances (error measure `max|gpu − cpu| / max|cpu|`, the CPU twin run on exactly the values
//! the GPU sees: inputs rounded to the input type, the bias to the output type):
//! - f32 → f32, 1e-5: both sides accumulate in fp32 (`CUBLAS_COMPUTE_32F`, no TF32) in different
//!   orders; for k ≤ 5120 random-sign sums that is ≲ 1e-6 of max|y|. TF32 would give ~1e-3.
//! - bf16 → f32, 2e-4: products of bf16 values are exact in fp32 and the sums are fp32 on both
//!   sides, but tensor cores add into the fp32 accumulator with truncation (round toward zero,
//!   Fasi et al. 2021), a one-sided error of up to one fp32 ulp per MMA step: k/16 ≤ 320 steps
//!   × 2⁻²³ ≈ 4e-5 of the partial sums, which stay within a few times max|y|. A bf16-rounded
//!   output (a real bug here) would show ≳ 1e-3.
//! - bf16 → bf16, 1e-2: rounding the output to bf16 costs ≤ 2⁻⁸ ≈ 3.9e-3 of |y|; an
//!   implementation may round twice (GEMM result, then the bias added in bf16), ≤ 7.8e-3.

use half::bf16;
use handcov::cuda::{CudaBackend, Dtype, Gemm};
use handcov::ops::linear::{linear_cpu, Epilogue};
use handcov::tensor::rel_err;
use handcov::Error;

const TOL_F32: f64 = 1e-5;
const TOL_BF16_TO_F32: f64 = 2e-4;
const TOL_BF16: f64 = 1e-2;

/// SplitMix64: fresh inputs per case, reproducible across runs.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// `n` values uniform in [−scale, scale).
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
                scale * (2.0 * u - 1.0)
            })
            .collect()
    }
}

fn backend() -> CudaBackend {
    CudaBackend::new(0).unwrap_or_else(|e| panic!("this test needs a CUDA device: {e}"))
}

fn gemm(be: &CudaBackend) -> Gemm {
    be.gemm()
        .unwrap_or_else(|e| panic!("this test needs cuBLASLt: {e}"))
}

/// One linear layer's inputs, as f32 on the host.
struct Layer {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Option<Vec<f32>>,
    rows: usize,
    d_in: usize,
    d_out: usize,
}

impl Layer {
    /// x uniform in [−1, 1), W like an initialised weight (scale 1/√d_in), bias in [−0.5, 0.5).
    fn random(rng: &mut Rng, rows: usize, d_in: usize, d_out: usize, bias: bool) -> Layer {
        Layer {
            x: rng.vec(rows * d_in, 1.0),
            w: rng.vec(d_out * d_in, 1.0 / (d_in as f32).sqrt()),
            b: bias.then(|| rng.vec(d_out, 0.5)),
            rows,
            d_in,
            d_out,
        }
    }

    fn describe(&self, t_in: &str, t_out: &str) -> String {
        format!(
            "{t_in}→{t_out} rows={} d_in={} d_out={} {}",
            self.rows,
            self.d_in,
            self.d_out,
            if self.b.is_some() { "bias" } else { "no bias" }
        )
    }
}

/// `v` rounded to `T` and back (what an upload as `T` stores).
fn rounded<T: Dtype>(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&a| T::from_f32(a).to_f32()).collect()
}

/// The CPU twin on the values the GPU sees.
fn cpu_twin<TIn: Dtype, TOut: Dtype>(l: &Layer) -> Vec<f32> {
    let (x, w) = (rounded::<TIn>(&l.x), rounded::<TIn>(&l.w));
    let b = l.b.as_ref().map(|b| rounded::<TOut>(b));
    let mut y = vec![0.0f32; l.rows * l.d_out];
    linear_cpu(
        &x,
        &w,
        b.as_deref(),
        l.d_in,
        l.d_out,
        Epilogue::None,
        &mut y,
    );
    y
}

/// Uploads the layer, runs `linear` into a NaN-poisoned output, downloads it.
fn gpu_linear<TIn: Dtype, TOut: Dtype>(
    be: &CudaBackend,
    g: &mut Gemm,
    l: &Layer,
) -> handcov::Result<Vec<f32>> {
    let dx = be.upload::<TIn>(&l.x)?;
    let dw = be.upload::<TIn>(&l.w)?;
    let db = match &l.b {
        Some(b) => Some(be.upload::<TOut>(b)?),
        None => None,
    };
    let mut dy = be.upload::<TOut>(&vec![f32::NAN; l.rows * l.d_out])?;
    let bias = db.as_ref().map(|b| b.as_view());
    g.linear(
        &dx.as_view(),
        &dw.as_view(),
        bias.as_ref(),
        &mut dy.as_view_mut(),
        l.rows,
        l.d_in,
        l.d_out,
    )?;
    be.synchronize()?;
    be.download_f32(&dy.as_view())
}

/// Runs one type combination and compares with the CPU twin at tolerance `tol`.
fn check<TIn: Dtype, TOut: Dtype>(be: &CudaBackend, g: &mut Gemm, l: &Layer, tol: f64) {
    let case = l.describe(TIn::NAME, TOut::NAME);
    let want = cpu_twin::<TIn, TOut>(l);
    let got = gpu_linear::<TIn, TOut>(be, g, l).unwrap_or_else(|e| panic!("{case}: {e}"));
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{case}: y[{i}] = {} (element not written)", got[i]);
    }
    let err = rel_err(&got, &want);
    assert!(
        err <= tol,
        "{case}: max|gpu − cpu| / max|cpu| = {err:e} > {tol:e}"
    );
}

/// All three supported type combinations, each at its tolerance (see the file docs).
fn check_all(be: &CudaBackend, g: &mut Gemm, l: &Layer) {
    check::<f32, f32>(be, g, l, TOL_F32);
    check::<bf16, f32>(be, g, l, TOL_BF16_TO_F32);
    check::<bf16, bf16>(be, g, l, TOL_BF16);
}

/// The backbone's GEMMs (ViT-H: qkv 1280→3840, proj 1280→1280, fc1 1280→5120, fc2 5120→1280)
/// and the decoder's cross-attention keys/values over the image tokens (1280→1024), at one
/// image (192 tokens) and a training batch of 64 images.
#[test]
#[ignore = "needs a CUDA device"]
fn linear_matches_cpu_twin_at_backbone_shapes() {
    let be = backend();
    let mut g = gemm(&be);
    let mut rng = Rng(0x6e33_1a7e);
    for (i, &rows) in [192usize, 64 * 192].iter().enumerate() {
        for (j, &(d_in, d_out)) in [
            (1280, 3840),
            (1280, 1280),
            (1280, 5120),
            (5120, 1280),
            (1280, 1024),
        ]
        .iter()
        .enumerate()
        {
            let bias = (i + j) % 2 == 0; // both settings at both row counts
            let l = Layer::random(&mut rng, rows, d_in, d_out, bias);
            check_all(&be, &mut g, &l);
        }
    }
}

/// The decoder and heads, one token per image (rows = batch): self-attention qkv 1024→1536,
/// query 1024→512, out 512→1024, MLP 1024→1024, pose 1024→96, betas 1024→10, camera 1024→3,
/// keypoint log-variances 1024→63, covariance factor 1024→1953.
#[test]
#[ignore = "needs a CUDA device"]
fn linear_matches_cpu_twin_at_decoder_shapes() {
    let be = backend();
    let mut g = gemm(&be);
    let mut rng = Rng(0x00de_c0de);
    let shapes = [
        (1024, 1536),
        (1024, 512),
        (512, 1024),
        (1024, 1024),
        (1024, 96),
        (1024, 10),
        (1024, 3),
        (1024, 63),
        (1024, 1953),
    ];
    for &rows in &[1usize, 7, 64] {
        for &(d_in, d_out) in &shapes {
            for bias in [true, false] {
                let l = Layer::random(&mut rng, rows, d_in, d_out, bias);
                check_all(&be, &mut g, &l);
            }
        }
    }
}

/// Sizes no tensor-core tile divides: one row, odd inner and outer dimensions, d_in = 1.
#[test]
#[ignore = "needs a CUDA device"]
fn linear_matches_cpu_twin_at_awkward_shapes() {
    let be = backend();
    let mut g = gemm(&be);
    let mut rng = Rng(0xa3c_0b5);
    for &rows in &[1usize, 7, 33] {
        for &d_in in &[1usize, 3, 63, 1953] {
            for &d_out in &[1usize, 3, 10, 63] {
                for bias in [true, false] {
                    let l = Layer::random(&mut rng, rows, d_in, d_out, bias);
                    check_all(&be, &mut g, &l);
                }
            }
        }
    }
}

/// A problem seen before makes no new plan; a new shape, type combination or epilogue does.
/// Repeated calls give the same bits.
#[test]
#[ignore = "needs a CUDA device"]
fn plans_are_made_once_per_problem() {
    let be = backend();
    let mut g = gemm(&be);
    let mut rng = Rng(0x91a5);
    assert_eq!(g.plans_cached(), 0);

    let with_bias = Layer::random(&mut rng, 192, 1280, 3840, true);
    let first = gpu_linear::<bf16, bf16>(&be, &mut g, &with_bias).unwrap();
    assert_eq!(g.plans_cached(), 1);
    let again = gpu_linear::<bf16, bf16>(&be, &mut g, &with_bias).unwrap();
    assert_eq!(
        g.plans_cached(),
        1,
        "the second call of a problem must reuse its plan"
    );
    assert!(
        first
            .iter()
            .zip(&again)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "repeated call gave different bits"
    );

    // Fresh inputs of the same problem: new buffers, but every allocation is at least 256-byte
    // aligned (CUDA programming guide), so the same alignment class and still one plan.
    let other = Layer::random(&mut rng, 192, 1280, 3840, true);
    gpu_linear::<bf16, bf16>(&be, &mut g, &other).unwrap();
    assert_eq!(g.plans_cached(), 1);

    let no_bias = Layer::random(&mut rng, 192, 1280, 3840, false);
    gpu_linear::<bf16, bf16>(&be, &mut g, &no_bias).unwrap();
    assert_eq!(g.plans_cached(), 2, "another epilogue is another plan");
    gpu_linear::<bf16, f32>(&be, &mut g, &with_bias).unwrap();
    assert_eq!(g.plans_cached(), 3, "another output type is another plan");
    let smaller = Layer::random(&mut rng, 7, 1280, 3840, true);
    gpu_linear::<bf16, bf16>(&be, &mut g, &smaller).unwrap();
    assert_eq!(g.plans_cached(), 4, "another shape is another plan");
    for _ in 0..3 {
        gpu_linear::<bf16, bf16>(&be, &mut g, &with_bias).unwrap();
        gpu_linear::<bf16, bf16>(&be, &mut g, &no_bias).unwrap();
        gpu_linear::<bf16, f32>(&be, &mut g, &with_bias).unwrap();
        gpu_linear::<bf16, bf16>(&be, &mut g, &smaller).unwrap();
    }
    assert_eq!(g.plans_cached(), 4, "steady state creates nothing");
}

/// Same inputs, same bits: through the same plan and through a fresh `Gemm`, on shapes where
/// the heuristic is likely to split k (few output tiles, long k).
#[test]
#[ignore = "needs a CUDA device"]
fn linear_is_deterministic() {
    let be = backend();
    let mut g = gemm(&be);
    let mut rng = Rng(0xd37);
    for &(rows, d_in, d_out) in &[
        (192usize, 5120usize, 1280usize),
        (1, 1024, 1953),
        (7, 1953, 63),
    ] {
        let l = Layer::random(&mut rng, rows, d_in, d_out, true);
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
        let a = gpu_linear::<f32, f32>(&be, &mut g, &l).unwrap();
        let b = gpu_linear::<f32, f32>(&be, &mut g, &l).unwrap();
        let c = gpu_linear::<f32, f32>(&be, &mut gemm(&be), &l).unwrap();
        assert!(
            same(&a, &b) && same(&a, &c),
            "f32 {rows}×{d_in}→{d_out}: runs differ"
        );
        let a = gpu_linear::<bf16, bf16>(&be, &mut g, &l).unwrap();
        let b = gpu_linear::<bf16, bf16>(&be, &mut g, &l).unwrap();
        let c = gpu_linear::<bf16, bf16>(&be, &mut gemm(&be), &l).unwrap();
        assert!(
            same(&a, &b) && same(&a, &c),
            "bf16 {rows}×{d_in}→{d_out}: runs differ"
        );
    }
}

/// Operands that are views into the middle of larger buffers (less aligned than cuBLASLt's
/// default 256 bytes) and an output view between two sentinel regions: the plan must be made
/// for the actual alignment, and nothing outside the output view may be written.
#[test]
#[ignore = "needs a CUDA device"]
fn linear_handles_offset_views() {
    let be = backend();
    let mut g = gemm(&be);
    let mut rng = Rng(0x0ff5e7);
    let (rows, d_in, d_out) = (7usize, 63usize, 10usize);
    let l = Layer::random(&mut rng, rows, d_in, d_out, false);
    let (nx, ny) = (rows * d_in, rows * d_out);
    // One element of padding in front of x and y, and a sentinel after y.
    let pad = |v: &[f32]| [&[0.0][..], v, &[0.0][..]].concat();
    const SENTINEL: f32 = 12345.0;

    fn run<T: Dtype>(
        be: &CudaBackend,
        g: &mut Gemm,
        l: &Layer,
        x: &[f32],
        (nx, ny): (usize, usize),
        sentinel: f32,
    ) -> handcov::Result<Vec<f32>> {
        let dx = be.upload::<T>(x)?;
        let dw = be.upload::<T>(&l.w)?;
        let mut dy =
            be.upload::<f32>(&[vec![sentinel], vec![f32::NAN; ny], vec![sentinel]].concat())?;
        g.linear::<T, f32>(
            &dx.slice(1..1 + nx),
            &dw.as_view(),
            None,
            &mut dy.slice_mut(1..1 + ny),
            l.rows,
            l.d_in,
            l.d_out,
        )?;
        be.synchronize()?;
        be.download_f32(&dy.as_view())
    }

    let check_out = |t: &str, y: &[f32], tol: f64, want: &[f32]| {
        assert_eq!(
            (y[0], y[ny + 1]),
            (SENTINEL, SENTINEL),
            "{t}: wrote outside y"
        );
        let err = rel_err(&y[1..=ny], want);
        assert!(err <= tol, "{t} offset views: error {err:e} > {tol:e}");
    };

    // f32 views 4 bytes past a 256-byte boundary: cuBLASLt has kernels for 4-byte alignment.
    let y = run::<f32>(&be, &mut g, &l, &pad(&l.x), (nx, ny), SENTINEL).unwrap();
    check_out("f32", &y, TOL_F32, &cpu_twin::<f32, f32>(&l));

    // bf16 x 2 bytes past a boundary: either correct, or the clear "no algorithm" error.
    match run::<bf16>(&be, &mut g, &l, &pad(&l.x), (nx, ny), SENTINEL) {
        Ok(y) => check_out("bf16", &y, TOL_BF16_TO_F32, &cpu_twin::<bf16, f32>(&l)),
        Err(Error::Cuda(msg)) => {
            assert!(msg.contains("no algorithm"), "unexpected error: {msg}");
            eprintln!("note: cuBLASLt refused 2-byte-aligned bf16 operands: {msg}");
        }
        Err(e) => panic!("bf16 offset views: unexpected error {e}"),
    }
}

/// Mismatched lengths, unsupported types, a misaligned bias and impossible sizes are
/// `Error::Input`, and make no plan.
#[test]
#[ignore = "needs a CUDA device"]
fn linear_rejects_bad_arguments() {
    let be = backend();
    let mut g = gemm(&be);
    let (rows, d_in, d_out) = (4usize, 8usize, 6usize);
    let x = be.upload::<f32>(&vec![1.0; rows * d_in]).unwrap();
    let w = be.upload::<f32>(&vec![1.0; d_out * d_in]).unwrap();
    let b = be.upload::<f32>(&vec![0.0; d_out + 1]).unwrap();
    let mut y = be.upload::<f32>(&vec![0.0; rows * d_out + 1]).unwrap();
    let xb = be.upload::<bf16>(&vec![1.0; rows * d_in]).unwrap();
    let wb = be.upload::<bf16>(&vec![1.0; d_out * d_in]).unwrap();
    let mut yb = be.upload::<bf16>(&vec![0.0; rows * d_out]).unwrap();

    let is_input = |r: handcov::Result<()>| match r {
        Err(Error::Input(_)) => true,
        Err(e) => panic!("expected Error::Input, got {e}"),
        Ok(()) => false,
    };
    let x_v = x.as_view();
    let w_v = w.as_view();
    let bias_ok = b.slice(0..d_out);
    let ny = rows * d_out;

    // Wrong lengths: x for rows + 1, a short weight, a long bias, a long output.
    assert!(is_input(g.linear(
        &x_v,
        &w_v,
        None,
        &mut y.slice_mut(0..ny),
        rows + 1,
        d_in,
        d_out
    )));
    assert!(is_input(g.linear(
        &x_v,
        &w.slice(1..),
        None,
        &mut y.slice_mut(0..ny),
        rows,
        d_in,
        d_out
    )));
    assert!(is_input(g.linear(
        &x_v,
        &w_v,
        Some(&b.as_view()),
        &mut y.slice_mut(0..ny),
        rows,
        d_in,
        d_out
    )));
    assert!(is_input(g.linear(
        &x_v,
        &w_v,
        None,
        &mut y.as_view_mut(),
        rows,
        d_in,
        d_out
    )));
    // d_in = 0 and sizes past cuBLASLt's int32 dimensions.
    assert!(is_input(g.linear(
        &x_v,
        &w_v,
        None,
        &mut y.slice_mut(0..ny),
        rows,
        0,
        d_out
    )));
    assert!(is_input(g.linear(
        &x_v,
        &w_v,
        None,
        &mut y.slice_mut(0..ny),
        1 << 31,
        d_in,
        d_out
    )));
    assert!(is_input(g.linear(
        &x_v,
        &w_v,
        None,
        &mut y.slice_mut(0..ny),
        usize::MAX,
        2,
        d_out
    )));
    // f32 inputs with a bf16 output are not a supported combination.
    assert!(is_input(g.linear(
        &x_v,
        &w_v,
        None,
        &mut yb.as_view_mut(),
        rows,
        d_in,
        d_out
    )));
    // A bias 4 bytes past an allocation's start is not 16-byte aligned.
    assert!(is_input(g.linear(
        &x_v,
        &w_v,
        Some(&b.slice(1..1 + d_out)),
        &mut y.slice_mut(0..ny),
        rows,
        d_in,
        d_out
    )));
    assert_eq!(g.plans_cached(), 0, "rejected calls must not make plans");

    // The same buffers with correct arguments work (f32 and bf16 → bf16 without bias).
    g.linear(
        &x_v,
        &w_v,
        Some(&bias_ok),
        &mut y.slice_mut(0..ny),
        rows,
        d_in,
        d_out,
    )
    .unwrap();
    g.linear::<bf16, bf16>(
        &xb.as_view(),
        &wb.as_view(),
        None,
        &mut yb.as_view_mut(),
        rows,
        d_in,
        d_out,
    )
    .unwrap();
    be.synchronize().unwrap();
    let got = be.download_f32(&y.slice(0..ny)).unwrap();
    assert!(
        got.iter().all(|&v| v == d_in as f32),
        "all-ones x·Wᵀ must be d_in"
    );
    let got = be.download_f32(&yb.as_view()).unwrap();
    assert!(
        got.iter().all(|&v| v == d_in as f32),
        "bf16 all-ones x·Wᵀ must be d_in"
    );
}
