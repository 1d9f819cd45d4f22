//! Stochastic depth ("drop-path") of the ViT blocks in training (SPEC §2.1, §8), as timm's
//! `DropPath`: block `i` of `depth` drops its residual branch with probability
//! `rate_i = max_rate·i/(depth−1)`, per sample, and a kept branch is rescaled by `1/keep_prob`
//! (`keep_prob = 1 − rate_i`) so that its expectation is unchanged. In evaluation the branch is
//! the identity. The keep decisions come from a counter-based hash of
//! (seed, step, block, sample): the same bits for any batch split and thread count, and a
//! resumed run draws what the uninterrupted one would have.
//!
//! The branch output is multiplied by the per-sample scale in the forward pass and the gradient
//! flowing into the branch by the same scale in the backward pass; both are [`scale_rows`].

use rayon::prelude::*;

/// Drop rates of the blocks, `max_rate·i/(depth−1)` for `i = 0..depth`: timm's
/// `torch.linspace(0, max_rate, depth)` (0 for a single block, and none for `depth = 0`).
pub fn drop_path_rates(depth: usize, max_rate: f32) -> Vec<f32> {
    if depth <= 1 {
        return vec![0.0; depth];
    }
    (0..depth)
        .map(|i| (max_rate as f64 * i as f64 / (depth - 1) as f64) as f32)
        .collect()
}

/// Domain tag of the drop-path draws ("droppath" in ASCII), so that other users of the
/// (seed, step, sample) counters draw independent bits.
const DOMAIN: u64 = 0x6472_6f70_7061_7468;

/// The SplitMix64 finaliser: a bijection of u64 with full avalanche.
fn mix(z: u64) -> u64 {
    let z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1) (53 bits) for one (seed, step, block, sample).
fn uniform(seed: u64, step: u64, block: usize, sample: usize) -> f64 {
    let h = mix(mix(mix(mix(seed ^ DOMAIN) ^ step) ^ block as u64) ^ sample as u64);
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Per-sample scales of block `block` at training step `step` for a batch of `batch`: `0` for
/// a dropped sample (probability `rate`), `1/keep_prob` for a kept one. A rate that is not
/// positive (including NaN) keeps every sample with scale 1; a rate ≥ 1 drops every sample
/// (timm then multiplies by 0 without rescaling). Sample `i`'s value does not depend on `batch`.
pub fn drop_path_masks(seed: u64, step: u64, block: usize, batch: usize, rate: f32) -> Vec<f32> {
    if rate.is_nan() || rate <= 0.0 {
        return vec![1.0; batch];
    }
    if rate >= 1.0 {
        return vec![0.0; batch];
    }
    // timm: keep_prob = 1 − drop_prob (a Python float), the mask divided by it in the tensor's
    // f32.
    let keep = 1.0 - rate as f64;
    let scale = 1.0 / keep as f32;
    (0..batch)
        .map(|i| {
            if uniform(seed, step, block, i) < keep {
                scale
            } else {
                0.0
            }
        })
        .collect()
}

/// `x[i·per_sample .. (i+1)·per_sample] *= scales[i]` for each sample `i`: the drop-path of a
/// residual branch's output in the forward pass, and of the gradient into the branch in the
/// backward pass. A scale of exactly 0 writes zeros (a dropped branch contributes nothing, even
/// if it overflowed); a scale of 1 leaves the row untouched. Samples past the shorter of
/// `x.len() / per_sample` and `scales.len()` are left as they are.
pub fn scale_rows(x: &mut [f32], per_sample: usize, scales: &[f32]) {
    debug_assert_eq!(x.len(), per_sample * scales.len());
    if per_sample == 0 {
        return;
    }
    x.par_chunks_mut(per_sample)
        .zip(scales.par_iter())
        .for_each(|(row, &s)| {
            if s == 0.0 {
                row.fill(0.0);
            } else if s != 1.0 {
                row.iter_mut().for_each(|v| *v *= s);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::math::fd;

    #[test]
    fn rates_are_timm_linspace() {
        let r = drop_path_rates(32, 0.55);
        assert_eq!(r.len(), 32);
        assert_eq!(r[0], 0.0);
        assert_eq!(r[31], 0.55);
        for (i, &v) in r.iter().enumerate() {
            assert!((v as f64 - 0.55 * i as f64 / 31.0).abs() < 1e-7);
        }
        assert_eq!(drop_path_rates(1, 0.55), vec![0.0]);
        assert!(drop_path_rates(0, 0.55).is_empty());
    }

    #[test]
    fn masks_are_deterministic_and_keyed() {
        let m = drop_path_masks(7, 123, 5, 64, 0.5);
        assert_eq!(m, drop_path_masks(7, 123, 5, 64, 0.5));
        // Sample i's draw does not depend on the batch it is in.
        assert_eq!(m[..10], drop_path_masks(7, 123, 5, 10, 0.5)[..]);
        // Each key changes the draws (64 fair coins: equal by chance with probability 2⁻⁶⁴).
        assert_ne!(m, drop_path_masks(8, 123, 5, 64, 0.5));
        assert_ne!(m, drop_path_masks(7, 124, 5, 64, 0.5));
        assert_ne!(m, drop_path_masks(7, 123, 6, 64, 0.5));
        assert!(m.iter().all(|&v| v == 0.0 || v == 2.0));
        assert_eq!(drop_path_masks(1, 2, 3, 4, 0.0), vec![1.0; 4]);
        assert_eq!(drop_path_masks(1, 2, 3, 4, f32::NAN), vec![1.0; 4]);
        assert_eq!(drop_path_masks(1, 2, 3, 4, -0.1), vec![1.0; 4]);
        assert_eq!(drop_path_masks(1, 2, 3, 4, 1.0), vec![0.0; 4]);
    }

    #[test]
    fn masks_keep_at_the_right_rate() {
        // 200 steps × 8 blocks × 64 samples = 102 400 Bernoulli(0.7) draws: the standard error
        // of the kept fraction is √(0.7·0.3/102400) = 1.43e-3; 5 standard errors (a false alarm
        // once in ~1.7 million seeds, and the seed is fixed).
        let (rate, keep) = (0.3f32, 0.7f64);
        let scale = 1.0 / keep as f32;
        let (mut n, mut kept, mut pairs, mut sum) = (0usize, 0usize, 0usize, 0f64);
        for step in 0..200 {
            for block in 0..8 {
                let m = drop_path_masks(42, step, block, 64, rate);
                assert!(m.iter().all(|&v| v == 0.0 || v == scale));
                n += m.len();
                kept += m.iter().filter(|&&v| v > 0.0).count();
                pairs += m.windows(2).filter(|w| w[0] > 0.0 && w[1] > 0.0).count();
                sum += m.iter().map(|&v| v as f64).sum::<f64>();
            }
        }
        let p = kept as f64 / n as f64;
        let se = (keep * (1.0 - keep) / n as f64).sqrt();
        assert!((p - keep).abs() < 5.0 * se, "kept fraction {p}");
        // Neighbouring samples are independent: both kept with probability 0.49.
        let n_pairs = (n / 64 * 63) as f64;
        let pp = pairs as f64 / n_pairs;
        let se_pp = (0.49 * 0.51 / n_pairs).sqrt();
        assert!((pp - 0.49).abs() < 5.0 * se_pp, "both kept {pp}");
        // The rescaling makes the branch unbiased: the mean scale is 1 within 5 s.e.
        // (scale/keep·se of the kept fraction).
        let mean = sum / n as f64;
        assert!((mean - 1.0).abs() < 5.0 * se / keep, "mean scale {mean}");
    }

    #[test]
    fn scale_rows_matches_finite_differences() {
        // scale_rows is linear and diagonal, so it is its own backward: the gradient of
        // L = Σ r ∘ scale_rows(x) is scale_rows(r).
        let (batch, per) = (4, 3);
        let scales = [0.0f32, 1.0, 1.25, 2.0];
        let mut rng = fd::Rng(0xd9);
        let x = rng.vec(batch * per, 1.0);
        let r = rng.vec(batch * per, 1.0);
        let mut y = x.clone();
        scale_rows(&mut y, per, &scales);
        for i in 0..batch * per {
            assert_eq!(y[i], x[i] * scales[i / per]);
        }
        let want = fd::grad(&x, 1e-3, |p| {
            p.iter()
                .enumerate()
                .map(|(i, v)| r[i] as f64 * v * scales[i / per] as f64)
                .sum()
        });
        let mut got = r.clone();
        scale_rows(&mut got, per, &scales);
        let err = fd::rel_err(&got, &want);
        // One f32 multiplication by a power of two or 1.25 (exact or 1 rounding, 6e-8) against
        // an FD that is exact for a linear functional up to f64 rounding.
        assert!(err < 1e-7, "scale_rows: {err:e}");
        // A dropped sample is zeroed even when the branch overflowed.
        let mut inf = vec![f32::INFINITY; 2];
        scale_rows(&mut inf, 1, &[0.0, 1.0]);
        assert_eq!(inf[0], 0.0);
        scale_rows(&mut [], 0, &[]);
    }
}
