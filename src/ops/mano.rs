//! The MANO layer (SPEC §5.3–5.4, smplx 0.1.28 `lbs` with rotation-matrix input): shape and pose
//! blend shapes, joint regression, the kinematic chain, linear blend skinning, fingertip vertices
//! and the OpenPose joint order, and the backward pass ([`mano_bwd_cpu`], in `mano/bwd.rs`).
//!
//! The arithmetic is written once, generic over [`Scalar`]: `mano_fwd_cpu` is its f32 instance,
//! and the finite-difference tests of the backward run the same code in f64.

use super::geometry::Real;
use super::linear::{matmul_strided_cpu, Par, Strides};
use rayon::prelude::*;

mod bwd;
pub use bwd::mano_bwd_cpu;

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

/// A [`Real`] with a GEMM: f32 uses the crate's (`matmul_strided_cpu`), f64 a plain loop (for
/// the finite-difference tests; the problems there are small).
pub trait Scalar: Real {
    /// `c[m,n] = a[m,k] · b[k,n]`, operands given by their strides, `c` row-major.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        m: usize,
        n: usize,
        k: usize,
        a: &[Self],
        sa: Strides,
        b: &[Self],
        sb: Strides,
        c: &mut [Self],
        par: Par,
    );
}

impl Scalar for f32 {
    fn matmul(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        sa: Strides,
        b: &[f32],
        sb: Strides,
        c: &mut [f32],
        par: Par,
    ) {
        matmul_strided_cpu(m, n, k, a, sa, b, sb, c, par)
    }
}

impl Scalar for f64 {
    fn matmul(
        m: usize,
        n: usize,
        k: usize,
        a: &[f64],
        (a_rs, a_cs): Strides,
        b: &[f64],
        (b_rs, b_cs): Strides,
        c: &mut [f64],
        _par: Par,
    ) {
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|l| a[i * a_rs + l * a_cs] * b[l * b_rs + j * b_cs])
                    .sum();
            }
        }
    }
}

/// The MANO buffers as the generic code reads them ([`ManoData`] in f32, a converted copy in the
/// f64 tests).
#[derive(Clone, Copy)]
pub(crate) struct Buffers<'a, T> {
    pub nv: usize,
    pub nb: usize,
    pub v_template: &'a [T],
    pub shapedirs: &'a [T],
    pub posedirs: &'a [T],
    pub j_regressor: &'a [T],
    pub lbs_weights: &'a [T],
    pub parents: &'a [usize; NUM_JOINTS],
    pub tips: &'a [usize; 5],
}

impl<'a> From<&ManoData<'a>> for Buffers<'a, f32> {
    fn from(m: &ManoData<'a>) -> Self {
        Buffers {
            nv: m.num_verts,
            nb: m.num_betas,
            v_template: m.v_template,
            shapedirs: m.shapedirs,
            posedirs: m.posedirs,
            j_regressor: m.j_regressor,
            lbs_weights: m.lbs_weights,
            parents: m.parents,
            tips: m.tips,
        }
    }
}

/// A 3×4 matrix `[M | t]` (row-major) standing for the affine map `x ↦ M·x + t`.
type Affine<T> = [T; 12];

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
) -> ([[f32; 3]; NUM_JOINTS], [Affine<f32>; NUM_JOINTS]) {
    rigid_chain_g(rot, joints, parents)
}

/// `t_j = J_j − R_j·J_j` of one joint (`r` row-major 3×3).
fn chain_offset<T: Real>(r: &[T], jj: [T; 3]) -> [T; 3] {
    let mut t = [T::ZERO; 3];
    for row in 0..3 {
        t[row] = jj[row] - (r[row * 3] * jj[0] + r[row * 3 + 1] * jj[1] + r[row * 3 + 2] * jj[2]);
    }
    t
}

/// Generic [`rigid_chain`].
pub(crate) fn rigid_chain_g<T: Real>(
    rot: &[T],
    joints: &[T],
    parents: &[usize; NUM_JOINTS],
) -> ([[T; 3]; NUM_JOINTS], [Affine<T>; NUM_JOINTS]) {
    let mut d = [[T::ZERO; 12]; NUM_JOINTS];
    let mut posed = [[T::ZERO; 3]; NUM_JOINTS];
    for j in 0..NUM_JOINTS {
        let r = &rot[j * 9..j * 9 + 9];
        let jj = [joints[j * 3], joints[j * 3 + 1], joints[j * 3 + 2]];
        let t = chain_offset(r, jj);
        let mut dj = [T::ZERO; 12];
        for row in 0..3 {
            for c in 0..3 {
                dj[row * 4 + c] = r[row * 3 + c] - if row == c { T::ONE } else { T::ZERO };
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

/// The blend shapes of a batch: `v_shaped = v_template + shapedirs·β` and
/// `v_posed = v_shaped + p·posedirs` with the pose feature `p = (R_j − I)_{j ≥ 1}`, each
/// `[b, 3V]`, as batch GEMMs.
pub(crate) fn blend_shapes<T: Scalar>(
    m: &Buffers<T>,
    rotmats: &[T],
    betas: &[T],
    b: usize,
) -> (Vec<T>, Vec<T>) {
    let (nv, nb) = (m.nv, m.nb);
    let n3 = 3 * nv;
    // v_shaped = v_template + shapedirs·β, as one GEMM over the batch: [b, nb] × [nb, 3V].
    let mut v_shaped = vec![T::ZERO; b * n3];
    T::matmul(
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
        for (v, &t) in row.iter_mut().zip(m.v_template) {
            *v += t;
        }
    });
    // Pose feature (R_j − I) for the 15 non-root joints, then v_posed = v_shaped + p·posedirs.
    let mut feat = vec![T::ZERO; b * POSE_FEATURES];
    for bi in 0..b {
        for j in 1..NUM_JOINTS {
            for e in 0..9 {
                let eye = if e % 4 == 0 { T::ONE } else { T::ZERO };
                feat[bi * POSE_FEATURES + (j - 1) * 9 + e] =
                    rotmats[(bi * NUM_JOINTS + j) * 9 + e] - eye;
            }
        }
    }
    let mut v_posed = vec![T::ZERO; b * n3];
    T::matmul(
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
    v_posed
        .par_chunks_mut(n3)
        .zip(v_shaped.par_chunks(n3))
        .for_each(|(vp, vs)| {
            for (p, &s) in vp.iter_mut().zip(vs) {
                *p += s;
            }
        });
    (v_shaped, v_posed)
}

/// Rest joints of one sample, `J = J_regressor · v_shaped` (`[16, 3]`).
pub(crate) fn rest_joints<T: Scalar>(m: &Buffers<T>, v_shaped: &[T]) -> [T; NUM_JOINTS * 3] {
    let mut joints = [T::ZERO; NUM_JOINTS * 3];
    T::matmul(
        NUM_JOINTS,
        3,
        m.nv,
        m.j_regressor,
        (m.nv, 1),
        v_shaped,
        (3, 1),
        &mut joints,
        Par::Serial,
    );
    joints
}

/// The blended transform of one vertex, `Σ_j w_vj·D_j` (summed in joint order).
pub(crate) fn skin_transform<T: Real>(w: &[T], d: &[Affine<T>; NUM_JOINTS]) -> Affine<T> {
    let mut t = [T::ZERO; 12];
    for (&wj, dj) in w.iter().zip(d) {
        for e in 0..12 {
            t[e] += wj * dj[e];
        }
    }
    t
}

/// Generic [`mano_fwd_cpu`].
pub(crate) fn mano_fwd_g<T: Scalar>(
    m: &Buffers<T>,
    rotmats: &[T],
    betas: &[T],
    b: usize,
    verts: &mut [T],
    keypoints: &mut [T],
) {
    let nv = m.nv;
    let n3 = 3 * nv;
    let (v_shaped, v_posed) = blend_shapes(m, rotmats, betas, b);
    verts
        .par_chunks_mut(n3)
        .zip(keypoints.par_chunks_mut(NUM_KEYPOINTS * 3))
        .zip(v_posed.par_chunks(n3))
        .enumerate()
        .for_each(|(bi, ((out_v, out_k), vp))| {
            let joints = rest_joints(m, &v_shaped[bi * n3..(bi + 1) * n3]);
            let (posed, d) = rigid_chain_g(
                &rotmats[bi * NUM_JOINTS * 9..(bi + 1) * NUM_JOINTS * 9],
                &joints,
                m.parents,
            );
            // Linear blend skinning, v = Σ_j w_vj·A_j·(v_posed, 1), written as
            // v = v_posed + (Σ_j w_vj·D_j)·(v_posed, 1): the same when the weights sum to 1
            // (MANO's do), and exact for the rest pose.
            for v in 0..nv {
                let t = skin_transform(&m.lbs_weights[v * NUM_JOINTS..(v + 1) * NUM_JOINTS], &d);
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
            let mut all = [[T::ZERO; 3]; NUM_KEYPOINTS];
            all[..NUM_JOINTS].copy_from_slice(&posed);
            for (k, &tip) in m.tips.iter().enumerate() {
                all[NUM_JOINTS + k] = [out_v[tip * 3], out_v[tip * 3 + 1], out_v[tip * 3 + 2]];
            }
            for (o, &src) in out_k.chunks_exact_mut(3).zip(JOINT_MAP.iter()) {
                o.copy_from_slice(&all[src]);
            }
        });
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
    mano_fwd_g(&Buffers::from(m), rotmats, betas, b, verts, keypoints)
}
