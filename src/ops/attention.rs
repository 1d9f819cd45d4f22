//! Softmax attention, `out = softmax(scale·q·kᵀ)·v` per head, for the two shapes of the model:
//! the ViT's self-attention over packed `qkv` (SPEC §2.2.3) and the decoder's cross-attention of
//! one query token over the context tokens (SPEC §3.2.3).

use super::linear::{matmul_strided_cpu, Par};
use super::math::{dot_f64, exp_f32, simd, sum_f64};
use rayon::prelude::*;

/// In-place softmax of `scale·row`, max-subtracted, the sum accumulated in f64 (in the eight
/// partial sums of [`sum_f64`]).
fn softmax_row(row: &mut [f32], scale: f32) {
    simd(
        #[inline(always)]
        || {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
            for v in row.iter_mut() {
                *v = exp_f32(*v * scale - max);
            }
            let inv = (1.0 / sum_f64(row, |e| e)) as f32;
            for v in row.iter_mut() {
                *v *= inv;
            }
        },
    )
}

/// The attention probabilities of head `h` of one sample, `p[i, j] = softmax_j(scale·q_i·k_j)`
/// (`s × s`), from the sample's rows of the packed `qkv` (`[s, 3·c]`). A single-threaded GEMM:
/// the callers run one task per head.
fn head_probs(qkv_b: &[f32], s: usize, c: usize, h: usize, d: usize, scale: f32, p: &mut [f32]) {
    let stride = 3 * c;
    // scores[i, j] = Σ_t q[i, t]·k[j, t]: kᵀ has row stride 1 and column stride 3c.
    matmul_strided_cpu(
        s,
        s,
        d,
        &qkv_b[h * d..],
        (stride, 1),
        &qkv_b[c + h * d..],
        (1, stride),
        p,
        Par::Serial,
    );
    for row in p.chunks_mut(s) {
        softmax_row(row, scale);
    }
}

/// CPU twin of the ViT self-attention. `qkv` is `[b, s, 3·h·d]` with feature
/// `which·(h·d) + head·d + i` (which = q, k, v); `out` is `[b, s, h·d]`, heads concatenated.
/// One task per (batch, head); the two products of a head are single-threaded GEMMs.
pub fn self_attention_packed_cpu(
    qkv: &[f32],
    b: usize,
    s: usize,
    heads: usize,
    d: usize,
    scale: f32,
    out: &mut [f32],
) {
    self_attention_fwd(qkv, b, s, heads, d, scale, out, None)
}

/// [`self_attention_packed_cpu`] for training: also keeps the probabilities, `probs`
/// `[b, h, s, s]`, for [`self_attention_packed_bwd_probs_cpu`].
#[allow(clippy::too_many_arguments)]
pub fn self_attention_packed_train_cpu(
    qkv: &[f32],
    b: usize,
    s: usize,
    heads: usize,
    d: usize,
    scale: f32,
    out: &mut [f32],
    probs: &mut [f32],
) {
    self_attention_fwd(qkv, b, s, heads, d, scale, out, Some(probs))
}

#[allow(clippy::too_many_arguments)]
fn self_attention_fwd(
    qkv: &[f32],
    b: usize,
    s: usize,
    heads: usize,
    d: usize,
    scale: f32,
    out: &mut [f32],
    probs: Option<&mut [f32]>,
) {
    let c = heads * d;
    let stride = 3 * c;
    debug_assert_eq!(qkv.len(), b * s * stride);
    debug_assert_eq!(out.len(), b * s * c);
    if s == 0 || c == 0 {
        return;
    }
    // One head: P into `p`, then O = P·V (s × d).
    let head_out = |bh: usize, p: &mut [f32]| -> Vec<f32> {
        let (bi, h) = (bh / heads, bh % heads);
        let qkv_b = &qkv[bi * s * stride..(bi + 1) * s * stride];
        head_probs(qkv_b, s, c, h, d, scale, p);
        let mut o = vec![0f32; s * d];
        let v = &qkv_b[2 * c + h * d..];
        matmul_strided_cpu(s, d, s, p, (s, 1), v, (stride, 1), &mut o, Par::Serial);
        o
    };
    let per_head: Vec<Vec<f32>> = match probs {
        Some(probs) => {
            debug_assert_eq!(probs.len(), b * heads * s * s);
            probs
                .par_chunks_mut(s * s)
                .enumerate()
                .map(|(bh, p)| head_out(bh, p))
                .collect()
        }
        None => (0..b * heads)
            .into_par_iter()
            .map(|bh| head_out(bh, &mut vec![0f32; s * s]))
            .collect(),
    };
    for (bh, o) in per_head.iter().enumerate() {
        let (bi, h) = (bh / heads, bh % heads);
        for i in 0..s {
            let dst = (bi * s + i) * c + h * d;
            out[dst..dst + d].copy_from_slice(&o[i * d..(i + 1) * d]);
        }
    }
}

/// CPU twin of the decoder cross-attention: one query per sample. `q` is `[b, h·d]`, `kv` is
/// `[b, t, 2·h·d]` (keys in the first `h·d` features, values in the second), `out` is `[b, h·d]`.
#[allow(clippy::too_many_arguments)]
pub fn cross_attention_1q_cpu(
    q: &[f32],
    kv: &[f32],
    b: usize,
    t: usize,
    heads: usize,
    d: usize,
    scale: f32,
    out: &mut [f32],
) {
    let inner = heads * d;
    debug_assert_eq!(q.len(), b * inner);
    debug_assert_eq!(kv.len(), b * t * 2 * inner);
    out.par_chunks_mut(d).enumerate().for_each(|(bh, o)| {
        let (bi, h) = (bh / heads, bh % heads);
        let qh = &q[bi * inner + h * d..bi * inner + (h + 1) * d];
        let mut p = vec![0f32; t];
        for (j, pj) in p.iter_mut().enumerate() {
            let k = &kv[(bi * t + j) * 2 * inner + h * d..][..d];
            *pj = qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
        }
        softmax_row(&mut p, 1.0);
        o.fill(0.0);
        for (j, &pj) in p.iter().enumerate() {
            let v = &kv[(bi * t + j) * 2 * inner + inner + h * d..][..d];
            for (oo, &vv) in o.iter_mut().zip(v) {
                *oo += pj * vv;
            }
        }
    });
}

/// `row[j] ← scale·p[j]·(row[j] − Σ_k p[k]·row[k])`: the softmax backward from `dp` (in `row`)
/// to the gradient of the pre-scale scores, the inner sum in f64 (eight partial sums).
fn softmax_bwd_row(p: &[f32], row: &mut [f32], scale: f32) {
    simd(
        #[inline(always)]
        || {
            let dot = dot_f64(p, row) as f32;
            for (g, &pj) in row.iter_mut().zip(p) {
                *g = scale * pj * (*g - dot);
            }
        },
    )
}

/// Backward of [`self_attention_packed_cpu`]: given `dout` `[b, s, h·d]`, writes `dqkv`
/// (overwritten, the packed layout of `qkv`). The softmax is recomputed per head; with
/// `P = softmax(scale·Q·Kᵀ)`, `dP = dO·Vᵀ`, `dS = scale·P∘(dP − rowsum(P∘dP))`:
/// `dQ = dS·K`, `dK = dSᵀ·Q`, `dV = Pᵀ·dO`. Tasks are (batch, head): the batches split over
/// the pool, and each batch's heads again, each head's gradients gathered into the batch's
/// rows of `dqkv` once its heads are done (so at most the batches in flight hold a copy).
#[allow(clippy::too_many_arguments)]
pub fn self_attention_packed_bwd_cpu(
    qkv: &[f32],
    b: usize,
    s: usize,
    heads: usize,
    d: usize,
    scale: f32,
    dout: &[f32],
    dqkv: &mut [f32],
) {
    self_attention_bwd(qkv, None, b, s, heads, d, scale, dout, dqkv)
}

/// [`self_attention_packed_bwd_cpu`] with the probabilities kept by
/// [`self_attention_packed_train_cpu`] instead of recomputed (the same values, so the same
/// result).
#[allow(clippy::too_many_arguments)]
pub fn self_attention_packed_bwd_probs_cpu(
    qkv: &[f32],
    probs: &[f32],
    b: usize,
    s: usize,
    heads: usize,
    d: usize,
    scale: f32,
    dout: &[f32],
    dqkv: &mut [f32],
) {
    self_attention_bwd(qkv, Some(probs), b, s, heads, d, scale, dout, dqkv)
}

#[allow(clippy::too_many_arguments)]
fn self_attention_bwd(
    qkv: &[f32],
    probs: Option<&[f32]>,
    b: usize,
    s: usize,
    heads: usize,
    d: usize,
    scale: f32,
    dout: &[f32],
    dqkv: &mut [f32],
) {
    let c = heads * d;
    let stride = 3 * c;
    debug_assert_eq!(qkv.len(), b * s * stride);
    debug_assert_eq!(dout.len(), b * s * c);
    debug_assert_eq!(dqkv.len(), b * s * stride);
    debug_assert!(probs.is_none_or(|p| p.len() == b * heads * s * s));
    if s == 0 || c == 0 {
        // Nothing to differentiate (and no rows to chunk).
        return;
    }
    dqkv.par_chunks_mut(s * stride)
        .enumerate()
        .for_each(|(bi, dst)| {
            let qkv_b = &qkv[bi * s * stride..(bi + 1) * s * stride];
            let per_head: Vec<Vec<f32>> = (0..heads)
                .into_par_iter()
                .map(|h| {
                    let q = &qkv_b[h * d..];
                    let k = &qkv_b[c + h * d..];
                    let v = &qkv_b[2 * c + h * d..];
                    let dout_h = &dout[bi * s * c + h * d..];
                    let recomputed;
                    let p = match probs {
                        Some(probs) => &probs[(bi * heads + h) * s * s..][..s * s],
                        None => {
                            let mut p = vec![0f32; s * s];
                            head_probs(qkv_b, s, c, h, d, scale, &mut p);
                            recomputed = p;
                            &recomputed[..]
                        }
                    };
                    // dP = dO·Vᵀ, then dS in place.
                    let mut ds = vec![0f32; s * s];
                    matmul_strided_cpu(
                        s,
                        s,
                        d,
                        dout_h,
                        (c, 1),
                        v,
                        (1, stride),
                        &mut ds,
                        Par::Serial,
                    );
                    for (pr, gr) in p.chunks(s).zip(ds.chunks_mut(s)) {
                        softmax_bwd_row(pr, gr, scale);
                    }
                    // [dQ | dK | dV], each s × d.
                    let mut g = vec![0f32; 3 * s * d];
                    let (gq, rest) = g.split_at_mut(s * d);
                    let (gk, gv) = rest.split_at_mut(s * d);
                    matmul_strided_cpu(s, d, s, &ds, (s, 1), k, (stride, 1), gq, Par::Serial);
                    matmul_strided_cpu(s, d, s, &ds, (1, s), q, (stride, 1), gk, Par::Serial);
                    matmul_strided_cpu(s, d, s, p, (1, s), dout_h, (c, 1), gv, Par::Serial);
                    g
                })
                .collect();
            for (h, g) in per_head.iter().enumerate() {
                for which in 0..3 {
                    for i in 0..s {
                        let at = i * stride + which * c + h * d;
                        let from = (which * s + i) * d;
                        dst[at..at + d].copy_from_slice(&g[from..from + d]);
                    }
                }
            }
        });
}

/// Backward of [`cross_attention_1q_cpu`]: given `dout` `[b, h·d]`, writes `dq` `[b, h·d]` and
/// `dkv` `[b, t, 2·h·d]` (both overwritten). Per (batch, head), with `p = softmax(scale·K·q)`:
/// `dv_j = p_j·do`, `ds_j = scale·p_j·(do·v_j − Σ_k p_k·do·v_k)`, `dq = Σ_j ds_j·k_j`,
/// `dk_j = ds_j·q`. Batches split over the pool and each batch's heads again, as in
/// [`self_attention_packed_bwd_cpu`].
#[allow(clippy::too_many_arguments)]
pub fn cross_attention_1q_bwd_cpu(
    q: &[f32],
    kv: &[f32],
    b: usize,
    t: usize,
    heads: usize,
    d: usize,
    scale: f32,
    dout: &[f32],
    dq: &mut [f32],
    dkv: &mut [f32],
) {
    let inner = heads * d;
    debug_assert_eq!(q.len(), b * inner);
    debug_assert_eq!(kv.len(), b * t * 2 * inner);
    debug_assert!(dout.len() == b * inner && dq.len() == b * inner);
    debug_assert_eq!(dkv.len(), b * t * 2 * inner);
    if t == 0 || inner == 0 {
        // No context: the forward's output is the constant 0.
        dq.fill(0.0);
        return;
    }
    let row = 2 * inner;
    dq.par_chunks_mut(inner)
        .zip(dkv.par_chunks_mut(t * row))
        .enumerate()
        .for_each(|(bi, (dq_b, dkv_b))| {
            // Per head: [dq (d) | dk (t·d) | dv (t·d)].
            let per_head: Vec<Vec<f32>> = (0..heads)
                .into_par_iter()
                .map(|h| {
                    let qh = &q[bi * inner + h * d..][..d];
                    let doh = &dout[bi * inner + h * d..][..d];
                    let key = |j: usize| &kv[(bi * t + j) * row + h * d..][..d];
                    let val = |j: usize| &kv[(bi * t + j) * row + inner + h * d..][..d];
                    let dotf =
                        |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
                    let mut p: Vec<f32> = (0..t).map(|j| dotf(qh, key(j)) * scale).collect();
                    softmax_row(&mut p, 1.0);
                    let mut ds: Vec<f32> = (0..t).map(|j| dotf(doh, val(j))).collect();
                    softmax_bwd_row(&p, &mut ds, scale);
                    let mut g = vec![0f32; d + 2 * t * d];
                    let (gq, rest) = g.split_at_mut(d);
                    let (gk, gv) = rest.split_at_mut(t * d);
                    for j in 0..t {
                        for (a, &kk) in gq.iter_mut().zip(key(j)) {
                            *a += ds[j] * kk;
                        }
                        for (a, &qq) in gk[j * d..(j + 1) * d].iter_mut().zip(qh) {
                            *a = ds[j] * qq;
                        }
                        for (a, &o) in gv[j * d..(j + 1) * d].iter_mut().zip(doh) {
                            *a = p[j] * o;
                        }
                    }
                    g
                })
                .collect();
            for (h, g) in per_head.iter().enumerate() {
                dq_b[h * d..(h + 1) * d].copy_from_slice(&g[..d]);
                for j in 0..t {
                    let from = d + j * d;
                    dkv_b[j * row + h * d..][..d].copy_from_slice(&g[from..from + d]);
                    let from = d + (t + j) * d;
                    dkv_b[j * row + inner + h * d..][..d].copy_from_slice(&g[from..from + d]);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::math::fd;

    /// Straightforward f64 attention for one head on gathered q, k, v.
    fn naive(q: &[Vec<f64>], k: &[Vec<f64>], v: &[Vec<f64>], scale: f64) -> Vec<Vec<f64>> {
        q.iter()
            .map(|qi| {
                let s: Vec<f64> = k
                    .iter()
                    .map(|kj| qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale)
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                (0..v[0].len())
                    .map(|t| e.iter().zip(v).map(|(p, vj)| p / z * vj[t]).sum())
                    .collect()
            })
            .collect()
    }

    fn val(i: usize) -> f32 {
        ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 2.0
    }

    #[test]
    fn self_attention_matches_naive() {
        let (b, s, h, d) = (2, 5, 3, 4);
        let c = h * d;
        let qkv: Vec<f32> = (0..b * s * 3 * c).map(val).collect();
        let mut out = vec![0f32; b * s * c];
        self_attention_packed_cpu(&qkv, b, s, h, d, 0.5, &mut out);
        for bi in 0..b {
            for hh in 0..h {
                let get = |which: usize| -> Vec<Vec<f64>> {
                    (0..s)
                        .map(|i| {
                            (0..d)
                                .map(|t| qkv[(bi * s + i) * 3 * c + which * c + hh * d + t] as f64)
                                .collect()
                        })
                        .collect()
                };
                let want = naive(&get(0), &get(1), &get(2), 0.5);
                for i in 0..s {
                    for t in 0..d {
                        assert!(
                            (out[(bi * s + i) * c + hh * d + t] as f64 - want[i][t]).abs() < 1e-5
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn cross_attention_matches_naive() {
        let (b, t, h, d) = (2, 7, 2, 3);
        let inner = h * d;
        let q: Vec<f32> = (0..b * inner).map(|i| val(i + 100)).collect();
        let kv: Vec<f32> = (0..b * t * 2 * inner).map(val).collect();
        let mut out = vec![0f32; b * inner];
        cross_attention_1q_cpu(&q, &kv, b, t, h, d, 0.7, &mut out);
        for bi in 0..b {
            for hh in 0..h {
                let qv = vec![(0..d)
                    .map(|x| q[bi * inner + hh * d + x] as f64)
                    .collect::<Vec<_>>()];
                let k: Vec<Vec<f64>> = (0..t)
                    .map(|j| {
                        (0..d)
                            .map(|x| kv[(bi * t + j) * 2 * inner + hh * d + x] as f64)
                            .collect()
                    })
                    .collect();
                let v: Vec<Vec<f64>> = (0..t)
                    .map(|j| {
                        (0..d)
                            .map(|x| kv[(bi * t + j) * 2 * inner + inner + hh * d + x] as f64)
                            .collect()
                    })
                    .collect();
                let want = naive(&qv, &k, &v, 0.7);
                for x in 0..d {
                    assert!((out[bi * inner + hh * d + x] as f64 - want[0][x]).abs() < 1e-5);
                }
            }
        }
    }
    /// f64 self-attention on the packed layout, `[b, s, h·d]`.
    fn self_attn64(qkv: &[f64], b: usize, s: usize, h: usize, d: usize, scale: f64) -> Vec<f64> {
        let c = h * d;
        let mut out = vec![0f64; b * s * c];
        for bi in 0..b {
            for hh in 0..h {
                let get = |which: usize| -> Vec<Vec<f64>> {
                    (0..s)
                        .map(|i| qkv[(bi * s + i) * 3 * c + which * c + hh * d..][..d].to_vec())
                        .collect()
                };
                let o = naive(&get(0), &get(1), &get(2), scale);
                for (i, oi) in o.iter().enumerate() {
                    out[(bi * s + i) * c + hh * d..][..d].copy_from_slice(oi);
                }
            }
        }
        out
    }

    /// f64 one-query cross-attention, `[b, h·d]`.
    #[allow(clippy::too_many_arguments)]
    fn cross_attn64(
        q: &[f64],
        kv: &[f64],
        b: usize,
        t: usize,
        h: usize,
        d: usize,
        scale: f64,
    ) -> Vec<f64> {
        let inner = h * d;
        let mut out = vec![0f64; b * inner];
        for bi in 0..b {
            for hh in 0..h {
                let qv = vec![q[bi * inner + hh * d..][..d].to_vec()];
                let rows = |off: usize| -> Vec<Vec<f64>> {
                    (0..t)
                        .map(|j| kv[(bi * t + j) * 2 * inner + off + hh * d..][..d].to_vec())
                        .collect()
                };
                let o = naive(&qv, &rows(0), &rows(inner), scale);
                out[bi * inner + hh * d..][..d].copy_from_slice(&o[0]);
            }
        }
        out
    }

    /// The elements of a `[rows, parts·width]` tensor whose feature lies in part `which`.
    fn part<T: Copy>(v: &[T], parts: usize, width: usize, which: usize) -> Vec<T> {
        v.chunks(parts * width)
            .flat_map(|r| r[which * width..(which + 1) * width].to_vec())
            .collect()
    }

    #[test]
    fn self_attention_bwd_matches_finite_differences() {
        let mut rng = fd::Rng(0x5a);
        for &(b, s, h, d) in &[(2, 5, 3, 4), (1, 1, 2, 3), (2, 3, 1, 1), (1, 9, 2, 2)] {
            let c = h * d;
            let scale = (d as f32).powf(-0.5);
            // Entries up to ±2 so the softmax rows are far from uniform.
            let qkv = rng.vec(b * s * 3 * c, 2.0);
            let r = rng.vec(b * s * c, 1.0);
            let mut out = vec![0f32; b * s * c];
            self_attention_packed_cpu(&qkv, b, s, h, d, scale, &mut out);
            let fwd = self_attn64(&fd::to64(&qkv), b, s, h, d, scale as f64);
            assert!(fd::rel_err(&out, &fwd) < 1e-5, "forward vs f64 reference");
            let want = fd::grad(&qkv, 1e-6, |p| {
                fd::dot(&self_attn64(p, b, s, h, d, scale as f64), &fd::to64(&r))
            });
            let mut got = vec![9.0f32; qkv.len()];
            self_attention_packed_bwd_cpu(&qkv, b, s, h, d, scale, &r, &mut got);
            let errs: Vec<f64> = (0..3)
                .map(|w| fd::rel_err(&part(&got, 3, c, w), &part(&want, 3, c, w)))
                .collect();
            eprintln!("self_attention_bwd ({b},{s},{h},{d}): dq dk dv {errs:?}");
            // f32 forward recomputation and products of ≤ 9 terms, the softmax with exp_f32
            // at 2 ulp: a few 1e-7 relative; FD of the f64 reference at h = 1e-6: truncation
            // ~h²·|f⁽³⁾| ≈ 1e-12, rounding ~1e-10. With s = 1, dq = dk = 0 exactly on both sides.
            for e in &errs {
                assert!(*e < 5e-6, "self_attention_bwd ({b},{s},{h},{d}): {errs:?}");
            }
        }
    }

    #[test]
    fn kept_probabilities_give_the_recomputed_results_bitwise() {
        let mut rng = fd::Rng(0x9b);
        let (b, s, h, d) = (3, 7, 2, 5);
        let scale = (d as f32).powf(-0.5);
        let qkv = rng.vec(b * s * 3 * h * d, 2.0);
        let dout = rng.vec(b * s * h * d, 1.0);
        let (mut out, mut out2) = (vec![0f32; b * s * h * d], vec![1f32; b * s * h * d]);
        let mut probs = vec![0f32; b * h * s * s];
        self_attention_packed_cpu(&qkv, b, s, h, d, scale, &mut out);
        self_attention_packed_train_cpu(&qkv, b, s, h, d, scale, &mut out2, &mut probs);
        let (mut g, mut g2) = (vec![0f32; qkv.len()], vec![1f32; qkv.len()]);
        self_attention_packed_bwd_cpu(&qkv, b, s, h, d, scale, &dout, &mut g);
        self_attention_packed_bwd_probs_cpu(&qkv, &probs, b, s, h, d, scale, &dout, &mut g2);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&out), bits(&out2));
        assert_eq!(bits(&g), bits(&g2));
        // Each row of P is a distribution.
        for row in probs.chunks(s) {
            assert!((row.iter().map(|&p| p as f64).sum::<f64>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn cross_attention_bwd_matches_finite_differences() {
        let mut rng = fd::Rng(0xc7);
        for &(b, t, h, d) in &[(2, 7, 2, 3), (1, 1, 3, 2), (3, 4, 1, 5)] {
            let inner = h * d;
            let scale = (d as f32).powf(-0.5);
            let q = rng.vec(b * inner, 2.0);
            let kv = rng.vec(b * t * 2 * inner, 2.0);
            let r = rng.vec(b * inner, 1.0);
            let (q64, kv64, r64) = (fd::to64(&q), fd::to64(&kv), fd::to64(&r));
            let sc = scale as f64;
            let gq = fd::grad(&q, 1e-6, |p| {
                fd::dot(&cross_attn64(p, &kv64, b, t, h, d, sc), &r64)
            });
            let gkv = fd::grad(&kv, 1e-6, |p| {
                fd::dot(&cross_attn64(&q64, p, b, t, h, d, sc), &r64)
            });
            let mut dq = vec![9.0f32; q.len()];
            let mut dkv = vec![9.0f32; kv.len()];
            cross_attention_1q_bwd_cpu(&q, &kv, b, t, h, d, scale, &r, &mut dq, &mut dkv);
            let errs = [
                fd::rel_err(&dq, &gq),
                fd::rel_err(&part(&dkv, 2, inner, 0), &part(&gkv, 2, inner, 0)),
                fd::rel_err(&part(&dkv, 2, inner, 1), &part(&gkv, 2, inner, 1)),
            ];
            eprintln!("cross_attention_bwd ({b},{t},{h},{d}): dq dk dv {errs:?}");
            // As for the self-attention: f32 sums of ≤ 7 terms against an f64 FD at h = 1e-6;
            // with t = 1, dq = dk = 0 exactly on both sides.
            for e in errs {
                assert!(e < 5e-6, "cross_attention_bwd ({b},{t},{h},{d}): {errs:?}");
            }
        }
    }

    #[test]
    fn attention_bwd_handles_empty_shapes() {
        let (mut dq, mut dkv) = (vec![1f32; 6], vec![]);
        cross_attention_1q_bwd_cpu(
            &[0.5; 6],
            &[],
            1,
            0,
            2,
            3,
            0.5,
            &[1.0; 6],
            &mut dq,
            &mut dkv,
        );
        assert!(dq.iter().all(|&v| v == 0.0));
        // Degenerate self-attention shapes return without touching anything.
        self_attention_packed_bwd_cpu(&[], 2, 3, 0, 4, 0.5, &[], &mut []);
        self_attention_packed_bwd_cpu(&[], 2, 0, 2, 4, 0.5, &[], &mut []);
    }
}
