//! The backward kernels (kernels/*_bwd.cu, launchers in src/cuda/backward*) and the cuBLASLt
//! gradient GEMMs against their CPU twins, on random inputs at several sizes (including sizes
//! that are not multiples of the block sizes), every output poisoned with NaN first. This file:
//! LayerNorm, bias, positional embedding, GELU, drop-path, rot6d, camera, the linear layer's
//! gradient GEMMs, argument checks. tests/cuda_backward/{attention,nll,mano}.rs: attention, the
//! exact-NLL Cholesky and the MANO backward.
//!
//! All tests need a GPU: `cargo test --release --test cuda_backward -- --ignored`.
//! Error measure: `max|a − b| / max|b|` (`handcov::tensor::rel_err`) unless a test says otherwise.

#[path = "cuda_backward/attention.rs"]
mod attention;
#[path = "cuda_backward/helpers.rs"]
mod helpers;
#[path = "cuda_backward/mano.rs"]
mod mano;
#[path = "cuda_backward/nll.rs"]
mod nll;

use half::bf16;
use handcov::cuda::{CudaBackend, Dtype};
use handcov::ops::drop_path::scale_rows;
use handcov::ops::geometry::{
    cam_translation, cam_translation_bwd, project_bwd_cpu, rot6d_to_rotmat_bwd_cpu,
};
use handcov::ops::layernorm::layernorm_bwd_cpu;
use handcov::ops::linear::{column_sums_acc, linear_bwd_input_cpu, linear_bwd_params_cpu};
use handcov::ops::math::gelu_bwd_inplace;
use handcov::tensor::rel_err;
use handcov::Error;
use helpers::*;

// ---------------------------------------------------------------------------------------------
// LayerNorm.

/// Runs `layernorm_bwd` with the data starting at element `skip` of each allocation (1: only
/// 4-byte aligned, the kernel's scalar path); returns (dx, dgamma, dbeta).
#[allow(clippy::too_many_arguments)]
fn layernorm_gpu(
    be: &CudaBackend,
    x: &[f32],
    gamma: &[f32],
    dy: &[f32],
    dgamma0: &[f32],
    dbeta0: &[f32],
    rows: usize,
    cols: usize,
    eps: f32,
    skip: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let pad = |v: &[f32]| {
        let mut p = vec![f32::NAN; skip];
        p.extend_from_slice(v);
        upload(be, &p)
    };
    let (dx_, dg_, dy_) = (pad(x), pad(gamma), pad(dy));
    let mut ddx = poisoned::<f32>(be, skip + rows * cols);
    let mut dgam = pad(dgamma0);
    let mut dbet = pad(dbeta0);
    let mut scratch = poisoned::<f32>(be, CudaBackend::layernorm_bwd_scratch_len(rows, cols) + 3);
    be.layernorm_bwd(
        &dx_.slice(skip..),
        &dg_.slice(skip..),
        &dy_.slice(skip..),
        &mut ddx.slice_mut(skip..),
        &mut dgam.slice_mut(skip..),
        &mut dbet.slice_mut(skip..),
        &mut scratch.slice_mut(..),
        rows,
        cols,
        eps,
    )
    .expect("layernorm_bwd");
    (
        download(be, &ddx)[skip..].to_vec(),
        download(be, &dgam)[skip..].to_vec(),
        download(be, &dbet)[skip..].to_vec(),
    )
}

#[test]
#[ignore = "needs a CUDA device"]
fn layernorm_bwd_matches_cpu_twin() {
    let be = backend();
    let mut rng = Rng(0x01a7_eb0d);
    // Register path with 1–4 slots (32…256 threads), float4 and scalar layouts, several row
    // blocks (rows > 16) and the stream path (cols > 4096).
    let shapes = [
        (1usize, 1usize),
        (3, 7),
        (17, 63),
        (37, 1280),
        (40, 1024),
        (100, 1280),
        (5, 1283),
        (9, 2048),
        (6, 3000),
        (33, 4097),
        (4, 5000),
    ];
    for (n, &(rows, cols)) in shapes.iter().enumerate() {
        for skip in [0usize, 1] {
            let mut x = rng.vec(rows * cols, 0.0, 2.0);
            if rows > 1 {
                // A row with a large mean and a small spread (the forward's hard case).
                for v in x[cols..2 * cols].iter_mut() {
                    *v = 50.0 + 3.0 * (*v / 2.0);
                }
            }
            let gamma = rng.vec(cols, 1.0, 0.5);
            let dy = rng.vec(rows * cols, 0.0, 1.0);
            let dgamma0 = rng.vec(cols, 0.0, 0.5);
            let dbeta0 = rng.vec(cols, 0.0, 0.5);
            let eps = if n % 2 == 0 { 1e-6 } else { 1e-5 };
            let mut want_dx = vec![0f32; rows * cols];
            let (mut want_dg, mut want_db) = (dgamma0.clone(), dbeta0.clone());
            layernorm_bwd_cpu(
                &x,
                &gamma,
                eps,
                cols,
                &dy,
                &mut want_dx,
                &mut want_dg,
                &mut want_db,
            );
            let (dx, dg, db) = layernorm_gpu(
                &be, &x, &gamma, &dy, &dgamma0, &dbeta0, rows, cols, eps, skip,
            );
            let errs = [
                rel_err(&dx, &want_dx),
                rel_err(&dg, &want_dg),
                rel_err(&db, &want_db),
            ];
            // fp32 statistics (the forward's corrected two-pass) and fp32 row sums against the
            // twin's f64: x̂ and the two row means carry a few ulp, dx = rstd·(g − mean(g) −
            // x̂·mean(g·x̂)) adds a small cancellation; dgamma/dbeta are fp32 sums of ≤ 16 rows,
            // fp64 across blocks. Expected ~1e-6; 2e-5 is the bound.
            for e in errs {
                assert!(
                    e < 2e-5,
                    "rows {rows} cols {cols} skip {skip}: dx, dgamma, dbeta {errs:?}"
                );
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn layernorm_bwd_is_deterministic() {
    let be = backend();
    let mut rng = Rng(77);
    let (rows, cols) = (3000usize, 1280usize);
    let x = rng.vec(rows * cols, 0.0, 1.0);
    let gamma = rng.vec(cols, 1.0, 0.5);
    let dy = rng.vec(rows * cols, 0.0, 1.0);
    let zeros = vec![0f32; cols];
    let a = layernorm_gpu(&be, &x, &gamma, &dy, &zeros, &zeros, rows, cols, 1e-6, 0);
    let b = layernorm_gpu(&be, &x, &gamma, &dy, &zeros, &zeros, rows, cols, 1e-6, 0);
    assert_bits_eq(&a.0, &b.0, "dx");
    assert_bits_eq(&a.1, &b.1, "dgamma");
    assert_bits_eq(&a.2, &b.2, "dbeta");
}

// ---------------------------------------------------------------------------------------------
// Bias and positional embedding.

fn bias_grad_case<T: Dtype>(be: &CudaBackend, rng: &mut Rng, rows: usize, cols: usize) {
    let dy = rng.vec(rows * cols, 0.0, 1.0);
    let dy = if T::NAME == "bf16" {
        bf16_round(&dy)
    } else {
        dy
    };
    let db0 = rng.vec(cols, 0.0, 1.0);
    let mut want = db0.clone();
    column_sums_acc(&dy, cols, &mut want);
    let d_dy = be.upload::<T>(&dy).expect("upload");
    let mut d_db = upload(be, &db0);
    let mut scratch = poisoned::<f32>(be, CudaBackend::bias_grad_scratch_len(rows, cols));
    be.bias_grad(
        &d_dy.slice(..),
        &mut d_db.slice_mut(..),
        &mut scratch.slice_mut(..),
        rows,
        cols,
    )
    .expect("bias_grad");
    let got = download(be, &d_db);
    let e = rel_err(&got, &want);
    // fp32 sums of ≤ rows_per_block rows (16 here, more beyond 16 384 rows), fp64 across blocks,
    // against the twin's f64 column sums: ~rows_per_block ulp at most.
    assert!(
        e < 1e-5,
        "bias_grad<{}> rows {rows} cols {cols}: {e}",
        T::NAME
    );
}

#[test]
#[ignore = "needs a CUDA device"]
fn bias_grad_matches_cpu_twin() {
    let be = backend();
    let mut rng = Rng(0xb1a5);
    for &(rows, cols) in &[
        (1usize, 1usize),
        (3, 7),
        (17, 1280),
        (1000, 33),
        (2049, 5),
        (20_000, 3),
        (192, 5120),
    ] {
        bias_grad_case::<f32>(&be, &mut rng, rows, cols);
        bias_grad_case::<bf16>(&be, &mut rng, rows, cols);
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn pos_embed_bwd_matches_reference() {
    let be = backend();
    let mut rng = Rng(0x905);
    for &(b, t, c) in &[
        (1usize, 1usize, 1usize),
        (2, 3, 5),
        (3, 17, 33),
        (5, 192, 1280),
    ] {
        let dx = rng.vec(b * t * c, 0.0, 1.0);
        let dpos0 = rng.vec((1 + t) * c, 0.0, 1.0);
        // f64 reference: slot 1 + t gets Σ_b dx[b, t]; slot 0 gets Σ_b Σ_t dx[b, t].
        let mut want64: Vec<f64> = dpos0.iter().map(|&v| v as f64).collect();
        for bi in 0..b {
            for ti in 0..t {
                for ci in 0..c {
                    let v = dx[(bi * t + ti) * c + ci] as f64;
                    want64[(1 + ti) * c + ci] += v;
                    want64[ci] += v;
                }
            }
        }
        let want: Vec<f32> = want64.iter().map(|&v| v as f32).collect();
        let d_dx = upload(&be, &dx);
        let mut d_pos = upload(&be, &dpos0);
        let mut scratch = poisoned::<f32>(&be, CudaBackend::pos_embed_bwd_scratch_len(t, c));
        be.pos_embed_bwd(
            &d_dx.slice(..),
            &mut d_pos.slice_mut(..),
            &mut scratch.slice_mut(..),
            b,
            t,
            c,
        )
        .expect("pos_embed_bwd");
        let got = download(&be, &d_pos);
        let e = rel_err(&got, &want);
        // fp32 sums over ≤ 5 images, fp64 over tokens, one rounding per slot.
        assert!(e < 1e-6, "b {b} t {t} c {c}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// GELU, drop-path, rot6d, camera.

fn gelu_case<T: Dtype>(be: &CudaBackend, rng: &mut Rng, n: usize, skip: usize) {
    let pre = rng.vec(n, 0.0, 6.0);
    let dy = rng.vec(n, 0.0, 1.0);
    let (pre, dy) = if T::NAME == "bf16" {
        (bf16_round(&pre), bf16_round(&dy))
    } else {
        (pre, dy)
    };
    let mut want = dy.clone();
    gelu_bwd_inplace(&pre, &mut want);
    let pad = |v: &[f32]| {
        let mut p = vec![0.0f32; skip];
        p.extend_from_slice(v);
        be.upload::<T>(&p).expect("upload")
    };
    let d_pre = pad(&pre);
    let mut d_dy = pad(&dy);
    be.gelu_bwd(&d_pre.slice(skip..), &mut d_dy.slice_mut(skip..))
        .expect("gelu_bwd");
    let got = download_f32(be, &d_dy)[skip..].to_vec();
    let e = rel_err(&got, &want);
    // f32: erfcf / expf (a few ulp) against the twin's erfc fit (1.2e-7 relative) and exp:
    // ~3e-7 of max|dx|. bf16: plus one rounding of the result to bf16 (2^-9 relative), which a
    // tiny f32 difference can move by one bf16 ulp (2^-8 of the value): 4e-3 bound.
    let tol = if T::NAME == "bf16" { 4e-3 } else { 2e-6 };
    assert!(e < tol, "gelu_bwd<{}> n {n} skip {skip}: {e}", T::NAME);
}

#[test]
#[ignore = "needs a CUDA device"]
fn gelu_bwd_matches_cpu_twin() {
    let be = backend();
    let mut rng = Rng(0x6e1);
    for n in [1usize, 3, 1000, 4097, 192 * 5120] {
        for skip in [0usize, 1] {
            gelu_case::<f32>(&be, &mut rng, n, skip);
            gelu_case::<bf16>(&be, &mut rng, n, skip);
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn scale_rows_matches_cpu_twin_bitwise() {
    let be = backend();
    let mut rng = Rng(0xd20b);
    for &(samples, per) in &[
        (1usize, 1usize),
        (5, 3),
        (7, 4),
        (4, 1280 * 3 + 1),
        (64, 192 * 20),
    ] {
        let mut x = rng.vec(samples * per, 0.0, 3.0);
        // A dropped sample holding inf and NaN must still come out as zeros.
        x[0] = f32::INFINITY;
        if per > 1 {
            x[1] = f32::NAN;
        }
        let scales: Vec<f32> = (0..samples)
            .map(|i| match i % 4 {
                0 => 0.0,
                1 => 1.0,
                2 => 1.0 / 0.7,
                _ => 0.5,
            })
            .collect();
        let mut want = x.clone();
        scale_rows(&mut want, per, &scales);
        let mut d_x = upload(&be, &x);
        let d_s = upload(&be, &scales);
        be.scale_rows(&mut d_x.slice_mut(..), &d_s.slice(..), per)
            .expect("scale_rows");
        // One IEEE multiplication per element, or exact zeros / untouched: identical bits.
        assert_bits_eq(
            &download(&be, &d_x),
            &want,
            &format!("scale_rows {samples}×{per}"),
        );
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn rot6d_bwd_matches_cpu_twin_bitwise() {
    let be = backend();
    let mut rng = Rng(0x60d);
    for n in [1usize, 7, 1000, 16 * 64 + 3] {
        let mut x = rng.vec(6 * n, 0.0, 2.0);
        if n >= 7 {
            // Degenerate codes: a1 = 0 (the first norm clamp), a2 ∥ a1 (the second).
            x[6..9].copy_from_slice(&[0.0, 0.0, 0.0]);
            x[12..18].copy_from_slice(&[0.3, -0.2, 0.1, 0.6, -0.4, 0.2]);
        }
        let d_r = rng.vec(9 * n, 0.0, 1.0);
        let mut want = vec![0f32; 6 * n];
        rot6d_to_rotmat_bwd_cpu(&x, &d_r, &mut want);
        let (d_x, d_dr) = (upload(&be, &x), upload(&be, &d_r));
        let mut d_dx = poisoned::<f32>(&be, 6 * n);
        be.rot6d_bwd(&d_x.slice(..), &d_dr.slice(..), &mut d_dx.slice_mut(..), n)
            .expect("rot6d_bwd");
        // The kernel repeats the twin's operations in order without FMA contraction.
        assert_bits_eq(&download(&be, &d_dx), &want, &format!("rot6d_bwd n {n}"));
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn camera_bwd_matches_cpu_twin_bitwise() {
    let be = backend();
    let mut rng = Rng(0xca3);
    let (focal, size) = (5000.0f32, 256.0f32);
    for &(b, n) in &[(1usize, 1usize), (5, 21), (64, 21), (3, 0), (300, 7)] {
        let cam: Vec<f32> = (0..b)
            .flat_map(|_| [0.9 + 0.2 * rng.sym(), 0.1 * rng.sym(), 0.1 * rng.sym()])
            .collect();
        let kp = rng.vec(b * n * 3, 0.0, 0.1);
        let d_kp2d = rng.vec(b * n * 2, 0.0, 1.0);
        let (mut want_kp, mut want_cam) = (vec![0f32; b * n * 3], vec![0f32; b * 3]);
        for i in 0..b {
            let c = [cam[3 * i], cam[3 * i + 1], cam[3 * i + 2]];
            let t = cam_translation(&c, focal, size);
            let mut d_t = [0f32; 3];
            project_bwd_cpu(
                &kp[i * n * 3..(i + 1) * n * 3],
                &t,
                focal / size,
                &d_kp2d[i * n * 2..(i + 1) * n * 2],
                &mut want_kp[i * n * 3..(i + 1) * n * 3],
                &mut d_t,
            );
            want_cam[3 * i..3 * i + 3].copy_from_slice(&cam_translation_bwd(&c, focal, size, &d_t));
        }
        let (d_cam, d_kp, d_g) = (upload(&be, &cam), upload(&be, &kp), upload(&be, &d_kp2d));
        let mut g_kp = poisoned::<f32>(&be, b * n * 3);
        let mut g_cam = poisoned::<f32>(&be, b * 3);
        be.camera_bwd(
            &d_cam.slice(..),
            &d_kp.slice(..),
            &d_g.slice(..),
            &mut g_kp.slice_mut(..),
            &mut g_cam.slice_mut(..),
            b,
            n,
            focal,
            size,
        )
        .expect("camera_bwd");
        // Bit-exact target: the twin's operations in its order, d cam_t summed in point order.
        assert_bits_eq(
            &download(&be, &g_kp),
            &want_kp,
            &format!("d_kp b {b} n {n}"),
        );
        assert_bits_eq(
            &download(&be, &g_cam),
            &want_cam,
            &format!("d_cam b {b} n {n}"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Linear layer gradients (cuBLASLt).

fn linear_case<TIn: Dtype, TOut: Dtype>(
    be: &CudaBackend,
    gg: &mut handcov::cuda::GradGemm,
    rng: &mut Rng,
    (rows, d_in, d_out): (usize, usize, usize),
) {
    let round = |v: Vec<f32>| {
        if TIn::NAME == "bf16" {
            bf16_round(&v)
        } else {
            v
        }
    };
    let x = round(rng.vec(rows * d_in, 0.0, 1.0));
    let w = round(rng.vec(d_out * d_in, 0.0, 0.05));
    let dy = round(rng.vec(rows * d_out, 0.0, 1.0));
    let dw0 = rng.vec(d_out * d_in, 0.0, 1.0);
    let mut want_dx = vec![0f32; rows * d_in];
    linear_bwd_input_cpu(&w, &dy, d_in, d_out, &mut want_dx);
    let mut want_dw = dw0.clone();
    linear_bwd_params_cpu(&x, &dy, d_in, d_out, &mut want_dw, None);

    let (d_x, d_w, d_dy) = (
        be.upload::<TIn>(&x).unwrap(),
        be.upload::<TIn>(&w).unwrap(),
        be.upload::<TIn>(&dy).unwrap(),
    );
    let mut d_dx = poisoned::<TOut>(be, rows * d_in);
    gg.linear_bwd_input(
        &d_dy.slice(..),
        &d_w.slice(..),
        &mut d_dx.slice_mut(..),
        rows,
        d_in,
        d_out,
        false,
    )
    .expect("linear_bwd_input");
    let got_dx = download_f32(be, &d_dx);
    let e_dx = rel_err(&got_dx, &want_dx);
    // fp32 accumulation on both sides (cuBLASLt COMPUTE_32F, the CPU gemm crate), different
    // orders over k ≤ 5120 terms of random sign: ~√k·2^-24 of max|dx| expected; 2e-5 bound. A
    // bf16 result adds one rounding (2^-9 relative): 5e-3.
    let tol = if TOut::NAME == "bf16" { 5e-3 } else { 2e-5 };
    assert!(
        e_dx < tol,
        "dx {}→{} {rows}×{d_in}×{d_out}: {e_dx}",
        TIn::NAME,
        TOut::NAME
    );

    // Accumulating dx += dy·W on top of what is there.
    if TOut::NAME == "f32" {
        gg.linear_bwd_input(
            &d_dy.slice(..),
            &d_w.slice(..),
            &mut d_dx.slice_mut(..),
            rows,
            d_in,
            d_out,
            true,
        )
        .expect("linear_bwd_input accumulate");
        let twice: Vec<f32> = want_dx.iter().map(|v| 2.0 * v).collect();
        let e = rel_err(&download_f32(be, &d_dx), &twice);
        assert!(e < 2e-5, "dx += {rows}×{d_in}×{d_out}: {e}");
    }

    let mut d_dw = upload(be, &dw0);
    gg.linear_bwd_weight(
        &d_x.slice(..),
        &d_dy.slice(..),
        &mut d_dw.slice_mut(..),
        rows,
        d_in,
        d_out,
    )
    .expect("linear_bwd_weight");
    let e_dw = rel_err(&download(be, &d_dw), &want_dw);
    // fp32 accumulation over k = rows, then + dw0 (beta = 1).
    assert!(
        e_dw < 2e-5,
        "dW {} {rows}×{d_in}×{d_out}: {e_dw}",
        TIn::NAME
    );
}

#[test]
#[ignore = "needs a CUDA device"]
fn linear_gradient_gemms_match_cpu_twin() {
    let be = backend();
    let mut gg = be.grad_gemm().expect("cuBLASLt");
    let mut rng = Rng(0x11ea);
    let shapes = [
        (1usize, 3usize, 10usize),
        (7, 5, 3),
        (33, 17, 9),
        (192, 1280, 3840),
        (192, 5120, 1280),
        (64, 1024, 3),
    ];
    for &shape in &shapes {
        linear_case::<f32, f32>(&be, &mut gg, &mut rng, shape);
        linear_case::<bf16, f32>(&be, &mut gg, &mut rng, shape);
        linear_case::<bf16, bf16>(&be, &mut gg, &mut rng, shape);
    }
    let plans = gg.plans_cached();
    linear_case::<f32, f32>(&be, &mut gg, &mut rng, shapes[2]);
    assert_eq!(
        gg.plans_cached(),
        plans,
        "a repeated shape reuses its plans"
    );
}

/// The patch embedding's parameter gradients on the GPU are a composition: im2col
/// (`im2col_fwd`), `dW += doutᵀ·cols` (`GradGemm::linear_bwd_weight`) and `db += Σ dout`
/// (`bias_grad`); against `ops::patch_embed::patch_embed_bwd_cpu`.
#[test]
#[ignore = "needs a CUDA device"]
fn patch_embed_bwd_composition_matches_cpu_twin() {
    use handcov::ops::patch_embed::{patch_embed_bwd_cpu, PatchGeometry};
    let be = backend();
    let mut gg = be.grad_gemm().expect("cuBLASLt");
    let mut rng = Rng(0x9a7c);
    let g = PatchGeometry {
        image_size: 64,
        win_h: 64,
        win_w: 48,
        col0: 8,
        patch: 16,
        pad: 2,
        rows: 4,
        cols: 3,
    };
    let (b, c) = (3usize, 40usize);
    let (tokens, plen) = (g.rows * g.cols, g.patch_len());
    let img = rng.vec(b * 3 * 64 * 64, 0.0, 1.0);
    let dout = rng.vec(b * tokens * c, 0.0, 1.0);
    let (dw0, db0) = (rng.vec(c * plen, 0.0, 1.0), rng.vec(c, 0.0, 1.0));
    let (mut want_w, mut want_b) = (dw0.clone(), db0.clone());
    patch_embed_bwd_cpu(&img, b, &g, &dout, c, &mut want_w, &mut want_b);

    let (d_img, d_out) = (upload(&be, &img), upload(&be, &dout));
    let mut cols = poisoned::<f32>(&be, b * tokens * plen);
    be.im2col_fwd(&d_img.slice(..), b, &g, &mut cols.slice_mut(..))
        .expect("im2col");
    let (mut d_w, mut d_b) = (upload(&be, &dw0), upload(&be, &db0));
    gg.linear_bwd_weight(
        &cols.slice(..),
        &d_out.slice(..),
        &mut d_w.slice_mut(..),
        b * tokens,
        plen,
        c,
    )
    .expect("weight gradient");
    let mut scratch = poisoned::<f32>(&be, CudaBackend::bias_grad_scratch_len(b * tokens, c));
    be.bias_grad(
        &d_out.slice(..),
        &mut d_b.slice_mut(..),
        &mut scratch.slice_mut(..),
        b * tokens,
        c,
    )
    .expect("bias gradient");
    let (ew, eb) = (
        rel_err(&download(&be, &d_w), &want_w),
        rel_err(&download(&be, &d_b), &want_b),
    );
    // fp32 sums over 36 rows on both sides (cuBLASLt, the CPU gemm crate / f64 column sums).
    assert!(ew < 2e-5 && eb < 1e-5, "dW {ew}, db {eb}");
}

// ---------------------------------------------------------------------------------------------
// Argument checks.

#[test]
#[ignore = "needs a CUDA device"]
fn bad_arguments_are_input_errors() {
    let be = backend();
    let a = upload(&be, &[0f32; 64]);
    let mut o = upload(&be, &[0f32; 64]);
    let mut o2 = upload(&be, &[0f32; 64]);
    let mut o3 = upload(&be, &[0f32; 64]);
    let mut sc = upload(&be, &[0f32; 4]);
    let is_input = |r: handcov::Result<()>, what: &str| match r {
        Err(Error::Input(_)) => {}
        other => panic!("{what}: expected Error::Input, got {other:?}"),
    };
    // Wrong lengths, too small a scratch, a bad eps.
    is_input(
        be.layernorm_bwd(
            &a.slice(..),
            &a.slice(..8),
            &a.slice(..),
            &mut o.slice_mut(..),
            &mut o2.slice_mut(..8),
            &mut o3.slice_mut(..8),
            &mut sc.slice_mut(..),
            8,
            8,
            1e-6,
        ),
        "layernorm scratch",
    );
    is_input(
        be.layernorm_bwd(
            &a.slice(..),
            &a.slice(..7),
            &a.slice(..),
            &mut o.slice_mut(..),
            &mut o2.slice_mut(..8),
            &mut o3.slice_mut(..8),
            &mut sc.slice_mut(..),
            8,
            8,
            1e-6,
        ),
        "layernorm gamma",
    );
    is_input(
        be.layernorm_bwd(
            &a.slice(..),
            &a.slice(..8),
            &a.slice(..),
            &mut o.slice_mut(..),
            &mut o2.slice_mut(..8),
            &mut o3.slice_mut(..8),
            &mut sc.slice_mut(..),
            8,
            8,
            f32::NAN,
        ),
        "layernorm eps",
    );
    is_input(
        be.bias_grad(
            &a.slice(..),
            &mut o.slice_mut(..8),
            &mut sc.slice_mut(..),
            7,
            8,
        ),
        "bias rows",
    );
    is_input(
        be.gelu_bwd(&a.slice(..63), &mut o.slice_mut(..)),
        "gelu length",
    );
    is_input(
        be.scale_rows(&mut o.slice_mut(..), &a.slice(..3), 20),
        "scale_rows length",
    );
    is_input(
        be.rot6d_bwd(&a.slice(..12), &a.slice(..18), &mut o.slice_mut(..12), 3),
        "rot6d length",
    );
    is_input(
        be.camera_bwd(
            &a.slice(..3),
            &a.slice(..3),
            &a.slice(..2),
            &mut o.slice_mut(..3),
            &mut o2.slice_mut(..3),
            1,
            1,
            5000.0,
            0.0,
        ),
        "camera size",
    );
    is_input(
        be.self_attention_bwd(
            &a.slice(..),
            &a.slice(..),
            &a.slice(..),
            &mut o.slice_mut(..),
            &mut sc.slice_mut(..),
            1,
            1,
            1,
            129,
            1.0,
        ),
        "attention d",
    );
    is_input(
        be.cross_attention_1q_bwd(
            &a.slice(..4),
            &a.slice(..8),
            &a.slice(..4),
            &mut o.slice_mut(..4),
            &mut o2.slice_mut(..8),
            1,
            1,
            1,
            4,
            f32::INFINITY,
        ),
        "cross scale",
    );
    let mut gg = be.grad_gemm().expect("cuBLASLt");
    is_input(
        gg.linear_bwd_input::<f32, f32>(
            &a.slice(..),
            &a.slice(..),
            &mut o.slice_mut(..),
            8,
            8,
            9,
            false,
        ),
        "gemm lengths",
    );
}
