//! Batched Cholesky factorisation, solves, log-determinants and inverses of small symmetric
//! positive-definite matrices in f64 (63×63 covariances of the exact NLL, SPEC §15b.2). The CPU
//! reference for the CUDA twin: matrices are row-major `n×n`, batches are contiguous, and the
//! factor `L` is lower-triangular with zeros above the diagonal.

use crate::error::{Error, Result};
use crate::ops::covariance::tril_inverse;
use crate::ops::math::dot_f64;
use rayon::prelude::*;

/// Cholesky–Banachiewicz: `l` ← the lower factor of `a` (`a = l·lᵀ`), reading only the lower
/// triangle of `a`. On a pivot that is not > 0 (not positive definite, or NaN) returns `Err(k)`
/// with its index; `l` is then partially written.
pub fn cholesky_into_f64(a: &[f64], n: usize, l: &mut [f64]) -> std::result::Result<(), usize> {
    for i in 0..n {
        for j in 0..=i {
            let acc = a[i * n + j] - dot_f64(&l[i * n..i * n + j], &l[j * n..j * n + j]);
            if i == j {
                // Not positive, or NaN.
                if acc.is_nan() || acc <= 0.0 {
                    return Err(i);
                }
                l[i * n + i] = acc.sqrt();
            } else {
                l[i * n + j] = acc / l[j * n + j];
            }
        }
        for j in i + 1..n {
            l[i * n + j] = 0.0;
        }
    }
    Ok(())
}

fn check_square(what: &str, a: &[f64], n: usize) -> Result<usize> {
    let nn = n * n;
    if nn == 0 || a.len() % nn != 0 {
        return Err(Error::Input(format!(
            "{what}: {} values is not a batch of {n}×{n} matrices",
            a.len()
        )));
    }
    Ok(a.len() / nn)
}

fn not_pd(what: &str, batch: usize, pivot: usize) -> Error {
    Error::Input(format!(
        "{what}: matrix {batch} is not positive definite (pivot {pivot} is not > 0)"
    ))
}

/// The lower Cholesky factor of one SPD matrix `a` (`n×n`).
pub fn cholesky_f64(a: &[f64], n: usize) -> Result<Vec<f64>> {
    if check_square("cholesky", a, n)? != 1 {
        return Err(Error::Input(format!(
            "cholesky: expected one {n}×{n} matrix"
        )));
    }
    let mut l = vec![0f64; n * n];
    cholesky_into_f64(a, n, &mut l).map_err(|p| not_pd("cholesky", 0, p))?;
    Ok(l)
}

/// Batched factorisation: `a` `[batch, n, n]` → `l` `[batch, n, n]` (in parallel over the batch).
pub fn cholesky_batched_f64(a: &[f64], n: usize, l: &mut [f64]) -> Result<()> {
    check_square("cholesky_batched", a, n)?;
    if l.len() != a.len() {
        return Err(Error::Input(format!(
            "cholesky_batched: output holds {} values, input {}",
            l.len(),
            a.len()
        )));
    }
    l.par_chunks_mut(n * n)
        .zip(a.par_chunks(n * n))
        .enumerate()
        .try_for_each(|(b, (lb, ab))| {
            cholesky_into_f64(ab, n, lb).map_err(|p| not_pd("cholesky_batched", b, p))
        })
}

/// Solves `l·lᵀ·x = rhs` in place (forward substitution with `l`, back substitution with `lᵀ`).
fn solve_one(l: &[f64], n: usize, x: &mut [f64]) {
    for i in 0..n {
        let mut acc = x[i];
        for k in 0..i {
            acc -= l[i * n + k] * x[k];
        }
        x[i] = acc / l[i * n + i];
    }
    for i in (0..n).rev() {
        let mut acc = x[i];
        for k in i + 1..n {
            acc -= l[k * n + i] * x[k];
        }
        x[i] = acc / l[i * n + i];
    }
}

/// `x = (l·lᵀ)⁻¹·rhs` in place, for one factor `l` (`n×n`) and `rhs` (`n`).
pub fn cholesky_solve_f64(l: &[f64], n: usize, rhs: &mut [f64]) -> Result<()> {
    cholesky_solve_batched_f64(l, n, rhs)
}

/// Batched solve: `l` `[batch, n, n]`, `rhs` `[batch, n]` (one right-hand side per factor).
pub fn cholesky_solve_batched_f64(l: &[f64], n: usize, rhs: &mut [f64]) -> Result<()> {
    let batch = check_square("cholesky_solve", l, n)?;
    if rhs.len() != batch * n {
        return Err(Error::Input(format!(
            "cholesky_solve: {} right-hand-side values for {batch} factors of size {n}",
            rhs.len()
        )));
    }
    rhs.par_chunks_mut(n)
        .zip(l.par_chunks(n * n))
        .for_each(|(x, lb)| solve_one(lb, n, x));
    Ok(())
}

/// `log det(l·lᵀ) = 2·Σ log l_ii`.
pub fn cholesky_logdet_f64(l: &[f64], n: usize) -> f64 {
    2.0 * (0..n).map(|i| l[i * n + i].ln()).sum::<f64>()
}

/// `(l·lᵀ)⁻¹ = l⁻ᵀ·l⁻¹` (full symmetric `n×n`), through the triangular inverse `m = l⁻¹`:
/// `P_ab = Σ_{k ≥ max(a,b)} m_ka·m_kb`.
pub fn cholesky_inverse_f64(l: &[f64], n: usize) -> Vec<f64> {
    let m = tril_inverse(l, n);
    // P = MᵀM: with Mᵀ's rows, entry (a, b) is a dot product of two contiguous runs.
    let mut mt = vec![0f64; n * n];
    for k in 0..n {
        for a in 0..=k {
            mt[a * n + k] = m[k * n + a];
        }
    }
    let mut p = vec![0f64; n * n];
    for a in 0..n {
        for b in 0..=a {
            let acc = dot_f64(&mt[a * n + a..(a + 1) * n], &mt[b * n + a..(b + 1) * n]);
            p[a * n + b] = acc;
            p[b * n + a] = acc;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::super::gradcheck::rand_vec;
    use super::*;

    /// A random SPD matrix `B·Bᵀ + 0.1·I`, `B ~ U(−1, 1)` (condition number ≈ 10³ at n = 63).
    fn spd(seed: u64, n: usize) -> Vec<f64> {
        let b = rand_vec(seed, n * n, -1.0, 1.0);
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| b[i * n + k] * b[j * n + k]).sum::<f64>()
                    + if i == j { 0.1 } else { 0.0 };
            }
        }
        a
    }

    #[test]
    fn factor_solve_logdet_inverse() {
        let n = 63;
        let a = spd(11, n);
        let l = cholesky_f64(&a, n).unwrap();
        // l·lᵀ = a.
        let mut err = 0f64;
        for i in 0..n {
            for j in 0..n {
                let v: f64 = (0..n).map(|k| l[i * n + k] * l[j * n + k]).sum();
                err = err.max((v - a[i * n + j]).abs());
                if j > i {
                    assert_eq!(l[i * n + j], 0.0);
                }
            }
        }
        let amax = a.iter().fold(0f64, |m, v| m.max(v.abs()));
        // Backward-stable factorisation: residual ~ n·ε·‖a‖ ≈ 1e-14 relative.
        assert!(err / amax < 1e-12, "reconstruction {}", err / amax);
        // Solve: a·x = rhs.
        let rhs = rand_vec(12, n, -1.0, 1.0);
        let mut x = rhs.clone();
        cholesky_solve_f64(&l, n, &mut x).unwrap();
        let res = (0..n)
            .map(|i| ((0..n).map(|k| a[i * n + k] * x[k]).sum::<f64>() - rhs[i]).abs())
            .fold(0f64, f64::max);
        assert!(res < 1e-10, "solve residual {res}");
        // Inverse: a·P = I.
        let p = cholesky_inverse_f64(&l, n);
        let mut ierr = 0f64;
        for i in 0..n {
            for j in 0..n {
                let v: f64 = (0..n).map(|k| a[i * n + k] * p[k * n + j]).sum();
                ierr = ierr.max((v - if i == j { 1.0 } else { 0.0 }).abs());
            }
        }
        // cond(a) ≈ 10³ here: the residual of the inverse stays ~cond·n·ε.
        assert!(ierr < 1e-9, "inverse residual {ierr}");
        // Hand-computed 2×2: [[4, 2], [2, 5]] = [[2,0],[1,2]]·[[2,1],[0,2]], det 16.
        let l2 = cholesky_f64(&[4.0, 2.0, 2.0, 5.0], 2).unwrap();
        assert_eq!(l2, vec![2.0, 0.0, 1.0, 2.0]);
        assert!((cholesky_logdet_f64(&l2, 2) - 16f64.ln()).abs() < 1e-15);
        let mut x2 = [2.0, 7.0];
        cholesky_solve_f64(&l2, 2, &mut x2).unwrap();
        assert!(
            (x2[0] + 0.25).abs() < 1e-15 && (x2[1] - 1.5).abs() < 1e-15,
            "{x2:?}"
        );
    }

    #[test]
    fn batched_equals_single_and_failures_are_errors() {
        let n = 7;
        let mut a = spd(13, n);
        a.extend(spd(14, n));
        let mut l = vec![0f64; 2 * n * n];
        cholesky_batched_f64(&a, n, &mut l).unwrap();
        assert_eq!(&l[n * n..], &cholesky_f64(&a[n * n..], n).unwrap()[..]);
        let mut rhs = rand_vec(15, 2 * n, -1.0, 1.0);
        let mut one = rhs[n..].to_vec();
        cholesky_solve_batched_f64(&l, n, &mut rhs).unwrap();
        cholesky_solve_f64(&l[n * n..], n, &mut one).unwrap();
        assert_eq!(&rhs[n..], &one[..]);

        // Indefinite, NaN, wrong sizes: errors, no panics.
        assert!(cholesky_f64(&[1.0, 2.0, 2.0, 1.0], 2).is_err());
        assert!(cholesky_f64(&[f64::NAN, 0.0, 0.0, 1.0], 2).is_err());
        assert!(cholesky_f64(&[1.0, 0.0, 0.0], 2).is_err());
        a[n * n + 3 * n + 3] = -100.0;
        let e = cholesky_batched_f64(&a, n, &mut l).unwrap_err().to_string();
        assert!(e.contains("matrix 1"), "{e}");
        assert!(cholesky_solve_batched_f64(&l, n, &mut [0.0; 3]).is_err());
    }
}
