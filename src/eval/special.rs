//! Special functions for the calibration: log-gamma, the regularised lower incomplete gamma
//! function and the chi-square quantile (`scipy.stats.chi2.ppf`), in f64.

const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;

/// `ln Γ(x)` for `x > 0`: Stirling's series with 7 correction terms at `z ≥ 15`, reached from
/// smaller `x` by the recurrence `Γ(x) = Γ(x + n)/(x(x+1)…(x+n−1))`. Absolute error ≈ 1e-14.
pub fn ln_gamma(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    let mut z = x;
    let mut shift = 0.0;
    let mut prod = 1.0;
    while z < 15.0 {
        prod *= z;
        if prod > 1e280 {
            shift += prod.ln();
            prod = 1.0;
        }
        z += 1.0;
    }
    shift += prod.ln();
    let zi = 1.0 / z;
    let zi2 = zi * zi;
    let series = zi
        * (1.0 / 12.0
            + zi2
                * (-1.0 / 360.0
                    + zi2
                        * (1.0 / 1260.0
                            + zi2
                                * (-1.0 / 1680.0
                                    + zi2
                                        * (1.0 / 1188.0
                                            + zi2 * (-691.0 / 360_360.0 + zi2 * (1.0 / 156.0)))))));
    (z - 0.5) * z.ln() - z + LN_SQRT_2PI + series - shift
}

/// The regularised lower incomplete gamma function `P(a, x) = γ(a, x)/Γ(a)` for `a > 0`:
/// its power series for `x < a + 1`, else `1 − Q` with `Q` from the continued fraction
/// (modified Lentz).
pub fn gamma_p(a: f64, x: f64) -> f64 {
    if a.is_nan() || a <= 0.0 || x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 0.0;
    }
    if x.is_infinite() {
        return 1.0;
    }
    let log_pref = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        let mut term = 1.0 / a;
        let mut sum = term;
        let mut n = 1.0;
        while n < 10_000.0 {
            term *= x / (a + n);
            sum += term;
            if term < sum * 1e-17 {
                break;
            }
            n += 1.0;
        }
        (sum * log_pref.exp()).min(1.0)
    } else {
        // Q(a, x) = e^{-x} x^a / Γ(a) · 1/(x + 1 − a − 1·(1−a)/(x + 3 − a − 2·(2−a)/(x + 5 − a − …)))
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-17 {
                break;
            }
        }
        (1.0 - log_pref.exp() * h).max(0.0)
    }
}

/// `scipy.stats.chi2.ppf(q, k)`: the `x` with `P(k/2, x/2) = q`, by Newton steps on
/// `P(a, ·) − q` kept inside a bisection bracket. `q = 0` → 0, `q = 1` → ∞, NaN outside
/// [0, 1] or for `k ≤ 0`.
pub fn chi2_ppf(q: f64, k: f64) -> f64 {
    if !(0.0..=1.0).contains(&q) || k.is_nan() || k <= 0.0 {
        return f64::NAN;
    }
    if q == 0.0 {
        return 0.0;
    }
    if q == 1.0 {
        return f64::INFINITY;
    }
    let a = k / 2.0;
    let lga = ln_gamma(a);
    let (mut lo, mut hi) = (0.0f64, a.max(1.0));
    while gamma_p(a, hi) < q {
        lo = hi;
        hi *= 2.0;
    }
    let mut x = a.clamp(lo, hi);
    if x <= lo || x >= hi {
        x = 0.5 * (lo + hi);
    }
    for _ in 0..500 {
        let f = gamma_p(a, x) - q;
        if f == 0.0 {
            break;
        }
        if f < 0.0 {
            lo = x;
        } else {
            hi = x;
        }
        let pdf = ((a - 1.0) * x.ln() - x - lga).exp();
        let mut next = x - f / pdf;
        if !(next > lo && next < hi) {
            next = 0.5 * (lo + hi);
        }
        let done =
            (next - x).abs() <= 1e-16 * x.abs().max(f64::MIN_POSITIVE) || hi - lo <= 1e-16 * hi;
        x = next;
        if done {
            break;
        }
    }
    2.0 * x
}
