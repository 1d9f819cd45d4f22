//! The uncertainty losses of SPEC §6.5 and the exact low-rank NLL of §15b.2, forward and
//! backward. Layouts: `mu`, `s` `[B, 63]` (joint-major, `3j + c`); `gt` `[B, 21, 4]` =
//! (x, y, z, conf); the conf of coordinate `i` is that of joint `i / 3`.
//!
//! Every loss is a batch sum, computed per sample in f64 (in parallel over the batch) and summed
//! in batch order, so the value is bit-reproducible. Input gradients are OVERWRITTEN with
//! `scale · ∂L/∂x`; the gradient of `W` (a parameter) is ACCUMULATED.

use super::cholesky::{cholesky_into_f64, cholesky_inverse_f64, cholesky_logdet_f64};
use super::losses::JOINTS;
use super::{batch_of, expect_len, Scalar};
use crate::error::{Error, Result};
use crate::ops::covariance::{DIM, TRIL};
use crate::ops::math::{dot_f64, simd};
use rayon::prelude::*;

/// `1/(e^s + 1e-6)` and `e^s/(e^s + 1e-6)`, stable for every finite `s`.
fn inv_var(s: f64) -> (f64, f64) {
    if s >= 0.0 {
        let em = (-s).exp();
        let q = 1.0 / (1.0 + 1e-6 * em);
        (em * q, q)
    } else {
        let e = s.exp();
        let inv = 1.0 / (e + 1e-6);
        (inv, e * inv)
    }
}

fn conf<T: Scalar>(gt_b: &[T], i: usize) -> f64 {
    gt_b[4 * (i / 3) + 3].to_f64()
}

fn target<T: Scalar>(gt_b: &[T], i: usize) -> f64 {
    gt_b[4 * (i / 3) + i % 3].to_f64()
}

/// `w_b = 1` iff every joint's conf is exactly 1 (the full and exact NLLs' sample weight).
fn all_confident<T: Scalar>(gt_b: &[T]) -> bool {
    (0..JOINTS).all(|j| gt_b[4 * j + 3].to_f64() == 1.0)
}

fn check_common<T: Scalar>(what: &str, mu: &[T], gt: &[T], d_mu: &[T]) -> Result<usize> {
    let b = batch_of(&format!("{what}: mu [B,63]"), mu, DIM)?;
    expect_len(&format!("{what}: gt [B,21,4]"), gt, b * JOINTS * 4)?;
    expect_len(&format!("{what}: d_mu"), d_mu, b * DIM)?;
    Ok(b)
}

/// `Keypoint3DNLLLoss_wo_align` (diag, ours, ours_wo_linear):
/// `L = Σ_b Σ_j c_bj Σ_c ½·(s + (μ − g)²/(e^s + 1e-6))`.
/// `d_mu` ← `scale·c·(μ − g)/(e^s + 1e-6)`, `d_s` ← `scale·½c·(1 − (μ − g)²·e^s/(e^s + 1e-6)²)`.
pub fn nll_diag<T: Scalar>(
    mu: &[T],
    s: &[T],
    gt: &[T],
    scale: f64,
    d_mu: &mut [T],
    d_s: &mut [T],
) -> Result<f64> {
    let b = check_common("nll_diag", mu, gt, d_mu)?;
    expect_len("nll_diag: s [B,63]", s, b * DIM)?;
    expect_len("nll_diag: d_s", d_s, b * DIM)?;
    let mut total = 0f64;
    for bi in 0..b {
        let g = &gt[bi * JOINTS * 4..(bi + 1) * JOINTS * 4];
        for i in 0..DIM {
            let k = bi * DIM + i;
            let c = conf(g, i);
            let sv = s[k].to_f64();
            let r = mu[k].to_f64() - target(g, i);
            let (inv, q) = inv_var(sv);
            total += c * 0.5 * (sv + r * r * inv);
            d_mu[k] = T::from_f64(scale * c * r * inv);
            d_s[k] = T::from_f64(scale * 0.5 * c * (1.0 - r * r * inv * q));
        }
    }
    Ok(total)
}

/// `Keypoint3DFullNLLLoss_wo_align` (full): `L = Σ_b w_b·(2·Σ_i d_i + ‖rᵀL‖²)`, `r = g − μ`,
/// `w_b = 1` iff all 21 confs equal 1. `raw` `[B, 63 + 1953]` = `d` then the strictly-lower
/// entries of `L` in `ops::covariance` order; `L_ii = e^{−d_i}`, built in f64 (SPEC §15b.4
/// asks for no less than fp32). `d_raw` `[B, 2016]` ← `scale·∂L/∂raw` (0 for `w_b = 0`).
pub fn nll_full<T: Scalar>(
    mu: &[T],
    raw: &[T],
    gt: &[T],
    scale: f64,
    d_mu: &mut [T],
    d_raw: &mut [T],
) -> Result<f64> {
    let b = check_common("nll_full", mu, gt, d_mu)?;
    let rl = DIM + TRIL;
    expect_len("nll_full: raw [B,2016]", raw, b * rl)?;
    expect_len("nll_full: d_raw", d_raw, b * rl)?;
    let per: Vec<f64> = d_mu
        .par_chunks_mut(DIM)
        .zip(d_raw.par_chunks_mut(rl))
        .enumerate()
        .map(|(bi, (dm, dr))| {
            let g = &gt[bi * JOINTS * 4..(bi + 1) * JOINTS * 4];
            if !all_confident(g) {
                dm.fill(T::default());
                dr.fill(T::default());
                return 0.0;
            }
            let m = &mu[bi * DIM..(bi + 1) * DIM];
            let rb = &raw[bi * rl..(bi + 1) * rl];
            let (d, o) = rb.split_at(DIM);
            // L, row-major, lower part only.
            let mut l = vec![0f64; DIM * DIM];
            let mut k = 0;
            for row in 0..DIM {
                for col in 0..row {
                    l[row * DIM + col] = o[k].to_f64();
                    k += 1;
                }
                l[row * DIM + row] = (-d[row].to_f64()).exp();
            }
            let r: Vec<f64> = (0..DIM).map(|i| target(g, i) - m[i].to_f64()).collect();
            // z_k = Σ_{j ≥ k} r_j·L_jk.
            let mut z = [0f64; DIM];
            for j in 0..DIM {
                for (kk, zk) in z.iter_mut().enumerate().take(j + 1) {
                    *zk += r[j] * l[j * DIM + kk];
                }
            }
            let value = 2.0 * d.iter().map(|v| v.to_f64()).sum::<f64>()
                + z.iter().map(|v| v * v).sum::<f64>();
            // dz = 2z; dL_jk = r_j·dz_k; dr_j = Σ_{k ≤ j} L_jk·dz_k; dμ = −dr.
            let dz: Vec<f64> = z.iter().map(|v| 2.0 * scale * v).collect();
            let mut k = 0;
            for row in 0..DIM {
                let mut dr_row = 0f64;
                for col in 0..row {
                    dr[DIM + k] = T::from_f64(r[row] * dz[col]);
                    dr_row += l[row * DIM + col] * dz[col];
                    k += 1;
                }
                let lii = l[row * DIM + row];
                dr_row += lii * dz[row];
                // ∂/∂d_i: 2 from log det, and L_ii = e^{−d_i} ⇒ ∂L_ii/∂d_i = −L_ii.
                dr[row] = T::from_f64(2.0 * scale - r[row] * dz[row] * lii);
                dm[row] = T::from_f64(-dr_row);
            }
            value
        })
        .collect();
    Ok(per.iter().sum())
}

fn check_w<T: Scalar>(what: &str, w: &[T], d_w: &Option<&mut [T]>) -> Result<()> {
    expect_len(&format!("{what}: W [63,63]"), w, DIM * DIM)?;
    if let Some(dw) = d_w {
        expect_len(&format!("{what}: d_W [63,63]"), &dw[..], DIM * DIM)?;
    }
    Ok(())
}

/// Adds per-sample `[63, 63]` f64 partials into `d_w` in batch order (deterministic).
fn accumulate_dw<T: Scalar>(d_w: Option<&mut [T]>, partials: &[Option<Vec<f64>>]) {
    if let Some(dw) = d_w {
        let mut acc = vec![0f64; DIM * DIM];
        for p in partials.iter().flatten() {
            for (a, v) in acc.iter_mut().zip(p) {
                *a += v;
            }
        }
        for (d, a) in dw.iter_mut().zip(acc) {
            *d = T::from_f64(d.to_f64() + a);
        }
    }
}

/// `Keypoint3DSamplewiseMeanLoss_wo_align` (l2; ours, ours_wo_linear):
/// `L = Σ_b Σ_j c_bj Σ_c (1/N)·Σ_n (y_bnjc − g_bjc)²` with `y_bn = μ_b + W·(e^{s_b/2} ⊙ ε_bn)`
/// (`W = I` when `w` is `None`). `eps` `[B, N, 63]`; gradients to μ and s (overwritten) and to
/// `W` (`d_w`, accumulated; requires `w`).
#[allow(clippy::too_many_arguments)]
pub fn sample_mean<T: Scalar>(
    mu: &[T],
    s: &[T],
    w: Option<&[T]>,
    eps: &[T],
    gt: &[T],
    scale: f64,
    d_mu: &mut [T],
    d_s: &mut [T],
    d_w: Option<&mut [T]>,
) -> Result<f64> {
    let b = check_common("sample_mean", mu, gt, d_mu)?;
    expect_len("sample_mean: s [B,63]", s, b * DIM)?;
    expect_len("sample_mean: d_s", d_s, b * DIM)?;
    match w {
        Some(w) => check_w("sample_mean", w, &d_w)?,
        None if d_w.is_some() => return crate::input_err!("sample_mean: d_W asked for without W"),
        None => {}
    }
    if b == 0 {
        return Ok(0.0);
    }
    let n = batch_of("sample_mean: eps [B,N,63]", eps, b * DIM)?;
    if n == 0 {
        return crate::input_err!("sample_mean: eps holds no samples (N = 0)");
    }
    let want_dw = d_w.is_some();
    let inv_n = 1.0 / n as f64;
    // W in f64, row-major and transposed, so that both products below are runs of
    // contiguous multiply-adds over a whole vector (each sum still taken in the order of its
    // index, as a dot product would).
    let w64: Option<Vec<f64>> = w.map(|w| w.iter().map(|v| v.to_f64()).collect());
    let wt64: Option<Vec<f64>> = w64.as_ref().map(|w| {
        let mut t = vec![0f64; DIM * DIM];
        for i in 0..DIM {
            for d in 0..DIM {
                t[d * DIM + i] = w[i * DIM + d];
            }
        }
        t
    });
    let per: Vec<(f64, Option<Vec<f64>>)> = d_mu
        .par_chunks_mut(DIM)
        .zip(d_s.par_chunks_mut(DIM))
        .enumerate()
        .map(|(bi, (dm, ds))| {
            let g = &gt[bi * JOINTS * 4..(bi + 1) * JOINTS * 4];
            let m = &mu[bi * DIM..(bi + 1) * DIM];
            let sd: Vec<f64> = s[bi * DIM..(bi + 1) * DIM]
                .iter()
                .map(|v| (0.5 * v.to_f64()).exp())
                .collect();
            let c: Vec<f64> = (0..DIM).map(|i| conf(g, i)).collect();
            let mut value = 0f64;
            let mut dmu = [0f64; DIM];
            let mut dsv = [0f64; DIM];
            let mut dw = if want_dw {
                Some(vec![0f64; DIM * DIM])
            } else {
                None
            };
            let (mut z, mut a) = ([0f64; DIM], [0f64; DIM]);
            for e in eps[bi * n * DIM..(bi + 1) * n * DIM].chunks_exact(DIM) {
                for d in 0..DIM {
                    z[d] = sd[d] * e[d].to_f64();
                }
                // wz = W·z = (Wᵀ)ᵀ·z.
                let wz = match &wt64 {
                    Some(wt) => weighted_rows(wt, &z),
                    None => z,
                };
                for i in 0..DIM {
                    let err = m[i].to_f64() + wz[i] - target(g, i);
                    value += c[i] * err * err * inv_n;
                    a[i] = scale * 2.0 * c[i] * err * inv_n;
                    dmu[i] += a[i];
                }
                // dz = Wᵀ·a; ds_d += ½·dz_d·z_d; dW += a·zᵀ.
                let dz = match &w64 {
                    Some(w) => weighted_rows(w, &a),
                    None => a,
                };
                for d in 0..DIM {
                    dsv[d] += 0.5 * dz[d] * z[d];
                }
                if let Some(dw) = dw.as_mut() {
                    for (row, &ai) in dw.chunks_exact_mut(DIM).zip(&a) {
                        for (acc, &zd) in row.iter_mut().zip(&z) {
                            *acc += ai * zd;
                        }
                    }
                }
            }
            for i in 0..DIM {
                dm[i] = T::from_f64(dmu[i]);
                ds[i] = T::from_f64(dsv[i]);
            }
            (value, dw)
        })
        .collect();
    let partials: Vec<Option<Vec<f64>>> = per.iter().map(|p| p.1.clone()).collect();
    accumulate_dw(d_w, &partials);
    Ok(per.iter().map(|p| p.0).sum())
}

/// `mᵀ·v` for a row-major 63×63 `m`: Σ_k v_k·(row k of m), each entry summed in k order (the
/// order of a dot product over k), as runs of contiguous multiply-adds.
fn weighted_rows(m: &[f64], v: &[f64; DIM]) -> [f64; DIM] {
    let mut out = [0f64; DIM];
    for (row, &vk) in m.chunks_exact(DIM).zip(v) {
        for (acc, &x) in out.iter_mut().zip(row) {
            *acc += x * vk;
        }
    }
    out
}

/// `UncertaintyRegLoss`: `mean(e^{−s})` over all `B·63` values (weight 0 in the reference, but
/// computed). `d_s` ← `−scale·e^{−s}/(B·63)`. An empty `s` is an error (the mean is undefined).
pub fn uncertainty_reg<T: Scalar>(s: &[T], scale: f64, d_s: &mut [T]) -> Result<f64> {
    if s.is_empty() {
        return crate::input_err!("uncertainty_reg: s is empty");
    }
    expect_len("uncertainty_reg: d_s", d_s, s.len())?;
    let inv = 1.0 / s.len() as f64;
    let mut total = 0f64;
    for (v, d) in s.iter().zip(d_s.iter_mut()) {
        let e = (-v.to_f64()).exp();
        total += e;
        *d = T::from_f64(-scale * e * inv);
    }
    Ok(total * inv)
}

/// A jitter for [`nll_exact_lowrank`]: `εI` with ε = 1e-6 m² (a 1 mm standard deviation), which
/// keeps Σ positive definite when `W` is singular, far below the variances being learnt.
pub const DEFAULT_EXACT_JITTER: f64 = 1e-6;

/// The exact Gaussian NLL of `ours` (`--ours-nll exact`, SPEC §15b.2):
/// `L = Σ_b w_b·½(log det Σ_b + rᵀΣ_b⁻¹r)`, `Σ_b = W·diag(e^{s_b})·Wᵀ + jitter·I`, `r = g − μ`,
/// `w_b = 1` iff all 21 confs equal 1 (as the full NLL; a joint Gaussian has no per-joint
/// weight). Through a 63×63 Cholesky in f64. Backward: with `P = Σ⁻¹`, `α = P·r`,
/// `G = ∂L/∂Σ = ½(P − ααᵀ)`: `∂L/∂W = 2·G·W·diag(e^s)`, `∂L/∂s_d = e^{s_d}·(WᵀGW)_dd`,
/// `∂L/∂μ = −α`. A Σ that is not positive definite is an error naming the sample.
#[allow(clippy::too_many_arguments)]
pub fn nll_exact_lowrank<T: Scalar>(
    mu: &[T],
    s: &[T],
    w: &[T],
    gt: &[T],
    jitter: f64,
    scale: f64,
    d_mu: &mut [T],
    d_s: &mut [T],
    d_w: Option<&mut [T]>,
) -> Result<f64> {
    let b = check_common("nll_exact_lowrank", mu, gt, d_mu)?;
    expect_len("nll_exact_lowrank: s [B,63]", s, b * DIM)?;
    expect_len("nll_exact_lowrank: d_s", d_s, b * DIM)?;
    check_w("nll_exact_lowrank", w, &d_w)?;
    let want_dw = d_w.is_some();
    let wf: Vec<f64> = w.iter().map(|v| v.to_f64()).collect();
    let per: Vec<Result<(f64, Option<Vec<f64>>)>> = d_mu
        .par_chunks_mut(DIM)
        .zip(d_s.par_chunks_mut(DIM))
        .enumerate()
        .map(|(bi, (dm, ds))| {
            // One task per sample, its loops in the AVX-512 clone (`simd`).
            simd(
                #[inline(always)]
                || exact_sample(bi, mu, s, &wf, gt, jitter, scale, want_dw, dm, ds),
            )
        })
        .collect();
    let per: Vec<(f64, Option<Vec<f64>>)> = per.into_iter().collect::<Result<_>>()?;
    let partials: Vec<Option<Vec<f64>>> = per.iter().map(|p| p.1.clone()).collect();
    accumulate_dw(d_w, &partials);
    Ok(per.iter().map(|p| p.0).sum())
}

/// `gw = G·W` for `DIM × DIM` row-major `G` and `W`: each `gw[i, d]` sums `G[i, k]·W[k, d]`
/// over `k` in ascending order, the inner loop running along `d` (contiguous, no bounds
/// checks, so it vectorises).
#[inline(always)]
fn gw_product(gm: &[f64], wf: &[f64], gw: &mut [f64]) {
    for (gw_row, g_row) in gw.chunks_exact_mut(DIM).zip(gm.chunks_exact(DIM)) {
        for (&gik, w_row) in g_row.iter().zip(wf.chunks_exact(DIM)) {
            for (o, &w) in gw_row.iter_mut().zip(w_row) {
                *o += gik * w;
            }
        }
    }
}

/// `Σ_i W[i, d]·GW[i, d]` for every column `d`, each summed over `i` in ascending order from
/// −0.0 (what `Iterator::sum` of f64 starts from), the inner loop along `d`.
#[inline(always)]
fn column_dots(wf: &[f64], gw: &[f64]) -> [f64; DIM] {
    let mut acc = [-0.0f64; DIM];
    for (w_row, gw_row) in wf.chunks_exact(DIM).zip(gw.chunks_exact(DIM)) {
        for ((a, &w), &g) in acc.iter_mut().zip(w_row).zip(gw_row) {
            *a += w * g;
        }
    }
    acc
}

/// The exact NLL of sample `bi` and its gradients (`dm`, `ds`, and `dW`'s partial when
/// `want_dw`); zero for a sample with an unconfident joint.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn exact_sample<T: Scalar>(
    bi: usize,
    mu: &[T],
    s: &[T],
    wf: &[f64],
    gt: &[T],
    jitter: f64,
    scale: f64,
    want_dw: bool,
    dm: &mut [T],
    ds: &mut [T],
) -> Result<(f64, Option<Vec<f64>>)> {
    let g = &gt[bi * JOINTS * 4..(bi + 1) * JOINTS * 4];
    if !all_confident(g) {
        dm.fill(T::default());
        ds.fill(T::default());
        return Ok((0.0, None));
    }
    let e: Vec<f64> = s[bi * DIM..(bi + 1) * DIM]
        .iter()
        .map(|v| v.to_f64().exp())
        .collect();
    // Σ = (W·E)·Wᵀ + jitter·I (lower triangle is all the factorisation reads).
    let we: Vec<f64> = (0..DIM * DIM).map(|jd| wf[jd] * e[jd % DIM]).collect();
    let mut sigma = vec![0f64; DIM * DIM];
    for j in 0..DIM {
        for k in 0..=j {
            let acc = dot_f64(&we[j * DIM..(j + 1) * DIM], &wf[k * DIM..(k + 1) * DIM]);
            sigma[j * DIM + k] = acc + if j == k { jitter } else { 0.0 };
        }
    }
    let mut l = vec![0f64; DIM * DIM];
    cholesky_into_f64(&sigma, DIM, &mut l).map_err(|p| {
        Error::Input(format!(
            "nll_exact_lowrank: Σ of sample {bi} is not positive definite (pivot {p}); \
                     raise the jitter ({jitter:e})"
        ))
    })?;
    let m = &mu[bi * DIM..(bi + 1) * DIM];
    let r: Vec<f64> = (0..DIM).map(|i| target(g, i) - m[i].to_f64()).collect();
    let p = cholesky_inverse_f64(&l, DIM);
    let alpha: Vec<f64> = (0..DIM)
        .map(|i| (0..DIM).map(|k| p[i * DIM + k] * r[k]).sum::<f64>())
        .collect();
    let quad: f64 = r.iter().zip(&alpha).map(|(a, b)| a * b).sum();
    let value = 0.5 * (cholesky_logdet_f64(&l, DIM) + quad);
    // G = scale·½(P − ααᵀ); GW = G·W.
    let gm: Vec<f64> = (0..DIM * DIM)
        .map(|ij| 0.5 * scale * (p[ij] - alpha[ij / DIM] * alpha[ij % DIM]))
        .collect();
    let mut gw = vec![0f64; DIM * DIM];
    gw_product(&gm, wf, &mut gw);
    let wgw = column_dots(wf, &gw);
    for d in 0..DIM {
        ds[d] = T::from_f64(e[d] * wgw[d]);
        dm[d] = T::from_f64(-scale * alpha[d]);
    }
    let dw = want_dw.then(|| {
        (0..DIM * DIM)
            .map(|id| 2.0 * gw[id] * e[id % DIM])
            .collect()
    });
    Ok((value, dw))
}

#[cfg(test)]
#[path = "nll_tests.rs"]
mod tests;
