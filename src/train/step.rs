//! One training step on the CPU: the training forward of the whole model, every loss term of
//! the model's objective (SPEC §6.5, §7) and the hand-written backward to every parameter, plus
//! the discriminator's own loss and gradients. What `train --dump-grads` writes and what the
//! trainer's optimiser consumes.

use super::discriminator::Discriminator;
use super::losses::{
    axis_angle_to_rotmat_cpu, keypoint_2d_l1, keypoint_3d_l1_rootrel, parameter_mse, LossTerms,
    LossWeights, Term,
};
use super::nll::{nll_diag, nll_exact_lowrank, nll_full, sample_mean, uncertainty_reg};
use crate::error::{Error, Result};
use crate::model::backward::Grads;
use crate::model::config::Uncertainty;
use crate::model::mano::NUM_BETAS;
use crate::model::weights::TensorFile;
use crate::model::HandModel;
use crate::ops::covariance::DIM;
use crate::ops::geometry::{
    cam_translation, cam_translation_bwd, project_bwd_cpu, project_cpu, rot6d_to_rotmat_bwd_cpu,
    rot6d_to_rotmat_cpu,
};
use crate::ops::mano::{mano_bwd_cpu, mano_fwd_cpu, NUM_JOINTS, NUM_KEYPOINTS};

/// A training batch in the tensor layout of `train --batch-file` (SPEC §1.5 item fields).
#[derive(Clone)]
pub struct Batch {
    pub b: usize,
    /// `[B, 3, S, S]` normalised crops.
    pub img: Vec<f32>,
    /// `[B, 21, 3]` (x, y, conf), normalised crop coordinates.
    pub keypoints_2d: Vec<f32>,
    /// `[B, 21, 4]` (x, y, z, conf), metres.
    pub keypoints_3d: Vec<f32>,
    /// Axis-angle `[B, 3]`, `[B, 45]`, and betas `[B, 10]`.
    pub global_orient: Vec<f32>,
    pub hand_pose: Vec<f32>,
    pub betas: Vec<f32>,
    /// `[B]` each: 1 where the item has that MANO parameter.
    pub has_global_orient: Vec<f32>,
    pub has_hand_pose: Vec<f32>,
    pub has_betas: Vec<f32>,
    /// `[B, N, 63]`: the sample loss's noise, when given (else drawn from the counter RNG).
    pub sample_eps: Option<Vec<f32>>,
    /// MoCap poses for the discriminator: axis-angle `[M, 45]` and betas `[M, 10]`.
    pub mocap: Option<(Vec<f32>, Vec<f32>)>,
}

impl Batch {
    /// Reads a batch file, checking every shape against the batch size of `img`, that every
    /// value is finite, that the `has_mano_params.*` flags are 0 or 1 and the keypoint
    /// confidences lie in [0, 1], and that the file holds no tensor it does not know.
    /// Its safetensors errors are input errors: a batch is data, not weights.
    pub fn load(f: &TensorFile, image_size: usize) -> Result<Batch> {
        Self::read(f, image_size).map_err(Error::as_input)
    }

    fn read(f: &TensorFile, image_size: usize) -> Result<Batch> {
        let shown = f.path().display().to_string();
        let img = f.f32("img", None)?;
        let sh = img.shape().to_vec();
        if sh.len() != 4 || sh[1] != 3 || sh[2] != image_size || sh[3] != image_size || sh[0] == 0 {
            return Err(Error::Input(format!(
                "{shown}: batch `img` has shape {sh:?}, expected [B, 3, {image_size}, {image_size}]"
            )));
        }
        let b = sh[0];
        let img = img.into_vec();
        check_finite(&shown, "img", &img)?;
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let v = f.f32(name, Some(shape))?.into_vec();
            check_finite(&shown, name, &v)?;
            Ok(v)
        };
        let sample_eps = if f.contains("sample_eps") {
            let t = f.f32("sample_eps", None)?;
            let s = t.shape().to_vec();
            if s.len() != 3 || s[0] != b || s[2] != DIM || s[1] == 0 {
                return Err(Error::Input(format!(
                    "{shown}: batch `sample_eps` has shape {s:?}, expected [{b}, N, {DIM}]"
                )));
            }
            let v = t.into_vec();
            check_finite(&shown, "sample_eps", &v)?;
            Some(v)
        } else {
            None
        };
        let mocap = if f.contains("mocap.hand_pose") || f.contains("mocap.betas") {
            Some(read_mocap(f, "mocap.")?)
        } else {
            None
        };
        let keypoints_2d = get("keypoints_2d", &[b, NUM_KEYPOINTS, 3])?;
        check_confidence(&shown, "keypoints_2d", &keypoints_2d, 3)?;
        let keypoints_3d = get("keypoints_3d", &[b, NUM_KEYPOINTS, 4])?;
        check_confidence(&shown, "keypoints_3d", &keypoints_3d, 4)?;
        let flags = |name: &str| -> Result<Vec<f32>> {
            let v = get(name, &[b])?;
            if let Some((i, x)) = v.iter().enumerate().find(|&(_, &x)| x != 0.0 && x != 1.0) {
                return Err(Error::Input(format!(
                    "{shown}: `{name}`[{i}] = {x}: a flag must be 0 or 1"
                )));
            }
            Ok(v)
        };
        let batch = Batch {
            b,
            img,
            keypoints_2d,
            keypoints_3d,
            global_orient: get("mano_params.global_orient", &[b, 3])?,
            hand_pose: get("mano_params.hand_pose", &[b, 45])?,
            betas: get("mano_params.betas", &[b, NUM_BETAS])?,
            has_global_orient: flags("has_mano_params.global_orient")?,
            has_hand_pose: flags("has_mano_params.hand_pose")?,
            has_betas: flags("has_mano_params.betas")?,
            sample_eps,
            mocap,
        };
        if let Some(name) = f.unused().first() {
            return Err(Error::Input(format!(
                "{shown}: unknown tensor `{name}` in a batch file (see `train --help` for the \
                 tensors it holds)"
            )));
        }
        Ok(batch)
    }
}

/// An error naming the first non-finite value of tensor `name` in file `shown`.
fn check_finite(shown: &str, name: &str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(Error::Input(format!(
            "{shown}: `{name}` holds a non-finite value ({}) at flat index {i}",
            v[i]
        ))),
        None => Ok(()),
    }
}

/// The confidences (the last of every `cols` values) of a keypoint tensor lie in [0, 1].
fn check_confidence(shown: &str, name: &str, v: &[f32], cols: usize) -> Result<()> {
    for (r, row) in v.chunks_exact(cols).enumerate() {
        let c = row[cols - 1];
        if !(0.0..=1.0).contains(&c) {
            return Err(Error::Input(format!(
                "{shown}: `{name}`[{}, {}] has confidence {}, expected a value in [0, 1]",
                r / NUM_KEYPOINTS,
                r % NUM_KEYPOINTS,
                short_num(c)
            )));
        }
    }
    Ok(())
}

/// `x` as written, or in exponent form where that is shorter (`1e30`, not 31 digits).
fn short_num(x: f32) -> String {
    if x.abs() < 1e6 {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

/// MoCap poses `{prefix}hand_pose` `[K, 45]` (axis-angle) and `{prefix}betas` `[K, 10]` of a
/// batch file (`mocap.`) or a `--mocap` file (no prefix): K ≥ 1, every value finite.
pub fn read_mocap(f: &TensorFile, prefix: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    let shown = f.path().display().to_string();
    let (hp_name, betas_name) = (format!("{prefix}hand_pose"), format!("{prefix}betas"));
    let k = match f.shape(&hp_name) {
        Some(&[k, 45]) => k,
        Some(s) => {
            return Err(Error::Input(format!(
                "{shown}: `{hp_name}` has shape {s:?}, expected [K, 45] (K MoCap poses)"
            )))
        }
        None => {
            return Err(Error::Input(format!(
                "{shown}: `{betas_name}` without `{hp_name}` [K, 45]"
            )))
        }
    };
    if k == 0 {
        return Err(Error::Input(format!(
            "{shown}: `{hp_name}` holds no MoCap poses (K = 0)"
        )));
    }
    let hp = f.f32(&hp_name, None)?.into_vec();
    check_finite(&shown, &hp_name, &hp)?;
    let betas = f.f32(&betas_name, Some(&[k, NUM_BETAS]))?.into_vec();
    check_finite(&shown, &betas_name, &betas)?;
    Ok((hp, betas))
}

#[derive(Clone, Copy, Debug)]
pub struct StepOptions {
    pub weights: LossWeights,
    /// `--ours-nll exact`: the NLL of N(μ, W·diag(e^s)·Wᵀ + εI) instead of the diagonal one.
    pub ours_nll_exact: bool,
    pub exact_jitter: f64,
    /// Seed and step of the counter RNG (sample noise when the batch carries none).
    pub seed: u64,
    pub step: u64,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            weights: LossWeights::default(),
            ours_nll_exact: false,
            exact_jitter: 1e-6,
            seed: 0,
            step: 0,
        }
    }
}

pub struct StepOutput {
    pub terms: LossTerms,
    pub total: f64,
    pub grads: Grads,
    /// The discriminator's loss `L_D` (unweighted) and the gradients of `weight·L_D`.
    pub disc: Option<(f64, Discriminator<f32>)>,
    /// ∂loss/∂(backbone output tokens) `[B, T, C]`, the gradient entering the backbone.
    pub d_tokens: Vec<f32>,
}

fn add(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// Axis-angle `[n·3]` → rotation matrices `[n·9]`.
fn aa_to_rot(aa: &[f32]) -> Result<Vec<f32>> {
    let mut out = vec![0f32; aa.len() * 3];
    axis_angle_to_rotmat_cpu(aa, &mut out)?;
    Ok(out)
}

/// The model outputs the losses read (host copies, any engine): rotations `[B, 16, 3, 3]`,
/// betas `[B, 10]`, keypoints `[B, 21, 3]` and their projections `[B, 21, 2]`, and the
/// uncertainty head's raw output `[B, raw_len]` when there is one.
pub struct HeadOutputs<'a> {
    pub rot: &'a [f32],
    pub betas: &'a [f32],
    pub kp3d: &'a [f32],
    pub kp2d: &'a [f32],
    pub raw: Option<&'a [f32]>,
}

/// The gradients of the weighted objective with respect to [`HeadOutputs`] (plus W's), which
/// the backward of either engine starts from.
pub struct HeadGrads {
    pub d_kp2d: Vec<f32>,
    pub d_kp3d: Vec<f32>,
    pub d_rot: Vec<f32>,
    pub d_betas: Vec<f32>,
    pub d_raw: Option<Vec<f32>>,
    /// ∂/∂W (`ours` only: the sample loss, and the exact NLL when computed here).
    pub d_wcov: Option<Vec<f32>>,
}

/// What [`head_losses`] computes.
pub struct HeadLosses {
    pub terms: LossTerms,
    /// The weighted total (NaN when any term is not finite: the trainer skips the step).
    pub total: f64,
    pub grads: HeadGrads,
    /// The discriminator's loss `L_D` and the gradients of `weight·L_D`.
    pub disc: Option<(f64, Discriminator<f32>)>,
}

/// Every loss term of the objective (SPEC §6.5, §7) from the model's outputs, with the
/// gradients the backward starts from; also the discriminator's own loss. With
/// `skip_exact_nll`, the `--ours-nll exact` term is left out (`terms.nll = None`) for an engine
/// that computes it itself (the GPU's Cholesky kernel), which then also completes `total`.
pub fn head_losses(
    model: &HandModel,
    disc: Option<&Discriminator<f32>>,
    batch: &Batch,
    opt: &StepOptions,
    o: &HeadOutputs,
    skip_exact_nll: bool,
) -> Result<HeadLosses> {
    let u = model.config.uncertainty;
    let b = batch.b;
    let w = &opt.weights;
    let (rot, kp3d, kp2d) = (o.rot, o.kp3d, o.kp2d);
    let mut terms = LossTerms::default();
    let mut d_kp2d = vec![0f32; kp2d.len()];
    terms.keypoints_2d = keypoint_2d_l1(
        kp2d,
        &batch.keypoints_2d,
        w.weight(u, Term::Keypoints2d),
        &mut d_kp2d,
    )?;
    let mut d_kp3d = vec![0f32; kp3d.len()];
    terms.keypoints_3d = keypoint_3d_l1_rootrel(
        kp3d,
        &batch.keypoints_3d,
        w.weight(u, Term::Keypoints3d),
        &mut d_kp3d,
    )?;
    let mut d_rot = vec![0f32; rot.len()];
    let mut d_betas = vec![0f32; o.betas.len()];
    let hp: Vec<f32> = rot.chunks(144).flat_map(|r| r[9..].to_vec()).collect();
    {
        let go: Vec<f32> = rot.chunks(144).flat_map(|r| r[..9].to_vec()).collect();
        let (mut d_go, mut d_hp) = (vec![0f32; go.len()], vec![0f32; hp.len()]);
        terms.global_orient = parameter_mse(
            &go,
            &aa_to_rot(&batch.global_orient)?,
            &batch.has_global_orient,
            w.weight(u, Term::GlobalOrient),
            &mut d_go,
        )?;
        terms.hand_pose = parameter_mse(
            &hp,
            &aa_to_rot(&batch.hand_pose)?,
            &batch.has_hand_pose,
            w.weight(u, Term::HandPose),
            &mut d_hp,
        )?;
        terms.betas = parameter_mse(
            o.betas,
            &batch.betas,
            &batch.has_betas,
            w.weight(u, Term::Betas),
            &mut d_betas,
        )?;
        if let Some(d) = disc {
            let (mut dp, mut db) = (vec![0f32; hp.len()], vec![0f32; d_betas.len()]);
            terms.adversarial = d.generator_loss(
                &hp,
                o.betas,
                w.weight(u, Term::Adversarial),
                &mut dp,
                &mut db,
            )?;
            add(&mut d_hp, &dp);
            add(&mut d_betas, &db);
        }
        for i in 0..b {
            d_rot[i * 144..i * 144 + 9].copy_from_slice(&d_go[i * 9..i * 9 + 9]);
            d_rot[i * 144 + 9..(i + 1) * 144].copy_from_slice(&d_hp[i * 135..(i + 1) * 135]);
        }
    }
    let mut d_raw = o.raw.map(|r| vec![0f32; r.len()]);
    let mut d_wcov = (u == Uncertainty::Ours).then(|| vec![0f32; DIM * DIM]);
    if let (Some(raw), Some(d_raw)) = (o.raw, d_raw.as_mut()) {
        let gt = &batch.keypoints_3d;
        let mut d_mu = vec![0f32; kp3d.len()];
        let wn = w.weight(u, Term::Nll);
        let wmat = model.out_layer_keypoints_3d.as_ref().map(|t| t.data());
        terms.nll = match (u, opt.ours_nll_exact) {
            (Uncertainty::Full, _) => Some(nll_full(kp3d, raw, gt, wn, &mut d_mu, d_raw)?),
            (Uncertainty::Ours, true) if skip_exact_nll => None,
            (Uncertainty::Ours, true) => {
                let wm = wmat.ok_or_else(|| Error::Config("`ours` needs W".into()))?;
                Some(nll_exact_lowrank(
                    kp3d,
                    raw,
                    wm,
                    gt,
                    opt.exact_jitter,
                    wn,
                    &mut d_mu,
                    d_raw,
                    d_wcov.as_deref_mut(),
                )?)
            }
            _ => Some(nll_diag(kp3d, raw, gt, wn, &mut d_mu, d_raw)?),
        };
        add(&mut d_kp3d, &d_mu);
        if Term::SampleMean.used_by(u) {
            let n = w.sample_num;
            let eps = match &batch.sample_eps {
                Some(e) => e.clone(),
                None => {
                    let mut e = vec![0f32; b * n * DIM];
                    super::rng::fill_normals_batch(
                        opt.seed,
                        super::rng::STREAM_SAMPLE_NOISE,
                        opt.step,
                        0,
                        n * DIM,
                        &mut e,
                    );
                    e
                }
            };
            let (mut d_mu, mut d_s) = (vec![0f32; kp3d.len()], vec![0f32; raw.len()]);
            let wm = if u == Uncertainty::Ours { wmat } else { None };
            terms.sample_mean = Some(sample_mean(
                kp3d,
                raw,
                wm,
                &eps,
                gt,
                w.weight(u, Term::SampleMean),
                &mut d_mu,
                &mut d_s,
                d_wcov.as_deref_mut(),
            )?);
            add(&mut d_kp3d, &d_mu);
            add(d_raw, &d_s);
        }
        if Term::UncertaintyReg.used_by(u) {
            let mut d_s = vec![0f32; raw.len()];
            terms.uncertainty_reg = Some(uncertainty_reg(
                raw,
                w.weight(u, Term::UncertaintyReg),
                &mut d_s,
            )?);
            add(d_raw, &d_s);
        }
    }
    // A non-finite total (NaN in a label, a diverged model) is reported as NaN: the trainer
    // skips such a step rather than failing.
    let total = w.total(u, &terms).unwrap_or(f64::NAN);

    // The discriminator's own loss on (detached predictions, MoCap).
    let disc_out = match (disc, &batch.mocap) {
        (Some(d), Some((mhp, mbetas))) => {
            let real = aa_to_rot(mhp)?;
            let mut grads = Discriminator::<f32>::zeros();
            let l =
                d.discriminator_loss(&hp, o.betas, &real, mbetas, b, w.adversarial, &mut grads)?;
            Some((l, grads))
        }
        _ => None,
    };
    Ok(HeadLosses {
        terms,
        total,
        grads: HeadGrads {
            d_kp2d,
            d_kp3d,
            d_rot,
            d_betas,
            d_raw,
            d_wcov,
        },
        disc: disc_out,
    })
}

/// One forward + backward with drop-path off (the configuration `--dump-grads` compares with
/// PyTorch). Parameter gradients are returned under their state-dict names.
pub fn train_step(
    model: &HandModel,
    disc: Option<&Discriminator<f32>>,
    batch: &Batch,
    opt: &StepOptions,
) -> Result<StepOutput> {
    let cfg = &model.config;
    let b = batch.b;
    let (f, s) = (cfg.focal_length as f32, cfg.image_size as f32);
    // ---- forward ----
    let (tokens, vit_acts) = model
        .backbone
        .forward_train(&batch.img, b, &|_, _| vec![1.0; b]);
    let mh = model.mano_head.forward_train(&tokens, b)?;
    let mut rot = vec![0f32; b * NUM_JOINTS * 9];
    rot6d_to_rotmat_cpu(&mh.pose6d, &mut rot);
    let m = &model.mano;
    let mano = m.data();
    let nv = m.num_verts();
    let mut verts = vec![0f32; b * nv * 3];
    let mut kp3d = vec![0f32; b * NUM_KEYPOINTS * 3];
    mano_fwd_cpu(&mano, &rot, &mh.betas, b, &mut verts, &mut kp3d);
    let mut cam_t = vec![0f32; b * 3];
    let mut kp2d = vec![0f32; b * NUM_KEYPOINTS * 2];
    for i in 0..b {
        let c = &mh.cam[i * 3..i * 3 + 3];
        let t = cam_translation(&[c[0], c[1], c[2]], f, s);
        cam_t[i * 3..i * 3 + 3].copy_from_slice(&t);
        project_cpu(
            &kp3d[i * 63..(i + 1) * 63],
            &t,
            f / s,
            &mut kp2d[i * 42..(i + 1) * 42],
        );
    }
    let uh = match &model.uncertainty_head {
        Some(h) => Some(h.forward_train(&tokens, b)?),
        None => None,
    };

    // ---- losses ----
    let outs = HeadOutputs {
        rot: &rot,
        betas: &mh.betas,
        kp3d: &kp3d,
        kp2d: &kp2d,
        raw: uh.as_ref().map(|h| &h.raw[..]),
    };
    let HeadLosses {
        terms,
        total,
        grads: hg,
        disc: disc_out,
    } = head_losses(model, disc, batch, opt, &outs, false)?;
    let HeadGrads {
        d_kp2d,
        mut d_kp3d,
        mut d_rot,
        mut d_betas,
        d_raw,
        d_wcov,
    } = hg;

    // ---- backward ----
    let mut g = Grads::default();
    let mut d_cam = vec![0f32; b * 3];
    for i in 0..b {
        let t = [cam_t[i * 3], cam_t[i * 3 + 1], cam_t[i * 3 + 2]];
        let mut d_pts = vec![0f32; 63];
        let mut d_t = [0f32; 3];
        project_bwd_cpu(
            &kp3d[i * 63..(i + 1) * 63],
            &t,
            f / s,
            &d_kp2d[i * 42..(i + 1) * 42],
            &mut d_pts,
            &mut d_t,
        );
        add(&mut d_kp3d[i * 63..(i + 1) * 63], &d_pts);
        let c = &mh.cam[i * 3..i * 3 + 3];
        d_cam[i * 3..i * 3 + 3].copy_from_slice(&cam_translation_bwd(
            &[c[0], c[1], c[2]],
            f,
            s,
            &d_t,
        ));
    }
    let (mut d_rot_m, mut d_betas_m) = (vec![0f32; rot.len()], vec![0f32; d_betas.len()]);
    mano_bwd_cpu(
        &mano,
        &rot,
        &mh.betas,
        b,
        &vec![0f32; verts.len()],
        &d_kp3d,
        &mut d_rot_m,
        &mut d_betas_m,
    );
    add(&mut d_rot, &d_rot_m);
    add(&mut d_betas, &d_betas_m);
    let mut d_pose6d = vec![0f32; mh.pose6d.len()];
    rot6d_to_rotmat_bwd_cpu(&mh.pose6d, &d_rot, &mut d_pose6d);
    let mut d_ctx = vec![0f32; tokens.len()];
    model.mano_head.backward(
        &mh, &d_pose6d, &d_betas, &d_cam, &tokens, &mut d_ctx, &mut g,
    );
    if let (Some(head), Some(h), Some(d_raw)) = (&model.uncertainty_head, &uh, &d_raw) {
        head.backward(h, d_raw, &tokens, &mut d_ctx, &mut g);
        if let Some(dw) = d_wcov {
            g.put("out_layer_keypoints_3d.weight", dw);
        }
    }
    model.backbone.backward(&vit_acts, &d_ctx, &mut g);

    Ok(StepOutput {
        terms,
        total,
        grads: g,
        disc: disc_out,
        d_tokens: d_ctx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::save_f32;
    use crate::tensor::Tensor;
    use std::path::PathBuf;

    /// A valid one-item batch of 4-px crops as (name, shape, values), with a MoCap stream.
    fn valid() -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let kp = |cols: usize| -> Vec<f32> {
            (0..NUM_KEYPOINTS * cols)
                .map(|i| {
                    if i % cols == cols - 1 {
                        1.0
                    } else {
                        0.01 * i as f32
                    }
                })
                .collect()
        };
        [
            ("img", vec![1, 3, 4, 4], vec![0.5; 48]),
            ("keypoints_2d", vec![1, NUM_KEYPOINTS, 3], kp(3)),
            ("keypoints_3d", vec![1, NUM_KEYPOINTS, 4], kp(4)),
            ("mano_params.global_orient", vec![1, 3], vec![0.1; 3]),
            ("mano_params.hand_pose", vec![1, 45], vec![0.0; 45]),
            ("mano_params.betas", vec![1, 10], vec![0.0; 10]),
            ("has_mano_params.global_orient", vec![1], vec![1.0]),
            ("has_mano_params.hand_pose", vec![1], vec![0.0]),
            ("has_mano_params.betas", vec![1], vec![1.0]),
            ("mocap.hand_pose", vec![2, 45], vec![0.2; 90]),
            ("mocap.betas", vec![2, 10], vec![0.0; 20]),
        ]
        .into_iter()
        .map(|(n, s, v)| (n.to_string(), s, v))
        .collect()
    }

    fn load(name: &str, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Batch> {
        let dir = std::env::temp_dir().join(format!("handcov-batch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // One file per test thread: tests run in parallel.
        let path: PathBuf = dir.join(format!(
            "{name}-{:?}.safetensors",
            std::thread::current().id()
        ));
        let owned: Vec<(String, Tensor)> = tensors
            .iter()
            .map(|(n, s, v)| (n.clone(), Tensor::from_vec(s, v.clone()).unwrap()))
            .collect();
        let refs: Vec<(&str, &Tensor)> = owned.iter().map(|(n, t)| (n.as_str(), t)).collect();
        save_f32(&path, &refs, None).unwrap();
        let r = Batch::load(&TensorFile::open(&path).unwrap(), 4);
        let _ = std::fs::remove_file(&path);
        r
    }

    /// `valid()` with tensor `name` replaced by (shape, values), or removed (`None`).
    fn edited(
        name: &str,
        t: Option<(Vec<usize>, Vec<f32>)>,
    ) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut v = valid();
        v.retain(|(n, _, _)| n != name);
        if let Some((s, x)) = t {
            v.push((name.to_string(), s, x));
        }
        v
    }

    fn err(name: &str, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> String {
        match load(name, tensors) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_valid_batch_loads() {
        let b = load("valid", &valid()).unwrap();
        assert_eq!(b.b, 1);
        assert_eq!(
            b.mocap.as_ref().map(|m| (m.0.len(), m.1.len())),
            Some((90, 20))
        );
        assert_eq!(b.has_hand_pose, vec![0.0]);
    }

    #[test]
    fn mocap_tensors_of_the_wrong_rank_or_size_are_errors() {
        // A 0-d `mocap.hand_pose` once panicked in `Tensor::dim`.
        for (case, shape, values, want) in [
            (
                "scalar",
                vec![],
                vec![1.0],
                "has shape [], expected [K, 45]",
            ),
            (
                "vector",
                vec![45],
                vec![0.0; 45],
                "has shape [45], expected [K, 45]",
            ),
            ("empty", vec![0, 45], vec![], "holds no MoCap poses"),
        ] {
            let m = err(case, &edited("mocap.hand_pose", Some((shape, values))));
            assert!(
                m.contains("`mocap.hand_pose`") && m.contains(want),
                "{case}: {m}"
            );
        }
        let m = err("nohp", &edited("mocap.hand_pose", None));
        assert!(m.contains("`mocap.betas` without `mocap.hand_pose`"), "{m}");
        let m = err("nobetas", &edited("mocap.betas", None));
        assert!(m.contains("mocap.betas"), "{m}");
    }

    #[test]
    fn flags_must_be_zero_or_one() {
        for x in [2.0, -1.0, 0.5] {
            let m = err(
                "flag",
                &edited("has_mano_params.betas", Some((vec![1], vec![x]))),
            );
            assert!(
                m.contains("`has_mano_params.betas`[0]") && m.contains("must be 0 or 1"),
                "{x}: {m}"
            );
        }
    }

    #[test]
    fn non_finite_labels_are_errors_naming_tensor_and_index() {
        for name in [
            "keypoints_2d",
            "keypoints_3d",
            "mano_params.global_orient",
            "mano_params.hand_pose",
            "mano_params.betas",
            "has_mano_params.hand_pose",
            "mocap.hand_pose",
            "mocap.betas",
        ] {
            for bad in [f32::NAN, f32::INFINITY] {
                let mut v = valid();
                let t = v.iter_mut().find(|(n, _, _)| n == name).unwrap();
                t.2[0] = bad;
                let m = err(name, &v);
                assert!(
                    m.contains(&format!("`{name}` holds a non-finite value"))
                        && m.contains("at flat index 0"),
                    "{name}: {m}"
                );
            }
        }
        let mut v = valid();
        v.push(("sample_eps".into(), vec![1, 1, DIM], vec![0.0; DIM]));
        load("eps", &v).unwrap();
        v.last_mut().unwrap().2[7] = f32::NAN;
        assert!(
            err("eps", &v).contains("`sample_eps` holds a non-finite value (NaN) at flat index 7")
        );
    }

    #[test]
    fn confidences_must_lie_in_zero_one() {
        for (name, cols) in [("keypoints_2d", 3), ("keypoints_3d", 4)] {
            for bad in [-0.5f32, 1.5, 1e30] {
                let mut v = valid();
                let t = v.iter_mut().find(|(n, _, _)| n == name).unwrap();
                t.2[5 * cols + cols - 1] = bad;
                let m = err(name, &v);
                assert!(
                    m.contains(&format!("`{name}`[0, 5] has confidence")),
                    "{name} {bad}: {m}"
                );
            }
        }
        assert!(err("c", &{
            let mut v = valid();
            v[1].2[2] = 1e30;
            v
        })
        .contains("confidence 1e30,"));
    }

    #[test]
    fn an_unknown_tensor_is_an_error() {
        let mut v = valid();
        v.push(("foo".into(), vec![1], vec![0.0]));
        let m = err("extra", &v);
        assert!(m.contains("unknown tensor `foo`"), "{m}");
    }
}
