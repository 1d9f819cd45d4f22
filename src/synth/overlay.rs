//! Result overlays: the shaded predicted mesh laid semi-transparently over an image, the
//! 21-keypoint skeleton, and per joint the image-plane nσ ellipse of its 3D covariance
//! (`J Σ Jᵀ`, the first-order projection through the camera; see [`Camera::project_cov`]).
//!
//! Keypoints are in the OpenPose / FreiHAND order of SPEC §5.4 (`JOINT_MAP` in `ops/mano.rs`):
//! 0 wrist, then thumb 1–4, index 5–8, middle 9–12, ring 13–16, pinky 17–20, each finger from its
//! base to its tip.

use super::camera::Camera;
use super::draw::{self, Ellipse, Rgb};
use super::raster::{MeshView, Shading, Target, MAX_SAMPLES_SIDE};
use crate::error::{Error, Result};
use crate::ops::image::RgbImage;

/// The 20 bones of the 21-keypoint skeleton (parent, child).
pub const BONES: [[usize; 2]; 20] = [
    [0, 1],
    [1, 2],
    [2, 3],
    [3, 4],
    [0, 5],
    [5, 6],
    [6, 7],
    [7, 8],
    [0, 9],
    [9, 10],
    [10, 11],
    [11, 12],
    [0, 13],
    [13, 14],
    [14, 15],
    [15, 16],
    [0, 17],
    [17, 18],
    [18, 19],
    [19, 20],
];

/// Colours of the wrist, then of thumb, index, middle, ring and pinky.
pub const FINGER_COLORS: [Rgb; 6] = [
    [255, 255, 255],
    [230, 60, 50],
    [240, 170, 30],
    [60, 190, 70],
    [40, 150, 230],
    [170, 80, 220],
];

/// The colour of keypoint `k` (21-keypoint order): its finger's, the wrist's for 0 and beyond.
pub fn keypoint_color(k: usize) -> Rgb {
    if (1..=20).contains(&k) {
        FINGER_COLORS[1 + (k - 1) / 4]
    } else {
        FINGER_COLORS[0]
    }
}

/// How an overlay looks.
#[derive(Clone, Copy, Debug)]
pub struct OverlayStyle {
    pub shading: Shading,
    /// Opacity of the mesh over the image (0..1).
    pub mesh_opacity: f32,
    /// Samples per pixel side for the mesh's anti-aliasing (1..=8).
    pub supersample: usize,
    /// Bone line width and joint dot radius in pixels (0: not drawn).
    pub bone_width: f64,
    pub joint_radius: f64,
    /// The ellipse drawn per joint is the `n_sigma` one (2 by default), `ellipse_width` px wide.
    pub n_sigma: f64,
    pub ellipse_width: f64,
}

impl Default for OverlayStyle {
    fn default() -> Self {
        OverlayStyle {
            shading: Shading::default(),
            mesh_opacity: 0.7,
            supersample: 2,
            bone_width: 2.0,
            joint_radius: 2.5,
            n_sigma: 2.0,
            ellipse_width: 1.5,
        }
    }
}

impl OverlayStyle {
    /// Line widths and radii scaled for hands that span about `side` px (the defaults suit the
    /// 256 px crop of a hand); never below the defaults.
    pub fn scaled_for(side: usize) -> Self {
        let k = (side as f64 / 256.0).clamp(1.0, 64.0);
        let d = OverlayStyle::default();
        OverlayStyle {
            bone_width: d.bone_width * k,
            joint_radius: d.joint_radius * k,
            ellipse_width: d.ellipse_width * k,
            ..d
        }
    }
}

/// One hand to draw: its mesh and keypoints (model frame, metres), the camera that sees it, and
/// optionally per keypoint a 3×3 covariance (row-major, m²; e.g. [`super::camera::joint_blocks`]
/// of `infer`'s 63×63 `keypoint_3d_cov`).
#[derive(Clone, Copy, Debug)]
pub struct HandDraw<'a> {
    pub mesh: MeshView<'a>,
    pub cam: Camera,
    pub keypoints_3d: &'a [[f32; 3]],
    pub joint_cov: Option<&'a [[f64; 9]]>,
}

/// One hand over `img`: see [`overlay_hands`].
pub fn overlay(
    img: &RgbImage,
    mesh: &MeshView,
    cam: &Camera,
    keypoints_3d: &[[f32; 3]],
    joint_cov: Option<&[[f64; 9]]>,
    style: &OverlayStyle,
) -> Result<RgbImage> {
    overlay_hands(
        img,
        &[HandDraw {
            mesh: *mesh,
            cam: *cam,
            keypoints_3d,
            joint_cov,
        }],
        style,
    )
}

/// `img` with every hand's shaded mesh (all meshes share one z-buffer, so hands occlude each
/// other) composited at `style.mesh_opacity`, then per hand the skeleton (when it has 21
/// keypoints), the joints, and each joint's projected nσ covariance ellipse. Keypoints behind
/// the camera are left out. An error for a malformed mesh or camera, or a covariance list whose
/// length differs from the keypoints'.
pub fn overlay_hands(img: &RgbImage, hands: &[HandDraw], style: &OverlayStyle) -> Result<RgbImage> {
    for h in hands {
        h.mesh.validate()?;
        h.cam.validate()?;
        if let Some(c) = h.joint_cov {
            if c.len() != h.keypoints_3d.len() {
                return Err(Error::Input(format!(
                    "{} joint covariances for {} keypoints",
                    c.len(),
                    h.keypoints_3d.len()
                )));
            }
        }
    }
    let mut out = img.clone();
    // The meshes are rendered in the window of the image that they can cover, so the cost
    // follows the hands' size, not the image's.
    if let Some([x0, y0, x1, y1]) = mesh_window(hands, img.width, img.height, &style.shading) {
        let (w, h) = (x1 - x0 + 1, y1 - y0 + 1);
        let ss = style.supersample.min(MAX_SAMPLES_SIDE / w.max(h)).max(1);
        let mut target = Target::new(w, h, ss)?;
        for hd in hands {
            let cam = Camera {
                cx: hd.cam.cx - x0 as f64,
                cy: hd.cam.cy - y0 as f64,
                ..hd.cam
            };
            target.draw(&hd.mesh, &cam, &style.shading)?;
        }
        target
            .resolve()
            .composite_onto(&mut out, [x0, y0], style.mesh_opacity);
    }
    for h in hands {
        draw_keypoints(&mut out, h, style);
    }
    Ok(out)
}

/// The pixel window `[x0, y0, x1, y1]` (inclusive) that holds every visible mesh's projection
/// (plus a pixel), the whole image when a vertex is at or behind the near plane, `None` when no
/// mesh can show.
fn mesh_window(hands: &[HandDraw], w: usize, h: usize, s: &Shading) -> Option<[usize; 4]> {
    let mut lo = [f64::INFINITY; 2];
    let mut hi = [f64::NEG_INFINITY; 2];
    for hd in hands.iter().filter(|hd| !hd.mesh.faces.is_empty()) {
        for &p in hd.mesh.vertices {
            let x = hd.cam.to_camera(p);
            if !x.iter().all(|v| v.is_finite()) {
                continue;
            }
            let Some(uv) = (x[2] > s.near as f64)
                .then(|| hd.cam.project_camera(x))
                .flatten()
            else {
                return Some([0, 0, w - 1, h - 1]);
            };
            for k in 0..2 {
                lo[k] = lo[k].min(uv[k]);
                hi[k] = hi[k].max(uv[k]);
            }
        }
    }
    let (wm, hm) = ((w - 1) as f64, (h - 1) as f64);
    if lo[0] > hi[0] || hi[0] < -1.0 || hi[1] < -1.0 || lo[0] > wm + 1.0 || lo[1] > hm + 1.0 {
        return None;
    }
    Some([
        (lo[0] - 2.0).floor().clamp(0.0, wm) as usize,
        (lo[1] - 2.0).floor().clamp(0.0, hm) as usize,
        (hi[0] + 2.0).ceil().clamp(0.0, wm) as usize,
        (hi[1] + 2.0).ceil().clamp(0.0, hm) as usize,
    ])
}

/// Skeleton, joints and ellipses of one hand.
fn draw_keypoints(out: &mut RgbImage, h: &HandDraw, style: &OverlayStyle) {
    let uv: Vec<Option<[f64; 2]>> = h.keypoints_3d.iter().map(|&p| h.cam.project(p)).collect();
    if uv.len() == 21 && style.bone_width > 0.0 {
        for [a, b] in BONES {
            if let (Some(p), Some(q)) = (uv[a], uv[b]) {
                draw::line(out, p, q, style.bone_width, keypoint_color(b), 0.9);
            }
        }
    }
    for (k, p) in uv.iter().enumerate() {
        let Some(p) = *p else { continue };
        if let Some(cov) = h.joint_cov {
            let e = h.cam.project_cov(h.keypoints_3d[k], &cov[k]);
            if let Some(e) = e.and_then(|c| Ellipse::from_cov(p, c, style.n_sigma)) {
                draw::ellipse(out, &e, style.ellipse_width, keypoint_color(k), 0.85);
            }
        }
        if style.joint_radius > 0.0 {
            draw::fill_circle(out, p, style.joint_radius + 0.75, [20, 20, 20], 0.8);
            draw::fill_circle(out, p, style.joint_radius, keypoint_color(k), 1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bones_form_the_openpose_tree() {
        // Every keypoint but the wrist has exactly one parent, the previous one of its finger
        // or the wrist for a finger base.
        for child in 1..21 {
            let parents: Vec<usize> = BONES
                .iter()
                .filter(|b| b[1] == child)
                .map(|b| b[0])
                .collect();
            let want = if (child - 1) % 4 == 0 { 0 } else { child - 1 };
            assert_eq!(parents, vec![want], "keypoint {child}");
        }
        assert_eq!(keypoint_color(4), FINGER_COLORS[1]);
        assert_eq!(keypoint_color(20), FINGER_COLORS[5]);
        assert_eq!(keypoint_color(0), FINGER_COLORS[0]);
    }

    #[test]
    fn covariance_count_must_match() {
        let img = RgbImage::new(8, 8);
        let mesh = MeshView::new(&[], &[]);
        let cam = Camera::crop(5000.0, 8, [0.0, 0.0, 10.0]);
        let kp = [[0.0f32; 3]; 2];
        let cov = [[0.0f64; 9]; 1];
        let style = OverlayStyle::default();
        assert!(overlay(&img, &mesh, &cam, &kp, Some(&cov), &style).is_err());
        let ok = overlay(&img, &mesh, &cam, &kp, None, &style).unwrap();
        assert_ne!(ok, img); // the joint dots
    }
}
