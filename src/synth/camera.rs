//! The pinhole camera of the rasteriser and the overlays, in the engine's conventions (SPEC §4).
//!
//! **Axes.** Camera frame = the MANO frame translated by `t` (no rotation, as HaMeR's
//! `perspective_projection` with `R = I`): x to the right of the image, y down the image, z away
//! from the camera into the scene (OpenCV). A point `P` (model frame, metres) is seen at
//! `X = P + t` and projects to `u = fx·X_x/X_z + cx`, `v = fy·X_y/X_z + cy`. Only `X_z > 0` is in
//! front of the camera.
//!
//! **Pixels.** `(u, v)` are in the engine's pixel convention: the centre of pixel column `i`, row
//! `j` lies at `(i, j)` (OpenCV; the crop warp of SPEC §1.3 and the `keypoints_2d` of `infer`
//! use it). In "corner" coordinates, where the image spans `[0, W] × [0, H]`, that centre is at
//! `(i + 0.5, j + 0.5)`.
//!
//! * Crop camera ([`Camera::crop`]): `fx = fy = focal` (the config's `focal_length`, in pixels of
//!   the `size`-pixel crop: HaMeR's 5000 px over 256 px), principal point `(size/2, size/2)` =
//!   (128, 128) (SPEC §1.3: the crop centre is at 128, not 127.5), `t = cam_t`. Then `u/256 − 0.5` is exactly the
//!   model's `pred_keypoints_2d` (`f' = 5000/256`, normalised crop coordinates).
//! * Full-image camera ([`Camera::full_image`]): HaMeR's `cam_crop_to_full`: focal
//!   `5000/256 · max(W, H)`, principal point `(W/2, H/2)`, `t = cam_t_full` (SPEC §4, as
//!   `infer` computes them and writes `focal_length_full`, `cam_t_full`).

use crate::error::{Error, Result};

/// HaMeR's focal length in pixels for a crop of [`HAMER_CROP`] pixels (SPEC §1.1, §4).
pub const HAMER_FOCAL: f64 = 5000.0;
/// The crop side HaMeR's focal length refers to.
pub const HAMER_CROP: f64 = 256.0;

/// A pinhole camera with a translation (see the module docs for the axis and pixel conventions).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Camera {
    /// Focal lengths in pixels.
    pub fx: f64,
    pub fy: f64,
    /// Principal point in pixels (pixel centres at integer coordinates).
    pub cx: f64,
    pub cy: f64,
    /// Translation added to model-frame points: `X = P + t`.
    pub t: [f64; 3],
}

impl Camera {
    /// The crop camera of a model with `focal` px at `size` px (HaMeR: 5000, 256) and the
    /// prediction's `cam_t`.
    pub fn crop(focal: f64, size: usize, cam_t: [f64; 3]) -> Camera {
        let c = size as f64 / 2.0;
        Camera {
            fx: focal,
            fy: focal,
            cx: c,
            cy: c,
            t: cam_t,
        }
    }

    /// The full-image camera of `cam_crop_to_full`: `focal_full` (as `infer` writes it in
    /// `focal_length_full`; HaMeR's is [`Camera::hamer_full_focal`]), principal point at the
    /// image centre `(W/2, H/2)`, translation `cam_t_full`.
    pub fn full_image(focal_full: f64, width: usize, height: usize, cam_t_full: [f64; 3]) -> Self {
        Camera {
            fx: focal_full,
            fy: focal_full,
            cx: width as f64 / 2.0,
            cy: height as f64 / 2.0,
            t: cam_t_full,
        }
    }

    /// HaMeR's full-image focal length, `5000/256 · max(W, H)`.
    pub fn hamer_full_focal(width: usize, height: usize) -> f64 {
        HAMER_FOCAL / HAMER_CROP * width.max(height) as f64
    }

    /// An error unless the focal lengths are positive and everything is finite.
    pub fn validate(&self) -> Result<()> {
        let finite = [self.fx, self.fy, self.cx, self.cy]
            .iter()
            .chain(self.t.iter())
            .all(|v| v.is_finite());
        if !finite || self.fx <= 0.0 || self.fy <= 0.0 {
            return Err(Error::Input(format!(
                "camera {self:?}: focal lengths must be positive and every value finite"
            )));
        }
        Ok(())
    }

    /// A model-frame point in the camera frame, `P + t`.
    pub fn to_camera(&self, p: [f32; 3]) -> [f64; 3] {
        [
            p[0] as f64 + self.t[0],
            p[1] as f64 + self.t[1],
            p[2] as f64 + self.t[2],
        ]
    }

    /// Projects a camera-frame point; `None` unless it is in front of the camera (`z > 0`) and
    /// the result is finite.
    pub fn project_camera(&self, x: [f64; 3]) -> Option<[f64; 2]> {
        if x[2].is_nan() || x[2] <= 0.0 {
            return None;
        }
        let uv = [
            self.fx * x[0] / x[2] + self.cx,
            self.fy * x[1] / x[2] + self.cy,
        ];
        (uv[0].is_finite() && uv[1].is_finite()).then_some(uv)
    }

    /// Projects a model-frame point (see [`Camera::project_camera`]).
    pub fn project(&self, p: [f32; 3]) -> Option<[f64; 2]> {
        self.project_camera(self.to_camera(p))
    }

    /// The 2×3 Jacobian `∂(u, v)/∂P` of the projection at the model-frame point `p`, rows u, v:
    /// `[[fx/z, 0, −fx·x/z²], [0, fy/z, −fy·y/z²]]` at `X = P + t`. `None` behind the camera.
    pub fn jacobian(&self, p: [f32; 3]) -> Option<[[f64; 3]; 2]> {
        let x = self.to_camera(p);
        self.project_camera(x)?;
        let iz = 1.0 / x[2];
        Some([
            [self.fx * iz, 0.0, -self.fx * x[0] * iz * iz],
            [0.0, self.fy * iz, -self.fy * x[1] * iz * iz],
        ])
    }

    /// The first-order image-plane covariance `J Σ Jᵀ` (px²) of a 3D point at `p` with
    /// covariance `cov` (3×3 row-major, m²), as `[σuu, σuv, σvv]`. `None` behind the camera or
    /// for a non-finite covariance.
    pub fn project_cov(&self, p: [f32; 3], cov: &[f64; 9]) -> Option<[f64; 3]> {
        let j = self.jacobian(p)?;
        // JΣ (2×3), then (JΣ)Jᵀ.
        let mut js = [[0.0f64; 3]; 2];
        for (r, row) in js.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = (0..3).map(|k| j[r][k] * cov[k * 3 + c]).sum();
            }
        }
        let e = |r: usize, c: usize| -> f64 { (0..3).map(|k| js[r][k] * j[c][k]).sum() };
        let out = [e(0, 0), 0.5 * (e(0, 1) + e(1, 0)), e(1, 1)];
        out.iter().all(|v| v.is_finite()).then_some(out)
    }
}

/// The 21 diagonal 3×3 blocks (per joint, row-major) of a flat row-major `(3n)×(3n)` joint
/// covariance such as `infer`'s 63×63 `keypoint_3d_cov`; an error for a wrong length.
pub fn joint_blocks(cov: &[f32], joints: usize) -> Result<Vec<[f64; 9]>> {
    let n = 3 * joints;
    if cov.len() != n * n {
        return Err(Error::Input(format!(
            "joint covariance has {} values, expected {n}×{n}",
            cov.len()
        )));
    }
    Ok((0..joints)
        .map(|j| {
            let mut b = [0.0f64; 9];
            for r in 0..3 {
                for c in 0..3 {
                    b[r * 3 + c] = cov[(3 * j + r) * n + 3 * j + c] as f64;
                }
            }
            b
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_camera_reproduces_normalised_keypoints() {
        // SPEC §4: pred_keypoints_2d = f'·X/Z with f' = 5000/256, in pixel/256 − 0.5 units.
        let cam = Camera::crop(5000.0, 256, [0.01, -0.02, 40.0]);
        let p = [0.03f32, 0.05, 0.1];
        let x = cam.to_camera(p);
        let kp = [5000.0 / 256.0 * x[0] / x[2], 5000.0 / 256.0 * x[1] / x[2]];
        let uv = cam.project(p).unwrap();
        assert!((uv[0] / 256.0 - 0.5 - kp[0]).abs() < 1e-12);
        assert!((uv[1] / 256.0 - 0.5 - kp[1]).abs() < 1e-12);
    }

    #[test]
    fn behind_the_camera_projects_to_nothing() {
        let cam = Camera::crop(5000.0, 256, [0.0, 0.0, 0.0]);
        assert!(cam.project([0.0, 0.0, -1.0]).is_none());
        assert!(cam.project([0.0, 0.0, 0.0]).is_none());
        assert!(cam.jacobian([0.0, 0.0, f32::NAN]).is_none());
        assert!(cam.validate().is_ok());
        let bad = Camera { fx: -1.0, ..cam };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn joint_blocks_pick_the_diagonal() {
        let n = 6;
        let cov: Vec<f32> = (0..n * n).map(|i| i as f32).collect();
        let b = joint_blocks(&cov, 2).unwrap();
        assert_eq!(b[0][..3], [0.0, 1.0, 2.0]);
        assert_eq!(b[1][0], (3 * n + 3) as f64);
        assert_eq!(b[1][8], (5 * n + 5) as f64);
        assert!(joint_blocks(&cov, 3).is_err());
    }
}
