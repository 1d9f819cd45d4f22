//! Backward of the MANO layer (SPEC §5.3–5.4): the exact derivative of the computation in
//! `mano_fwd_g` (the `D_j` form of the chain and of the skinning), recomputing the forward
//! intermediates it needs.
//!
//! Per sample, with `g` the incoming gradients:
//! * keypoints → the 16 posed joints and the 5 fingertip vertices (`JOINT_MAP`, `tips`);
//! * skinning `v = v_p + T_v^R·v_p + T_v^t`, `T_v = Σ_j w_vj·D_j`:
//!   `g_{v_p} = g_v + T_v^{Rᵀ}·g_v`, `g_{D_j} += w_vj·[g_v·v_pᵀ | g_v]`;
//! * posed joints `J'_j = J_j + D_j^R·J_j + D_j^t`: `g_{D_j} += [g·J_jᵀ | g]`,
//!   `g_{J_j} += g + D_j^{Rᵀ}·g`;
//! * chain, children before parents: `D_j^R = R_j − I + D_p^R·R_j`,
//!   `D_j^t = t_j + D_p^R·t_j + D_p^t`, `t_j = J_j − R_j·J_j`;
//! * `g_{v_s} = J_regressorᵀ·g_J + g_{v_p}`.
//!
//! Then over the batch, as GEMMs: the pose feature `g_p = g_{v_p}·posedirsᵀ` (added to
//! `R_1..R_15`) and `g_β = g_{v_s}·shapedirs`.

use super::{
    blend_shapes, chain_offset, rest_joints, rigid_chain_g, skin_transform, Buffers, ManoData,
    Scalar, JOINT_MAP, NUM_JOINTS, NUM_KEYPOINTS, POSE_FEATURES,
};
use crate::ops::linear::Par;
use rayon::prelude::*;

/// Backward of [`super::mano_fwd_cpu`]. Inputs as for the forward plus the gradients of its
/// outputs, `d_verts` `[b, V, 3]` and `d_keypoints` `[b, 21, 3]`; writes (overwrites)
/// `d_rotmats` `[b, 16, 3, 3]` (every entry of each matrix a free variable) and `d_betas`
/// `[b, num_betas]`. Parallel over the batch; the big contractions are GEMMs.
#[allow(clippy::too_many_arguments)]
pub fn mano_bwd_cpu(
    m: &ManoData,
    rotmats: &[f32],
    betas: &[f32],
    b: usize,
    d_verts: &[f32],
    d_keypoints: &[f32],
    d_rotmats: &mut [f32],
    d_betas: &mut [f32],
) {
    mano_bwd_g(
        &Buffers::from(m),
        rotmats,
        betas,
        b,
        d_verts,
        d_keypoints,
        d_rotmats,
        d_betas,
    )
}

/// Generic [`mano_bwd_cpu`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn mano_bwd_g<T: Scalar>(
    m: &Buffers<T>,
    rotmats: &[T],
    betas: &[T],
    b: usize,
    d_verts: &[T],
    d_keypoints: &[T],
    d_rotmats: &mut [T],
    d_betas: &mut [T],
) {
    let (nv, nb) = (m.nv, m.nb);
    let n3 = 3 * nv;
    assert!(nv > 0, "MANO backward: a model without vertices");
    assert!(
        rotmats.len() == b * NUM_JOINTS * 9
            && betas.len() == b * nb
            && d_verts.len() == b * n3
            && d_keypoints.len() == b * NUM_KEYPOINTS * 3
            && d_rotmats.len() == b * NUM_JOINTS * 9
            && d_betas.len() == b * nb,
        "MANO backward: buffer sizes do not match the batch"
    );
    // The forward's blend shapes; each sample's rows are then overwritten with their gradients.
    let (mut g_vs, mut g_vp) = blend_shapes(m, rotmats, betas, b);
    g_vs.par_chunks_mut(n3)
        .zip(g_vp.par_chunks_mut(n3))
        .zip(d_rotmats.par_chunks_mut(NUM_JOINTS * 9))
        .enumerate()
        .for_each(|(bi, ((vs, vp), g_rot))| {
            sample_bwd(
                m,
                &rotmats[bi * NUM_JOINTS * 9..(bi + 1) * NUM_JOINTS * 9],
                vs,
                vp,
                &d_verts[bi * n3..(bi + 1) * n3],
                &d_keypoints[bi * NUM_KEYPOINTS * 3..(bi + 1) * NUM_KEYPOINTS * 3],
                g_rot,
            )
        });
    // Pose blend shapes: g_p [b, 135] = g_vp [b, 3V] · posedirsᵀ, posedirs [135, 3V].
    let mut g_feat = vec![T::ZERO; b * POSE_FEATURES];
    T::matmul(
        b,
        POSE_FEATURES,
        n3,
        &g_vp,
        (n3, 1),
        m.posedirs,
        (1, n3),
        &mut g_feat,
        Par::Auto,
    );
    for (g_rot, g_p) in d_rotmats
        .chunks_exact_mut(NUM_JOINTS * 9)
        .zip(g_feat.chunks_exact(POSE_FEATURES))
    {
        for (g, &p) in g_rot[9..].iter_mut().zip(g_p) {
            *g += p;
        }
    }
    // Shape blend shapes: g_β [b, nb] = g_vs [b, 3V] · shapedirs, shapedirs [3V, nb].
    T::matmul(
        b,
        nb,
        n3,
        &g_vs,
        (n3, 1),
        m.shapedirs,
        (nb, 1),
        d_betas,
        Par::Auto,
    );
}

/// One sample. `vs`, `vp` hold `v_shaped`, `v_posed` on entry and their gradients on return;
/// `g_rot` receives the gradient of the 16 matrices except the pose-blend-shape term.
fn sample_bwd<T: Scalar>(
    m: &Buffers<T>,
    rot: &[T],
    vs: &mut [T],
    vp: &mut [T],
    g_verts: &[T],
    g_kp: &[T],
    g_rot: &mut [T],
) {
    let joints = rest_joints(m, vs);
    let (_, d) = rigid_chain_g(rot, &joints, m.parents);

    // Keypoints → the 16 posed joints and the 5 fingertip vertices.
    let mut g_all = [[T::ZERO; 3]; NUM_KEYPOINTS];
    for (g, &src) in g_kp.chunks_exact(3).zip(JOINT_MAP.iter()) {
        for c in 0..3 {
            g_all[src][c] += g[c];
        }
    }

    // Skinning, vertex by vertex: v_posed is read, then overwritten with its gradient.
    let mut g_d = [[T::ZERO; 12]; NUM_JOINTS];
    for v in 0..m.nv {
        let w = &m.lbs_weights[v * NUM_JOINTS..(v + 1) * NUM_JOINTS];
        let t = skin_transform(w, &d);
        let mut g = [g_verts[v * 3], g_verts[v * 3 + 1], g_verts[v * 3 + 2]];
        for (k, &tip) in m.tips.iter().enumerate() {
            if tip == v {
                for c in 0..3 {
                    g[c] += g_all[NUM_JOINTS + k][c];
                }
            }
        }
        let p = [vp[v * 3], vp[v * 3 + 1], vp[v * 3 + 2]];
        let mut g_t = [T::ZERO; 12];
        for r in 0..3 {
            for c in 0..3 {
                g_t[r * 4 + c] = g[r] * p[c];
            }
            g_t[r * 4 + 3] = g[r];
        }
        for c in 0..3 {
            vp[v * 3 + c] = g[c] + (t[c] * g[0] + t[4 + c] * g[1] + t[8 + c] * g[2]);
        }
        for (&wj, gdj) in w.iter().zip(g_d.iter_mut()) {
            for e in 0..12 {
                gdj[e] += wj * g_t[e];
            }
        }
    }

    // Posed joints J'_j = J_j + D_j^R·J_j + D_j^t.
    let mut g_j = [T::ZERO; NUM_JOINTS * 3];
    for j in 0..NUM_JOINTS {
        let gp = g_all[j];
        let jj = [joints[j * 3], joints[j * 3 + 1], joints[j * 3 + 2]];
        let dj = &d[j];
        for r in 0..3 {
            for c in 0..3 {
                g_d[j][r * 4 + c] += gp[r] * jj[c];
            }
            g_d[j][r * 4 + 3] += gp[r];
        }
        for c in 0..3 {
            g_j[j * 3 + c] += gp[c] + (dj[c] * gp[0] + dj[4 + c] * gp[1] + dj[8 + c] * gp[2]);
        }
    }

    // The chain, children before parents (parents[j] < j).
    g_rot.fill(T::ZERO);
    for j in (0..NUM_JOINTS).rev() {
        let r = &rot[j * 9..j * 9 + 9];
        let jj = [joints[j * 3], joints[j * 3 + 1], joints[j * 3 + 2]];
        let t = chain_offset(r, jj);
        let g = g_d[j];
        let gr = &mut g_rot[j * 9..j * 9 + 9];
        // D_j^R ∋ R_j − I, D_j^t ∋ t_j.
        let mut g_t = [g[3], g[7], g[11]];
        for row in 0..3 {
            for c in 0..3 {
                gr[row * 3 + c] += g[row * 4 + c];
            }
        }
        if j > 0 {
            // D_j ∋ D_p^R·[R_j | t_j] + [0 | D_p^t].
            let p = m.parents[j];
            let dp = d[p];
            for k in 0..3 {
                for c in 0..3 {
                    gr[k * 3 + c] += dp[k] * g[c] + dp[4 + k] * g[4 + c] + dp[8 + k] * g[8 + c];
                }
                g_t[k] += dp[k] * g[3] + dp[4 + k] * g[7] + dp[8 + k] * g[11];
            }
            for row in 0..3 {
                let gr_row = [g[row * 4], g[row * 4 + 1], g[row * 4 + 2]];
                for k in 0..3 {
                    g_d[p][row * 4 + k] += gr_row[0] * r[k * 3]
                        + gr_row[1] * r[k * 3 + 1]
                        + gr_row[2] * r[k * 3 + 2]
                        + g[row * 4 + 3] * t[k];
                }
                g_d[p][row * 4 + 3] += g[row * 4 + 3];
            }
        }
        // t_j = J_j − R_j·J_j.
        for c in 0..3 {
            g_j[j * 3 + c] += g_t[c] - (r[c] * g_t[0] + r[3 + c] * g_t[1] + r[6 + c] * g_t[2]);
            for row in 0..3 {
                gr[row * 3 + c] -= g_t[row] * jj[c];
            }
        }
    }

    // J = J_regressor·v_shaped and v_posed = v_shaped + …: g_vs = J_regressorᵀ·g_J + g_vp.
    T::matmul(
        m.nv,
        3,
        NUM_JOINTS,
        m.j_regressor,
        (1, m.nv),
        &g_j,
        (3, 1),
        vs,
        Par::Serial,
    );
    for (s, &p) in vs.iter_mut().zip(vp.iter()) {
        *s += p;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{mano_fwd_cpu, mano_fwd_g, PARENTS, TIP_VERTICES};
    use super::*;
    use crate::ops::geometry::rot6d_to_rotmat;
    use crate::ops::math::fd::{self, Rng};

    /// An owned MANO-shaped model in either precision.
    struct Owned<T> {
        nv: usize,
        nb: usize,
        v_template: Vec<T>,
        shapedirs: Vec<T>,
        posedirs: Vec<T>,
        j_regressor: Vec<T>,
        lbs_weights: Vec<T>,
        parents: [usize; NUM_JOINTS],
        tips: [usize; 5],
    }

    impl<T: Scalar> Owned<T> {
        fn buffers(&self) -> Buffers<'_, T> {
            Buffers {
                nv: self.nv,
                nb: self.nb,
                v_template: &self.v_template,
                shapedirs: &self.shapedirs,
                posedirs: &self.posedirs,
                j_regressor: &self.j_regressor,
                lbs_weights: &self.lbs_weights,
                parents: &self.parents,
                tips: &self.tips,
            }
        }
    }

    impl Owned<f32> {
        /// MANO-like magnitudes (template ±0.1 m, blend bases ±0.05), the real parents, rows
        /// of J_regressor and lbs_weights non-negative and summing to 1, tips inside V.
        fn random(rng: &mut Rng, nv: usize, nb: usize) -> Owned<f32> {
            let rows = |rng: &mut Rng, n: usize, m: usize| {
                let mut w: Vec<f32> = (0..n * m).map(|_| rng.uniform().max(0.0) as f32).collect();
                for r in w.chunks_mut(m) {
                    r[0] += 0.01;
                    let s: f32 = r.iter().sum();
                    r.iter_mut().for_each(|x| *x /= s);
                }
                w
            };
            Owned {
                nv,
                nb,
                v_template: rng.vec(3 * nv, 0.1),
                shapedirs: rng.vec(3 * nv * nb, 0.05),
                posedirs: rng.vec(POSE_FEATURES * 3 * nv, 0.05),
                j_regressor: rows(rng, NUM_JOINTS, nv),
                lbs_weights: rows(rng, nv, NUM_JOINTS),
                parents: PARENTS.map(|p| p.max(0) as usize),
                tips: TIP_VERTICES.map(|v| v % nv),
            }
        }

        fn fixture() -> Owned<f32> {
            use crate::model::{mano::Mano, weights::TensorFile};
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/tiny_weights.safetensors");
            let mano = Mano::load(&TensorFile::open(&path).unwrap()).unwrap();
            Owned {
                nv: mano.num_verts(),
                nb: crate::model::mano::NUM_BETAS,
                v_template: mano.v_template.data().to_vec(),
                shapedirs: mano.shapedirs.data().to_vec(),
                posedirs: mano.posedirs.data().to_vec(),
                j_regressor: mano.j_regressor.data().to_vec(),
                lbs_weights: mano.lbs_weights.data().to_vec(),
                parents: mano.parents,
                tips: mano.tips,
            }
        }

        fn data(&self) -> ManoData<'_> {
            ManoData {
                num_verts: self.nv,
                num_betas: self.nb,
                v_template: &self.v_template,
                shapedirs: &self.shapedirs,
                posedirs: &self.posedirs,
                j_regressor: &self.j_regressor,
                lbs_weights: &self.lbs_weights,
                parents: &self.parents,
                tips: &self.tips,
            }
        }

        fn to64(&self) -> Owned<f64> {
            Owned {
                nv: self.nv,
                nb: self.nb,
                v_template: fd::to64(&self.v_template),
                shapedirs: fd::to64(&self.shapedirs),
                posedirs: fd::to64(&self.posedirs),
                j_regressor: fd::to64(&self.j_regressor),
                lbs_weights: fd::to64(&self.lbs_weights),
                parents: self.parents,
                tips: self.tips,
            }
        }
    }

    /// A batch of inputs and a random linear functional of the outputs.
    struct Problem {
        b: usize,
        rot: Vec<f32>,
        betas: Vec<f32>,
        g_verts: Vec<f32>,
        g_kp: Vec<f32>,
    }

    impl Problem {
        fn random(rng: &mut Rng, nv: usize, nb: usize, b: usize) -> Problem {
            let rot = (0..b * NUM_JOINTS)
                .flat_map(|_| {
                    let c: [f32; 6] = std::array::from_fn(|_| rng.uniform() as f32);
                    rot6d_to_rotmat(&c)
                })
                .collect();
            Problem {
                b,
                rot,
                betas: rng.vec(b * nb, 2.0),
                g_verts: rng.vec(b * nv * 3, 1.0),
                g_kp: rng.vec(b * NUM_KEYPOINTS * 3, 1.0),
            }
        }

        /// `L = Σ g_v·verts + Σ g_k·keypoints`, in f64.
        fn loss(&self, m: &Owned<f64>, rot: &[f64], betas: &[f64]) -> f64 {
            let mut v = vec![0f64; self.b * m.nv * 3];
            let mut k = vec![0f64; self.b * NUM_KEYPOINTS * 3];
            mano_fwd_g(&m.buffers(), rot, betas, self.b, &mut v, &mut k);
            fd::dot(&v, &fd::to64(&self.g_verts)) + fd::dot(&k, &fd::to64(&self.g_kp))
        }

        /// The analytic gradients in f64.
        fn bwd64(&self, m: &Owned<f64>) -> (Vec<f64>, Vec<f64>) {
            let mut d_rot = vec![f64::NAN; self.rot.len()];
            let mut d_betas = vec![f64::NAN; self.betas.len()];
            mano_bwd_g(
                &m.buffers(),
                &fd::to64(&self.rot),
                &fd::to64(&self.betas),
                self.b,
                &fd::to64(&self.g_verts),
                &fd::to64(&self.g_kp),
                &mut d_rot,
                &mut d_betas,
            );
            (d_rot, d_betas)
        }

        /// The public f32 backward, outputs pre-filled with NaN (it must overwrite them).
        fn bwd32(&self, m: &Owned<f32>) -> (Vec<f32>, Vec<f32>) {
            let mut d_rot = vec![f32::NAN; self.rot.len()];
            let mut d_betas = vec![f32::NAN; self.betas.len()];
            mano_bwd_cpu(
                &m.data(),
                &self.rot,
                &self.betas,
                self.b,
                &self.g_verts,
                &self.g_kp,
                &mut d_rot,
                &mut d_betas,
            );
            (d_rot, d_betas)
        }

        /// Central differences of the f64 loss at the listed rotation and beta entries.
        fn fd_at(&self, m: &Owned<f64>, h: f64, rot_idx: &[usize], beta_idx: &[usize]) -> Vec<f64> {
            let mut rot = fd::to64(&self.rot);
            let mut betas = fd::to64(&self.betas);
            let mut out = Vec::new();
            for &i in rot_idx {
                let x0 = rot[i];
                rot[i] = x0 + h;
                let up = self.loss(m, &rot, &betas);
                rot[i] = x0 - h;
                let down = self.loss(m, &rot, &betas);
                rot[i] = x0;
                out.push((up - down) / (2.0 * h));
            }
            for &i in beta_idx {
                let x0 = betas[i];
                betas[i] = x0 + h;
                let up = self.loss(m, &rot, &betas);
                betas[i] = x0 - h;
                let down = self.loss(m, &rot, &betas);
                betas[i] = x0;
                out.push((up - down) / (2.0 * h));
            }
            out
        }
    }

    fn rel64(got: &[f64], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f64, |m, &w| m.max(w.abs()));
        let diff = got
            .iter()
            .zip(want)
            .fold(0f64, |m, (&a, &b)| m.max((a - b).abs()));
        diff / scale.max(f64::MIN_POSITIVE)
    }

    fn pick(v: &[f64], idx: &[usize]) -> Vec<f64> {
        idx.iter().map(|&i| v[i]).collect()
    }

    #[test]
    fn f64_forward_matches_the_f32_forward() {
        let mut rng = Rng(21);
        let m = Owned::random(&mut rng, 40, 10);
        let p = Problem::random(&mut rng, 40, 10, 3);
        let (mut v32, mut k32) = (vec![0f32; 3 * 40 * 3], vec![0f32; 3 * 63]);
        mano_fwd_cpu(&m.data(), &p.rot, &p.betas, 3, &mut v32, &mut k32);
        let (mut v64, mut k64) = (vec![0f64; 3 * 40 * 3], vec![0f64; 3 * 63]);
        let m64 = m.to64();
        mano_fwd_g(
            &m64.buffers(),
            &fd::to64(&p.rot),
            &fd::to64(&p.betas),
            3,
            &mut v64,
            &mut k64,
        );
        let (ev, ek) = (fd::rel_err(&v32, &v64), fd::rel_err(&k32, &k64));
        eprintln!("MANO forward f32 vs f64: verts {ev:.2e}, keypoints {ek:.2e}");
        // Same arithmetic in two precisions (the f64 GEMM is a plain loop, so this also
        // checks its stride handling): f32 rounding over sums of ≤ 135 terms, ~1e-6.
        assert!(ev < 1e-5 && ek < 1e-5, "{ev:e} {ek:e}");
    }

    #[test]
    fn bwd_matches_finite_differences_on_a_small_model() {
        let mut rng = Rng(22);
        let (nv, nb, b) = (40, 10, 3);
        let m = Owned::random(&mut rng, nv, nb).to64();
        let p = Problem::random(&mut rng, nv, nb, b);
        let (d_rot, d_betas) = p.bwd64(&m);
        let all_rot: Vec<usize> = (0..p.rot.len()).collect();
        let all_betas: Vec<usize> = (0..p.betas.len()).collect();
        let want = p.fd_at(&m, 1e-6, &all_rot, &all_betas);
        let (e_rot, e_betas) = (
            rel64(&d_rot, &want[..all_rot.len()]),
            rel64(&d_betas, &want[all_rot.len()..]),
        );
        eprintln!("MANO bwd vs FD (V = {nv}): d_rotmats {e_rot:.2e}, d_betas {e_betas:.2e}");
        // f64, h = 1e-6: the loss is a polynomial of degree ≤ 5 in each rotation entry
        // (chain depth 4 plus the skinning) with O(1) coefficients, so truncation is
        // ~h²·|L'''| ≈ 1e-11 and rounding ~1e-16·|L|/h ≈ 1e-9 relative to gradients of
        // order 1–10; 1e-7 catches any missing or wrong term.
        assert!(e_rot < 1e-7, "d_rotmats rel err {e_rot:e}");
        assert!(e_betas < 1e-7, "d_betas rel err {e_betas:e}");
    }

    #[test]
    fn f32_bwd_matches_the_f64_bwd() {
        let mut rng = Rng(23);
        let (nv, nb, b) = (40, 10, 5);
        let m = Owned::random(&mut rng, nv, nb);
        let p = Problem::random(&mut rng, nv, nb, b);
        let (r64, b64) = p.bwd64(&m.to64());
        let (r32, b32) = p.bwd32(&m);
        let (er, eb) = (fd::rel_err(&r32, &r64), fd::rel_err(&b32, &b64));
        eprintln!("MANO bwd f32 vs f64 (V = {nv}, b = {b}): d_rotmats {er:.2e}, d_betas {eb:.2e}");
        // The same code in f32 (through the crate GEMM) vs f64 (plain loops): f32 rounding
        // over sums of ≤ 3V terms, ~1e-6.
        assert!(er < 1e-5 && eb < 1e-5, "{er:e} {eb:e}");
    }

    #[test]
    fn bwd_spot_check_on_the_fixture_model() {
        let m32 = Owned::fixture();
        assert_eq!(m32.nv, 778);
        let m = m32.to64();
        let mut rng = Rng(24);
        let b = 2;
        let p = Problem::random(&mut rng, m.nv, m.nb, b);
        let (d_rot, d_betas) = p.bwd64(&m);
        // (sample, joint, entry): the root, index DIP (chain depth 3), thumb MCP and thumb DIP
        // (the thumb tip's parent); in sample 1 index PIP and pinky DIP.
        let picks = [
            (0, 0, 0),
            (0, 0, 4),
            (0, 0, 8),
            (0, 3, 1),
            (0, 13, 5),
            (0, 15, 7),
        ];
        let rot_idx: Vec<usize> = picks
            .iter()
            .chain(&[(1, 2, 3), (1, 9, 6)])
            .map(|&(s, j, e)| (s * NUM_JOINTS + j) * 9 + e)
            .collect();
        let beta_idx = [0, 4, 9, 10 + 7];
        let want = p.fd_at(&m, 1e-6, &rot_idx, &beta_idx);
        let got: Vec<f64> = pick(&d_rot, &rot_idx)
            .into_iter()
            .chain(pick(&d_betas, &beta_idx))
            .collect();
        let e = rel64(&got, &want);
        eprintln!("MANO bwd vs FD on the fixture (778 vertices, 12 coordinates): {e:.2e}");
        // As on the small model (f64, h = 1e-6), with a loss summed over 2·778·3 outputs.
        assert!(e < 1e-7, "rel err {e:e}");
        let (r32, b32) = p.bwd32(&m32);
        let (er, eb) = (fd::rel_err(&r32, &d_rot), fd::rel_err(&b32, &d_betas));
        eprintln!("MANO bwd f32 vs f64 on the fixture: d_rotmats {er:.2e}, d_betas {eb:.2e}");
        // f32 rounding over sums of 778–2334 terms (g_D_j, g_p, g_β), ~1e-6.
        assert!(er < 1e-5 && eb < 1e-5, "{er:e} {eb:e}");
    }
}
