//! Small geometry ops of the MANO head: 6D → rotation matrix (SPEC §3.3) and the camera
//! (SPEC §4), with their backward passes.
//!
//! The arithmetic is written once, generic over [`Real`]: the public functions are its f32
//! instances (the CPU twins), and the finite-difference tests run the same code in f64.

use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub, SubAssign};

/// The float types the generic CPU code is written for: f32 (the CPU twins) and f64 (the
/// finite-difference tests of the backward passes).
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// The f32 constant `x` in this type.
    fn of(x: f32) -> Self;
    fn sqrt(self) -> Self;
    fn max(self, other: Self) -> Self;
}

impl Real for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    fn of(x: f32) -> f32 {
        x
    }
    fn sqrt(self) -> f32 {
        f32::sqrt(self)
    }
    fn max(self, other: f32) -> f32 {
        f32::max(self, other)
    }
}

impl Real for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    fn of(x: f32) -> f64 {
        x as f64
    }
    fn sqrt(self) -> f64 {
        f64::sqrt(self)
    }
    fn max(self, other: f64) -> f64 {
        f64::max(self, other)
    }
}

type V3<T> = [T; 3];

fn dot3<T: Real>(a: V3<T>, b: V3<T>) -> T {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross<T: Real>(a: V3<T>, b: V3<T>) -> V3<T> {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// The norm clamp of `F.normalize`.
const NORM_EPS: f32 = 1e-12;

/// `v / max(‖v‖, ε)` and whether the clamp was active (then the divisor is a constant).
fn normalize<T: Real>(v: V3<T>) -> (V3<T>, T, bool) {
    let raw = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    let n = raw.max(T::of(NORM_EPS));
    ([v[0] / n, v[1] / n, v[2] / n], n, raw <= T::of(NORM_EPS))
}

/// Backward of [`normalize`]: `g_v = (g − b·(b·g)) / n`, or `g / ε` where the clamp was active.
fn normalize_bwd<T: Real>(b: V3<T>, n: T, clamped: bool, g: V3<T>) -> V3<T> {
    let bg = if clamped { T::ZERO } else { dot3(b, g) };
    [
        (g[0] - b[0] * bg) / n,
        (g[1] - b[1] * bg) / n,
        (g[2] - b[2] * bg) / n,
    ]
}

/// The Gram–Schmidt intermediates of one 6D code.
struct GramSchmidt<T> {
    a2: V3<T>,
    b1: V3<T>,
    n1: T,
    clamp1: bool,
    dot: T,
    b2: V3<T>,
    n2: T,
    clamp2: bool,
    b3: V3<T>,
}

fn gram_schmidt<T: Real>(x: &[T; 6]) -> GramSchmidt<T> {
    let a1 = [x[0], x[1], x[2]];
    let a2 = [x[3], x[4], x[5]];
    let (b1, n1, clamp1) = normalize(a1);
    let dot = dot3(b1, a2);
    let u = [
        a2[0] - dot * b1[0],
        a2[1] - dot * b1[1],
        a2[2] - dot * b1[2],
    ];
    let (b2, n2, clamp2) = normalize(u);
    let b3 = cross(b1, b2);
    GramSchmidt {
        a2,
        b1,
        n1,
        clamp1,
        dot,
        b2,
        n2,
        clamp2,
        b3,
    }
}

/// Generic [`rot6d_to_rotmat`].
pub fn rot6d_to_rotmat_g<T: Real>(x: &[T; 6]) -> [T; 9] {
    let GramSchmidt { b1, b2, b3, .. } = gram_schmidt(x);
    [
        b1[0], b2[0], b3[0], b1[1], b2[1], b3[1], b1[2], b2[2], b3[2],
    ]
}

/// 6D code `(a1, a2)` → rotation matrix with columns `b1, b2, b3` (Gram–Schmidt), row-major 3×3.
pub fn rot6d_to_rotmat(x: &[f32; 6]) -> [f32; 9] {
    rot6d_to_rotmat_g(x)
}

/// CPU twin of rot6d → rotmat over `n` codes: `x` `[n, 6]` → `out` `[n, 3, 3]`.
pub fn rot6d_to_rotmat_cpu(x: &[f32], out: &mut [f32]) {
    for (code, r) in x.chunks_exact(6).zip(out.chunks_exact_mut(9)) {
        let c: &[f32; 6] = code.try_into().unwrap_or(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        r.copy_from_slice(&rot6d_to_rotmat(c));
    }
}

/// Generic [`rot6d_to_rotmat_bwd`].
pub fn rot6d_to_rotmat_bwd_g<T: Real>(x: &[T; 6], d_r: &[T; 9]) -> [T; 6] {
    let s = gram_schmidt(x);
    let col = |c: usize| [d_r[c], d_r[3 + c], d_r[6 + c]];
    // b3 = b1 × b2: g·(b1 × b2) = b1·(b2 × g) = b2·(g × b1).
    let g3 = col(2);
    let c1 = cross(s.b2, g3);
    let c2 = cross(g3, s.b1);
    let g1 = col(0);
    let g2 = col(1);
    let mut gb1 = [g1[0] + c1[0], g1[1] + c1[1], g1[2] + c1[2]];
    let gb2 = [g2[0] + c2[0], g2[1] + c2[1], g2[2] + c2[2]];
    // b2 = u / max(‖u‖, ε), u = a2 − (b1·a2)·b1.
    let gu = normalize_bwd(s.b2, s.n2, s.clamp2, gb2);
    let gdot = -dot3(gu, s.b1);
    let mut ga2 = [T::ZERO; 3];
    for i in 0..3 {
        gb1[i] += gdot * s.a2[i] - s.dot * gu[i];
        ga2[i] = gu[i] + gdot * s.b1[i];
    }
    // b1 = a1 / max(‖a1‖, ε).
    let ga1 = normalize_bwd(s.b1, s.n1, s.clamp1, gb1);
    [ga1[0], ga1[1], ga1[2], ga2[0], ga2[1], ga2[2]]
}

/// Backward of [`rot6d_to_rotmat`]: the gradient `d_r` of the row-major matrix → the gradient
/// of the 6D code. Where a norm clamp (‖·‖ < 1e-12) is active the divisor is a constant, as in
/// PyTorch's `clamp_min`.
pub fn rot6d_to_rotmat_bwd(x: &[f32; 6], d_r: &[f32; 9]) -> [f32; 6] {
    rot6d_to_rotmat_bwd_g(x, d_r)
}

/// CPU twin of the batched backward: `x` `[n, 6]`, `d_r` `[n, 3, 3]` → `dx` `[n, 6]`
/// (overwritten). Serial: n = 16·B codes of ~100 flops each are not worth a thread pool.
pub fn rot6d_to_rotmat_bwd_cpu(x: &[f32], d_r: &[f32], dx: &mut [f32]) {
    for ((code, g), out) in x
        .chunks_exact(6)
        .zip(d_r.chunks_exact(9))
        .zip(dx.chunks_exact_mut(6))
    {
        let c: [f32; 6] = std::array::from_fn(|i| code[i]);
        let g: [f32; 9] = std::array::from_fn(|i| g[i]);
        out.copy_from_slice(&rot6d_to_rotmat_bwd(&c, &g));
    }
}

/// Generic [`cam_translation`].
pub fn cam_translation_g<T: Real>(cam: &[T; 3], focal_length: T, image_size: T) -> [T; 3] {
    [
        cam[1],
        cam[2],
        T::of(2.0) * focal_length / (image_size * cam[0] + T::of(1e-9)),
    ]
}

/// Weak-perspective camera `(s, tx, ty)` → translation `(tx, ty, 2f / (S·s + 1e-9))`.
pub fn cam_translation(cam: &[f32; 3], focal_length: f32, image_size: f32) -> [f32; 3] {
    cam_translation_g(cam, focal_length, image_size)
}

/// Generic [`cam_translation_bwd`].
pub fn cam_translation_bwd_g<T: Real>(
    cam: &[T; 3],
    focal_length: T,
    image_size: T,
    d_t: &[T; 3],
) -> [T; 3] {
    // tz = 2f / den, den = S·s + 1e-9: ∂tz/∂s = −2f·S / den².
    let den = image_size * cam[0] + T::of(1e-9);
    [
        -(d_t[2] * T::of(2.0) * focal_length * image_size / (den * den)),
        d_t[0],
        d_t[1],
    ]
}

/// Backward of [`cam_translation`]: `d_t` → the gradient of `(s, tx, ty)`.
pub fn cam_translation_bwd(
    cam: &[f32; 3],
    focal_length: f32,
    image_size: f32,
    d_t: &[f32; 3],
) -> [f32; 3] {
    cam_translation_bwd_g(cam, focal_length, image_size, d_t)
}

/// Generic [`project_cpu`].
pub fn project_g<T: Real>(points: &[T], t: &[T; 3], focal_norm: T, out: &mut [T]) {
    for (p, o) in points.chunks_exact(3).zip(out.chunks_exact_mut(2)) {
        let (x, y, z) = (p[0] + t[0], p[1] + t[1], p[2] + t[2]);
        o[0] = focal_norm * (x / z);
        o[1] = focal_norm * (y / z);
    }
}

/// Perspective projection of points `[n, 3]` translated by `t`, focal `f'` = f / S, principal
/// point 0: `(f'·X/Z, f'·Y/Z)` in normalised crop units.
pub fn project_cpu(points: &[f32], t: &[f32; 3], focal_norm: f32, out: &mut [f32]) {
    project_g(points, t, focal_norm, out)
}

/// Generic [`project_bwd_cpu`].
pub fn project_bwd_g<T: Real>(
    points: &[T],
    t: &[T; 3],
    focal_norm: T,
    d_out: &[T],
    d_points: &mut [T],
    d_t: &mut [T; 3],
) {
    *d_t = [T::ZERO; 3];
    for ((p, g), dp) in points
        .chunks_exact(3)
        .zip(d_out.chunks_exact(2))
        .zip(d_points.chunks_exact_mut(3))
    {
        let (x, y, z) = (p[0] + t[0], p[1] + t[1], p[2] + t[2]);
        // u = f'·x/z, v = f'·y/z: ∂/∂x = f'/z, ∂/∂y = f'/z, ∂/∂z = −f'·(g_u·x + g_v·y)/z².
        let fz = focal_norm / z;
        let gx = fz * g[0];
        let gy = fz * g[1];
        let gz = -(fz * (g[0] * x + g[1] * y) / z);
        dp.copy_from_slice(&[gx, gy, gz]);
        d_t[0] += gx;
        d_t[1] += gy;
        d_t[2] += gz;
    }
}

/// Backward of [`project_cpu`] for one sample: `d_out` `[n, 2]` → `d_points` `[n, 3]`
/// (overwritten) and `d_t` (overwritten, summed over the points in order).
pub fn project_bwd_cpu(
    points: &[f32],
    t: &[f32; 3],
    focal_norm: f32,
    d_out: &[f32],
    d_points: &mut [f32],
    d_t: &mut [f32; 3],
) {
    project_bwd_g(points, t, focal_norm, d_out, d_points, d_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::math::fd::{self, Rng};

    #[test]
    fn identity_code_gives_identity() {
        assert_eq!(
            rot6d_to_rotmat(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
            [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        );
    }

    #[test]
    fn output_is_a_rotation() {
        let r = rot6d_to_rotmat(&[0.3, -1.2, 0.4, 0.9, 0.2, -0.5]);
        for i in 0..3 {
            for j in 0..3 {
                let d: f32 = (0..3).map(|k| r[k * 3 + i] * r[k * 3 + j]).sum();
                assert!((d - if i == j { 1.0 } else { 0.0 }).abs() < 1e-6);
            }
        }
        let det = r[0] * (r[4] * r[8] - r[5] * r[7]) - r[1] * (r[3] * r[8] - r[5] * r[6])
            + r[2] * (r[3] * r[7] - r[4] * r[6]);
        assert!((det - 1.0).abs() < 1e-6);
    }

    /// `max|got − want| / max|want|` for two f64 vectors.
    fn rel64(got: &[f64], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f64, |m, &w| m.max(w.abs()));
        let diff = got
            .iter()
            .zip(want)
            .fold(0f64, |m, (&a, &b)| m.max((a - b).abs()));
        diff / scale.max(f64::MIN_POSITIVE)
    }

    fn arr<const N: usize>(v: &[f64]) -> [f64; N] {
        std::array::from_fn(|i| v[i])
    }

    #[test]
    fn rot6d_bwd_matches_finite_differences() {
        let mut rng = Rng(11);
        let (mut worst64, mut worst32) = (0f64, 0f64);
        for _ in 0..32 {
            let x = rng.vec(6, 1.5);
            let d_r = rng.vec(9, 1.0);
            let d64 = fd::to64(&d_r);
            let want = fd::grad(&x, 1e-6, |p| {
                fd::dot(&rot6d_to_rotmat_g::<f64>(&arr(p)), &d64)
            });
            let got64 = rot6d_to_rotmat_bwd_g::<f64>(&arr(&fd::to64(&x)), &arr(&d64));
            worst64 = worst64.max(rel64(&got64, &want));
            let got32 =
                rot6d_to_rotmat_bwd(&x.clone().try_into().unwrap(), &d_r.try_into().unwrap());
            worst32 = worst32.max(fd::rel_err(&got32, &want));
        }
        eprintln!("rot6d bwd vs FD: f64 {worst64:.2e}, f32 {worst32:.2e}");
        // f64, h = 1e-6, ‖a1‖, ‖u‖ of order 1: truncation ~h²·|f'''| ≈ 1e-12 and rounding
        // ~1e-16/h ≈ 1e-10; 1e-8 leaves margin and still catches any missing term.
        assert!(worst64 < 1e-8, "f64 rel err {worst64:e}");
        // f32 analytic gradient: a few dozen f32 ops, ε32 ≈ 6e-8 amplified by ‖a‖/‖u‖ (up to ~5
        // for these codes) and the cancellation in g − b·(b·g); measured 5.4e-6.
        assert!(worst32 < 1e-5, "f32 rel err {worst32:e}");
    }

    #[test]
    fn rot6d_bwd_batched_matches_single() {
        let mut rng = Rng(12);
        let n = 7;
        let x = rng.vec(6 * n, 1.0);
        let d_r = rng.vec(9 * n, 1.0);
        let mut dx = vec![f32::NAN; 6 * n];
        rot6d_to_rotmat_bwd_cpu(&x, &d_r, &mut dx);
        for i in 0..n {
            let c: [f32; 6] = x[6 * i..6 * i + 6].try_into().unwrap();
            let g: [f32; 9] = d_r[9 * i..9 * i + 9].try_into().unwrap();
            assert_eq!(&dx[6 * i..6 * i + 6], &rot6d_to_rotmat_bwd(&c, &g));
        }
    }

    #[test]
    fn cam_translation_bwd_matches_finite_differences() {
        let mut rng = Rng(13);
        let (f, s) = (5000.0f32, 256.0f32);
        let mut worst = 0f64;
        for _ in 0..16 {
            let mut cam = rng.vec(3, 0.5);
            cam[0] += 1.0;
            let d_t = rng.vec(3, 1.0);
            let d64 = fd::to64(&d_t);
            let want = fd::grad(&cam, 1e-6, |p| {
                fd::dot(&cam_translation_g::<f64>(&arr(p), f as f64, s as f64), &d64)
            });
            let got =
                cam_translation_bwd_g::<f64>(&arr(&fd::to64(&cam)), f as f64, s as f64, &arr(&d64));
            worst = worst.max(rel64(&got, &want));
            let got32 = cam_translation_bwd(
                &cam.clone().try_into().unwrap(),
                f,
                s,
                &d_t.try_into().unwrap(),
            );
            assert!(fd::rel_err(&got32, &want) < 1e-6, "f32 cam bwd");
        }
        eprintln!("cam_translation bwd vs FD: {worst:.2e}");
        // f64, h = 1e-6 on s ≈ 1, tz ≈ 40/s: truncation ~h²·|tz'''| ≈ 1e-10 relative to
        // |tz'| ≈ 40; 1e-8 is tight enough to catch a wrong factor anywhere.
        assert!(worst < 1e-8, "rel err {worst:e}");
    }

    #[test]
    fn project_bwd_matches_finite_differences() {
        let mut rng = Rng(14);
        let n = 21;
        let pts = rng.vec(3 * n, 0.3);
        let mut t = rng.vec(3, 0.2);
        t[2] += 2.0;
        let d_out = rng.vec(2 * n, 1.0);
        let d64 = fd::to64(&d_out);
        let f = 19.53125f64;
        // One vector of unknowns: the points then t.
        let all: Vec<f32> = pts.iter().chain(&t).copied().collect();
        let want = fd::grad(&all, 1e-6, |p| {
            let mut o = vec![0f64; 2 * n];
            project_g::<f64>(&p[..3 * n], &arr(&p[3 * n..]), f, &mut o);
            fd::dot(&o, &d64)
        });
        let mut dp = vec![f64::NAN; 3 * n];
        let mut dt = [f64::NAN; 3];
        project_bwd_g::<f64>(
            &fd::to64(&pts),
            &arr(&fd::to64(&t)),
            f,
            &d64,
            &mut dp,
            &mut dt,
        );
        let e_p = rel64(&dp, &want[..3 * n]);
        let e_t = rel64(&dt, &want[3 * n..]);
        eprintln!("project bwd vs FD: d_points {e_p:.2e}, d_t {e_t:.2e}");
        // f64, h = 1e-6, z ≈ 2: truncation ~h²·f'·6/z³ ≈ 1e-11 relative; rounding ≈ 1e-10.
        assert!(e_p < 1e-8 && e_t < 1e-8, "rel err {e_p:e} {e_t:e}");
        let mut dp32 = vec![f32::NAN; 3 * n];
        let mut dt32 = [f32::NAN; 3];
        project_bwd_cpu(
            &pts,
            &t.clone().try_into().unwrap(),
            f as f32,
            &d_out,
            &mut dp32,
            &mut dt32,
        );
        // f32: a handful of ops per point and a 21-term sum, ~1e-6 relative.
        assert!(fd::rel_err(&dp32, &want[..3 * n]) < 1e-5);
        assert!(fd::rel_err(&dt32, &want[3 * n..]) < 1e-5);
    }
}
