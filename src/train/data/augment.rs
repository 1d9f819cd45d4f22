//! HaMeR's training augmentation (`do_augmentation`, `get_example`; SPEC §1.4): the random
//! parameters, the crop, and the transforms of the labels that keep them consistent with it.
//!
//! Precision follows the reference where it is cheap to: keypoints and MANO parameters are
//! float32 values, every transform computes in f64 and rounds once to f32 where the reference
//! stores into a float32 array; the colour scale and the normalisation run in f32.

use super::format::{Annotation, HasMano, ManoParams};
use crate::ops::image::{crop_affine, flip_horizontal, flip_x, warp_affine_bilinear, RgbImage};
use crate::ops::mano::NUM_KEYPOINTS;
// Re-exported for `train::data`: the augmentation's colour-scaled normalisation.
pub use crate::ops::image::normalize_crop_scaled;
use crate::train::rng::{Philox, STREAM_AUGMENT};
use std::f64::consts::PI;

/// The augmentation settings (`DATASETS.CONFIG`); the default is the reference's training
/// configuration (SPEC §1.4). Random flips (`DO_FLIP`) and extreme crops are off there and not
/// implemented; `TRANS_AUG_RATE` is unused by the reference (translation is always applied).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugConfig {
    /// `TRANS_FACTOR`: `t = clip(N(0,1), −1, 1)·f`, centre moved by `S·t` per axis.
    pub trans_factor: f64,
    /// `SCALE_FACTOR`: `s = clip(N(0,1), −1, 1)·f + 1`.
    pub scale_factor: f64,
    /// `ROT_FACTOR` (degrees): `rot = clip(N(0,1), −2, 2)·f` ...
    pub rot_factor: f64,
    /// ... `ROT_AUG_RATE`: with this probability (`u ≤ rate`), else 0.
    pub rot_aug_rate: f64,
    /// `COLOR_SCALE`: per-channel factor `U(1 − c, 1 + c)`.
    pub color_scale: f64,
}

impl Default for AugConfig {
    fn default() -> Self {
        AugConfig {
            trans_factor: 0.02,
            scale_factor: 0.3,
            rot_factor: 30.0,
            rot_aug_rate: 0.6,
            color_scale: 0.2,
        }
    }
}

/// The augmentation of one item.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugParams {
    /// Centre translation as a fraction of the box side.
    pub tx: f64,
    pub ty: f64,
    /// Box scale factor (`S' = S·scale`).
    pub scale: f64,
    /// In-plane rotation, degrees.
    pub rot: f64,
    /// Mirror the image (forced for left hands; never random).
    pub flip: bool,
    /// Per-channel colour factors (R, G, B).
    pub color_scale: [f32; 3],
}

impl AugParams {
    /// No augmentation: only the left-hand mirror (the evaluation crop of a training item).
    pub fn identity(is_right: bool) -> AugParams {
        AugParams {
            tx: 0.0,
            ty: 0.0,
            scale: 1.0,
            rot: 0.0,
            flip: !is_right,
            color_scale: [1.0; 3],
        }
    }

    /// The parameters of item `index` in epoch `epoch`, all from
    /// `Philox(seed, STREAM_AUGMENT, epoch, index)`: normals 0, 1, 2, 3 (words 0–3) drive
    /// `tx`, `ty`, `scale` and the rotation angle; 53-bit uniforms 4 (words 8, 9; the rotation
    /// gate `u ≤ ROT_AUG_RATE`) and 5, 6, 7 (words 10–15; colour R, G, B as Python's
    /// `random.uniform(1 − c, 1 + c) = lo + (hi − lo)·u`). The flip is `!is_right`.
    pub fn draw(cfg: &AugConfig, seed: u64, epoch: u64, index: u32, is_right: bool) -> AugParams {
        let p = Philox::new(seed, STREAM_AUGMENT, epoch, index);
        let n = |i: u64| p.normal(i) as f64;
        let (lo, hi) = (1.0 - cfg.color_scale, 1.0 + cfg.color_scale);
        let color = |i: u64| (lo + (hi - lo) * p.uniform_f64(i)) as f32;
        AugParams {
            tx: n(0).clamp(-1.0, 1.0) * cfg.trans_factor,
            ty: n(1).clamp(-1.0, 1.0) * cfg.trans_factor,
            scale: n(2).clamp(-1.0, 1.0) * cfg.scale_factor + 1.0,
            rot: if p.uniform_f64(4) <= cfg.rot_aug_rate {
                n(3).clamp(-2.0, 2.0) * cfg.rot_factor
            } else {
                0.0
            },
            flip: !is_right,
            color_scale: [color(5), color(6), color(7)],
        }
    }
}

/// The training crop side: `max(scale·200)` (square box, no 3:4 expansion; SPEC §1.2).
pub fn train_box_size(scale: [f64; 2]) -> f64 {
    (scale[0] * 200.0).max(scale[1] * 200.0)
}

/// 2D keypoints (image pixels) → crop coordinates in [−0.5, 0.5]: mirror x (`W − x − 1`) if
/// `flip`, apply the forward crop matrix `trans`, then `/size − 0.5`. Confidences unchanged.
pub fn transform_keypoints_2d(
    kp: &[[f32; 3]; NUM_KEYPOINTS],
    flip: bool,
    img_width: usize,
    trans: &[f64; 6],
    size: usize,
) -> [[f32; 3]; NUM_KEYPOINTS] {
    let mut out = *kp;
    let w = img_width as f32;
    for o in out.iter_mut() {
        let x = if flip { (w - o[0]) - 1.0 } else { o[0] } as f64;
        let y = o[1] as f64;
        let u = (trans[0] * x + trans[1] * y + trans[2]) as f32;
        let v = (trans[3] * x + trans[4] * y + trans[5]) as f32;
        o[0] = u / size as f32 - 0.5;
        o[1] = v / size as f32 - 0.5;
    }
    out
}

/// 3D keypoints: `x ← −x` if `flip`, then `p ← Rz(−rot)·p`. Confidences unchanged. (The
/// reference writes the negation as `1 − x − 1`, which in float32 is off by up to half an ulp
/// of 1, 6·10⁻⁸ m; the exact negation keeps the flip an involution.)
pub fn transform_keypoints_3d(
    kp: &[[f32; 4]; NUM_KEYPOINTS],
    flip: bool,
    rot_deg: f64,
) -> [[f32; 4]; NUM_KEYPOINTS] {
    let mut out = *kp;
    if flip {
        for o in out.iter_mut() {
            o[0] = -o[0];
        }
    }
    if rot_deg != 0.0 {
        let a = -rot_deg * PI / 180.0;
        let (sn, cs) = a.sin_cos();
        for o in out.iter_mut() {
            let (x, y, z) = (o[0] as f64, o[1] as f64, o[2] as f64);
            o[0] = (cs * x + -sn * y + 0.0 * z) as f32;
            o[1] = (sn * x + cs * y + 0.0 * z) as f32;
        }
    }
    out
}

/// MANO parameters: if `flip`, negate components 1 and 2 of every 3-vector of `global_orient`
/// and `hand_pose`; then `global_orient ← Rodrigues⁻¹(Rz(−rot)·Rodrigues(global_orient))`
/// (always, as the reference does, so even `rot = 0` canonicalises the angle to [0, π]).
pub fn transform_mano(p: &ManoParams, flip: bool, rot_deg: f64) -> ManoParams {
    let mut out = *p;
    if flip {
        for v in out
            .global_orient
            .chunks_exact_mut(3)
            .chain(out.hand_pose.chunks_exact_mut(3))
        {
            v[1] = -v[1];
            v[2] = -v[2];
        }
    }
    let a = -rot_deg * (PI / 180.0);
    let (sn, cs) = a.sin_cos();
    let rz = [cs, -sn, 0.0, sn, cs, 0.0, 0.0, 0.0, 1.0];
    let g = out.global_orient.map(|v| v as f64);
    let r = matmul3(&rz, &rodrigues(g));
    out.global_orient = rodrigues_inv(&r).map(|v| v as f32);
    out
}

fn matmul3(a: &[f64; 9], b: &[f64; 9]) -> [f64; 9] {
    let mut c = [0f64; 9];
    for i in 0..3 {
        for j in 0..3 {
            c[i * 3 + j] = a[i * 3] * b[j] + a[i * 3 + 1] * b[3 + j] + a[i * 3 + 2] * b[6 + j];
        }
    }
    c
}

/// `cv2.Rodrigues` vector → matrix (row-major): `R = cos θ·I + (1 − cos θ)·k kᵀ + sin θ·[k]×`,
/// the identity when `θ = |r| < DBL_EPSILON`.
pub fn rodrigues(r: [f64; 3]) -> [f64; 9] {
    let theta = (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt();
    if theta < f64::EPSILON {
        return [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    }
    let (s, c) = theta.sin_cos();
    let c1 = 1.0 - c;
    let [x, y, z] = r.map(|v| v / theta);
    [
        c + c1 * x * x,
        c1 * x * y - s * z,
        c1 * x * z + s * y,
        c1 * x * y + s * z,
        c + c1 * y * y,
        c1 * y * z - s * x,
        c1 * x * z - s * y,
        c1 * y * z + s * x,
        c + c1 * z * z,
    ]
}

/// `cv2.Rodrigues` matrix → vector for a rotation matrix (OpenCV first re-orthonormalises with
/// an SVD, a no-op at f64 precision for the products formed here), including its handling of
/// angles near 0 (`s < 1e-5`, `c > 0` → zero vector) and near π.
pub fn rodrigues_inv(m: &[f64; 9]) -> [f64; 3] {
    let r = |i: usize, j: usize| m[i * 3 + j];
    let (rx, ry, rz) = (r(2, 1) - r(1, 2), r(0, 2) - r(2, 0), r(1, 0) - r(0, 1));
    let s = ((rx * rx + ry * ry + rz * rz) * 0.25).sqrt();
    let c = ((r(0, 0) + r(1, 1) + r(2, 2) - 1.0) * 0.5).clamp(-1.0, 1.0);
    let mut theta = c.acos();
    if s < 1e-5 {
        if c > 0.0 {
            return [0.0; 3];
        }
        let sgn = |v: f64| if v < 0.0 { -1.0 } else { 1.0 };
        let rx = ((r(0, 0) + 1.0) * 0.5).max(0.0).sqrt();
        let ry = ((r(1, 1) + 1.0) * 0.5).max(0.0).sqrt() * sgn(r(0, 1));
        let mut rz = ((r(2, 2) + 1.0) * 0.5).max(0.0).sqrt() * sgn(r(0, 2));
        if rx.abs() < ry.abs() && rx.abs() < rz.abs() && (r(1, 2) > 0.0) != (ry * rz > 0.0) {
            rz = -rz;
        }
        theta /= (rx * rx + ry * ry + rz * rz).sqrt();
        return [rx * theta, ry * theta, rz * theta];
    }
    let vth = 1.0 / (2.0 * s) * theta;
    [rx * vth, ry * vth, rz * vth]
}

/// One training example, as the losses see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// `[3, size, size]`, normalised.
    pub img: Vec<f32>,
    /// `[x, y, conf]`, crop coordinates in [−0.5, 0.5].
    pub keypoints_2d: [[f32; 3]; NUM_KEYPOINTS],
    /// `[x, y, z, conf]`, metres, in the augmented camera frame.
    pub keypoints_3d: [[f32; 4]; NUM_KEYPOINTS],
    pub mano: ManoParams,
    pub has_mano: HasMano,
    /// Forward crop matrix (source pixel → crop pixel, in the mirrored image for a flip).
    pub trans: [f64; 6],
    pub params: AugParams,
}

/// `get_example` for one (filtered) item and its image, in the reference's order: translate
/// the centre → 3D keypoints → mirror + warp → MANO parameters → colour + normalise → 2D
/// keypoints.
pub fn make_example(a: &Annotation, img: &RgbImage, p: &AugParams, size: usize) -> Example {
    let s = train_box_size(a.scale);
    let cx = a.center[0] + s * p.tx;
    let cy = a.center[1] + s * p.ty;
    let keypoints_3d = transform_keypoints_3d(&a.keypoints_3d, p.flip, p.rot);
    let (crop, trans) = if p.flip {
        let m = crop_affine([flip_x(cx, img.width), cy], s, size, p.rot, p.scale);
        (
            warp_affine_bilinear(&flip_horizontal(img), &m, size, size),
            m,
        )
    } else {
        let m = crop_affine([cx, cy], s, size, p.rot, p.scale);
        (warp_affine_bilinear(img, &m, size, size), m)
    };
    let mano = transform_mano(&a.mano, p.flip, p.rot);
    let img_out = normalize_crop_scaled(&crop, size, p.color_scale);
    let keypoints_2d = transform_keypoints_2d(&a.keypoints_2d, p.flip, img.width, &trans, size);
    Example {
        img: img_out,
        keypoints_2d,
        keypoints_3d,
        mano,
        has_mano: a.has_mano,
        trans,
        params: *p,
    }
}
