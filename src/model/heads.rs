//! The MANO head (SPEC §3) and the four uncertainty heads (SPEC §6): each a TransformerDecoder
//! over the backbone tokens followed by a linear readout.

use super::config::{ModelConfig, Uncertainty};
use super::decoder::TransformerDecoder;
use super::layers::{Linear, Loader};
use crate::error::Result;
use crate::ops::covariance::{CovParam, DIM, TRIL};
use crate::ops::linear::Epilogue;
use crate::tensor::Tensor;

/// 16 joints × 6D.
pub const NPOSE: usize = 96;
pub const NBETAS: usize = 10;

/// `mano_head.*`: decoder + readouts added to the mean parameters.
pub struct ManoHead {
    pub init_hand_pose: Tensor,
    pub init_betas: Tensor,
    pub init_cam: Tensor,
    pub transformer: TransformerDecoder,
    pub decpose: Linear,
    pub decshape: Linear,
    pub deccam: Linear,
}

/// Raw MANO-head outputs.
pub struct ManoParams {
    /// `[B, 96]`
    pub pose6d: Tensor,
    /// `[B, 10]`
    pub betas: Tensor,
    /// `[B, 3]` weak-perspective `(s, tx, ty)`
    pub cam: Tensor,
}

impl ManoHead {
    pub fn load(cfg: &ModelConfig, ld: &Loader) -> Result<ManoHead> {
        let dim = cfg.decoder.dim;
        Ok(ManoHead {
            init_hand_pose: ld.tensor("init_hand_pose", &[1, NPOSE])?,
            init_betas: ld.tensor("init_betas", &[1, NBETAS])?,
            init_cam: ld.tensor("init_cam", &[1, 3])?,
            transformer: TransformerDecoder::load(&cfg.decoder, &ld.sub("transformer"))?,
            decpose: ld.linear("decpose", dim, NPOSE, true)?,
            decshape: ld.linear("decshape", dim, NBETAS, true)?,
            deccam: ld.linear("deccam", dim, 3, true)?,
        })
    }

    pub fn forward(&self, ctx: &Tensor) -> Result<ManoParams> {
        let token = self.transformer.forward(ctx)?;
        let readout = |lin: &Linear, init: &Tensor| -> Result<Tensor> {
            let mut y = lin.forward(&token, Epilogue::None)?;
            let n = init.numel();
            for row in y.data_mut().chunks_mut(n) {
                for (v, m) in row.iter_mut().zip(init.data()) {
                    *v += m;
                }
            }
            Ok(y)
        };
        Ok(ManoParams {
            pose6d: readout(&self.decpose, &self.init_hand_pose)?,
            betas: readout(&self.decshape, &self.init_betas)?,
            cam: readout(&self.deccam, &self.init_cam)?,
        })
    }
}

/// The readout of an uncertainty head, by type.
pub enum Readout {
    /// `dec3dkeypoint.0` (diag) or `dec3dkeypoint` (ours, ours_wo_linear): 63 log-variances.
    LogVar(Linear),
    /// `dec3dkeypoint_diag` (63 values d) and `dec3dkeypoint_cov` (1953 strictly-lower entries).
    Full { diag: Linear, cov: Linear },
}

/// `uncertainty_head.*`: its own decoder + readout.
pub struct UncertaintyHead {
    pub transformer: TransformerDecoder,
    pub readout: Readout,
    pub param: CovParam,
    /// State-dict prefix of a `LogVar` readout: `uncertainty_head.dec3dkeypoint.0` (diag) or
    /// `uncertainty_head.dec3dkeypoint` (ours, ours_wo_linear).
    pub readout_name: String,
}

impl UncertaintyHead {
    pub fn load(cfg: &ModelConfig, ld: &Loader) -> Result<UncertaintyHead> {
        let dim = cfg.decoder.dim;
        let (readout, param) = match cfg.uncertainty {
            Uncertainty::Diag => (
                Readout::LogVar(ld.linear("dec3dkeypoint.0", dim, DIM, true)?),
                CovParam::Diag,
            ),
            Uncertainty::OursWoLinear => (
                Readout::LogVar(ld.linear("dec3dkeypoint", dim, DIM, true)?),
                CovParam::Diag,
            ),
            Uncertainty::Ours => (
                Readout::LogVar(ld.linear("dec3dkeypoint", dim, DIM, true)?),
                CovParam::LowRank,
            ),
            Uncertainty::Full => (
                Readout::Full {
                    diag: ld.linear("dec3dkeypoint_diag", dim, DIM, true)?,
                    cov: ld.linear("dec3dkeypoint_cov", dim, TRIL, true)?,
                },
                CovParam::Full,
            ),
            Uncertainty::None => {
                return Err(crate::error::Error::Config(
                    "a model with uncertainty \"none\" has no uncertainty head".into(),
                ))
            }
        };
        // The head carries unused copies of the mean-parameter buffers; accept them if present.
        for leaf in ["init_hand_pose", "init_betas", "init_cam"] {
            ld.file.skip(&ld.name(leaf));
        }
        let readout_name = ld.name(if cfg.uncertainty == Uncertainty::Diag {
            "dec3dkeypoint.0"
        } else {
            "dec3dkeypoint"
        });
        Ok(UncertaintyHead {
            transformer: TransformerDecoder::load(&cfg.decoder, &ld.sub("transformer"))?,
            readout,
            param,
            readout_name,
        })
    }

    /// `ctx` → the raw readout `[B, param.raw_len()]` (for `full`: d then the off-diagonals).
    pub fn forward(&self, ctx: &Tensor) -> Result<Tensor> {
        let token = self.transformer.forward(ctx)?;
        match &self.readout {
            Readout::LogVar(lin) => lin.forward(&token, Epilogue::None),
            Readout::Full { diag, cov } => {
                let d = diag.forward(&token, Epilogue::None)?;
                let o = cov.forward(&token, Epilogue::None)?;
                let b = token.dim(0);
                let mut raw = Vec::with_capacity(b * (DIM + TRIL));
                for (dr, or) in d.data().chunks(DIM).zip(o.data().chunks(TRIL)) {
                    raw.extend_from_slice(dr);
                    raw.extend_from_slice(or);
                }
                Tensor::from_vec(&[b, DIM + TRIL], raw)
            }
        }
    }
}
