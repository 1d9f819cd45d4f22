//! Calibration of the predicted covariances (handcov's addition, SPEC §15b.3): how well the
//! ground truth fits `N(pred, Σ)` per sample, with Σ from the covariance side file.
//!
//! For each sample and each variant, with residual `d` (k entries) and covariance `Σ_v`:
//! `m = dᵀ Σ_v⁻¹ d` (squared Mahalanobis distance) and `NLL = ½(m + log det Σ_v + k·log 2π)`,
//! both through an f64 Cholesky factorisation of the symmetrised matrix `(Σ + Σᵀ)/2`;
//! coverage of the q-ellipsoid = the fraction of samples with `m ≤ chi2.ppf(q, k)`,
//! q = 0.5, 0.9, 0.95. A well-calibrated Σ gives coverage ≈ q.
//!
//! Variants (joint index `3·j + c`, in the xyz file's joint order):
//! * `unaligned` (k = 63): `d = gt − pred`, Σ as stored (the reference's frame: includes the
//!   hand-to-camera offset, SPEC §15.3);
//! * `root_relative` (k = 60): `d_j = (gt_j − gt_0) − (pred_j − pred_0)` for j = 1..20,
//!   `Σ_rel = A Σ Aᵀ` with `A` the 60 × 63 map `x ↦ (x_j − x_0)_{j ≥ 1}`;
//! * `procrustes_aligned` (k = 63): `d = gt − align_w_scale(gt, pred)`; the alignment maps each
//!   predicted joint by `x ↦ c·R·x + const` (`c = s·s1/s2`), so `Σ_pa = (I ⊗ cR) Σ (I ⊗ cR)ᵀ`,
//!   block (j, k) = `c²·R Σ_jk Rᵀ`. The transform is treated as fixed (it was estimated from the
//!   prediction itself; its own variability is ignored).
//!
//! Samples whose matrix is not positive definite (a Cholesky pivot ≤ 0) are counted and left out
//! of the NLL and the coverage. So are, counted apart, the samples whose Procrustes alignment is
//! degenerate (scale `c = 0`, a prediction whose joints all sit at one point, such as all zeros):
//! their aligned covariance is the zero matrix whatever Σ is.

use crate::error::{Error, Result};
use crate::eval::files::{Covariance, PointSets, DIM, NUM_JOINTS};
use crate::eval::linalg::{align_w_scale, cholesky, log_det_from_cholesky, mahalanobis_sq, Mat3};
use crate::eval::special::chi2_ppf;
use rayon::prelude::*;

/// The coverage levels.
pub const LEVELS: [f64; 3] = [0.5, 0.9, 0.95];

/// One variant's summary.
#[derive(Clone, Debug, PartialEq)]
pub struct VariantCalibration {
    /// Dimension of the residual.
    pub k: usize,
    /// Samples with a positive definite matrix (the ones averaged).
    pub n_used: usize,
    /// Samples left out because their matrix is not positive definite.
    pub n_not_pd: usize,
    /// Samples left out because their alignment is degenerate (Procrustes scale 0, so the
    /// aligned covariance is 0); only the Procrustes-aligned variant has any.
    pub n_degenerate: usize,
    /// Mean NLL over the used samples (NaN if none).
    pub nll: f64,
    /// Mean squared Mahalanobis distance (k for a calibrated Gaussian).
    pub mean_mahalanobis_sq: f64,
    /// Coverage at [`LEVELS`].
    pub coverage: [f64; 3],
    /// `chi2.ppf(q, k)` at [`LEVELS`].
    pub chi2_thresholds: [f64; 3],
}

/// The three variants.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    pub unaligned: VariantCalibration,
    pub root_relative: VariantCalibration,
    pub procrustes_aligned: VariantCalibration,
}

/// One sample's outcome in one variant.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Term {
    /// `(m, log det)`.
    Used(f64, f64),
    NotPd,
    /// Procrustes scale 0: the aligned covariance is 0.
    Degenerate,
}

/// `(m, log det)` of one residual, or [`Term::NotPd`] when `sigma` (k × k, overwritten) is not
/// PD.
fn gaussian_terms(sigma: &mut [f64], k: usize, d: &[f64]) -> Term {
    if !cholesky(sigma, k) {
        return Term::NotPd;
    }
    Term::Used(mahalanobis_sq(sigma, k, d), log_det_from_cholesky(sigma, k))
}

fn symmetrised(s: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; DIM * DIM];
    for i in 0..DIM {
        for j in 0..DIM {
            out[i * DIM + j] = 0.5 * (s[i * DIM + j] + s[j * DIM + i]);
        }
    }
    out
}

/// `A Σ Aᵀ` for the root-relative map (60 × 60).
fn root_relative_cov(s: &[f64]) -> Vec<f64> {
    const K: usize = DIM - 3;
    let mut out = vec![0.0; K * K];
    for a in 0..K {
        let (ja, ca) = (a / 3 + 1, a % 3);
        for b in 0..K {
            let (jb, cb) = (b / 3 + 1, b % 3);
            let at = |j: usize, c: usize, k: usize, d: usize| s[(3 * j + c) * DIM + 3 * k + d];
            out[a * K + b] =
                at(ja, ca, jb, cb) - at(ja, ca, 0, cb) - at(0, ca, jb, cb) + at(0, ca, 0, cb);
        }
    }
    out
}

/// `(I ⊗ cR) Σ (I ⊗ cR)ᵀ`.
fn rotated_cov(s: &[f64], r: &Mat3, c: f64) -> Vec<f64> {
    let mut out = vec![0.0; DIM * DIM];
    let c2 = c * c;
    for j in 0..NUM_JOINTS {
        for k in 0..NUM_JOINTS {
            let block = |a: usize, b: usize| s[(3 * j + a) * DIM + 3 * k + b];
            // R · B · Rᵀ
            let mut rb = [[0.0; 3]; 3];
            for (a, row) in rb.iter_mut().enumerate() {
                for (b, v) in row.iter_mut().enumerate() {
                    *v = (0..3).map(|t| r[a][t] * block(t, b)).sum();
                }
            }
            for a in 0..3 {
                for b in 0..3 {
                    let v: f64 = (0..3).map(|t| rb[a][t] * r[b][t]).sum();
                    out[(3 * j + a) * DIM + 3 * k + b] = c2 * v;
                }
            }
        }
    }
    out
}

type Terms = [Term; 3];

fn sample_terms(gt: &[[f64; 3]], pred: &[[f64; 3]], cov: &[f64]) -> Terms {
    let sym = symmetrised(cov);
    // Unaligned.
    let d: Vec<f64> = gt
        .iter()
        .zip(pred)
        .flat_map(|(g, p)| [g[0] - p[0], g[1] - p[1], g[2] - p[2]])
        .collect();
    let mut s = sym.clone();
    let unaligned = gaussian_terms(&mut s, DIM, &d);
    // Root-relative.
    let d_rel: Vec<f64> = (1..NUM_JOINTS)
        .flat_map(|j| (0..3).map(move |c| (j, c)))
        .map(|(j, c)| (gt[j][c] - gt[0][c]) - (pred[j][c] - pred[0][c]))
        .collect();
    let mut s_rel = root_relative_cov(&sym);
    let root = gaussian_terms(&mut s_rel, DIM - 3, &d_rel);
    // Procrustes-aligned.
    let (aligned, sim) = align_w_scale(gt, pred);
    let d_pa: Vec<f64> = gt
        .iter()
        .zip(&aligned)
        .flat_map(|(g, p)| [g[0] - p[0], g[1] - p[1], g[2] - p[2]])
        .collect();
    let c = sim.linear_scale();
    let pa = if c > 0.0 && c.is_finite() {
        let mut s_pa = rotated_cov(&sym, &sim.r, c);
        gaussian_terms(&mut s_pa, DIM, &d_pa)
    } else {
        Term::Degenerate
    };
    [unaligned, root, pa]
}

fn summarise(terms: &[Terms], v: usize, k: usize) -> VariantCalibration {
    let thresholds = LEVELS.map(|q| chi2_ppf(q, k as f64));
    let used: Vec<(f64, f64)> = terms
        .iter()
        .filter_map(|t| match t[v] {
            Term::Used(m, ld) => Some((m, ld)),
            _ => None,
        })
        .collect();
    let n_degenerate = terms
        .iter()
        .filter(|t| matches!(t[v], Term::Degenerate))
        .count();
    let n_used = used.len();
    let ln2pi = (2.0 * std::f64::consts::PI).ln();
    let mean = |f: &dyn Fn(&(f64, f64)) -> f64| {
        if n_used == 0 {
            f64::NAN
        } else {
            used.iter().map(f).sum::<f64>() / n_used as f64
        }
    };
    let nll = mean(&|&(m, ld)| 0.5 * (m + ld + k as f64 * ln2pi));
    let mean_m = mean(&|&(m, _)| m);
    let coverage = thresholds.map(|t| mean(&|&(m, _)| if m <= t { 1.0 } else { 0.0 }));
    VariantCalibration {
        k,
        n_used,
        n_not_pd: terms.len() - n_used - n_degenerate,
        n_degenerate,
        nll,
        mean_mahalanobis_sq: mean_m,
        coverage,
        chi2_thresholds: thresholds,
    }
}

/// The calibration of `cov` against the ground truth `gt` for the predictions `pred` (joints;
/// all three with the same N, checked).
pub fn calibration(pred: &PointSets, gt: &PointSets, cov: &Covariance) -> Result<Calibration> {
    if pred.n() != gt.n() || cov.n() != gt.n() {
        return Err(Error::Input(format!(
            "sample counts differ: predictions {}, GT {}, covariance {}",
            pred.n(),
            gt.n(),
            cov.n()
        )));
    }
    let terms: Vec<Terms> = (0..gt.n())
        .into_par_iter()
        .map(|i| sample_terms(gt.sample(i), pred.sample(i), cov.sample(i)))
        .collect();
    Ok(Calibration {
        unaligned: summarise(&terms, 0, DIM),
        root_relative: summarise(&terms, 1, DIM - 3),
        procrustes_aligned: summarise(&terms, 2, DIM),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_procrustes_scale_is_degenerate_not_indefinite() {
        // Three samples with a positive definite Σ = 0.01·I; sample 1 predicts every joint at
        // the origin, so its alignment has c = 0 and the aligned Σ is the zero matrix.
        let n = 3;
        let gt: Vec<f64> = (0..n * DIM)
            .map(|k| ((k * 7919) % 101) as f64 * 1e-3)
            .collect();
        let mut pred: Vec<f64> = gt.iter().map(|v| v * 0.9 + 1e-3).collect();
        pred[DIM..2 * DIM].fill(0.0);
        let mut cov = vec![0.0; n * DIM * DIM];
        for i in 0..n {
            for a in 0..DIM {
                cov[i * DIM * DIM + a * DIM + a] = 0.01;
            }
        }
        let gt = PointSets::new(n, NUM_JOINTS, gt).unwrap();
        let pred = PointSets::new(n, NUM_JOINTS, pred).unwrap();
        let cov = Covariance::new(n, cov, None).unwrap();
        let c = calibration(&pred, &gt, &cov).unwrap();
        let pa = &c.procrustes_aligned;
        assert_eq!((pa.n_used, pa.n_not_pd, pa.n_degenerate), (2, 0, 1));
        for v in [&c.unaligned, &c.root_relative] {
            assert_eq!((v.n_used, v.n_not_pd, v.n_degenerate), (3, 0, 0));
        }
        assert!(pa.nll.is_finite());
    }
}
