//! LayerNorm over the last dimension: `y = (x − mean) / sqrt(var + eps) · γ + β`, biased variance
//! (PyTorch `nn.LayerNorm`). Statistics in f64 on the CPU so the twin is a tight reference.

use super::math::{simd, sum_f64};
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// CPU twin of `layernorm_fwd`: `x` and `out` are `rows × cols` row-major.
pub fn layernorm_fwd_cpu(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    cols: usize,
    out: &mut [f32],
) {
    debug_assert_eq!(x.len(), out.len());
    debug_assert!(gamma.len() == cols && beta.len() == cols);
    // Tasks of 16 rows; each row's statistics and output are independent of the split.
    const ROWS: usize = 16;
    out.par_chunks_mut(ROWS * cols)
        .zip(x.par_chunks(ROWS * cols))
        .for_each(|(ob, xb)| {
            simd(
                #[inline(always)]
                || fwd_rows(xb, gamma, beta, eps, cols, ob),
            )
        });
}

#[inline(always)]
fn fwd_rows(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, cols: usize, out: &mut [f32]) {
    for (o, r) in out.chunks_mut(cols).zip(x.chunks(cols)) {
        let (mean, inv) = row_stats(r, eps);
        for ((o, &v), (&g, &b)) in o.iter_mut().zip(r).zip(gamma.iter().zip(beta)) {
            *o = (((v as f64 - mean) * inv) as f32) * g + b;
        }
    }
}

/// A row's mean and 1/√(var + eps), two-pass in f64 (population variance, as PyTorch).
#[inline(always)]
fn row_stats(r: &[f32], eps: f32) -> (f64, f64) {
    let n = r.len() as f64;
    let mean = sum_f64(r, |v| v) / n;
    let var = sum_f64(r, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps as f64).sqrt())
}

/// LayerNorm of a tensor over its last dimension.
pub fn layernorm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
    let cols = x.dim(-1);
    gamma.expect_shape("layernorm weight", &[cols])?;
    beta.expect_shape("layernorm bias", &[cols])?;
    let mut out = Tensor::zeros(x.shape());
    layernorm_fwd_cpu(
        x.data(),
        gamma.data(),
        beta.data(),
        eps,
        cols,
        out.data_mut(),
    );
    Ok(out)
}

/// Rows per task of [`layernorm_bwd_cpu`]: the partial sums of `dgamma`/`dbeta` are formed per
/// block of this many rows and added in block order, so the result does not depend on the
/// number of threads.
const BWD_ROWS_PER_TASK: usize = 32;

/// Backward of [`layernorm_fwd_cpu`] with the statistics recomputed from `x` in f64 as the
/// forward does. With `x̂ = (x − mean)·inv`, `g = dy·γ`:
/// `dx = inv·(g − mean(g) − x̂·mean(g·x̂))` (overwritten), `dgamma += Σ_rows dy·x̂`,
/// `dbeta += Σ_rows dy`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd_cpu(
    x: &[f32],
    gamma: &[f32],
    eps: f32,
    cols: usize,
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    bwd::<false>(x, gamma, eps, cols, dy, dx, dgamma, dbeta)
}

/// [`layernorm_bwd_cpu`] adding the input gradient into `dx` (`dx += …`, the residual
/// branch's backward) instead of overwriting it: the same bits as overwriting a scratch and
/// adding it to `dx` afterwards, in one pass and without the scratch.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd_acc_cpu(
    x: &[f32],
    gamma: &[f32],
    eps: f32,
    cols: usize,
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    bwd::<true>(x, gamma, eps, cols, dy, dx, dgamma, dbeta)
}

/// The backward for both entry points: `ACC` adds into `dx` rather than overwriting it.
#[allow(clippy::too_many_arguments)]
fn bwd<const ACC: bool>(
    x: &[f32],
    gamma: &[f32],
    eps: f32,
    cols: usize,
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    debug_assert!(x.len() == dy.len() && x.len() == dx.len());
    debug_assert!(gamma.len() == cols && dgamma.len() == cols && dbeta.len() == cols);
    if cols == 0 {
        return;
    }
    let block = BWD_ROWS_PER_TASK * cols;
    let partials: Vec<Vec<f64>> = dx
        .par_chunks_mut(block)
        .zip(x.par_chunks(block).zip(dy.par_chunks(block)))
        .map(|(dxb, (xb, dyb))| {
            simd(
                #[inline(always)]
                || bwd_block::<ACC>(xb, dyb, gamma, eps, cols, dxb),
            )
        })
        .collect();
    let mut total = vec![0f64; 2 * cols];
    for part in &partials {
        for (t, p) in total.iter_mut().zip(part) {
            *t += p;
        }
    }
    for j in 0..cols {
        dgamma[j] += total[j] as f32;
        dbeta[j] += total[cols + j] as f32;
    }
}

/// [`layernorm_bwd_cpu`] on one block of rows: writes the block's dx and returns its
/// `[dgamma | dbeta]` partial sums.
#[inline(always)]
fn bwd_block<const ACC: bool>(
    xb: &[f32],
    dyb: &[f32],
    gamma: &[f32],
    eps: f32,
    cols: usize,
    dxb: &mut [f32],
) -> Vec<f64> {
    // [dgamma | dbeta] of this block of rows.
    let mut part = vec![0f64; 2 * cols];
    let mut xhat = vec![0f64; cols];
    let n = cols as f64;
    for ((dxr, xr), dyr) in dxb
        .chunks_mut(cols)
        .zip(xb.chunks(cols))
        .zip(dyb.chunks(cols))
    {
        let (mean, inv) = row_stats(xr, eps);
        let (pg, pb) = part.split_at_mut(cols);
        for (((xh, &v), &d), (pg, pb)) in xhat
            .iter_mut()
            .zip(xr)
            .zip(dyr)
            .zip(pg.iter_mut().zip(pb.iter_mut()))
        {
            *xh = (v as f64 - mean) * inv;
            *pg += d as f64 * *xh;
            *pb += d as f64;
        }
        // Σ_j g_j and Σ_j g_j·x̂_j with g = dy·γ, in eight partial sums each.
        let (mut sg, mut sgx) = ([0f64; 8], [0f64; 8]);
        for (j, ((&d, &gm), &xh)) in dyr.iter().zip(gamma).zip(xhat.iter()).enumerate() {
            let g = d as f64 * gm as f64;
            sg[j % 8] += g;
            sgx[j % 8] += g * xh;
        }
        let (mg, mgx) = (sg.iter().sum::<f64>() / n, sgx.iter().sum::<f64>() / n);
        for (((dx, &d), &gm), &xh) in dxr.iter_mut().zip(dyr).zip(gamma).zip(xhat.iter()) {
            let g = d as f64 * gm as f64;
            let v = (inv * (g - mg - xh * mgx)) as f32;
            *dx = if ACC { *dx + v } else { v };
        }
    }
    part
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::math::fd;

    /// `Σ r ∘ LayerNorm(x)` in f64.
    fn functional(x: &[f64], gamma: &[f64], beta: &[f64], eps: f64, r: &[f32]) -> f64 {
        let cols = gamma.len();
        let mut l = 0.0;
        for (row, rr) in x.chunks(cols).zip(r.chunks(cols)) {
            let n = cols as f64;
            let mean = row.iter().sum::<f64>() / n;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            let inv = 1.0 / (var + eps).sqrt();
            for j in 0..cols {
                l += rr[j] as f64 * ((row[j] - mean) * inv * gamma[j] + beta[j]);
            }
        }
        l
    }

    #[test]
    fn layernorm_bwd_matches_finite_differences() {
        let mut rng = fd::Rng(0x1a7e);
        // Rows past one task block (32) so that the block partial sums are exercised; eps of
        // both models; one case whose first row has a variance ~ eps, where eps matters.
        for &(rows, cols, eps, tiny) in &[
            (3usize, 7usize, 1e-6f32, false),
            (3, 7, 1e-6, true),
            (37, 5, 1e-5, false),
            (2, 1, 1e-5, false),
        ] {
            let mut x = rng.vec(rows * cols, 2.0);
            if tiny {
                for v in x[..cols].iter_mut() {
                    *v = 0.3 + *v * 1e-3;
                }
            }
            let gamma = rng.vec(cols, 1.5);
            let beta = rng.vec(cols, 1.0);
            let r = rng.vec(rows * cols, 1.0);
            let (x64, g64, b64) = (fd::to64(&x), fd::to64(&gamma), fd::to64(&beta));
            let e = eps as f64;
            // h well below the tiny row's spread (1e-3) so the FD stays in its linear range.
            let h = 1e-7;
            let gx = fd::grad(&x, h, |p| functional(p, &g64, &b64, e, &r));
            let gg = fd::grad(&gamma, h, |p| functional(&x64, p, &b64, e, &r));
            let gb = fd::grad(&beta, h, |p| functional(&x64, &g64, p, e, &r));
            let mut dx = vec![3.0f32; rows * cols];
            let mut dgamma = vec![0.5f32; cols];
            let mut dbeta = vec![-0.5f32; cols];
            layernorm_bwd_cpu(&x, &gamma, eps, cols, &r, &mut dx, &mut dgamma, &mut dbeta);
            dgamma.iter_mut().for_each(|v| *v -= 0.5);
            dbeta.iter_mut().for_each(|v| *v += 0.5);
            let errs = [
                fd::rel_err(&dx, &gx),
                fd::rel_err(&dgamma, &gg),
                fd::rel_err(&dbeta, &gb),
            ];
            eprintln!(
                "layernorm_bwd ({rows},{cols},eps {eps:e},tiny {tiny}): dx dgamma dbeta {errs:?}"
            );
            // The backward runs in f64 and rounds once to f32 (6e-8 relative). The FD of the
            // f64 reference at h = 1e-7: truncation ~(h/σ)² ≤ 1e-8 relative (σ ≥ 1e-3 in the
            // tiny row), rounding ~1e-16·|L|/h ≈ 1e-8 absolute against gradients ≥ 0.1; the
            // ±0.5 accumulation offsets add ~3e-8 absolute.
            for err in errs {
                assert!(err < 1e-5, "layernorm_bwd ({rows},{cols}): {errs:?}");
            }
        }
    }

    #[test]
    fn layernorm_bwd_does_not_depend_on_the_thread_count() {
        let (rows, cols) = (100, 48);
        let mut rng = fd::Rng(0x7d);
        let x = rng.vec(rows * cols, 1.0);
        let gamma = rng.vec(cols, 1.0);
        let dy = rng.vec(rows * cols, 1.0);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool");
            pool.install(|| {
                let mut dx = vec![0f32; rows * cols];
                let (mut dg, mut db) = (vec![0f32; cols], vec![0f32; cols]);
                layernorm_bwd_cpu(&x, &gamma, 1e-6, cols, &dy, &mut dx, &mut dg, &mut db);
                (dx, dg, db)
            })
        };
        assert!(run(1) == run(3));
    }

    #[test]
    fn layernorm_bwd_acc_matches_overwrite_then_add_bitwise() {
        let (rows, cols) = (70, 40);
        let mut rng = fd::Rng(0x3c);
        let (x, gamma, dy) = (
            rng.vec(rows * cols, 1.0),
            rng.vec(cols, 1.0),
            rng.vec(rows * cols, 1.0),
        );
        let resid = rng.vec(rows * cols, 1.0);
        let (mut dg, mut db) = (vec![0f32; cols], vec![0f32; cols]);
        let mut want = vec![0f32; rows * cols];
        layernorm_bwd_cpu(&x, &gamma, 1e-6, cols, &dy, &mut want, &mut dg, &mut db);
        for (w, r) in want.iter_mut().zip(&resid) {
            *w = r + *w;
        }
        let (mut dg2, mut db2) = (vec![0f32; cols], vec![0f32; cols]);
        let mut got = resid.clone();
        layernorm_bwd_acc_cpu(&x, &gamma, 1e-6, cols, &dy, &mut got, &mut dg2, &mut db2);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
        assert_eq!((bits(&dg2), bits(&db2)), (bits(&dg), bits(&db)));
    }
}
