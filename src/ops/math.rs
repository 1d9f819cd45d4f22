//! Scalar math of the CPU twins written so that loops over it vectorise: `exp`, `erfc`, GELU,
//! and `map_inplace`, which compiles a slice loop for AVX-512 and AVX2+FMA as well as the
//! baseline and picks one at run time.

/// Runs `f` inlined into a clone of this function compiled for AVX-512 (or AVX2+FMA) when the
/// CPU has it, so that the loops in `f` vectorise with the wide registers (the crate itself is
/// built for baseline x86-64, i.e. SSE2). Call it inside each parallel task, around the task's
/// loops, as an `#[inline(always)]` closure (a closure LLVM does not inline would run with the
/// baseline features). The result does not depend on the clone: Rust never contracts `a·b + c` into an FMA
/// nor reorders float sums, so every clone performs the same IEEE operations in the same order.
#[inline(always)]
pub fn simd<R, F: FnOnce() -> R>(f: F) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the clone was compiled for.
            return unsafe { simd_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { simd_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn simd_avx512<R, F: FnOnce() -> R>(f: F) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn simd_avx2<R, F: FnOnce() -> R>(f: F) -> R {
    f()
}

/// Applies `f` to every element. `f` should be branch-free f32 arithmetic (the functions below
/// are) so that the loop vectorises in each of the clones.
#[inline]
pub fn map_inplace<F: Fn(f32) -> f32 + Copy>(v: &mut [f32], f: F) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the clone was compiled for.
            return unsafe { map_avx512(v, f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { map_avx2(v, f) };
        }
    }
    map_generic(v, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn map_avx512<F: Fn(f32) -> f32 + Copy>(v: &mut [f32], f: F) {
    map_generic(v, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_avx2<F: Fn(f32) -> f32 + Copy>(v: &mut [f32], f: F) {
    map_generic(v, f)
}

#[inline(always)]
fn map_generic<F: Fn(f32) -> f32 + Copy>(v: &mut [f32], f: F) {
    for x in v.iter_mut() {
        *x = f(*x);
    }
}

/// `v[i] = f(v[i], w[i])` over two slices of the same length (the shorter one bounds the
/// loop), compiled like [`map_inplace`] for AVX-512, AVX2+FMA and the baseline.
#[inline]
pub fn zip_map_inplace<F: Fn(f32, f32) -> f32 + Copy>(v: &mut [f32], w: &[f32], f: F) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the clone was compiled for.
            return unsafe { zip_map_avx512(v, w, f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { zip_map_avx2(v, w, f) };
        }
    }
    zip_map_generic(v, w, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn zip_map_avx512<F: Fn(f32, f32) -> f32 + Copy>(v: &mut [f32], w: &[f32], f: F) {
    zip_map_generic(v, w, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn zip_map_avx2<F: Fn(f32, f32) -> f32 + Copy>(v: &mut [f32], w: &[f32], f: F) {
    zip_map_generic(v, w, f)
}

#[inline(always)]
fn zip_map_generic<F: Fn(f32, f32) -> f32 + Copy>(v: &mut [f32], w: &[f32], f: F) {
    for (x, &y) in v.iter_mut().zip(w) {
        *x = f(*x, y);
    }
}

/// GELU over a slice, in place.
pub fn gelu_inplace(v: &mut [f32]) {
    map_inplace(v, gelu)
}

/// Σ f(x_i) over `x` in f64, in eight interleaved partial sums: the loop vectorises, and the
/// order is fixed by the slice alone (the same result on every machine and thread count).
#[inline(always)]
pub fn sum_f64(x: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v as f64);
        }
    }
    acc.iter().sum::<f64>() + tail.iter().map(|&v| f(v as f64)).sum::<f64>()
}

/// Σ a_i·b_i in f64 over two slices of the same length (f32 or f64 elements, each widened to
/// f64), in eight interleaved partial sums (as [`sum_f64`]).
#[inline(always)]
pub fn dot_f64<T: Copy + Into<f64>>(a: &[T], b: &[T]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    // Equal lengths, made visible to the optimiser (no bounds checks in the loops below).
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| x.into() * y.into())
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((a, &p), &q) in acc.iter_mut().zip(x).zip(y) {
            *a += p.into() * q.into();
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// GELU with the exact error function (PyTorch's default `approximate='none'`):
/// `x·Φ(x) = ½·x·erfc(−x/√2)`, in f32 with the erfc below (relative error ~1e-7 everywhere,
/// also in the far negative tail where `1 + erf` would cancel).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    gelu_from_erfc(x, gelu_erfc(x))
}

/// `erfc(−x/√2) = 2·Φ(x)`, the term [`gelu`] and [`gelu_bwd`] share.
#[inline(always)]
fn gelu_erfc(x: f32) -> f32 {
    erfc_f32(-x * std::f32::consts::FRAC_1_SQRT_2)
}

#[inline(always)]
fn gelu_from_erfc(x: f32, e: f32) -> f32 {
    0.5 * x * e
}

/// Derivative of the exact-erf GELU: `Φ(x) + x·φ(x)` with `φ(x) = e^{−x²/2}/√(2π)`, in f32
/// without branches (vectorises like [`gelu`]). Both terms vanish in the far negative tail and
/// the sum tends to 1 in the positive one; no overflow for any finite `x` (the exponent of
/// [`exp_f32`] is clamped).
#[inline(always)]
pub fn gelu_bwd(x: f32) -> f32 {
    gelu_bwd_from_erfc(x, gelu_erfc(x))
}

#[inline(always)]
fn gelu_bwd_from_erfc(x: f32, e: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    0.5 * e + x * INV_SQRT_2PI * exp_f32(-0.5 * x * x)
}

/// GELU for training: returns `hid = GELU(x)` and leaves, in place of `x`, the derivative
/// `GELU'(x)` that the backward multiplies the incoming gradient by ([`mul_inplace_par`]). The
/// erfc is evaluated once for both, and the values are those of [`gelu`] and [`gelu_bwd`] bit
/// for bit. Split over the thread pool in fixed chunks (the result does not depend on the
/// split), each chunk in the widest build [`simd`] has. `hid` is written straight into fresh
/// capacity, without a zero fill first.
pub fn gelu_with_grad_par(x_then_grad: &mut [f32]) -> Vec<f32> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    let n = x_then_grad.len();
    let mut hid = Vec::<f32>::with_capacity(n);
    let spare = &mut hid.spare_capacity_mut()[..n];
    x_then_grad
        .par_chunks_mut(CHUNK)
        .zip(spare.par_chunks_mut(CHUNK))
        .for_each(|(g, h)| {
            simd(
                #[inline(always)]
                || {
                    for (x, y) in g.iter_mut().zip(h.iter_mut()) {
                        let e = gelu_erfc(*x);
                        y.write(gelu_from_erfc(*x, e));
                        *x = gelu_bwd_from_erfc(*x, e);
                    }
                },
            )
        });
    // SAFETY: `spare` is the first `n` slots of the capacity (the slicing above checks
    // `n <= capacity`). Both sides are cut into CHUNK-sized pieces from equal lengths `n`, so
    // the zip pairs every piece of `spare` with one of `x_then_grad` of the same length, and
    // the inner zip writes each of its slots once: all of slots 0..n are initialised.
    unsafe { hid.set_len(n) };
    hid
}

/// `dy[i] *= g[i]`, split over the thread pool in fixed chunks (element-wise, so the split
/// does not change the result). With `g` from [`gelu_with_grad_par`] this is the GELU backward
/// ([`gelu_bwd_inplace`]) bit for bit.
pub fn mul_inplace_par(g: &[f32], dy: &mut [f32]) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    debug_assert_eq!(g.len(), dy.len());
    dy.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .for_each(|(d, g)| zip_map_inplace(d, g, |d, g| d * g));
}

/// `dst[i] += src[i]` (the residual add), split over the thread pool in fixed chunks
/// (element-wise, so the split does not change the result), each chunk in the widest build
/// [`simd`] has.
pub fn add_inplace_par(dst: &mut [f32], src: &[f32]) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    debug_assert_eq!(dst.len(), src.len());
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| zip_map_inplace(d, s, |d, s| d + s));
}

/// Backward of GELU: `dy[i] *= gelu'(pre[i])` with `pre` the GELU's input. Element-wise, so
/// it splits over the thread pool in fixed chunks with no effect on the result.
pub fn gelu_bwd_inplace(pre: &[f32], dy: &mut [f32]) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    debug_assert_eq!(pre.len(), dy.len());
    dy.par_chunks_mut(CHUNK)
        .zip(pre.par_chunks(CHUNK))
        .for_each(|(g, p)| zip_map_inplace(g, p, |g, x| g * gelu_bwd(x)));
}

/// Complementary error function: a Chebyshev fit of `erfc` with fractional error below 1.2e-7
/// everywhere (the classic Numerical-Recipes coefficients), evaluated in f32 without branches.
#[inline(always)]
pub fn erfc_f32(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_24 + t * 0.170_872_77))))))));
    let r = t * exp_f32(poly);
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// `e^x` in f32 without branches or library calls (so loops over it vectorise): `x = n·ln2 + r`
/// with ln2 split in two for an exact reduction, a degree-6 minimax polynomial for `e^r` on
/// |r| ≤ ln2/2 (Cephes `expf` coefficients), and `2^n` built in the exponent bits. Relative
/// error ≤ 2 ulp; inputs are clamped to [−87, 88], so it underflows to ~1.6e-38 rather than 0.
/// `2^n` comes from the mantissa bits of `n + 2²³ + 127` (exact for the integer
/// `n ∈ [−126, 127]`) rather than from `n as i32`: Rust's saturating float→int cast kept LLVM
/// from vectorising the loops (1.5 → 0.34 ns per element on AVX-512, the same bits for every
/// f32 input, checked exhaustively; a NaN still gives NaN).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits((n + 8_388_735.0).to_bits() << 23)
}

/// `erf` from [`erfc_f32`], in f64 for reference checks.
pub fn erf(x: f64) -> f64 {
    1.0 - erfc_f32(x as f32) as f64
}

/// Helpers of the finite-difference tests of the backward passes (`ops::*`): a seeded random
/// stream, central differences in f64 and the project's error measure.
#[cfg(test)]
pub(crate) mod fd {
    /// SplitMix64 stream; `uniform` is in [−1, 1).
    pub struct Rng(pub u64);

    impl Rng {
        pub fn uniform(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }

        /// `n` values uniform in [−scale, scale), rounded to f32 (the point where both the
        /// f32 backward and the f64 reference are evaluated).
        pub fn vec(&mut self, n: usize, scale: f64) -> Vec<f32> {
            (0..n).map(|_| (self.uniform() * scale) as f32).collect()
        }
    }

    pub fn to64(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    pub fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Central differences `(f(x + h·e_i) − f(x − h·e_i)) / 2h` for every element of `x`.
    pub fn grad(x: &[f32], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
        let mut p = to64(x);
        (0..p.len())
            .map(|i| {
                let x0 = p[i];
                p[i] = x0 + h;
                let up = f(&p);
                p[i] = x0 - h;
                let down = f(&p);
                p[i] = x0;
                (up - down) / (2.0 * h)
            })
            .collect()
    }

    /// `max|got − want| / max|want|`, the project's error measure.
    pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f64, |m, &w| m.max(w.abs()));
        let diff = got
            .iter()
            .zip(want)
            .fold(0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
        diff / scale.max(f64::MIN_POSITIVE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eight-way sums agree with a plain f64 loop for every tail length (0..8 left over).
    #[test]
    fn eight_way_sums_match_a_plain_loop() {
        for n in 0..27 {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3).collect();
            let a: Vec<f64> = x.iter().map(|&v| v as f64 * 1.7).collect();
            let b: Vec<f64> = x.iter().rev().map(|&v| v as f64 - 0.2).collect();
            let want_sq: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let want_dot: f64 = a.iter().zip(&b).map(|(p, q)| p * q).sum();
            assert!((sum_f64(&x, |v| v * v) - want_sq).abs() <= 1e-12 * (1.0 + want_sq.abs()));
            assert!((dot_f64(&a, &b) - want_dot).abs() <= 1e-12 * (1.0 + want_dot.abs()));
            let y: Vec<f32> = x.iter().rev().map(|&v| v - 0.2).collect();
            let want_dot32: f64 = x.iter().zip(&y).map(|(&p, &q)| p as f64 * q as f64).sum();
            let got = dot_f64(&x, &y);
            assert!((got - want_dot32).abs() <= 1e-12 * (1.0 + want_dot32.abs()));
        }
    }

    #[test]
    fn erf_matches_known_values() {
        // erf values from tables (Abramowitz & Stegun 7.1).
        for (x, e) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (2.0, 0.995_322_265_0),
            (-1.5, -0.966_105_146_5),
        ] {
            assert!((erf(x) - e).abs() < 3e-7, "erf({x}) = {} vs {e}", erf(x));
        }
    }

    #[test]
    fn exp_f32_is_accurate() {
        let mut worst = 0f64;
        for i in -8700..8799 {
            let x = i as f32 * 0.01 + 0.003;
            let want = (x as f64).exp();
            worst = worst.max(((exp_f32(x) as f64 - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn gelu_slice_matches_scalar_on_every_path() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.021).collect();
        let mut v = xs.clone();
        gelu_inplace(&mut v);
        for (x, y) in xs.iter().zip(&v) {
            assert!(
                (gelu(*x) - y).abs() <= 1e-6 * x.abs().max(1.0),
                "gelu({x}): {y} vs {}",
                gelu(*x)
            );
        }
    }

    #[test]
    fn gelu_is_accurate_in_both_tails() {
        // Φ(x) from a high-precision series/asymptotic pair in f64 is overkill here: compare with
        // x·Φ(x) where Φ comes from erfc values in A&S tables.
        for (x, phi) in [
            (-5.0f64, 2.866_515_718_8e-7),
            (-2.0, 0.022_750_131_9),
            (0.3, 0.617_911_422_2),
            (3.0, 0.998_650_101_97),
        ] {
            let want = x * phi;
            let got = gelu(x as f32) as f64;
            assert!(
                ((got - want) / want).abs() < 1e-6,
                "gelu({x}) = {got} vs {want}"
            );
        }
    }

    /// `erf` in f64 from `erf(x) = 2/√π·e^{−x²}·Σ_n 2ⁿx^{2n+1}/(1·3···(2n+1))`: all terms are
    /// positive, so no cancellation; full f64 accuracy for |x| ≤ 6.
    fn erf64(x: f64) -> f64 {
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= 2.0 * x * x / (2.0 * n + 1.0);
            sum += term;
        }
        2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
    }

    fn gelu64(x: f64) -> f64 {
        0.5 * x * (1.0 + erf64(x * std::f64::consts::FRAC_1_SQRT_2))
    }

    #[test]
    fn gelu_bwd_matches_finite_differences() {
        let xs: Vec<f32> = (0..1201).map(|i| (i as f32 - 600.0) * 0.01).collect();
        // dL/dx for L = Σ r_i·gelu(x_i) with random r: element-wise, so one FD per element.
        let mut rng = fd::Rng(0x6e1);
        let r = rng.vec(xs.len(), 1.0);
        let want: Vec<f64> = xs
            .iter()
            .zip(&r)
            .map(|(&x, &ri)| {
                let h = 1e-5;
                ri as f64 * (gelu64(x as f64 + h) - gelu64(x as f64 - h)) / (2.0 * h)
            })
            .collect();
        let mut got = r.clone();
        gelu_bwd_inplace(&xs, &mut got);
        let err = fd::rel_err(&got, &want);
        // FD in f64 with h = 1e-5 is good to ~1e-10; gelu_bwd is f32 arithmetic on an erfc with
        // 1.2e-7 fractional error, so a few 1e-7 is what f32 allows.
        assert!(err < 1e-6, "gelu_bwd vs FD: {err:e}");
        eprintln!("gelu_bwd vs FD: {err:e}");
        // The scalar and the vectorised slice paths agree.
        for (i, &x) in xs.iter().enumerate() {
            assert!((gelu_bwd(x) * r[i] - got[i]).abs() <= 1e-6 * r[i].abs());
        }
    }

    #[test]
    fn gelu_with_grad_matches_gelu_and_gelu_bwd_bitwise() {
        // Across both tails (erfc clamps, the exp underflows) and around 0.
        let xs: Vec<f32> = (0..40_001)
            .map(|i| (i as f32 - 20_000.0) * 1.7e-3)
            .collect();
        let mut g = xs.clone();
        let hid = gelu_with_grad_par(&mut g);
        let mut dy: Vec<f32> = xs.iter().map(|x| 0.3 - x).collect();
        let mut want_dy = dy.clone();
        mul_inplace_par(&g, &mut dy);
        gelu_bwd_inplace(&xs, &mut want_dy);
        for (i, &x) in xs.iter().enumerate() {
            assert_eq!(hid[i].to_bits(), gelu(x).to_bits(), "gelu({x})");
            assert_eq!(g[i].to_bits(), gelu_bwd(x).to_bits(), "gelu_bwd({x})");
        }
        assert!(dy
            .iter()
            .zip(&want_dy)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn gelu_bwd_is_accurate_in_the_tails() {
        // gelu'(x) = Φ(x) + x·φ(x) with Φ, φ from A&S tables (26.1, 26.2).
        for (x, phi_cdf, pdf) in [
            (-5.0f64, 2.866_515_718_8e-7, 1.486_719_514_7e-6),
            (-3.0, 1.349_898_031_6e-3, 4.431_848_411_9e-3),
            (4.0, 0.999_968_328_8, 1.338_302_257_6e-4),
        ] {
            let want = phi_cdf + x * pdf;
            let got = gelu_bwd(x as f32) as f64;
            // Relative: f32 arithmetic with a ~1e-7 erfc; the x = −5 value is a difference of
            // two terms of 25:1, which costs about one more digit.
            assert!(
                ((got - want) / want).abs() < 2e-6,
                "gelu'({x}) = {got} vs {want}"
            );
        }
        assert!(gelu_bwd(-30.0).abs() < 1e-30 && (gelu_bwd(30.0) - 1.0).abs() < 1e-7);
    }
}
