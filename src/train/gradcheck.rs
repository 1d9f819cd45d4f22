//! Finite-difference checks for the hand-written backward passes (tests only).
//!
//! Central differences in f64: `(f(x + h·e_i) − f(x − h·e_i)) / 2h`. Truncation error is
//! O(h²·|f'''|) and rounding O(ε·|f|/h); with h = 1e-5 and the problems' |f| ≲ 10³ both stay
//! below ~1e-8 absolute, far under the tolerances the tests state.

use super::rng::Philox;

/// Deterministic test values in [lo, hi), from the counter-based generator.
pub fn rand_vec(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    let p = Philox::new(seed, 200, 0, 0);
    (0..n as u64)
        .map(|i| lo + (hi - lo) * p.uniform_f64(i))
        .collect()
}

/// Standard normals in f64 (from the f32 generator), for test noise.
pub fn randn_vec(seed: u64, n: usize) -> Vec<f64> {
    let p = Philox::new(seed, 201, 0, 0);
    (0..n as u64).map(|i| p.normal(i) as f64).collect()
}

/// Compares `analytic` (∂f/∂x at `x`) with central differences at the indices `idx` (all when
/// `None`). Returns `max|analytic − fd| / max|fd|` over the checked entries.
pub fn check(
    f: &mut dyn FnMut(&[f64]) -> f64,
    x: &[f64],
    analytic: &[f64],
    idx: Option<&[usize]>,
    h: f64,
) -> f64 {
    let all: Vec<usize> = (0..x.len()).collect();
    let idx = idx.unwrap_or(&all);
    let mut xp = x.to_vec();
    let (mut num, mut den) = (0f64, 0f64);
    for &i in idx {
        xp[i] = x[i] + h;
        let fp = f(&xp);
        xp[i] = x[i] - h;
        let fm = f(&xp);
        xp[i] = x[i];
        let fd = (fp - fm) / (2.0 * h);
        num = num.max((analytic[i] - fd).abs());
        den = den.max(fd.abs());
    }
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

/// Every `n / k`-th index of `0..n` (about `k` of them), for spot checks of large tensors.
pub fn spread(n: usize, k: usize) -> Vec<usize> {
    let step = (n / k.max(1)).max(1);
    (0..n).step_by(step).collect()
}
