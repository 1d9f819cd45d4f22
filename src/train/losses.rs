//! The base HaMeR losses (SPEC §7.1), the GT axis-angle → rotation-matrix conversion, the loss
//! weights of §7.2 and the total objective per model type. The uncertainty losses (§6.5) are in
//! [`super::nll`], the adversarial ones in [`super::discriminator`].
//!
//! Every loss is a **sum over the batch** (§15.7), accumulated in f64 in a fixed order; each
//! takes `scale` and OVERWRITES its input gradients with `scale · ∂L/∂x`; the returned value is
//! the unscaled `L`. Shapes are checked and reported as `Error::Input`, never a panic.

use super::{batch_of, expect_len, Scalar};
use crate::error::{Error, Result};
use crate::model::config::Uncertainty;

/// Joints of the keypoint losses (OpenPose order, wrist = joint 0 = the root).
pub const JOINTS: usize = 21;

/// `sign(x)` with `sign(0) = 0` (the subgradient PyTorch's `L1Loss` uses).
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// `Keypoint2DLoss` (L1): `L = Σ_b Σ_j conf_bj Σ_{u,v} |p̂_bj − p_bj|`.
/// `pred` `[B, 21, 2]`, `gt` `[B, 21, 3]` = (x, y, conf); `d_pred` `[B, 21, 2]` ←
/// `scale · conf · sign(p̂ − p)` (0 where they are equal).
pub fn keypoint_2d_l1<T: Scalar>(
    pred: &[T],
    gt: &[T],
    scale: f64,
    d_pred: &mut [T],
) -> Result<f64> {
    let b = batch_of("keypoint_2d_l1: pred [B,21,2]", pred, JOINTS * 2)?;
    expect_len("keypoint_2d_l1: gt [B,21,3]", gt, b * JOINTS * 3)?;
    expect_len("keypoint_2d_l1: d_pred", d_pred, pred.len())?;
    let mut total = 0f64;
    for (i, (p, dp)) in pred
        .chunks_exact(2)
        .zip(d_pred.chunks_exact_mut(2))
        .enumerate()
    {
        let g = &gt[3 * i..3 * i + 3];
        let conf = g[2].to_f64();
        for c in 0..2 {
            let r = p[c].to_f64() - g[c].to_f64();
            total += conf * r.abs();
            dp[c] = T::from_f64(scale * conf * sign(r));
        }
    }
    Ok(total)
}

/// `Keypoint3DLoss` (L1, root-relative): joint 0 is subtracted from the prediction and from the
/// GT separately, `L = Σ_b Σ_j c_bj Σ_c |(μ_bj − μ_b0) − (g_bj − g_b0)|_c`.
/// `pred` `[B, 21, 3]`, `gt` `[B, 21, 4]` = (x, y, z, conf); `d_pred` `[B, 21, 3]`.
pub fn keypoint_3d_l1_rootrel<T: Scalar>(
    pred: &[T],
    gt: &[T],
    scale: f64,
    d_pred: &mut [T],
) -> Result<f64> {
    let b = batch_of("keypoint_3d_l1_rootrel: pred [B,21,3]", pred, JOINTS * 3)?;
    expect_len("keypoint_3d_l1_rootrel: gt [B,21,4]", gt, b * JOINTS * 4)?;
    expect_len("keypoint_3d_l1_rootrel: d_pred", d_pred, pred.len())?;
    let mut total = 0f64;
    for ((p, g), dp) in pred
        .chunks_exact(JOINTS * 3)
        .zip(gt.chunks_exact(JOINTS * 4))
        .zip(d_pred.chunks_exact_mut(JOINTS * 3))
    {
        let mut root_grad = [0f64; 3];
        for j in 0..JOINTS {
            let conf = g[4 * j + 3].to_f64();
            for c in 0..3 {
                let rel_p = p[3 * j + c].to_f64() - p[c].to_f64();
                let rel_g = g[4 * j + c].to_f64() - g[c].to_f64();
                let r = rel_p - rel_g;
                total += conf * r.abs();
                let e = scale * conf * sign(r);
                dp[3 * j + c] = T::from_f64(e);
                root_grad[c] += e;
            }
        }
        // μ_b0 enters every relative prediction with a minus sign.
        for c in 0..3 {
            dp[c] = T::from_f64(dp[c].to_f64() - root_grad[c]);
        }
    }
    Ok(total)
}

/// `ParameterLoss` (MSE, masked): `L = Σ_b has_b · Σ_k (pred_bk − gt_bk)²`, for global_orient
/// (rotmats, k = 9), hand_pose (k = 135) and betas (k = 10). `has` `[B]` (a float mask, used
/// as a multiplier as in the reference); `d_pred` ← `scale · 2·has·(pred − gt)`.
pub fn parameter_mse<T: Scalar>(
    pred: &[T],
    gt: &[T],
    has: &[T],
    scale: f64,
    d_pred: &mut [T],
) -> Result<f64> {
    let b = has.len();
    if b == 0 {
        expect_len("parameter_mse: pred (empty batch)", pred, 0)?;
        expect_len("parameter_mse: gt (empty batch)", gt, 0)?;
        return Ok(0.0);
    }
    let k = pred.len() / b;
    expect_len("parameter_mse: pred [B,k]", pred, b * k)?;
    expect_len("parameter_mse: gt [B,k]", gt, b * k)?;
    expect_len("parameter_mse: d_pred", d_pred, b * k)?;
    let mut total = 0f64;
    for (((p, g), dp), h) in pred
        .chunks_exact(k.max(1))
        .zip(gt.chunks_exact(k.max(1)))
        .zip(d_pred.chunks_exact_mut(k.max(1)))
        .zip(has)
    {
        let h = h.to_f64();
        for ((pv, gv), d) in p.iter().zip(g).zip(dp.iter_mut()) {
            let r = pv.to_f64() - gv.to_f64();
            total += h * r * r;
            *d = T::from_f64(scale * 2.0 * h * r);
        }
    }
    Ok(total)
}

/// HaMeR's `aa_to_rotmat` (via a quaternion), computed in f64: `angle = ‖θ + 1e-8‖` (the 1e-8
/// added to every component before the norm, as in the reference), `axis = θ / angle`,
/// `q = (cos(angle/2), sin(angle/2)·axis)`, normalised, then the usual quaternion → matrix.
/// Row-major 3×3. The one point where the reference divides 0 by 0 (θ = −1e-8·(1,1,1)) gives
/// the identity here instead of NaN.
pub fn axis_angle_to_rotmat(theta: [f64; 3]) -> [f64; 9] {
    let angle =
        ((theta[0] + 1e-8).powi(2) + (theta[1] + 1e-8).powi(2) + (theta[2] + 1e-8).powi(2)).sqrt();
    if angle == 0.0 {
        return [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    }
    let (sin_h, cos_h) = (0.5 * angle).sin_cos();
    let q = [
        cos_h,
        sin_h * theta[0] / angle,
        sin_h * theta[1] / angle,
        sin_h * theta[2] / angle,
    ];
    let norm = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]).sqrt();
    let [w, x, y, z] = q.map(|v| v / norm);
    let (w2, x2, y2, z2) = (w * w, x * x, y * y, z * z);
    let (wx, wy, wz, xy, xz, yz) = (w * x, w * y, w * z, x * y, x * z, y * z);
    [
        w2 + x2 - y2 - z2,
        2.0 * xy - 2.0 * wz,
        2.0 * wy + 2.0 * xz,
        2.0 * wz + 2.0 * xy,
        w2 - x2 + y2 - z2,
        2.0 * yz - 2.0 * wx,
        2.0 * xz - 2.0 * wy,
        2.0 * wx + 2.0 * yz,
        w2 - x2 - y2 + z2,
    ]
}

/// [`axis_angle_to_rotmat`] over `aa` `[n, 3]` → `out` `[n, 3, 3]` (f32, rounded once).
pub fn axis_angle_to_rotmat_cpu(aa: &[f32], out: &mut [f32]) -> Result<()> {
    let n = batch_of("axis_angle_to_rotmat: aa [n,3]", aa, 3)?;
    expect_len("axis_angle_to_rotmat: out [n,3,3]", out, n * 9)?;
    for (t, r) in aa.chunks_exact(3).zip(out.chunks_exact_mut(9)) {
        let m = axis_angle_to_rotmat([t[0] as f64, t[1] as f64, t[2] as f64]);
        for (o, v) in r.iter_mut().zip(m) {
            *o = v as f32;
        }
    }
    Ok(())
}

/// One term of the training objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Term {
    /// `Keypoint3DLoss` (L1, root-relative).
    Keypoints3d,
    /// `Keypoint2DLoss` (L1).
    Keypoints2d,
    GlobalOrient,
    HandPose,
    Betas,
    /// The generator's adversarial loss.
    Adversarial,
    /// The model's NLL: diag (`diag`, `ours`, `ours_wo_linear`), full (`full`), or the exact
    /// low-rank NLL of `--ours-nll exact` (`ours`); all under KEYPOINTS_3D_NLL.
    Nll,
    /// `Keypoint3DSamplewiseMeanLoss` (`ours`, `ours_wo_linear`).
    SampleMean,
    /// `UncertaintyRegLoss` (`ours`, weight 0).
    UncertaintyReg,
}

impl Term {
    pub const ALL: [Term; 9] = [
        Term::Keypoints3d,
        Term::Keypoints2d,
        Term::GlobalOrient,
        Term::HandPose,
        Term::Betas,
        Term::Adversarial,
        Term::Nll,
        Term::SampleMean,
        Term::UncertaintyReg,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Term::Keypoints3d => "keypoints_3d",
            Term::Keypoints2d => "keypoints_2d",
            Term::GlobalOrient => "global_orient",
            Term::HandPose => "hand_pose",
            Term::Betas => "betas",
            Term::Adversarial => "adversarial",
            Term::Nll => "keypoints_3d_nll",
            Term::SampleMean => "keypoints_3d_sample_mean",
            Term::UncertaintyReg => "uncertainty_reg",
        }
    }

    /// Whether `model`'s objective contains this term (SPEC §7.2 "Totals").
    pub fn used_by(self, model: Uncertainty) -> bool {
        use Uncertainty as U;
        match self {
            Term::Nll => model != U::None,
            Term::SampleMean => matches!(model, U::Ours | U::OursWoLinear),
            Term::UncertaintyReg => model == U::Ours,
            _ => true,
        }
    }
}

/// Loss weights, experiment `hamer_vit_transformer.yaml` (SPEC §7.2) by default.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossWeights {
    pub keypoints_3d: f64,
    pub keypoints_2d: f64,
    pub global_orient: f64,
    pub hand_pose: f64,
    pub betas: f64,
    /// The generator's adversarial term, and the discriminator's loss (`0.0005·L_D`).
    pub adversarial: f64,
    pub keypoints_3d_nll: f64,
    pub keypoints_3d_sample_mean: f64,
    pub uncertainty_reg: f64,
    /// N, the samples per image of the sample loss.
    pub sample_num: usize,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            keypoints_3d: 0.05,
            keypoints_2d: 0.01,
            global_orient: 0.001,
            hand_pose: 0.001,
            betas: 0.0005,
            adversarial: 0.0005,
            keypoints_3d_nll: 0.0005,
            keypoints_3d_sample_mean: 0.0005,
            uncertainty_reg: 0.0,
            sample_num: 25,
        }
    }
}

/// The values of the terms of one step (unweighted); the uncertainty terms are `None` where
/// the model does not compute them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossTerms {
    pub keypoints_3d: f64,
    pub keypoints_2d: f64,
    pub global_orient: f64,
    pub hand_pose: f64,
    pub betas: f64,
    pub adversarial: f64,
    pub nll: Option<f64>,
    pub sample_mean: Option<f64>,
    pub uncertainty_reg: Option<f64>,
}

impl LossTerms {
    pub fn get(&self, term: Term) -> Option<f64> {
        match term {
            Term::Keypoints3d => Some(self.keypoints_3d),
            Term::Keypoints2d => Some(self.keypoints_2d),
            Term::GlobalOrient => Some(self.global_orient),
            Term::HandPose => Some(self.hand_pose),
            Term::Betas => Some(self.betas),
            Term::Adversarial => Some(self.adversarial),
            Term::Nll => self.nll,
            Term::SampleMean => self.sample_mean,
            Term::UncertaintyReg => self.uncertainty_reg,
        }
    }
}

impl LossWeights {
    /// The weight of `term` in `model`'s objective; 0 for a term the model does not use. This
    /// is the `scale` to pass to the term's loss function.
    pub fn weight(&self, model: Uncertainty, term: Term) -> f64 {
        if !term.used_by(model) {
            return 0.0;
        }
        match term {
            Term::Keypoints3d => self.keypoints_3d,
            Term::Keypoints2d => self.keypoints_2d,
            Term::GlobalOrient => self.global_orient,
            Term::HandPose => self.hand_pose,
            Term::Betas => self.betas,
            Term::Adversarial => self.adversarial,
            Term::Nll => self.keypoints_3d_nll,
            Term::SampleMean => self.keypoints_3d_sample_mean,
            Term::UncertaintyReg => self.uncertainty_reg,
        }
    }

    /// The generator's total objective of `model` (SPEC §7.2): `Σ weight·value` over the terms
    /// the model uses, in `Term::ALL` order. Zero-weighted terms are still multiplied in (as in
    /// the reference, a non-finite `L_reg` makes the total NaN). A missing term the model needs,
    /// or a non-finite total (the reference raises on NaN), is an error.
    pub fn total(&self, model: Uncertainty, terms: &LossTerms) -> Result<f64> {
        let mut total = 0f64;
        for term in Term::ALL {
            if !term.used_by(model) {
                continue;
            }
            let v = terms.get(term).ok_or_else(|| {
                Error::Input(format!(
                    "the `{}` objective needs the `{}` term, which was not computed",
                    model.name(),
                    term.name()
                ))
            })?;
            total += self.weight(model, term) * v;
        }
        if !total.is_finite() {
            return Err(Error::Input(format!(
                "the total loss is {total} (terms: {terms:?}); training stops here"
            )));
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::super::gradcheck::{check, rand_vec};
    use super::*;

    /// Values away from the L1 kinks: |pred − gt| ≥ 0.05 ≫ h in every coordinate.
    fn off_kink(pred: &mut [f64], gt: &[f64], gt_stride: usize, dims: usize) {
        for (i, p) in pred.iter_mut().enumerate() {
            let g = gt[(i / dims) * gt_stride + i % dims];
            if (*p - g).abs() < 0.05 {
                *p = g + 0.05;
            }
        }
    }

    #[test]
    fn keypoint_2d_values_and_gradient() {
        // Hand-computed: one joint off by (0.5, −0.25) with conf 2 → 2·0.75 = 1.5.
        let mut pred = vec![0f64; 42];
        let mut gt = vec![0f64; 63];
        pred[2] = 0.5;
        pred[3] = -0.25;
        gt[5] = 2.0;
        let mut d = vec![0f64; 42];
        let v = keypoint_2d_l1(&pred, &gt, 1.0, &mut d).unwrap();
        assert_eq!(v, 1.5);
        assert_eq!((d[2], d[3], d[0]), (2.0, -2.0, 0.0));

        let b = 3;
        let gt = rand_vec(1, b * 63, -1.0, 1.0);
        let mut pred = rand_vec(2, b * 42, -1.0, 1.0);
        // Confidences in [0, 1).
        let gt: Vec<f64> = gt
            .iter()
            .enumerate()
            .map(|(i, &v)| if i % 3 == 2 { v.abs() } else { v })
            .collect();
        // Kinks: 2D coords are at gt[3j + c], i.e. stride 3 per joint.
        off_kink(&mut pred, &gt, 3, 2);
        let mut d = vec![0f64; b * 42];
        keypoint_2d_l1(&pred, &gt, 1.0, &mut d).unwrap();
        let mut scratch = vec![0f64; b * 42];
        let err = check(
            &mut |x| keypoint_2d_l1(x, &gt, 1.0, &mut scratch).unwrap(),
            &pred,
            &d,
            None,
            1e-5,
        );
        // Piecewise linear away from kinks: central differences are exact up to rounding.
        assert!(err < 1e-8, "2D L1 gradient error {err}");
        eprintln!("keypoint_2d_l1 fd rel err {err:.2e}");
    }

    #[test]
    fn keypoint_3d_rootrel_values_and_gradient() {
        // Translating prediction and GT separately changes nothing.
        let b = 2;
        let mut gt = rand_vec(3, b * 84, -1.0, 1.0);
        for i in 0..b * 21 {
            gt[4 * i + 3] = gt[4 * i + 3].abs();
        }
        let pred = rand_vec(4, b * 63, -1.0, 1.0);
        let shifted: Vec<f64> = pred
            .iter()
            .enumerate()
            .map(|(i, &v)| v + [0.3, -2.0, 5.0][i % 3])
            .collect();
        let mut d = vec![0f64; b * 63];
        let v0 = keypoint_3d_l1_rootrel(&pred, &gt, 1.0, &mut d).unwrap();
        let v1 = keypoint_3d_l1_rootrel(&shifted, &gt, 1.0, &mut d).unwrap();
        assert!((v0 - v1).abs() < 1e-12);
        // Hand-computed: joint 5 off by (0.1, 0, −0.2) relative to the root, conf 0.5.
        let mut p = vec![1.0f64; 63];
        let mut g = vec![0f64; 84];
        for j in 0..21 {
            g[4 * j + 3] = if j == 5 { 0.5 } else { 1.0 };
        }
        p[15] += 0.1;
        p[17] -= 0.2;
        let mut d1 = vec![0f64; 63];
        let v = keypoint_3d_l1_rootrel(&p, &g, 1.0, &mut d1).unwrap();
        assert!((v - 0.15).abs() < 1e-15, "{v}");
        assert_eq!((d1[15], d1[16], d1[17]), (0.5, 0.0, -0.5));
        assert_eq!((d1[0], d1[1], d1[2]), (-0.5, 0.0, 0.5));

        // FD, with every relative residual away from 0.
        let mut pred = pred;
        for bi in 0..b {
            for j in 1..21 {
                for c in 0..3 {
                    let i = bi * 63 + 3 * j + c;
                    let rel_g = gt[bi * 84 + 4 * j + c] - gt[bi * 84 + c];
                    let rel_p = pred[i] - pred[bi * 63 + c];
                    if (rel_p - rel_g).abs() < 0.05 {
                        pred[i] += 0.1;
                    }
                }
            }
        }
        keypoint_3d_l1_rootrel(&pred, &gt, 1.0, &mut d).unwrap();
        let mut s = vec![0f64; b * 63];
        let err = check(
            &mut |x| keypoint_3d_l1_rootrel(x, &gt, 1.0, &mut s).unwrap(),
            &pred,
            &d,
            None,
            1e-5,
        );
        // Piecewise linear; the root moves all 20 residuals by h ≪ 0.05, crossing no kink.
        assert!(err < 1e-8, "3D L1 gradient error {err}");
        eprintln!("keypoint_3d_l1_rootrel fd rel err {err:.2e}");
    }

    #[test]
    fn parameter_mse_values_and_gradient() {
        let pred = [1.0f64, 2.0, 3.0, 4.0];
        let gt = [0.0f64, 0.0, 3.0, 2.0];
        let has = [1.0f64, 0.5];
        let mut d = [0f64; 4];
        let v = parameter_mse(&pred, &gt, &has, 2.0, &mut d).unwrap();
        assert_eq!(v, 1.0 + 4.0 + 0.5 * 4.0);
        assert_eq!(d, [4.0, 8.0, 0.0, 4.0]);

        let (b, k) = (3, 135);
        let pred = rand_vec(5, b * k, -1.0, 1.0);
        let gt = rand_vec(6, b * k, -1.0, 1.0);
        let has = [1.0, 0.0, 0.7];
        let mut d = vec![0f64; b * k];
        parameter_mse(&pred, &gt, &has, 1.0, &mut d).unwrap();
        let mut s = vec![0f64; b * k];
        let err = check(
            &mut |x| parameter_mse(x, &gt, &has, 1.0, &mut s).unwrap(),
            &pred,
            &d,
            None,
            1e-5,
        );
        // Quadratic: central differences are exact but for rounding (~1e-11 here).
        assert!(err < 1e-8, "parameter MSE gradient error {err}");
        eprintln!("parameter_mse fd rel err {err:.2e}");

        assert!(parameter_mse(&pred[..5], &gt, &has, 1.0, &mut s).is_err());
        assert!(parameter_mse(&pred, &gt[..4], &has, 1.0, &mut s).is_err());
    }

    #[test]
    fn axis_angle_rotmats() {
        let id = axis_angle_to_rotmat([0.0; 3]);
        for (i, v) in id.iter().enumerate() {
            assert!((v - if i % 4 == 0 { 1.0 } else { 0.0 }).abs() < 1e-15);
        }
        // π/2 about z: x → y.
        let r = axis_angle_to_rotmat([0.0, 0.0, std::f64::consts::FRAC_PI_2]);
        let want = [0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        for (a, b) in r.iter().zip(want) {
            // The 1e-8 offset of the reference tilts the axis by ~1e-8.
            assert!((a - b).abs() < 1e-7, "{r:?}");
        }
        // Rodrigues on a generic vector; orthonormal, det 1.
        let t = [0.3, -0.7, 1.1];
        let r = axis_angle_to_rotmat(t);
        let ang =
            ((t[0] + 1e-8f64).powi(2) + (t[1] + 1e-8f64).powi(2) + (t[2] + 1e-8f64).powi(2)).sqrt();
        let k = [t[0] / ang, t[1] / ang, t[2] / ang];
        let (s, c) = ang.sin_cos();
        for i in 0..3 {
            for j in 0..3 {
                let kx = [[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]];
                let kk: f64 = (0..3).map(|m| kx[i][m] * kx[m][j]).sum();
                let want = if i == j { 1.0 } else { 0.0 } + s * kx[i][j] + (1.0 - c) * kk;
                assert!((r[3 * i + j] - want).abs() < 1e-7, "({i},{j})");
            }
        }
        let mut out = [0f32; 18];
        let t32 = [0.3f32, -0.7, 1.1];
        axis_angle_to_rotmat_cpu(&[0.0, 0.0, 0.0, t32[0], t32[1], t32[2]], &mut out).unwrap();
        let r32 = axis_angle_to_rotmat(t32.map(|v| v as f64));
        assert_eq!(out[9..], r32.map(|v| v as f32));
        assert_eq!(out[..9], id.map(|v| v as f32));
        assert!(axis_angle_to_rotmat_cpu(&[0.0; 4], &mut out).is_err());
        // The reference's 0/0 point is the identity here, not NaN.
        assert_eq!(axis_angle_to_rotmat([-1e-8; 3])[0], 1.0);
    }

    #[test]
    fn totals_follow_the_spec_table() {
        let w = LossWeights::default();
        let terms = LossTerms {
            keypoints_3d: 1.0,
            keypoints_2d: 2.0,
            global_orient: 3.0,
            hand_pose: 4.0,
            betas: 5.0,
            adversarial: 6.0,
            nll: Some(7.0),
            sample_mean: Some(8.0),
            uncertainty_reg: Some(9.0),
        };
        let det = 0.05 + 0.02 + 0.003 + 0.004 + 0.0025 + 0.003;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
        assert!(close(w.total(Uncertainty::None, &terms).unwrap(), det));
        assert!(close(
            w.total(Uncertainty::Diag, &terms).unwrap(),
            det + 0.0035
        ));
        assert!(close(
            w.total(Uncertainty::Full, &terms).unwrap(),
            det + 0.0035
        ));
        assert!(close(
            w.total(Uncertainty::Ours, &terms).unwrap(),
            det + 0.0035 + 0.004
        ));
        assert!(close(
            w.total(Uncertainty::OursWoLinear, &terms).unwrap(),
            det + 0.0035 + 0.004
        ));
        assert_eq!(w.weight(Uncertainty::Diag, Term::SampleMean), 0.0);
        assert_eq!(w.weight(Uncertainty::Ours, Term::SampleMean), 0.0005);
        // Missing terms and NaN are errors; an infinite regulariser times 0 is NaN.
        let mut t = terms;
        t.nll = None;
        assert!(w.total(Uncertainty::None, &t).is_ok());
        assert!(w.total(Uncertainty::Diag, &t).is_err());
        let mut t = terms;
        t.uncertainty_reg = Some(f64::INFINITY);
        assert!(w.total(Uncertainty::Ours, &t).is_err());
        assert!(w.total(Uncertainty::OursWoLinear, &t).is_ok());
        t.keypoints_2d = f64::NAN;
        assert!(w.total(Uncertainty::None, &t).is_err());
    }
}
