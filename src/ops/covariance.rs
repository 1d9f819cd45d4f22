//! Covariance of the 63-vector of 3D joints from an uncertainty head's readout (SPEC §6), and
//! the per-joint uncertainty `u_j = tr(Σ_jj)` (the 3×3 diagonal block of joint j).
//!
//! The CPU twins assemble Σ in f64 and round once to f32; for `full` the covariance is
//! `Σ = L⁻ᵀ·L⁻¹` through a triangular inverse of the precision factor, never a general inverse.

use rayon::prelude::*;

/// Dimension of the modelled vector: 21 joints × 3.
pub const DIM: usize = 63;
/// Strictly-lower entries of L for `full`: 63·62/2.
pub const TRIL: usize = DIM * (DIM - 1) / 2;

/// How Σ is parameterised by the readout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CovParam {
    /// `raw = s` (63 log-variances): `Σ = diag(e^s)` (`diag`, `ours_wo_linear`).
    Diag,
    /// `raw = s`, with the model's `W` (63×63): `Σ = W·diag(e^s)·Wᵀ` (`ours`).
    LowRank,
    /// `raw = (d, o)`: 63 log-diagonals then the 1953 strictly-lower entries of the precision
    /// Cholesky factor `L` (row-major `tril_indices(63, −1)`), `L_ii = e^{−d_i}`; `Σ = (L·Lᵀ)⁻¹`.
    Full,
}

impl CovParam {
    /// Values per sample in the readout.
    pub fn raw_len(self) -> usize {
        match self {
            CovParam::Diag | CovParam::LowRank => DIM,
            CovParam::Full => DIM + TRIL,
        }
    }
}

/// `L⁻¹` of a lower-triangular `l` (row-major `n×n`, f64), by forward substitution column by
/// column. The result is lower-triangular.
pub fn tril_inverse(l: &[f64], n: usize) -> Vec<f64> {
    let mut m = vec![0f64; n * n];
    for j in 0..n {
        m[j * n + j] = 1.0 / l[j * n + j];
        for i in j + 1..n {
            let mut acc = 0f64;
            for k in j..i {
                acc += l[i * n + k] * m[k * n + j];
            }
            m[i * n + j] = -acc / l[i * n + i];
        }
    }
    m
}

/// The precision Cholesky factor `L` (f64, row-major 63×63) of a `full` readout.
pub fn full_precision_factor(raw: &[f32]) -> Vec<f64> {
    let (d, o) = raw.split_at(DIM);
    let mut l = vec![0f64; DIM * DIM];
    let mut k = 0;
    for r in 0..DIM {
        for c in 0..r {
            l[r * DIM + c] = o[k] as f64;
            k += 1;
        }
        l[r * DIM + r] = (-(d[r] as f64)).exp();
    }
    l
}

/// Σ (f64, 63×63) of one sample.
fn covariance_one(param: CovParam, raw: &[f32], w: Option<&[f32]>) -> Vec<f64> {
    let mut sigma = vec![0f64; DIM * DIM];
    match param {
        CovParam::Diag => {
            for i in 0..DIM {
                sigma[i * DIM + i] = (raw[i] as f64).exp();
            }
        }
        CovParam::LowRank => {
            let w = w.unwrap_or(&[]);
            let e: Vec<f64> = raw.iter().map(|&s| (s as f64).exp()).collect();
            for j in 0..DIM {
                for k in 0..=j {
                    let mut acc = 0f64;
                    for d in 0..DIM {
                        acc += w[j * DIM + d] as f64 * e[d] * w[k * DIM + d] as f64;
                    }
                    sigma[j * DIM + k] = acc;
                    sigma[k * DIM + j] = acc;
                }
            }
        }
        CovParam::Full => {
            let m = tril_inverse(&full_precision_factor(raw), DIM);
            // Σ = Mᵀ·M with M = L⁻¹ lower-triangular: Σ_ab = Σ_{k ≥ max(a,b)} M_ka·M_kb.
            for a in 0..DIM {
                for b2 in 0..=a {
                    let mut acc = 0f64;
                    for k in a..DIM {
                        acc += m[k * DIM + a] * m[k * DIM + b2];
                    }
                    sigma[a * DIM + b2] = acc;
                    sigma[b2 * DIM + a] = acc;
                }
            }
        }
    }
    sigma
}

/// CPU twin of the covariance assembly: `raw` `[b, param.raw_len()]`, `w` `[63, 63]` for
/// `LowRank` → `cov` `[b, 63, 63]` and `joint_unc` `[b, 21]`.
pub fn covariance_cpu(
    param: CovParam,
    raw: &[f32],
    w: Option<&[f32]>,
    cov: &mut [f32],
    joint_unc: &mut [f32],
) {
    let rl = param.raw_len();
    cov.par_chunks_mut(DIM * DIM)
        .zip(joint_unc.par_chunks_mut(DIM / 3))
        .zip(raw.par_chunks(rl))
        .for_each(|((c, u), r)| {
            let sigma = covariance_one(param, r, w);
            for (dst, &s) in c.iter_mut().zip(&sigma) {
                *dst = s as f32;
            }
            for (j, uj) in u.iter_mut().enumerate() {
                *uj = (0..3)
                    .map(|c3| sigma[(3 * j + c3) * DIM + 3 * j + c3])
                    .sum::<f64>() as f32;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_covariance_inverts_the_precision() {
        let raw: Vec<f32> = (0..DIM + TRIL)
            .map(|i| ((i * 7919 % 101) as f32 / 101.0 - 0.5) * 0.2)
            .collect();
        let l = full_precision_factor(&raw);
        let sigma = covariance_one(CovParam::Full, &raw, None);
        // (L·Lᵀ)·Σ = I.
        for i in 0..DIM {
            for j in 0..DIM {
                let mut acc = 0f64;
                for k in 0..DIM {
                    let lam: f64 = (0..DIM).map(|t| l[i * DIM + t] * l[k * DIM + t]).sum();
                    acc += lam * sigma[k * DIM + j];
                }
                assert!(
                    (acc - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9,
                    "({i},{j}) = {acc}"
                );
            }
        }
    }

    #[test]
    fn low_rank_with_identity_is_diag() {
        let s: Vec<f32> = (0..DIM).map(|i| i as f32 * 0.01 - 0.3).collect();
        let mut w = vec![0f32; DIM * DIM];
        for i in 0..DIM {
            w[i * DIM + i] = 1.0;
        }
        let (mut c1, mut u1, mut c2, mut u2) = (
            vec![0f32; DIM * DIM],
            vec![0f32; 21],
            vec![0f32; DIM * DIM],
            vec![0f32; 21],
        );
        covariance_cpu(CovParam::LowRank, &s, Some(&w), &mut c1, &mut u1);
        covariance_cpu(CovParam::Diag, &s, None, &mut c2, &mut u2);
        assert_eq!(c1, c2);
        assert_eq!(u1, u2);
    }
}
