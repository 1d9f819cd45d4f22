//! The input pipeline's image side (SPEC §1.1–§1.3, §1.5): load an RGB image, turn a hand box
//! into a square crop with HaMeR's affine (`gen_trans_from_patch_cv`), warp it exactly as
//! OpenCV 4.x's `cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT, 0)` does for 8-bit 3-channel
//! images, and normalise it with the ImageNet mean/std.
//!
//! Bit-exactness with OpenCV rests on three details, each restated (not copied) below:
//! * `getAffineTransform` takes float32 points and solves the 6×6 linear system with OpenCV's
//!   own partial-pivot LU in double precision ([`crop_affine`]);
//! * `warpAffine` inverts the forward matrix in double, then maps output pixels with integer
//!   coordinates in 1/1024 px (`AB_BITS = 10`), reduced to 1/32 px (`INTER_BITS = 5`);
//! * `remap` blends the 2×2 neighbourhood with 15-bit integer weights from a 32×32 table and
//!   rounds with `(sum + 2^14) >> 15`; taps outside the image read the border value 0
//!   ([`warp_affine_bilinear`]).
//!
//! OpenCV 5 replaced the fixed-point path with a floating-point one; the reference ran on 4.x.

use rayon::prelude::*;

use crate::error::Result;

mod load;
pub use load::{jpeg_is_complete, load_rgb, MAX_IMAGE_PIXELS};

/// ImageNet mean (RGB, on the 0–1 scale); multiplied by 255 before use (SPEC §1.1).
pub const IMAGE_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet std (RGB, on the 0–1 scale); multiplied by 255 before use (SPEC §1.1).
pub const IMAGE_STD: [f64; 3] = [0.229, 0.224, 0.225];
/// Aspect ratio `[w, h]` a box is expanded to at evaluation / inference (`BBOX_SHAPE`).
pub const BBOX_SHAPE: [f64; 2] = [192.0, 256.0];

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (HWC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// A black image.
    pub fn new(width: usize, height: usize) -> Self {
        RgbImage {
            width,
            height,
            data: vec![0; width * height * 3],
        }
    }

    /// Wraps an HWC RGB buffer, checking its length.
    pub fn from_raw(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        let want = width.checked_mul(height).and_then(|n| n.checked_mul(3));
        if want != Some(data.len()) {
            return crate::input_err!(
                "RGB image of {width}x{height} needs {} bytes, got {}",
                want.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                data.len()
            );
        }
        Ok(RgbImage {
            width,
            height,
            data,
        })
    }
}

// ---- box → crop size (SPEC §1.2) ------------------------------------------------------------

/// HaMeR's `expand_to_aspect_ratio((w, h), (w_t, h_t))`: grows the short side so that the box
/// has the target aspect ratio; never shrinks.
pub fn expand_to_aspect_ratio(wh: [f64; 2], target: [f64; 2]) -> [f64; 2] {
    let [w, h] = wh;
    let [w_t, h_t] = target;
    if h / w < h_t / w_t {
        [w, f64::max(w * h_t / w_t, h)]
    } else {
        [f64::max(h * w_t / h_t, w), h]
    }
}

/// The evaluation crop side (SPEC §1.2): `max(expand_to_aspect_ratio(scale·200, [192, 256]))`,
/// with `scale_px = scale·200` the box side(s) in pixels (tile a single value to `[s, s]`).
pub fn eval_box_size(scale_px: [f64; 2]) -> f64 {
    let [w, h] = expand_to_aspect_ratio(scale_px, BBOX_SHAPE);
    // numpy's max: NaN wins.
    if w.is_nan() || h.is_nan() {
        f64::NAN
    } else {
        w.max(h)
    }
}

// ---- the crop affine (SPEC §1.3 step 2) -----------------------------------------------------

/// The forward 2×3 matrix (source pixel → crop pixel, row-major) of HaMeR's
/// `gen_trans_from_patch_cv(cx, cy, S, S, out, out, scale, rot)`.
///
/// The source points `c`, `c + R(a)(0, S'/2)`, `c + R(a)(S'/2, 0)` (`S' = S·scale`) and the
/// destination points `(out/2, out/2)`, `(out/2, out)`, `(out, out/2)` are rounded to float32
/// exactly where the reference rounds them, and the system is solved with OpenCV's LU, so the
/// result matches `cv2.getAffineTransform` to the last bit (given identical `sin`/`cos`).
/// A degenerate box (zero, non-finite) yields the all-zero matrix, as OpenCV's failed solve does.
pub fn crop_affine(
    center: [f64; 2],
    box_size: f64,
    out_size: usize,
    rot_deg: f64,
    scale: f64,
) -> [f64; 6] {
    let src_w = box_size * scale;
    let src_h = box_size * scale;
    let rot_rad = std::f64::consts::PI * rot_deg / 180.0;
    // rotate_2d: float32 inputs, float64 arithmetic, float32 result.
    let rotate = |x: f32, y: f32| -> [f32; 2] {
        let (sn, cs) = (rot_rad.sin(), rot_rad.cos());
        let (x, y) = (x as f64, y as f64);
        [(x * cs - y * sn) as f32, (x * sn + y * cs) as f32]
    };
    let down = rotate(0.0, (src_h * 0.5) as f32);
    let right = rotate((src_w * 0.5) as f32, 0.0);
    let [cx, cy] = center;
    // float64 centre + float32 offset, stored as float32.
    let src = [
        [cx as f32, cy as f32],
        [(cx + down[0] as f64) as f32, (cy + down[1] as f64) as f32],
        [(cx + right[0] as f64) as f32, (cy + right[1] as f64) as f32],
    ];
    let half = (out_size as f64 * 0.5) as f32;
    let dst = [
        [half, half],
        [half + 0.0, half + half],
        [half + half, half + 0.0],
    ];
    get_affine_transform(&src, &dst)
}

/// `cv2.getAffineTransform`: the 2×3 matrix mapping three float32 points onto three others,
/// from the 6×6 system solved with [`lu_solve`] (all-zero when the system is singular).
fn get_affine_transform(src: &[[f32; 2]; 3], dst: &[[f32; 2]; 3]) -> [f64; 6] {
    let mut a = [[0.0f64; 6]; 6];
    let mut b = [0.0f64; 6];
    for i in 0..3 {
        let (x, y) = (src[i][0] as f64, src[i][1] as f64);
        a[2 * i] = [x, y, 1.0, 0.0, 0.0, 0.0];
        a[2 * i + 1] = [0.0, 0.0, 0.0, x, y, 1.0];
        b[2 * i] = dst[i][0] as f64;
        b[2 * i + 1] = dst[i][1] as f64;
    }
    if lu_solve(&mut a, &mut b) {
        b
    } else {
        [0.0; 6]
    }
}

/// Solves `a·x = b` in place (x left in `b`) by Gaussian elimination with partial pivoting,
/// in the operation order of OpenCV's `hal::LU64f` (pivot tolerance `100·DBL_EPSILON`, rows
/// updated with `a_jk += (a_ji · (−1/a_ii)) · a_ik`, back substitution dividing by the pivot).
/// Returns false for a singular (or non-finite) system.
fn lu_solve<const N: usize>(a: &mut [[f64; N]; N], b: &mut [f64; N]) -> bool {
    let eps = f64::EPSILON * 100.0;
    for i in 0..N {
        let mut k = i;
        for j in i + 1..N {
            if a[j][i].abs() > a[k][i].abs() {
                k = j;
            }
        }
        // Also rejects NaN, where OpenCV would carry on and produce NaNs.
        if a[k][i].abs() < eps || a[k][i].is_nan() {
            return false;
        }
        if k != i {
            a.swap(i, k);
            b.swap(i, k);
        }
        let d = -1.0 / a[i][i];
        let pivot_row = a[i];
        for j in i + 1..N {
            let alpha = a[j][i] * d;
            for (v, p) in a[j][i + 1..].iter_mut().zip(&pivot_row[i + 1..]) {
                *v += alpha * p;
            }
            b[j] += alpha * b[i];
        }
    }
    for i in (0..N).rev() {
        let mut s = b[i];
        for c in i + 1..N {
            s -= a[i][c] * b[c];
        }
        b[i] = s / a[i][i];
    }
    true
}

/// The inverse of an affine 2×3 matrix, as `cv2.invertAffineTransform` / `warpAffine` compute
/// it (a singular matrix gives zeros in the linear part).
pub fn invert_affine(m: &[f64; 6]) -> [f64; 6] {
    let d = m[0] * m[4] - m[1] * m[3];
    let d = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (a11, a12, a21, a22) = (m[4] * d, m[1] * -d, m[3] * -d, m[0] * d);
    let b1 = -a11 * m[2] - a12 * m[5];
    let b2 = -a21 * m[2] - a22 * m[5];
    [a11, a12, b1, a21, a22, b2]
}

// ---- the warp (SPEC §1.3 step 3) -------------------------------------------------------------

/// Fixed-point resolution of the per-pixel source coordinates (1/1024 px).
const AB_BITS: u32 = 10;
const AB_SCALE: f64 = (1 << AB_BITS) as f64;
/// Sub-pixel resolution of the interpolation (1/32 px): 32×32 weight sets.
const INTER_BITS: u32 = 5;
const INTER_TAB_SIZE: i32 = 1 << INTER_BITS;
/// Interpolation weights are integers summing to 2^15.
const REMAP_COEF_BITS: u32 = 15;

/// `saturate_cast<int>(double)` on x86-64 (`cvRound`): round half to even; NaN and values
/// outside the int range give `i32::MIN` (the SSE2 "integer indefinite" value).
fn round_to_i32(v: f64) -> i32 {
    let r = v.round_ties_even();
    if (-2147483648.0..=2147483647.0).contains(&r) {
        r as i32
    } else {
        i32::MIN
    }
}

/// The bilinear weights `[w00, w01, w10, w11]` (top-left, top-right, bottom-left,
/// bottom-right) for the sub-pixel offsets `(tx, ty)` in 1/32 px. OpenCV computes
/// `round(ky·kx·2^15)` from the float factors `1 − t/32`, `t/32`; those products are exact
/// multiples of 2^−10, so the table is the integer `(32−ty|ty)·(32−tx|tx)·32` and every set
/// sums to exactly 2^15 (OpenCV's sum fix-up never fires).
fn bilinear_weights(tx: i32, ty: i32) -> [i32; 4] {
    let (kx, ky) = ([INTER_TAB_SIZE - tx, tx], [INTER_TAB_SIZE - ty, ty]);
    let s = (1 << REMAP_COEF_BITS) / (INTER_TAB_SIZE * INTER_TAB_SIZE);
    [
        ky[0] * kx[0] * s,
        ky[0] * kx[1] * s,
        ky[1] * kx[0] * s,
        ky[1] * kx[1] * s,
    ]
}

/// `cv2.warpAffine(src, m, (out_w, out_h), flags=INTER_LINEAR, borderMode=BORDER_CONSTANT,
/// borderValue=0)` for an 8-bit RGB image, bit for bit as OpenCV 4.x computes it. `m` is the
/// forward matrix (source → output). Returns the HWC RGB output.
pub fn warp_affine_bilinear(src: &RgbImage, m: &[f64; 6], out_w: usize, out_h: usize) -> Vec<u8> {
    let mut out = vec![0u8; out_w * out_h * 3];
    if out_w == 0
        || out_h == 0
        || src.width == 0
        || src.height == 0
        || src.data.len() < src.width * src.height * 3
    {
        return out;
    }
    let im = invert_affine(m);
    // Per-column increments of the source coordinates, in 1/1024 px.
    let adelta: Vec<i32> = (0..out_w)
        .map(|x| round_to_i32(im[0] * x as f64 * AB_SCALE))
        .collect();
    let bdelta: Vec<i32> = (0..out_w)
        .map(|x| round_to_i32(im[3] * x as f64 * AB_SCALE))
        .collect();
    // Half a 1/32-px step, so that the shift to 1/32 px rounds to nearest.
    let round_delta = (1i32 << AB_BITS) / INTER_TAB_SIZE / 2;
    let (w, h) = (src.width as i64, src.height as i64);
    let row = src.width * 3;
    let px = |x: i64, y: i64| -> [u8; 3] {
        if x >= 0 && x < w && y >= 0 && y < h {
            let o = y as usize * row + x as usize * 3;
            [src.data[o], src.data[o + 1], src.data[o + 2]]
        } else {
            [0; 3]
        }
    };
    out.par_chunks_mut(out_w * 3)
        .enumerate()
        .for_each(|(y, line)| {
            let x0 = round_to_i32((im[1] * y as f64 + im[2]) * AB_SCALE).wrapping_add(round_delta);
            let y0 = round_to_i32((im[4] * y as f64 + im[5]) * AB_SCALE).wrapping_add(round_delta);
            let shift = AB_BITS - INTER_BITS;
            for (x, d) in line.chunks_exact_mut(3).enumerate() {
                let xf = x0.wrapping_add(adelta[x]) >> shift;
                let yf = y0.wrapping_add(bdelta[x]) >> shift;
                // saturate_cast<short> of the integer part, as remap's CV_16SC2 map stores it.
                let sx = (xf >> INTER_BITS).clamp(i16::MIN as i32, i16::MAX as i32) as i64;
                let sy = (yf >> INTER_BITS).clamp(i16::MIN as i32, i16::MAX as i32) as i64;
                // Neighbourhood entirely outside: the border value (already 0).
                if sx >= w || sx + 1 < 0 || sy >= h || sy + 1 < 0 {
                    continue;
                }
                let wt = bilinear_weights(xf & (INTER_TAB_SIZE - 1), yf & (INTER_TAB_SIZE - 1));
                let taps = [
                    px(sx, sy),
                    px(sx + 1, sy),
                    px(sx, sy + 1),
                    px(sx + 1, sy + 1),
                ];
                for c in 0..3 {
                    let sum: i32 = (0..4).map(|k| taps[k][c] as i32 * wt[k]).sum();
                    d[c] = ((sum + (1 << (REMAP_COEF_BITS - 1))) >> REMAP_COEF_BITS).clamp(0, 255)
                        as u8;
                }
            }
        });
    out
}

// ---- flips (SPEC §1.3 step 1, §1.5) ----------------------------------------------------------

/// Mirrors an image left–right (`img[:, ::-1]`).
pub fn flip_horizontal(img: &RgbImage) -> RgbImage {
    let mut data = Vec::with_capacity(img.data.len());
    for line in img.data.chunks_exact(img.width * 3) {
        data.extend(line.chunks_exact(3).rev().flatten());
    }
    RgbImage {
        width: img.width,
        height: img.height,
        data,
    }
}

/// Where x lands in the mirrored image of width `width`: `W − x − 1` (also its own inverse).
pub fn flip_x(x: f64, width: usize) -> f64 {
    width as f64 - x - 1.0
}

// ---- normalisation (SPEC §1.1) -----------------------------------------------------------------

/// HWC u8 RGB crop of `size×size` → CHW f32, `(p − 255·mean_c) / (255·std_c)`, in float32
/// arithmetic with the constants rounded to float32 (the reference subtracts and divides a
/// float32 array by numpy float64 scalars, which NumPy 1.x casts to float32).
///
/// Panics if `crop.len() != 3·size²` (a programming error, not an input error).
pub fn normalize_crop(crop: &[u8], size: usize) -> Vec<f32> {
    // A scale of 1 leaves every u8 value as it is (no clipping happens).
    normalize_crop_scaled(crop, size, [1.0; 3])
}

/// [`normalize_crop`] after the training augmentation's colour scaling (SPEC §1.1):
/// `(clip(p·cs_c, 0, 255) − 255·mean_c) / (255·std_c)` in float32.
///
/// Panics if `crop.len() != 3·size²` (a programming error, not an input error).
pub fn normalize_crop_scaled(crop: &[u8], size: usize, color_scale: [f32; 3]) -> Vec<f32> {
    let n = size * size;
    assert_eq!(
        crop.len(),
        3 * n,
        "normalize_crop: crop of {} bytes is not {size}x{size}x3",
        crop.len()
    );
    let mut out = vec![0f32; 3 * n];
    for c in 0..3 {
        let mean = (255.0 * IMAGE_MEAN[c]) as f32;
        let std = (255.0 * IMAGE_STD[c]) as f32;
        for (o, p) in out[c * n..(c + 1) * n]
            .iter_mut()
            .zip(crop.iter().skip(c).step_by(3))
        {
            *o = ((*p as f32 * color_scale[c]).clamp(0.0, 255.0) - mean) / std;
        }
    }
    out
}

// ---- the evaluation crop ---------------------------------------------------------------------

/// A hand box in image pixels: centre, square side (after [`eval_box_size`]) and handedness.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropBox {
    pub center: [f64; 2],
    pub box_size: f64,
    pub is_right: bool,
}

impl CropBox {
    /// Rejects boxes that cannot give a faithful crop: a centre beyond ±[`MAX_BOX_COORD`] px
    /// (or not finite), a side outside 1 px … [`MAX_BOX_COORD`] px. The affine is built from
    /// float32 points as OpenCV's; inside these bounds they keep 1/16 px or better, beyond them
    /// the crop silently degenerates (a 10^300 px box gives a black crop, a centre at 10^9 a
    /// crop displaced by pixels).
    pub fn validate(&self) -> Result<()> {
        if !self.center.iter().all(|c| c.abs() <= MAX_BOX_COORD) {
            return crate::input_err!(
                "hand box centre {:?} is not within ±{MAX_BOX_COORD} px",
                self.center
            );
        }
        if !(self.box_size >= 1.0 && self.box_size <= MAX_BOX_COORD) {
            return crate::input_err!(
                "hand box side {} px must be between 1 and {MAX_BOX_COORD}",
                self.box_size
            );
        }
        Ok(())
    }
}

/// The largest box centre coordinate and side (pixels) a crop is made for; float32 resolves
/// 1/16 px there.
pub const MAX_BOX_COORD: f64 = 1e6;

/// The whole evaluation path for one hand: mirror the image for a left hand (and the centre
/// with it), build the affine (no rotation, scale 1), warp to `out_size×out_size`, normalise.
/// Returns the normalised crop `[3, out, out]` and the forward matrix (source pixel → crop
/// pixel, in the mirrored image's frame for a left hand; see [`crop_to_image`]).
/// An invalid box (see [`CropBox::validate`]) gives a black crop, not a panic.
pub fn crop_for_model(img: &RgbImage, b: &CropBox, out_size: usize) -> (Vec<f32>, [f64; 6]) {
    let mirrored;
    let (src, cx) = if b.is_right {
        (img, b.center[0])
    } else {
        mirrored = flip_horizontal(img);
        (&mirrored, flip_x(b.center[0], img.width))
    };
    let m = crop_affine([cx, b.center[1]], b.box_size, out_size, 0.0, 1.0);
    let crop = warp_affine_bilinear(src, &m, out_size, out_size);
    (normalize_crop(&crop, out_size), m)
}

/// Maps a crop pixel `uv` back to the original image: inverts the forward matrix `m` of
/// [`crop_for_model`], then undoes the mirror for a left hand (`flipped`).
pub fn crop_to_image(m: &[f64; 6], uv: [f64; 2], flipped: bool, img_width: usize) -> [f64; 2] {
    let im = invert_affine(m);
    let x = im[0] * uv[0] + im[1] * uv[1] + im[2];
    let y = im[3] * uv[0] + im[4] * uv[1] + im[5];
    if flipped {
        [flip_x(x, img_width), y]
    } else {
        [x, y]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_image(w: usize, h: usize) -> RgbImage {
        let data = (0..w * h * 3)
            .map(|i| ((i * 37 + i / 7) % 251) as u8)
            .collect();
        RgbImage {
            width: w,
            height: h,
            data,
        }
    }

    fn apply(m: &[f64; 6], p: [f64; 2]) -> [f64; 2] {
        [
            m[0] * p[0] + m[1] * p[1] + m[2],
            m[3] * p[0] + m[4] * p[1] + m[5],
        ]
    }

    #[test]
    fn identity_warp_reproduces_image() {
        let img = test_image(13, 9);
        let id = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        assert_eq!(warp_affine_bilinear(&img, &id, 13, 9), img.data);
        // An integer shift moves the image and fills with black.
        let shift = [1.0, 0.0, 2.0, 0.0, 1.0, -1.0];
        let out = warp_affine_bilinear(&img, &shift, 13, 9);
        for y in 0..9 {
            for x in 0..13 {
                let (sx, sy) = (x as i64 - 2, y as i64 + 1);
                let o = (y * 13 + x) * 3;
                if sx >= 0 && sy < 9 {
                    let s = (sy as usize * 13 + sx as usize) * 3;
                    assert_eq!(out[o..o + 3], img.data[s..s + 3], "({x},{y})");
                } else {
                    assert_eq!(out[o..o + 3], [0, 0, 0], "({x},{y})");
                }
            }
        }
    }

    #[test]
    fn crop_affine_maps_the_three_points() {
        let (c, s, out, rot, sc) = ([40.5, 31.25], 64.0, 256usize, 30.0f64, 1.25);
        let m = crop_affine(c, s, out, rot, sc);
        let a = rot.to_radians();
        let r = |v: [f64; 2]| {
            [
                c[0] + a.cos() * v[0] - a.sin() * v[1],
                c[1] + a.sin() * v[0] + a.cos() * v[1],
            ]
        };
        let h = s * sc / 2.0;
        for (p, q) in [
            (c, [128.0, 128.0]),
            (r([0.0, h]), [128.0, 256.0]),
            (r([h, 0.0]), [256.0, 128.0]),
        ] {
            let got = apply(&m, p);
            assert!(
                (got[0] - q[0]).abs() < 1e-4 && (got[1] - q[1]).abs() < 1e-4,
                "{p:?} -> {got:?}, want {q:?}"
            );
        }
        // Degenerate boxes give the zero matrix (OpenCV's failed solve), not a panic.
        assert_eq!(crop_affine(c, 0.0, out, 0.0, 1.0), [0.0; 6]);
        assert_eq!(crop_affine(c, f64::NAN, out, 0.0, 1.0), [0.0; 6]);
    }

    #[test]
    fn crop_to_image_inverts_crop_affine() {
        let width = 173;
        for (flipped, rot) in [(false, 0.0), (false, -45.0), (true, 0.0), (true, 17.0)] {
            let p = [52.3, 77.9];
            let c = if flipped {
                [flip_x(60.0, width), 70.0]
            } else {
                [60.0, 70.0]
            };
            let m = crop_affine(c, 90.0, 256, rot, 1.1);
            let q = if flipped {
                [flip_x(p[0], width), p[1]]
            } else {
                p
            };
            let back = crop_to_image(&m, apply(&m, q), flipped, width);
            assert!(
                (back[0] - p[0]).abs() < 1e-9 && (back[1] - p[1]).abs() < 1e-9,
                "{back:?} vs {p:?}"
            );
        }
    }

    #[test]
    fn flip_rule() {
        let img = test_image(5, 3);
        let f = flip_horizontal(&img);
        for y in 0..3 {
            for x in 0..5 {
                let a = (y * 5 + x) * 3;
                let b = (y * 5 + (5 - 1 - x)) * 3;
                assert_eq!(img.data[a..a + 3], f.data[b..b + 3]);
            }
        }
        assert_eq!(flip_horizontal(&f), img);
        // Pixel x maps to W − x − 1; the rule is its own inverse.
        assert_eq!(flip_x(0.0, 5), 4.0);
        assert_eq!(flip_x(1.5, 5), 2.5);
        assert_eq!(flip_x(flip_x(3.25, 5), 5), 3.25);
        // A left-hand crop is the right-hand crop of the mirrored image.
        let img = test_image(40, 30);
        let b = CropBox {
            center: [12.5, 14.0],
            box_size: 20.0,
            is_right: false,
        };
        let (left, m) = crop_for_model(&img, &b, 32);
        let mirrored = CropBox {
            center: [flip_x(12.5, 40), 14.0],
            is_right: true,
            ..b
        };
        let (right, m2) = crop_for_model(&flip_horizontal(&img), &mirrored, 32);
        assert_eq!(left, right);
        assert_eq!(m, m2);
    }

    #[test]
    fn weight_table_matches_float_formula() {
        for ty in 0..32 {
            for tx in 0..32 {
                let w = bilinear_weights(tx, ty);
                let (fx, fy) = (tx as f32 * (1.0 / 32.0f32), ty as f32 * (1.0 / 32.0f32));
                let f = [
                    (1.0 - fy) * (1.0 - fx),
                    (1.0 - fy) * fx,
                    fy * (1.0 - fx),
                    fy * fx,
                ];
                for k in 0..4 {
                    assert_eq!(w[k], (f[k] * 32768.0).round_ties_even() as i32);
                }
                assert_eq!(w.iter().sum::<i32>(), 32768);
            }
        }
    }

    #[test]
    fn box_size_rule() {
        // Wide box: height grows to 4w/3.
        assert_eq!(eval_box_size([90.0, 60.0]), 120.0);
        // Tall box: unchanged height.
        assert_eq!(eval_box_size([30.0, 100.0]), 100.0);
        assert_eq!(
            expand_to_aspect_ratio([30.0, 100.0], BBOX_SHAPE),
            [75.0, 100.0]
        );
    }

    #[test]
    fn normalisation() {
        let crop = [0u8, 128, 255, 10, 20, 30];
        let v = normalize_crop(&crop[..3], 1);
        assert!((v[0] + 2.117_904).abs() < 1e-5, "{v:?}");
        assert!((v[2] - (255.0 - 103.53) / 57.375).abs() < 1e-5);
        let b = CropBox {
            center: [0.0, 0.0],
            box_size: -1.0,
            is_right: true,
        };
        assert!(b.validate().is_err());
        assert!(CropBox { box_size: 3.0, ..b }.validate().is_ok());
        // Boxes whose float32 affine would degenerate: refused, not cropped black.
        for bad in [
            CropBox {
                box_size: 1e300,
                ..b
            },
            CropBox {
                box_size: 1e-300,
                ..b
            },
            CropBox { box_size: 0.5, ..b },
            CropBox {
                box_size: f64::NAN,
                ..b
            },
            CropBox {
                center: [1e300, 5.0],
                box_size: 100.0,
                ..b
            },
            CropBox {
                center: [5.0, -2e6],
                box_size: 100.0,
                ..b
            },
            CropBox {
                center: [f64::INFINITY, 5.0],
                box_size: 100.0,
                ..b
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        // The bounds themselves give a proper crop: the affine maps the centre to the middle.
        for ok in [
            CropBox {
                center: [MAX_BOX_COORD, -MAX_BOX_COORD],
                box_size: 1.0,
                ..b
            },
            CropBox {
                center: [0.0, 0.0],
                box_size: MAX_BOX_COORD,
                ..b
            },
        ] {
            ok.validate().unwrap();
            let m = crop_affine(ok.center, ok.box_size, 256, 0.0, 1.0);
            let c = [
                m[0] * ok.center[0] + m[1] * ok.center[1] + m[2],
                m[3] * ok.center[0] + m[4] * ok.center[1] + m[5],
            ];
            assert!(
                (c[0] - 128.0).abs() < 1.0 && (c[1] - 128.0).abs() < 1.0,
                "{ok:?}: {c:?}"
            );
            assert!(
                (m[0] - 256.0 / ok.box_size).abs() < 0.1 * 256.0 / ok.box_size,
                "{m:?}"
            );
        }
    }
}
