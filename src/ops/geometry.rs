//! Small geometry ops of the MANO head: 6D → rotation matrix (SPEC §3.3) and the camera
//! (SPEC §4).

/// 6D code `(a1, a2)` → rotation matrix with columns `b1, b2, b3` (Gram–Schmidt), row-major 3×3.
pub fn rot6d_to_rotmat(x: &[f32; 6]) -> [f32; 9] {
    let a1 = [x[0], x[1], x[2]];
    let a2 = [x[3], x[4], x[5]];
    let norm = |v: [f32; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(1e-12);
    let n1 = norm(a1);
    let b1 = [a1[0] / n1, a1[1] / n1, a1[2] / n1];
    let dot = b1[0] * a2[0] + b1[1] * a2[1] + b1[2] * a2[2];
    let u = [
        a2[0] - dot * b1[0],
        a2[1] - dot * b1[1],
        a2[2] - dot * b1[2],
    ];
    let n2 = norm(u);
    let b2 = [u[0] / n2, u[1] / n2, u[2] / n2];
    let b3 = [
        b1[1] * b2[2] - b1[2] * b2[1],
        b1[2] * b2[0] - b1[0] * b2[2],
        b1[0] * b2[1] - b1[1] * b2[0],
    ];
    [
        b1[0], b2[0], b3[0], b1[1], b2[1], b3[1], b1[2], b2[2], b3[2],
    ]
}

/// CPU twin of rot6d → rotmat over `n` codes: `x` `[n, 6]` → `out` `[n, 3, 3]`.
pub fn rot6d_to_rotmat_cpu(x: &[f32], out: &mut [f32]) {
    for (code, r) in x.chunks_exact(6).zip(out.chunks_exact_mut(9)) {
        let c: &[f32; 6] = code.try_into().unwrap_or(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        r.copy_from_slice(&rot6d_to_rotmat(c));
    }
}

/// Weak-perspective camera `(s, tx, ty)` → translation `(tx, ty, 2f / (S·s + 1e-9))`.
pub fn cam_translation(cam: &[f32; 3], focal_length: f32, image_size: f32) -> [f32; 3] {
    [
        cam[1],
        cam[2],
        2.0 * focal_length / (image_size * cam[0] + 1e-9),
    ]
}

/// Perspective projection of points `[n, 3]` translated by `t`, focal `f'` = f / S, principal
/// point 0: `(f'·X/Z, f'·Y/Z)` in normalised crop units.
pub fn project_cpu(points: &[f32], t: &[f32; 3], focal_norm: f32, out: &mut [f32]) {
    for (p, o) in points.chunks_exact(3).zip(out.chunks_exact_mut(2)) {
        let (x, y, z) = (p[0] + t[0], p[1] + t[1], p[2] + t[2]);
        o[0] = focal_norm * (x / z);
        o[1] = focal_norm * (y / z);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
