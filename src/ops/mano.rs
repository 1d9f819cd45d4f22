//! The MANO layer (SPEC §5.3–5.4, smplx 0.1.28 `lbs` with rotation-matrix input): shape and pose
//! blend shapes, joint regression, the kinematic chain, linear blend skinning, fingertip vertices
//! and the OpenPose joint order.

use super::linear::{matmul_strided_cpu, Par};
use rayon::prelude::*;

/// Number of MANO joints in the kinematic tree.
pub const NUM_JOINTS: usize = 16;
/// Number of output keypoints (16 joints + 5 fingertips).
pub const NUM_KEYPOINTS: usize = 21;
/// Length of the pose feature: 15 non-root joints × 9.
pub const POSE_FEATURES: usize = (NUM_JOINTS - 1) * 9;
/// MANO's kinematic tree (root −1).
pub const PARENTS: [i64; NUM_JOINTS] = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14];
/// smplx's fingertip vertices of MANO_RIGHT, thumb, index, middle, ring, pinky.
pub const TIP_VERTICES: [usize; 5] = [744, 320, 443, 554, 671];
/// 21 keypoints (16 joints then 5 tips) → OpenPose/FreiHAND order.
pub const JOINT_MAP: [usize; NUM_KEYPOINTS] = [
    0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20,
];

/// Borrowed MANO buffers, in the checkpoint layout.
#[derive(Clone, Copy)]
pub struct ManoData<'a> {
    pub num_verts: usize,
    pub num_betas: usize,
    /// `[V, 3]`
    pub v_template: &'a [f32],
    /// `[V, 3, num_betas]`
    pub shapedirs: &'a [f32],
    /// `[135, 3V]`
    pub posedirs: &'a [f32],
    /// `[16, V]`
    pub j_regressor: &'a [f32],
    /// `[V, 16]`
    pub lbs_weights: &'a [f32],
    /// Parent of each joint; `parents[0]` is the root and ignored; `parents[j] < j`.
    pub parents: &'a [usize; NUM_JOINTS],
    pub tips: &'a [usize; 5],
}

/// A 3×4 matrix `[M | t]` (row-major) standing for the affine map `x ↦ M·x + t`.
type Affine = [f32; 12];

/// Kinematic chain for one sample, written so that the identity pose is exact.
///
/// smplx builds `G_j = G_parent·[R_j | J_j − J_parent]` and the skinning transforms
/// `A_j = G_j·[I | −J_j]`. Equivalently `A_j = A_parent·L_j` with `L_j = [R_j | J_j − R_j·J_j]`,
/// and we carry `D_j = A_j − [I | 0]`:
/// `D_j = [R_j − I + D_p^R·R_j | t_j + D_p^R·t_j + D_p^t]`, `t_j = J_j − R_j·J_j`.
/// For identity rotations every `D_j` is exactly zero, so the rest pose reproduces the template
/// bit for bit; otherwise the result equals smplx's up to f32 rounding.
/// Returns the posed joints `J'_j = J_j + D_j^R·J_j + D_j^t` and the `D_j`.
pub fn rigid_chain(
    rot: &[f32],
    joints: &[f32],
    parents: &[usize; NUM_JOINTS],
) -> ([[f32; 3]; NUM_JOINTS], [Affine; NUM_JOINTS]) {
    let mut d = [[0f32; 12]; NUM_JOINTS];
    let mut posed = [[0f32; 3]; NUM_JOINTS];
    for j in 0..NUM_JOINTS {
        let r = &rot[j * 9..j * 9 + 9];
        let jj = [joints[j * 3], joints[j * 3 + 1], joints[j * 3 + 2]];
        let mut t = [0f32; 3];
        for row in 0..3 {
            t[row] =
                jj[row] - (r[row * 3] * jj[0] + r[row * 3 + 1] * jj[1] + r[row * 3 + 2] * jj[2]);
        }
        let mut dj = [0f32; 12];
        for row in 0..3 {
            for c in 0..3 {
                dj[row * 4 + c] = r[row * 3 + c] - if row == c { 1.0 } else { 0.0 };
            }
            dj[row * 4 + 3] = t[row];
        }
        if j > 0 {
            let dp = d[parents[j]];
            for row in 0..3 {
                let pr = [dp[row * 4], dp[row * 4 + 1], dp[row * 4 + 2]];
                for c in 0..3 {
                    dj[row * 4 + c] += pr[0] * r[c] + pr[1] * r[3 + c] + pr[2] * r[6 + c];
                }
                dj[row * 4 + 3] += pr[0] * t[0] + pr[1] * t[1] + pr[2] * t[2] + dp[row * 4 + 3];
            }
        }
        for row in 0..3 {
            posed[j][row] = jj[row]
                + (dj[row * 4] * jj[0]
                    + dj[row * 4 + 1] * jj[1]
                    + dj[row * 4 + 2] * jj[2]
                    + dj[row * 4 + 3]);
        }
        d[j] = dj;
    }
    (posed, d)
}

/// CPU twin of the MANO forward. `rotmats` `[b, 16, 3, 3]` (global orient first), `betas`
/// `[b, num_betas]` → `verts` `[b, V, 3]` and `keypoints` `[b, 21, 3]` (OpenPose order).
pub fn mano_fwd_cpu(
    m: &ManoData,
    rotmats: &[f32],
    betas: &[f32],
    b: usize,
    verts: &mut [f32],
    keypoints: &mut [f32],
) {
    let (nv, nb) = (m.num_verts, m.num_betas);
    let n3 = 3 * nv;
    // v_shaped = v_template + shapedirs·β, as one GEMM over the batch: [b, nb] × [nb, 3V].
    let mut v_shaped = vec![0f32; b * n3];
    matmul_strided_cpu(
        b,
        n3,
        nb,
        betas,
        (nb, 1),
        m.shapedirs,
        (1, nb),
        &mut v_shaped,
        Par::Auto,
    );
    v_shaped.par_chunks_mut(n3).for_each(|row| {
        for (v, t) in row.iter_mut().zip(m.v_template) {
            *v += t;
        }
    });
    // Pose feature (R_j − I) for the 15 non-root joints, then v_posed = v_shaped + p·posedirs.
    let mut feat = vec![0f32; b * POSE_FEATURES];
    for bi in 0..b {
        for j in 1..NUM_JOINTS {
            for e in 0..9 {
                let eye = if e % 4 == 0 { 1.0 } else { 0.0 };
                feat[bi * POSE_FEATURES + (j - 1) * 9 + e] =
                    rotmats[(bi * NUM_JOINTS + j) * 9 + e] - eye;
            }
        }
    }
    let mut v_posed = vec![0f32; b * n3];
    matmul_strided_cpu(
        b,
        n3,
        POSE_FEATURES,
        &feat,
        (POSE_FEATURES, 1),
        m.posedirs,
        (n3, 1),
        &mut v_posed,
        Par::Auto,
    );
    verts
        .par_chunks_mut(n3)
        .zip(keypoints.par_chunks_mut(NUM_KEYPOINTS * 3))
        .zip(v_posed.par_chunks_mut(n3))
        .enumerate()
        .for_each(|(bi, ((out_v, out_k), vp))| {
            let vs = &v_shaped[bi * n3..(bi + 1) * n3];
            // Rest joints J = J_regressor · v_shaped.
            let mut joints = [0f32; NUM_JOINTS * 3];
            matmul_strided_cpu(
                NUM_JOINTS,
                3,
                nv,
                m.j_regressor,
                (nv, 1),
                vs,
                (3, 1),
                &mut joints,
                Par::Serial,
            );
            for (p, s) in vp.iter_mut().zip(vs) {
                *p += s;
            }
            let (posed, d) = rigid_chain(
                &rotmats[bi * NUM_JOINTS * 9..(bi + 1) * NUM_JOINTS * 9],
                &joints,
                m.parents,
            );
            // Linear blend skinning, v = Σ_j w_vj·A_j·(v_posed, 1), written as
            // v = v_posed + (Σ_j w_vj·D_j)·(v_posed, 1): the same when the weights sum to 1
            // (MANO's do), and exact for the rest pose.
            for v in 0..nv {
                let w = &m.lbs_weights[v * NUM_JOINTS..(v + 1) * NUM_JOINTS];
                let mut t = [0f32; 12];
                for (wj, dj) in w.iter().zip(&d) {
                    for e in 0..12 {
                        t[e] += wj * dj[e];
                    }
                }
                let p = &vp[v * 3..v * 3 + 3];
                for r in 0..3 {
                    out_v[v * 3 + r] = p[r]
                        + (t[r * 4] * p[0]
                            + t[r * 4 + 1] * p[1]
                            + t[r * 4 + 2] * p[2]
                            + t[r * 4 + 3]);
                }
            }
            // 16 posed joints + 5 fingertip vertices, then the OpenPose order.
            let mut all = [[0f32; 3]; NUM_KEYPOINTS];
            all[..NUM_JOINTS].copy_from_slice(&posed);
            for (k, &tip) in m.tips.iter().enumerate() {
                all[NUM_JOINTS + k] = [out_v[tip * 3], out_v[tip * 3 + 1], out_v[tip * 3 + 2]];
            }
            for (o, &src) in out_k.chunks_exact_mut(3).zip(JOINT_MAP.iter()) {
                o.copy_from_slice(&all[src]);
            }
        });
}
