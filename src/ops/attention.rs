//! Softmax attention, `out = softmax(scale·q·kᵀ)·v` per head, for the two shapes of the model:
//! the ViT's self-attention over packed `qkv` (SPEC §2.2.3) and the decoder's cross-attention of
//! one query token over the context tokens (SPEC §3.2.3).

use super::linear::{matmul_strided_cpu, Par};
use super::math::{exp_f32, map_inplace};
use rayon::prelude::*;

/// In-place softmax of one row, max-subtracted, the sum accumulated in f64.
fn softmax_row(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    map_inplace(row, |v| exp_f32(v - max));
    let sum: f64 = row.iter().map(|&e| e as f64).sum();
    let inv = (1.0 / sum) as f32;
    for v in row.iter_mut() {
        *v *= inv;
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
    let c = heads * d;
    let stride = 3 * c;
    debug_assert_eq!(qkv.len(), b * s * stride);
    debug_assert_eq!(out.len(), b * s * c);
    let per_head: Vec<Vec<f32>> = (0..b * heads)
        .into_par_iter()
        .map(|bh| {
            let (bi, h) = (bh / heads, bh % heads);
            let base = bi * s * stride + h * d;
            let q = &qkv[base..];
            let k = &qkv[base + c..];
            let v = &qkv[base + 2 * c..];
            let mut scores = vec![0f32; s * s];
            // scores[i, j] = Σ_t q[i, t]·k[j, t]: kᵀ has row stride 1 and column stride 3c.
            matmul_strided_cpu(
                s,
                s,
                d,
                q,
                (stride, 1),
                k,
                (1, stride),
                &mut scores,
                Par::Serial,
            );
            for row in scores.chunks_mut(s) {
                for x in row.iter_mut() {
                    *x *= scale;
                }
                softmax_row(row);
            }
            let mut o = vec![0f32; s * d];
            matmul_strided_cpu(
                s,
                d,
                s,
                &scores,
                (s, 1),
                v,
                (stride, 1),
                &mut o,
                Par::Serial,
            );
            o
        })
        .collect();
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
        softmax_row(&mut p);
        o.fill(0.0);
        for (j, &pj) in p.iter().enumerate() {
            let v = &kv[(bi * t + j) * 2 * inner + inner + h * d..][..d];
            for (oo, &vv) in o.iter_mut().zip(v) {
                *oo += pj * vv;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
