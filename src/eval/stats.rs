//! The statistics behind the reference's uncertainty scores (SPEC §9.3) and the FreiHAND AUC
//! (§9.4), each matching the NumPy / SciPy function named in its doc to ≤ 1e-9 relative
//! (summation orders differ, so not bit for bit).

/// `scipy.stats.pearsonr(x, y).statistic`: centred, then `Σ x̃ỹ / √(Σ x̃² · Σ ỹ²)`, clipped to
/// [−1, 1]. NaN when either input is constant or shorter than 2 (SciPy warns and returns NaN).
/// Constant means all values equal, tested as SciPy does (`(x == x[0]).all()`) before any
/// arithmetic: the rounded mean of equal values need not equal them, which would leave a tiny
/// non-zero spread and a meaningless number instead of NaN.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 || is_constant(&x[..n]) || is_constant(&y[..n]) {
        return f64::NAN;
    }
    let mx = x[..n].iter().sum::<f64>() / n as f64;
    let my = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x[..n].iter().zip(&y[..n]) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

/// Whether every value equals the first (true for an empty slice).
pub fn is_constant(v: &[f64]) -> bool {
    v.iter().all(|&a| a == v[0])
}

/// `numpy.percentile(v, q)` with the default `linear` method: the sorted values interpolated at
/// the virtual index `(n − 1)·q/100`, with NumPy's two-sided `lerp`. `sorted` must be ascending
/// and non-empty.
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let virt = (n as f64 - 1.0) * (q / 100.0);
    let lo = virt.floor().clamp(0.0, (n - 1) as f64);
    let gamma = virt - lo;
    let i = lo as usize;
    let j = (i + 1).min(n - 1);
    let (a, b) = (sorted[i], sorted[j]);
    let diff = b - a;
    if gamma >= 0.5 {
        b - diff * (1.0 - gamma)
    } else {
        a + diff * gamma
    }
}

/// `numpy.percentile(v, [lo, hi])` then `numpy.clip(v, p_lo, p_hi)`.
pub fn clip_to_percentiles(v: &[f64], lo: f64, hi: f64) -> Vec<f64> {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (a, b) = (
        percentile_sorted(&sorted, lo),
        percentile_sorted(&sorted, hi),
    );
    v.iter().map(|&x| x.max(a).min(b)).collect()
}

/// `scipy.integrate.simpson(y, x=x)` (SciPy 1.13.1 = 1.17.1 default rule): an odd number of
/// samples → composite Simpson over all points (the non-uniform-spacing formula); an even number
/// N ≥ 4 → composite Simpson over the first N − 1 points plus Cartwright's correction for the
/// last interval, `α·y[N−1] + β·y[N−2] − η·y[N−3]` with `h0 = x[N−2] − x[N−3]`,
/// `h1 = x[N−1] − x[N−2]`, `α = (2h1² + 3h0h1)/(6(h0+h1))`, `β = (h1² + 3h0h1)/(6h0)`,
/// `η = h1³/(6h0(h0+h1))` (a zero denominator gives 0, as SciPy's `where=`); N = 2 → trapezoid;
/// N ≤ 1 → 0. `x` and `y` have the same length.
pub fn simpson(y: &[f64], x: &[f64]) -> f64 {
    let n = y.len();
    let div0 = |a: f64, b: f64| if b != 0.0 { a / b } else { 0.0 };
    // Composite Simpson over the pairs of intervals starting at 0, 2, … < stop.
    let basic = |stop: usize| -> f64 {
        let mut acc = 0.0;
        let mut i = 0;
        while i < stop {
            let h0 = x[i + 1] - x[i];
            let h1 = x[i + 2] - x[i + 1];
            let hsum = h0 + h1;
            let hprod = h0 * h1;
            let h0divh1 = div0(h0, h1);
            acc += hsum / 6.0
                * (y[i] * (2.0 - div0(1.0, h0divh1))
                    + y[i + 1] * (hsum * div0(hsum, hprod))
                    + y[i + 2] * (2.0 - h0divh1));
            i += 2;
        }
        acc
    };
    if n <= 1 {
        return 0.0;
    }
    if n % 2 == 1 {
        return basic(n - 2);
    }
    if n == 2 {
        return 0.5 * (x[1] - x[0]) * (y[1] + y[0]);
    }
    let mut result = basic(n - 3);
    let h0 = x[n - 2] - x[n - 3];
    let h1 = x[n - 1] - x[n - 2];
    let alpha = div0(2.0 * h1 * h1 + 3.0 * h0 * h1, 6.0 * (h1 + h0));
    let beta = div0(h1 * h1 + 3.0 * h0 * h1, 6.0 * h0);
    let eta = div0(h1 * h1 * h1, 6.0 * h0 * (h0 + h1));
    result += alpha * y[n - 1] + beta * y[n - 2] - eta * y[n - 3];
    result
}

/// `numpy.trapz(y, x)`: `Σ (x[i+1] − x[i])·(y[i+1] + y[i])/2`.
pub fn trapz(y: &[f64], x: &[f64]) -> f64 {
    (0..y.len().saturating_sub(1))
        .map(|i| (x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2.0)
        .sum()
}

/// `numpy.linspace(start, stop, num)` (endpoint included): `start + i·step` with
/// `step = (stop − start)/(num − 1)`, the last value exactly `stop`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = v.last_mut() {
        *last = stop;
    }
    v
}

/// Indices that sort `v` ascending. Ties are broken by index (a stable sort); NumPy's default
/// `argsort` (introsort / SIMD sort) may order equal values differently, so results that depend
/// on the order of ties (see [`sparsification`]) can differ from NumPy's in that case only.
pub fn argsort(v: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]).then(a.cmp(&b)));
    idx
}

/// The reference's sparsification (SPEC §9.3 step 4) on M entries: `errors` E (already ×10),
/// `uncert` U, both flattened joint-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Sparsification {
    /// The retained percentages 2, 4, …, 100.
    pub x: Vec<f64>,
    /// Mean E of the k most certain entries (by U ascending), k = int(M·(p/100)).
    pub curve: Vec<f64>,
    /// Mean E of the k smallest errors.
    pub oracle: Vec<f64>,
    /// AUSC = simpson(curve, x).
    pub ausc: f64,
    /// AUSE = simpson(curve − oracle, x).
    pub ause: f64,
    /// Number of cut points k where the k-th and (k+1)-th most certain entries have equal U but
    /// different E: the curve there depends on how ties are ordered (0 → identical to NumPy's
    /// result up to rounding whatever its sort does).
    pub ambiguous_cuts: usize,
}

/// See [`Sparsification`]. `k` is computed as the reference does, `int(M * (p / 100))` in
/// double precision; a cut with k = 0 has a NaN mean, as NumPy's `mean` of an empty array.
pub fn sparsification(errors: &[f64], uncert: &[f64]) -> Sparsification {
    let m = errors.len().min(uncert.len());
    let (errors, uncert) = (&errors[..m], &uncert[..m]);
    let idx_u = argsort(uncert);
    let mut sorted_e = errors.to_vec();
    sorted_e.sort_by(f64::total_cmp);
    // Prefix sums in sorted order (Neumaier-compensated): the mean of the first k is
    // prefix[k]/k.
    let prefix = |vals: &mut dyn Iterator<Item = f64>| -> Vec<f64> {
        let mut p = Vec::with_capacity(m + 1);
        let (mut acc, mut comp) = (0.0f64, 0.0f64);
        p.push(0.0);
        for v in vals {
            let t = acc + v;
            if acc.abs() >= v.abs() {
                comp += (acc - t) + v;
            } else {
                comp += (v - t) + acc;
            }
            acc = t;
            p.push(acc + comp);
        }
        p
    };
    let pu = prefix(&mut idx_u.iter().map(|&i| errors[i]));
    let po = prefix(&mut sorted_e.iter().copied());
    let mut x = Vec::with_capacity(50);
    let mut curve = Vec::with_capacity(50);
    let mut oracle = Vec::with_capacity(50);
    let mut ambiguous_cuts = 0;
    for p in (2..=100).step_by(2) {
        let k = (m as f64 * (p as f64 / 100.0)) as usize;
        let k = k.min(m);
        x.push(p as f64);
        let mean = |pre: &[f64]| if k == 0 { f64::NAN } else { pre[k] / k as f64 };
        curve.push(mean(&pu));
        oracle.push(mean(&po));
        if k > 0 && k < m && uncert[idx_u[k - 1]] == uncert[idx_u[k]] {
            // The tie group straddles the cut: ambiguous unless all its errors are equal.
            let u = uncert[idx_u[k]];
            let g0 = idx_u[..k]
                .iter()
                .rposition(|&i| uncert[i] != u)
                .map_or(0, |r| r + 1);
            let g1 = idx_u[k..]
                .iter()
                .position(|&i| uncert[i] != u)
                .map_or(m, |r| k + r);
            let e0 = errors[idx_u[g0]];
            if idx_u[g0..g1].iter().any(|&i| errors[i] != e0) {
                ambiguous_cuts += 1;
            }
        }
    }
    let diff: Vec<f64> = curve.iter().zip(&oracle).map(|(c, o)| c - o).collect();
    Sparsification {
        ausc: simpson(&curve, &x),
        ause: simpson(&diff, &x),
        x,
        curve,
        oracle,
        ambiguous_cuts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_of_a_constant_is_nan_even_when_its_mean_rounds() {
        // 0.1 summed ten times is 0.9999999999999999: the mean is not 0.1, and without the
        // explicit test the spread would be a rounding residue instead of zero.
        let x = vec![0.1; 10];
        assert_ne!(x.iter().sum::<f64>() / 10.0, 0.1);
        let y: Vec<f64> = (0..10).map(|i| i as f64).collect();
        assert!(pearson(&x, &y).is_nan());
        assert!(pearson(&y, &x).is_nan());
        assert!(pearson(&[0.0; 5], &y[..5]).is_nan());
        assert!((pearson(&y, &y) - 1.0).abs() < 1e-15);
        assert!(is_constant(&[]) && is_constant(&[3.0, 3.0]) && !is_constant(&[3.0, 3.5]));
    }
}
