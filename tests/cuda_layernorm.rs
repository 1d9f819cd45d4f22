//! The LayerNorm kernels (kernels/layernorm.cu: `layernorm_fwd_{f32,bf16}` and the fused residual
//! add + LayerNorm `add_layernorm_fwd_{f32,bf16}`) against their CPU twin `layernorm_fwd_cpu`,
//! and the backend's behaviour on machines without a GPU.
//!
//! The GPU tests are `#[ignore]`d: on a machine with a CUDA device run
//! `cargo test --release --test cuda_layernorm -- --ignored`.

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use half::bf16;
use handcov::cuda::{driver_present, kernels_built, CudaBackend, Dtype};
use handcov::ops::layernorm::layernorm_fwd_cpu;
use handcov::tensor::rel_err;
use handcov::Error;

/// Runs everywhere. Without kernels or without a driver, `CudaBackend::new` must return
/// `Error::Cuda` naming that cause, not panic; with a GPU it must succeed. A device ordinal that
/// cannot exist must be an error in every situation.
#[test]
fn backend_new_names_the_cause_and_never_panics() {
    let first =
        std::panic::catch_unwind(|| CudaBackend::new(0)).expect("CudaBackend::new(0) panicked");
    let expected_cause = if !kernels_built() {
        Some("built without CUDA kernels")
    } else if !driver_present() {
        Some("no CUDA driver found")
    } else {
        None // a driver is present: a GPU (Ok) or a driver error that says what failed
    };
    match (&first, expected_cause) {
        (Err(Error::Cuda(msg)), Some(cause)) => {
            assert!(msg.contains(cause), "message {msg:?} should say {cause:?}")
        }
        (Err(e), Some(cause)) => panic!("expected Error::Cuda({cause:?}..), got {e}"),
        (Ok(_), Some(cause)) => panic!("CudaBackend::new(0) succeeded but expected {cause:?}"),
        (Ok(backend), None) => {
            let name = backend
                .device_name()
                .expect("device name of an opened device");
            assert!(!name.is_empty());
        }
        (Err(Error::Cuda(msg)), None) => {
            // Driver present but unusable here (no visible device, driver too old, ...).
            assert!(
                msg.contains("device") || msg.contains("driver"),
                "unhelpful message {msg:?}"
            )
        }
        (Err(e), None) => panic!("expected Error::Cuda, got {e}"),
    }
    if let Err(e) = &first {
        assert!(
            e.to_string().starts_with("cuda: "),
            "Display should say where: {e}"
        );
    }

    let absurd = std::panic::catch_unwind(|| CudaBackend::new(1_000_000))
        .expect("CudaBackend::new panicked");
    match absurd {
        Ok(_) => panic!("CUDA device 1000000 cannot exist"),
        Err(Error::Cuda(msg)) => match expected_cause {
            Some(cause) => assert!(msg.contains(cause), "message {msg:?} should say {cause:?}"),
            None if first.is_ok() => assert!(msg.contains("does not exist"), "message {msg:?}"),
            None => {}
        },
        Err(e) => panic!("expected Error::Cuda, got {e}"),
    }
}

/// SplitMix64: a small deterministic generator so the inputs are fresh per case but reproducible.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn sym(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// `n` values uniform in [center − spread, center + spread).
    fn vec(&mut self, n: usize, center: f32, spread: f32) -> Vec<f32> {
        (0..n).map(|_| center + spread * self.sym()).collect()
    }
}

fn backend() -> CudaBackend {
    CudaBackend::new(0).unwrap_or_else(|e| panic!("this test needs a CUDA device: {e}"))
}

fn upload<T: DeviceRepr>(be: &CudaBackend, host: &[T]) -> CudaSlice<T> {
    be.stream().clone_htod(host).expect("copy to the device")
}

fn download<T: DeviceRepr + Default + Clone>(be: &CudaBackend, dev: &CudaSlice<T>) -> Vec<T> {
    be.synchronize().expect("kernel run");
    be.stream().clone_dtoh(dev).expect("copy from the device")
}

/// A device buffer of `len` NaNs (poison: an element the kernel fails to write stays NaN).
fn poisoned<T: Dtype>(be: &CudaBackend, len: usize) -> CudaSlice<T> {
    upload(be, &vec![T::from_f32(f32::NAN); len])
}

/// Where the kernel's buffers start: at element 0 of their allocation (16-byte aligned, so the
/// kernel takes its float4 path when cols % 4 == 0), or at element 1 (4-byte aligned only: the
/// scalar path for every shape).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Start {
    Aligned,
    Offset1,
}

impl Start {
    fn skip(self) -> usize {
        match self {
            Start::Aligned => 0,
            Start::Offset1 => 1,
        }
    }
}

/// Uploads `host` behind `start.skip()` padding elements (NaN), so that `.slice(skip..)` is the
/// data.
fn upload_at<T: Dtype>(be: &CudaBackend, host: &[T], start: Start) -> CudaSlice<T> {
    let mut v = vec![T::from_f32(f32::NAN); start.skip()];
    v.extend_from_slice(host);
    upload(be, &v)
}

/// Runs `layernorm_fwd` (f32 or bf16 output) on a NaN-poisoned output buffer and returns what it
/// wrote, widened to f32.
#[allow(clippy::too_many_arguments)]
fn run_gpu<T: Dtype + ValidAsZeroBits>(
    be: &CudaBackend,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    rows: usize,
    cols: usize,
    eps: f32,
    start: Start,
) -> Vec<f32> {
    let k = start.skip();
    let dx = upload_at(be, x, start);
    let dg = upload_at(be, gamma, start);
    let db = upload_at(be, beta, start);
    let mut dout = poisoned::<T>(be, k + rows * cols);
    be.layernorm_fwd(
        &dx.slice(k..),
        &dg.slice(k..),
        &db.slice(k..),
        &mut dout.slice_mut(k..),
        rows,
        cols,
        eps,
    )
    .unwrap();
    download(be, &dout)[k..]
        .iter()
        .map(|v| v.to_f32())
        .collect()
}

/// The CPU twin's output for `T`: f32, or rounded to bf16 (nearest even) as the kernel does.
fn twin<T: Dtype>(x: &[f32], gamma: &[f32], beta: &[f32], cols: usize, eps: f32) -> Vec<f32> {
    let mut want = vec![0.0f32; x.len()];
    layernorm_fwd_cpu(x, gamma, beta, eps, cols, &mut want);
    want.iter().map(|&v| T::from_f32(v).to_f32()).collect()
}

/// The tolerance for output type `T` (max|gpu − cpu| / max|cpu|), with its reason.
fn tolerance<T: Dtype>() -> f64 {
    if T::NAME == "f32" {
        // The kernel computes in fp32, the twin's statistics in f64. With the kernel's corrected
        // two-pass statistics a correct kernel lands near 2e-7 (a few output ulps; measured by a
        // host emulation of the kernel). A plain fp32 two-pass reached 1.3e-5 on 384 rows of 3
        // values at 50 ± 3 (the fp32 mean's rounding, divided by a small row std) in that
        // emulation, and a single-pass E[x²] − E[x]² variance is off by far more.
        1e-5
    } else {
        // Both sides round the same fp32-accurate value to bf16, so they agree except where the
        // ~1e-7 fp32 difference straddles a rounding boundary: then they differ by one bf16 ulp,
        // at most 2^-7 = 7.8e-3 of the largest output. A kernel that rounded wrongly (truncation,
        // a mis-packed pair) or computed in bf16 would be off by more in some element.
        1e-2
    }
}

/// The first element that is not finite, as a failure message.
fn check_finite(case: &str, what: &str, v: &[f32]) {
    if let Some(i) = v.iter().position(|v| !v.is_finite()) {
        panic!(
            "{case}: {what}[{i}] = {} (element not written, or overflow)",
            v[i]
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn check_case<T: Dtype + ValidAsZeroBits>(
    be: &CudaBackend,
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    eps: f32,
    center: f32,
    spread: f32,
    start: Start,
) {
    let x = rng.vec(rows * cols, center, spread);
    let gamma = rng.vec(cols, 1.0, 0.5);
    let beta = rng.vec(cols, 0.0, 0.5);
    let want = twin::<T>(&x, &gamma, &beta, cols, eps);
    let got = run_gpu::<T>(be, &x, &gamma, &beta, rows, cols, eps, start);
    let case = format!(
        "layernorm_fwd_{} rows={rows} cols={cols} eps={eps:e} x~{center}±{spread} {start:?}",
        T::NAME
    );
    check_finite(&case, "out", &got);
    let err = rel_err(&got, &want);
    let tol = tolerance::<T>();
    assert!(
        err <= tol,
        "{case}: max|gpu − cpu| / max|cpu| = {err:e} > {tol:e}"
    );
}

/// Row lengths of the warp path (every register footprint V = 1, 2, 4, 8, 10, ragged or not) and
/// of the block path (shared-memory staged up to 12 224 columns, global-memory fallback above).
const COLS: [usize; 12] = [
    1, 3, 33, 130, 257, 515, 1024, 1280, 1283, 5000, 8192, 13_000,
];

#[test]
#[ignore = "needs a CUDA device"]
fn layernorm_matches_cpu_twin_across_shapes() {
    let be = backend();
    let mut rng = Rng(0x1a7e_5eed);
    for &eps in &[1e-6f32, 1e-5] {
        for &rows in &[1usize, 7, 384] {
            for &cols in &[1usize, 3, 33, 1024, 1280, 1283, 5000] {
                check_case::<f32>(&be, &mut rng, rows, cols, eps, 0.0, 1.0, Start::Aligned);
                check_case::<f32>(&be, &mut rng, rows, cols, eps, 50.0, 3.0, Start::Aligned);
            }
        }
    }
}

/// The bf16-output kernel, and both kernels on buffers that start 4 bytes into their allocation
/// (the scalar layouts of both paths, also for cols % 4 == 0).
#[test]
#[ignore = "needs a CUDA device"]
fn layernorm_bf16_and_unaligned_match_cpu_twin() {
    let be = backend();
    let mut rng = Rng(0xbf16_0001);
    for &rows in &[1usize, 7, 200] {
        for &cols in &COLS {
            for start in [Start::Aligned, Start::Offset1] {
                check_case::<bf16>(&be, &mut rng, rows, cols, 1e-6, 50.0, 3.0, start);
                check_case::<bf16>(&be, &mut rng, rows, cols, 1e-5, 0.0, 1.0, start);
                if start == Start::Offset1 {
                    check_case::<f32>(&be, &mut rng, rows, cols, 1e-6, 50.0, 3.0, start);
                }
            }
        }
    }
}

/// The real shapes (ViT rows = B·192 × 1280 at eps 1e-6, decoder × 1024 at eps 1e-5) at a
/// training batch, where the launcher uses 4-warp blocks, and row lengths that take the
/// shared-memory block path (8192) and the global-memory fallback (13 000 > 48 KiB of floats).
#[test]
#[ignore = "needs a CUDA device"]
fn layernorm_matches_cpu_twin_at_model_and_large_shapes() {
    let be = backend();
    let mut rng = Rng(0xb16_b00c);
    let a = Start::Aligned;
    check_case::<f32>(&be, &mut rng, 32 * 192, 1280, 1e-6, 0.0, 2.0, a);
    check_case::<f32>(&be, &mut rng, 32 * 192, 1280, 1e-6, 50.0, 3.0, a);
    check_case::<f32>(&be, &mut rng, 32 * 192, 1024, 1e-5, 50.0, 3.0, a);
    check_case::<bf16>(&be, &mut rng, 32 * 192, 1280, 1e-6, 0.0, 2.0, a);
    check_case::<bf16>(&be, &mut rng, 32 * 192, 1024, 1e-5, 50.0, 3.0, a);
    for &cols in &[129usize, 1281, 4096, 8192, 13_000] {
        check_case::<f32>(&be, &mut rng, 5, cols, 1e-5, 50.0, 3.0, a);
    }
    // Constant rows: zero variance, the output is exactly beta (no NaN from 0/0).
    let (rows, cols) = (3, 1280);
    let x = vec![7.25f32; rows * cols];
    let gamma = rng.vec(cols, 1.0, 0.5);
    let beta = rng.vec(cols, 0.0, 0.5);
    let got = run_gpu::<f32>(&be, &x, &gamma, &beta, rows, cols, 1e-6, a);
    for (i, v) in got.iter().enumerate() {
        assert_eq!(*v, beta[i % cols], "constant row, out[{i}]");
    }
}

/// Runs `add_layernorm_fwd` and returns (x after the kernel, out widened to f32).
#[allow(clippy::too_many_arguments)]
fn run_add_gpu<T: Dtype + ValidAsZeroBits>(
    be: &CudaBackend,
    x: &[f32],
    r: &[f32],
    gamma: &[f32],
    beta: &[f32],
    rows: usize,
    cols: usize,
    eps: f32,
    start: Start,
) -> (Vec<f32>, Vec<f32>) {
    let k = start.skip();
    let mut dx = upload_at(be, x, start);
    let dr = upload_at(be, r, start);
    let dg = upload_at(be, gamma, start);
    let db = upload_at(be, beta, start);
    let mut dout = poisoned::<T>(be, k + rows * cols);
    be.add_layernorm_fwd(
        &mut dx.slice_mut(k..),
        &dr.slice(k..),
        &dg.slice(k..),
        &db.slice(k..),
        &mut dout.slice_mut(k..),
        rows,
        cols,
        eps,
    )
    .unwrap();
    let out = download(be, &dout)[k..]
        .iter()
        .map(|v| v.to_f32())
        .collect();
    (download(be, &dx)[k..].to_vec(), out)
}

#[allow(clippy::too_many_arguments)]
fn check_add_case<T: Dtype + ValidAsZeroBits>(
    be: &CudaBackend,
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    eps: f32,
    center: f32,
    spread: f32,
    start: Start,
) {
    let x = rng.vec(rows * cols, center, spread);
    let r = rng.vec(rows * cols, 0.0, spread);
    let gamma = rng.vec(cols, 1.0, 0.5);
    let beta = rng.vec(cols, 0.0, 0.5);
    // The twin: r added in f32, then the LayerNorm of the sum.
    let sum: Vec<f32> = x.iter().zip(&r).map(|(a, b)| a + b).collect();
    let want = twin::<T>(&sum, &gamma, &beta, cols, eps);
    let (got_x, got) = run_add_gpu::<T>(be, &x, &r, &gamma, &beta, rows, cols, eps, start);
    let case = format!(
        "add_layernorm_fwd_{} rows={rows} cols={cols} eps={eps:e} x~{center}±{spread} {start:?}",
        T::NAME
    );
    // x + r is one fp32 addition on both sides: the residual stream must match bit for bit.
    if let Some(i) = (0..sum.len()).find(|&i| got_x[i].to_bits() != sum[i].to_bits()) {
        panic!(
            "{case}: x[{i}] = {} after the kernel, x + r = {}",
            got_x[i], sum[i]
        );
    }
    check_finite(&case, "out", &got);
    let err = rel_err(&got, &want);
    let tol = tolerance::<T>(); // same computation as layernorm_fwd on x + r, same reasons
    assert!(
        err <= tol,
        "{case}: max|gpu − cpu| / max|cpu| = {err:e} > {tol:e}"
    );
}

#[test]
#[ignore = "needs a CUDA device"]
fn add_layernorm_matches_cpu_twin() {
    let be = backend();
    let mut rng = Rng(0xadd1_0001);
    for &rows in &[1usize, 7, 200] {
        for &cols in &COLS {
            for start in [Start::Aligned, Start::Offset1] {
                check_add_case::<f32>(&be, &mut rng, rows, cols, 1e-6, 50.0, 3.0, start);
                check_add_case::<bf16>(&be, &mut rng, rows, cols, 1e-5, 0.0, 1.0, start);
            }
        }
    }
    let a = Start::Aligned;
    check_add_case::<f32>(&be, &mut rng, 32 * 192, 1280, 1e-6, 0.0, 2.0, a);
    check_add_case::<bf16>(&be, &mut rng, 32 * 192, 1280, 1e-6, 0.0, 2.0, a);
    check_add_case::<f32>(&be, &mut rng, 32 * 192, 1024, 1e-5, 50.0, 3.0, a);
    check_add_case::<bf16>(&be, &mut rng, 32 * 192, 1024, 1e-5, 50.0, 3.0, a);
}

/// Same inputs, same bits (fixed reduction order, no atomics), for every kernel of the file.
#[test]
#[ignore = "needs a CUDA device"]
fn layernorm_is_deterministic() {
    let be = backend();
    let mut rng = Rng(7);
    let a = Start::Aligned;
    for &(rows, cols) in &[(384usize, 1280usize), (7, 5000), (33, 1283), (3, 13_000)] {
        let x = rng.vec(rows * cols, 50.0, 3.0);
        let r = rng.vec(rows * cols, 0.0, 3.0);
        let gamma = rng.vec(cols, 1.0, 0.5);
        let beta = rng.vec(cols, 0.0, 0.5);
        let same = |p: &[f32], q: &[f32]| p.iter().zip(q).all(|(p, q)| p.to_bits() == q.to_bits());
        let p = run_gpu::<f32>(&be, &x, &gamma, &beta, rows, cols, 1e-6, a);
        let q = run_gpu::<f32>(&be, &x, &gamma, &beta, rows, cols, 1e-6, a);
        assert!(same(&p, &q), "layernorm_fwd_f32 {rows}×{cols}: runs differ");
        let p = run_gpu::<bf16>(&be, &x, &gamma, &beta, rows, cols, 1e-6, a);
        let q = run_gpu::<bf16>(&be, &x, &gamma, &beta, rows, cols, 1e-6, a);
        assert!(
            same(&p, &q),
            "layernorm_fwd_bf16 {rows}×{cols}: runs differ"
        );
        let (px, p) = run_add_gpu::<f32>(&be, &x, &r, &gamma, &beta, rows, cols, 1e-6, a);
        let (qx, q) = run_add_gpu::<f32>(&be, &x, &r, &gamma, &beta, rows, cols, 1e-6, a);
        assert!(
            same(&p, &q) && same(&px, &qx),
            "add_layernorm_fwd_f32 {rows}×{cols}: runs differ"
        );
    }
}

/// Mismatched lengths, overflowing shapes and a bad eps are errors, not panics.
#[test]
#[ignore = "needs a CUDA device"]
fn layernorm_rejects_bad_arguments() {
    let be = backend();
    let (rows, cols) = (4, 8);
    let mut x = upload(&be, &vec![1.0f32; rows * cols]);
    let r = upload(&be, &vec![1.0f32; rows * cols]);
    let g = upload(&be, &vec![1.0f32; cols]);
    let b = upload(&be, &vec![0.0f32; cols]);
    let short = upload(&be, &vec![0.0f32; cols - 1]);
    let short_rows = upload(&be, &vec![0.0f32; rows * cols - 1]);
    let mut out = upload(&be, &vec![0.0f32; rows * cols]);
    let mut small_out = upload(&be, &vec![0.0f32; rows * cols - 1]);
    let mut out16 = upload(&be, &vec![bf16::ZERO; rows * cols]);
    let (x_, g_, b_, s_) = (x.as_view(), g.as_view(), b.as_view(), short.as_view());

    let is_input = |r: handcov::Result<()>| matches!(r, Err(Error::Input(_)));
    let mut o = out.as_view_mut();
    assert!(is_input(be.layernorm_fwd(
        &x_,
        &g_,
        &b_,
        &mut o,
        rows + 1,
        cols,
        1e-5
    )));
    assert!(is_input(
        be.layernorm_fwd(&x_, &s_, &b_, &mut o, rows, cols, 1e-5)
    ));
    assert!(is_input(
        be.layernorm_fwd(&x_, &g_, &s_, &mut o, rows, cols, 1e-5)
    ));
    assert!(is_input(be.layernorm_fwd(
        &x_,
        &g_,
        &b_,
        &mut o,
        rows,
        cols,
        f32::NAN
    )));
    assert!(is_input(
        be.layernorm_fwd(&x_, &g_, &b_, &mut o, rows, cols, -1.0)
    ));
    assert!(is_input(be.layernorm_fwd(
        &x_,
        &g_,
        &b_,
        &mut o,
        usize::MAX,
        2,
        1e-5
    )));
    assert!(is_input(be.layernorm_fwd(
        &x_,
        &g_,
        &b_,
        &mut small_out.as_view_mut(),
        rows,
        cols,
        1e-5
    )));
    assert!(is_input(be.layernorm_fwd(
        &x_,
        &g_,
        &b_,
        &mut out16.slice_mut(1..),
        rows,
        cols,
        1e-5
    )));

    let r_ = r.as_view();
    let sr = short_rows.as_view();
    let mut xm = x.as_view_mut();
    assert!(is_input(be.add_layernorm_fwd(
        &mut xm, &sr, &g_, &b_, &mut o, rows, cols, 1e-5
    )));
    assert!(is_input(be.add_layernorm_fwd(
        &mut xm, &r_, &s_, &b_, &mut o, rows, cols, 1e-5
    )));
    assert!(is_input(be.add_layernorm_fwd(
        &mut xm,
        &r_,
        &g_,
        &b_,
        &mut o,
        rows,
        cols,
        f32::INFINITY
    )));
    assert!(is_input(be.add_layernorm_fwd(
        &mut xm,
        &r_,
        &g_,
        &b_,
        &mut o,
        rows,
        usize::MAX,
        1e-5
    )));
    assert!(is_input(be.add_layernorm_fwd(
        &mut xm,
        &r_,
        &g_,
        &b_,
        &mut out16.slice_mut(..rows * cols - 1),
        rows,
        cols,
        1e-5
    )));
    be.synchronize().unwrap();
}
