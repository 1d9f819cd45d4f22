//! The whole model: backbone, MANO head, optional uncertainty head (with `W` for `ours`), MANO
//! layer and camera. `HandModel` mirrors the PyTorch module tree, so a weight's state-dict name
//! says where it lives (`backbone.blocks.3.attn.qkv.weight` → `backbone.blocks[3].attn.qkv`).

pub mod backward;
pub mod camera;
pub mod config;
pub mod decoder;
pub mod heads;
pub mod layers;
pub mod mano;
pub mod params;
pub mod vit;
pub mod weights;

use crate::error::{Error, Result};
use crate::ops::covariance::{covariance_cpu, DIM};
use crate::ops::geometry::rot6d_to_rotmat_cpu;
use crate::tensor::{fmt_shape, Tensor};
use config::{ModelConfig, Uncertainty};
use heads::{ManoHead, UncertaintyHead};
use layers::Loader;
use mano::Mano;
use vit::Vit;
use weights::TensorFile;

pub struct HandModel {
    pub config: ModelConfig,
    pub backbone: Vit,
    pub mano_head: ManoHead,
    pub uncertainty_head: Option<UncertaintyHead>,
    /// `out_layer_keypoints_3d.weight`, `W [63, 63]` (`ours` only).
    pub out_layer_keypoints_3d: Option<Tensor>,
    pub mano: Mano,
}

/// Everything one forward pass produces; names and shapes are those of the `infer` dumps.
pub struct Prediction {
    /// `[B, C, rows, cols]`
    pub backbone_features: Tensor,
    /// `[B, 96]`
    pub pose6d: Tensor,
    /// `[B, 1, 3, 3]`
    pub global_orient: Tensor,
    /// `[B, 15, 3, 3]`
    pub hand_pose: Tensor,
    /// `[B, 10]`
    pub betas: Tensor,
    /// `[B, 3]`
    pub pred_cam: Tensor,
    /// `[B, 3]`
    pub pred_cam_t: Tensor,
    /// `[B, 21, 3]`, MANO frame, metres, OpenPose order.
    pub pred_keypoints_3d: Tensor,
    /// `[B, 21, 2]`, normalised crop coordinates.
    pub pred_keypoints_2d: Tensor,
    /// `[B, V, 3]`
    pub pred_vertices: Tensor,
    /// Uncertainty models only.
    pub uncertainty: Option<UncertaintyOutput>,
}

pub struct UncertaintyOutput {
    /// The head's readout `[B, 63]` (log-variances) or `[B, 2016]` (`full`: d, then L's
    /// strictly-lower entries).
    pub raw: Tensor,
    /// Σ `[B, 63, 63]` of the 63-vector of joints (joint-major x, y, z).
    pub keypoint_3d_cov: Tensor,
    /// `[B, 21]`, trace of each joint's 3×3 block (m²).
    pub joint_uncertainty: Tensor,
}

impl Prediction {
    /// An error naming the first output that holds a NaN or an infinity (and which image of
    /// the batch), so that no tool writes one: with finite weights (checked at load) and a
    /// finite input, a non-finite output means an input far outside the normalised crop's
    /// range or weights that overflow.
    pub fn check_finite(&self) -> Result<()> {
        for (name, t) in self.named() {
            if let Some(i) = weights::first_non_finite(t.data()) {
                let per = t.data().len() / t.shape().first().copied().unwrap_or(1).max(1);
                return Err(Error::Input(format!(
                    "the model's output `{name}` is not finite ({}) for image {} of the batch: \
                     the input is outside the normalised crop's range (about ±3) or the weights \
                     overflow",
                    t.data()[i],
                    i / per.max(1)
                )));
            }
        }
        Ok(())
    }

    /// The tensors under their dump names.
    pub fn named(&self) -> Vec<(&'static str, &Tensor)> {
        let mut v = vec![
            ("backbone_features", &self.backbone_features),
            ("pose6d", &self.pose6d),
            ("global_orient", &self.global_orient),
            ("hand_pose", &self.hand_pose),
            ("betas", &self.betas),
            ("pred_cam", &self.pred_cam),
            ("pred_cam_t", &self.pred_cam_t),
            ("pred_keypoints_3d", &self.pred_keypoints_3d),
            ("pred_keypoints_2d", &self.pred_keypoints_2d),
            ("pred_vertices", &self.pred_vertices),
        ];
        if let Some(u) = &self.uncertainty {
            v.push(("uncertainty_raw", &u.raw));
            v.push(("keypoint_3d_cov", &u.keypoint_3d_cov));
            v.push(("joint_uncertainty", &u.joint_uncertainty));
        }
        v
    }
}

/// Tensors a checkpoint may hold that inference does not use: the discriminator, the
/// optimiser state of a handcov training checkpoint, Lightning's `initialized` flag.
fn ignorable(name: &str) -> bool {
    name.starts_with("discriminator.")
        || name.starts_with("optim.")
        || name.starts_with("optim_disc.")
        || name == "initialized"
}

/// The uncertainty type a weights file was trained with, read from its key names.
pub fn detect_uncertainty(f: &TensorFile) -> Uncertainty {
    if f.contains("out_layer_keypoints_3d.weight") {
        Uncertainty::Ours
    } else if f.contains("uncertainty_head.dec3dkeypoint_cov.weight") {
        Uncertainty::Full
    } else if f.contains("uncertainty_head.dec3dkeypoint.0.weight") {
        Uncertainty::Diag
    } else if f.contains("uncertainty_head.dec3dkeypoint.weight") {
        Uncertainty::OursWoLinear
    } else {
        Uncertainty::None
    }
}

/// What to do with tensors in a weights file that the model does not use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtraTensors {
    /// An error naming the first one (the default: a wrong config or a wrong file is caught).
    Error,
    /// Accepted silently (a file that bundles several heads, say).
    Ignore,
}

impl HandModel {
    /// Builds the model from a weights file, taking the `mano.*` tensors from `mano_file` when
    /// given (then any `mano.*` in `weights` is ignored). Every tensor the model needs must be
    /// present with its exact shape, and every tensor in `weights` must be used (or be a known
    /// training-only one): anything else is an error naming the tensor.
    pub fn load(
        config: ModelConfig,
        weights: &TensorFile,
        mano_file: Option<&TensorFile>,
    ) -> Result<HandModel> {
        HandModel::load_with(config, weights, mano_file, ExtraTensors::Error)
    }

    /// A model with random weights ([`layers::RandomWeights`]) and the MANO model of `mano_file`,
    /// for benchmarks and tests at sizes no weights file is shipped for.
    pub fn random(config: ModelConfig, mano_file: &TensorFile, seed: u64) -> Result<HandModel> {
        config.validate()?;
        let src = layers::RandomWeights { seed };
        HandModel::build(config, &src, Mano::load(mano_file)?)
    }

    /// The model to fine-tune from `weights`: an uncertainty head (and W) missing from the file —
    /// a plain HaMeR checkpoint — is freshly initialised as PyTorch would ([`layers::TorchDefaultInit`],
    /// SPEC §6), its mean-parameter buffers copied from the MANO head. Everything else must be
    /// present; unused tensors other than the discriminator's are an error as in [`HandModel::load`].
    pub fn load_for_training(
        config: ModelConfig,
        weights: &TensorFile,
        mano_file: Option<&TensorFile>,
        seed: u64,
    ) -> Result<HandModel> {
        let fresh = !weights.names().any(|n| n.starts_with("uncertainty_head."));
        if !fresh || config.uncertainty == Uncertainty::None {
            return HandModel::load(config, weights, mano_file);
        }
        config.validate()?;
        let mano = match mano_file {
            Some(m) => {
                for name in weights.names().filter(|n| n.starts_with("mano.")) {
                    weights.skip(name);
                }
                Mano::load(m)?
            }
            None => Mano::load(weights)?,
        };
        let init = layers::TorchDefaultInit::new(seed);
        let src = layers::WithFallback {
            file: weights,
            fallback: &init,
            fresh_prefixes: &["uncertainty_head.", "out_layer_keypoints_3d."],
        };
        let model = HandModel::build(config, &src, mano)?;
        let unused: Vec<String> = weights
            .unused()
            .into_iter()
            .filter(|n| !ignorable(n))
            .collect();
        if let Some(first) = unused.first() {
            return Err(Error::Weights(format!(
                "{}: unexpected tensor `{first}` ({} unexpected in all)",
                weights.path().display(),
                unused.len()
            )));
        }
        Ok(model)
    }

    /// The modules, from any tensor source.
    pub fn build(
        config: ModelConfig,
        src: &dyn layers::TensorSource,
        mano: Mano,
    ) -> Result<HandModel> {
        let root = Loader::new(src, "");
        let backbone = Vit::load(&config, &root.sub("backbone"))?;
        let mano_head = ManoHead::load(&config, &root.sub("mano_head"))?;
        let uncertainty_head = match config.uncertainty {
            Uncertainty::None => None,
            _ => Some(UncertaintyHead::load(
                &config,
                &root.sub("uncertainty_head"),
            )?),
        };
        let out_layer_keypoints_3d = match config.uncertainty {
            Uncertainty::Ours => Some(root.tensor("out_layer_keypoints_3d.weight", &[DIM, DIM])?),
            _ => None,
        };
        Ok(HandModel {
            config,
            backbone,
            mano_head,
            uncertainty_head,
            out_layer_keypoints_3d,
            mano,
        })
    }

    /// [`HandModel::load`] with a choice of what unused tensors mean.
    pub fn load_with(
        config: ModelConfig,
        weights: &TensorFile,
        mano_file: Option<&TensorFile>,
        extra: ExtraTensors,
    ) -> Result<HandModel> {
        config.validate()?;
        let mano = match mano_file {
            Some(m) => {
                let mano = Mano::load(m)?;
                for name in weights.names().filter(|n| n.starts_with("mano.")) {
                    weights.skip(name);
                }
                mano
            }
            None => Mano::load(weights).map_err(|e| match e {
                Error::Weights(m) if m.contains("missing tensor `mano.") => {
                    Error::Weights(format!("{m}; the weights hold no MANO model: pass --mano mano.safetensors (see weights/README.md)"))
                }
                other => other,
            })?,
        };
        let model = HandModel::build(config, weights, mano)?;
        let unused: Vec<String> = match extra {
            ExtraTensors::Error => weights
                .unused()
                .into_iter()
                .filter(|n| !ignorable(n))
                .collect(),
            ExtraTensors::Ignore => Vec::new(),
        };
        if let Some(first) = unused.first() {
            let detected = detect_uncertainty(weights);
            let hint = if detected != model.config.uncertainty {
                format!(
                    "; the weights look like a `{}` model but the config says `{}`",
                    detected.name(),
                    model.config.uncertainty.name()
                )
            } else {
                String::new()
            };
            return Err(Error::Weights(format!(
                "{}: unexpected tensor `{first}` {} ({} unexpected in all){hint}",
                weights.path().display(),
                fmt_shape(weights.shape(first).unwrap_or(&[])),
                unused.len()
            )));
        }
        if let Some(m) = mano_file {
            let extra: Vec<String> = m.unused().into_iter().filter(|n| !ignorable(n)).collect();
            if let Some(first) = extra.first() {
                return Err(Error::Weights(format!(
                    "{}: unexpected tensor `{first}` in a MANO file",
                    m.path().display()
                )));
            }
        }
        Ok(model)
    }

    /// Checks a model input: `[B, 3, S, S]` with every value finite.
    pub fn check_input(&self, img: &Tensor) -> Result<()> {
        let s = self.config.image_size;
        let sh = img.shape();
        if sh.len() != 4 || sh[1] != 3 || sh[2] != s || sh[3] != s || sh[0] == 0 {
            return Err(Error::Input(format!(
                "input image tensor has shape {}, expected [B, 3, {s}, {s}] with B ≥ 1 (the normalised crop)",
                fmt_shape(sh)
            )));
        }
        if let Some(i) = img.data().iter().position(|v| !v.is_finite()) {
            let (per, plane) = (3 * s * s, s * s);
            return Err(Error::Input(format!(
                "input image tensor holds a non-finite value ({}) at [{}, {}, {}, {}]",
                img.data()[i],
                i / per,
                i % per / plane,
                i % plane / s,
                i % s
            )));
        }
        Ok(())
    }

    /// The whole forward pass on `img [B, 3, S, S]` (normalised square crops).
    pub fn forward(&self, img: &Tensor) -> Result<Prediction> {
        self.check_input(img)?;
        let b = img.dim(0);
        let tokens = self.backbone.forward(img)?;
        let mp = self.mano_head.forward(&tokens)?;
        let mut rot = Tensor::zeros(&[b, 16, 3, 3]);
        rot6d_to_rotmat_cpu(mp.pose6d.data(), rot.data_mut());
        let (pred_vertices, pred_keypoints_3d) = self.mano.forward(&rot, &mp.betas)?;
        let (f, s) = (
            self.config.focal_length as f32,
            self.config.image_size as f32,
        );
        let pred_cam_t = camera::cam_t(&mp.cam, f, s)?;
        let pred_keypoints_2d = camera::project(&pred_keypoints_3d, &pred_cam_t, f, s)?;
        let uncertainty = match &self.uncertainty_head {
            None => None,
            Some(head) => {
                let raw = head.forward(&tokens)?;
                let mut keypoint_3d_cov = Tensor::zeros(&[b, DIM, DIM]);
                let mut joint_uncertainty = Tensor::zeros(&[b, DIM / 3]);
                let w = self.out_layer_keypoints_3d.as_ref().map(|w| w.data());
                covariance_cpu(
                    head.param,
                    raw.data(),
                    w,
                    keypoint_3d_cov.data_mut(),
                    joint_uncertainty.data_mut(),
                );
                Some(UncertaintyOutput {
                    raw,
                    keypoint_3d_cov,
                    joint_uncertainty,
                })
            }
        };
        Prediction::assemble(
            &self.config,
            RawOutputs {
                tokens,
                pose6d: mp.pose6d,
                rotmats: rot,
                betas: mp.betas,
                cam: mp.cam,
                cam_t: pred_cam_t,
                keypoints_3d: pred_keypoints_3d,
                keypoints_2d: pred_keypoints_2d,
                vertices: pred_vertices,
            },
            uncertainty,
        )
    }
}

/// The outputs of a forward pass before they are arranged as a [`Prediction`] (shared by the
/// CPU and GPU paths).
pub struct RawOutputs {
    /// `[B, T, C]` after `last_norm`.
    pub tokens: Tensor,
    pub pose6d: Tensor,
    /// `[B, 16, 3, 3]`
    pub rotmats: Tensor,
    pub betas: Tensor,
    pub cam: Tensor,
    pub cam_t: Tensor,
    pub keypoints_3d: Tensor,
    pub keypoints_2d: Tensor,
    pub vertices: Tensor,
}

impl Prediction {
    /// Arranges raw outputs under the dump names and shapes (feature map, split rotations).
    pub fn assemble(
        config: &ModelConfig,
        raw: RawOutputs,
        uncertainty: Option<UncertaintyOutput>,
    ) -> Result<Prediction> {
        let b = raw.rotmats.dim(0);
        let rot = raw.rotmats.into_vec();
        let mut go = Vec::with_capacity(b * 9);
        let mut hp = Vec::with_capacity(b * 135);
        for r in rot.chunks(16 * 9) {
            go.extend_from_slice(&r[..9]);
            hp.extend_from_slice(&r[9..]);
        }
        Ok(Prediction {
            backbone_features: tokens_to_map(&raw.tokens, config.grid())?,
            pose6d: raw.pose6d,
            global_orient: Tensor::from_vec(&[b, 1, 3, 3], go)?,
            hand_pose: Tensor::from_vec(&[b, 15, 3, 3], hp)?,
            betas: raw.betas,
            pred_cam: raw.cam,
            pred_cam_t: raw.cam_t,
            pred_keypoints_3d: raw.keypoints_3d,
            pred_keypoints_2d: raw.keypoints_2d,
            pred_vertices: raw.vertices,
            uncertainty,
        })
    }
}

/// Tokens `[B, T, C]` → feature map `[B, C, rows, cols]` (SPEC §2.2.4).
fn tokens_to_map(tokens: &Tensor, (rows, cols): (usize, usize)) -> Result<Tensor> {
    let (b, t, c) = (tokens.dim(0), tokens.dim(1), tokens.dim(2));
    let src = tokens.data();
    let mut out = vec![0f32; b * c * t];
    for bi in 0..b {
        for ti in 0..t {
            for ci in 0..c {
                out[(bi * c + ci) * t + ti] = src[(bi * t + ti) * c + ci];
            }
        }
    }
    Tensor::from_vec(&[b, c, rows, cols], out)
}
