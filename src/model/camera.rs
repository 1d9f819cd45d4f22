//! The camera of SPEC §4: weak-perspective `(s, tx, ty)` → translation, and the perspective
//! projection of the 3D keypoints into normalised crop coordinates.

use crate::error::Result;
use crate::ops::geometry::{cam_translation, project_cpu};
use crate::tensor::Tensor;

/// `cam [B, 3]` → `cam_t [B, 3]`.
pub fn cam_t(cam: &Tensor, focal_length: f32, image_size: f32) -> Result<Tensor> {
    let b = cam.dim(0);
    let mut out = Vec::with_capacity(b * 3);
    for c in cam.data().chunks_exact(3) {
        out.extend_from_slice(&cam_translation(
            &[c[0], c[1], c[2]],
            focal_length,
            image_size,
        ));
    }
    Tensor::from_vec(&[b, 3], out)
}

/// `points [B, N, 3]` translated by `cam_t [B, 3]` → `[B, N, 2]` with focal `f / image_size`.
pub fn project(
    points: &Tensor,
    cam_t: &Tensor,
    focal_length: f32,
    image_size: f32,
) -> Result<Tensor> {
    let (b, n) = (points.dim(0), points.dim(1));
    let mut out = Tensor::zeros(&[b, n, 2]);
    let f = focal_length / image_size;
    for ((p, t), o) in points
        .data()
        .chunks(n * 3)
        .zip(cam_t.data().chunks_exact(3))
        .zip(out.data_mut().chunks_mut(n * 2))
    {
        project_cpu(p, &[t[0], t[1], t[2]], f, o);
    }
    Ok(out)
}
