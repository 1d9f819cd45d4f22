//! The training step on the GPU: the device forward (`cuda::train::GpuTrainModel`), the loss
//! terms on the host from the small head outputs by the same [`head_losses`] as the CPU step
//! (the exact NLL of `ours` runs on the device, in its Cholesky kernel), the device backward,
//! and AdamW on the device. The parameters, gradients and moments stay on the GPU; the host
//! model is refreshed from the device when a checkpoint is written, and its `W` (which the host
//! sample loss reads) after every update.

use half::bf16;

use super::adamw::{AdamW, AdamWConfig};
use super::discriminator::Discriminator;
use super::losses::{LossTerms, Term};
use super::step::{head_losses, Batch, HeadLosses, HeadOutputs, StepOptions};
use crate::cuda::adamw::{AdamWHyper, AdamWTensors, AdamWWorkspace};
use crate::cuda::train::params::DevBuffers;
use crate::cuda::train::{ExactNll, GpuTrainModel, OutputGrads};
use crate::cuda::{CudaBackend, Dtype};
use crate::engine::Precision;
use crate::error::{Error, Result};
use crate::model::backward::Grads;
use crate::model::config::Uncertainty;
use crate::model::HandModel;

/// What one GPU step gives back (the gradients stay on the device).
pub struct GpuStepOutput {
    pub terms: LossTerms,
    pub total: f64,
    /// The discriminator's loss and gradients (computed on the host).
    pub disc: Option<(f64, Discriminator<f32>)>,
}

/// The model and its AdamW state on one GPU, in one precision.
pub struct GpuTrainer<T: Dtype> {
    pub model: GpuTrainModel<T>,
    exp_avg: DevBuffers,
    exp_avg_sq: DevBuffers,
    adamw: AdamWWorkspace,
    pub config: AdamWConfig,
    /// Optimiser steps taken (bias correction), as `AdamW::step`.
    pub step: u64,
}

/// Either precision.
pub enum GpuEngine {
    F32(GpuTrainer<f32>),
    Bf16(GpuTrainer<bf16>),
}

macro_rules! each {
    ($self:expr, $t:ident => $body:expr) => {
        match $self {
            GpuEngine::F32($t) => $body,
            GpuEngine::Bf16($t) => $body,
        }
    };
}

impl GpuEngine {
    /// Uploads `model` to GPU 0 in `precision`, with zero moments.
    pub fn new(model: &mut HandModel, precision: Precision, config: AdamWConfig) -> Result<Self> {
        let be = CudaBackend::new(0).map_err(|e| e.with_hint("use --device cpu"))?;
        Ok(match precision {
            Precision::Fp32 => GpuEngine::F32(GpuTrainer::new(be, model, config)?),
            Precision::Bf16 => GpuEngine::Bf16(GpuTrainer::new(be, model, config)?),
        })
    }

    pub fn step(
        &mut self,
        model: &HandModel,
        disc: Option<&Discriminator<f32>>,
        batch: &Batch,
        opt: &StepOptions,
    ) -> Result<GpuStepOutput> {
        each!(self, t => t.forward_backward(model, disc, batch, opt))
    }

    /// Sets the learning rate of the next updates.
    pub fn set_lr(&mut self, lr: f32) {
        each!(self, t => t.config.lr = lr)
    }

    /// Allocates the activations of batch size `b` now, so that a batch that does not fit fails
    /// before training starts, with a message naming the batch size.
    pub fn reserve(&mut self, b: usize) -> Result<()> {
        each!(self, t => t.model.ensure_workspace(b))
    }

    /// The objective on `batch` without a backward or an update (validation): the device
    /// forward and the host losses, the exact NLL included.
    pub fn evaluate(
        &mut self,
        model: &HandModel,
        disc: Option<&Discriminator<f32>>,
        batch: &Batch,
        opt: &StepOptions,
    ) -> Result<(f64, LossTerms)> {
        let outs = each!(self, t => t.model.forward(&batch.img, batch.b, None))?;
        let h = head_losses(
            model,
            disc,
            batch,
            opt,
            &HeadOutputs {
                rot: &outs.rot,
                betas: &outs.betas,
                kp3d: &outs.kp3d,
                kp2d: &outs.kp2d,
                raw: outs.raw.as_deref(),
            },
            false,
        )?;
        Ok((h.total, h.terms))
    }

    /// Host copies of the last step's gradients.
    pub fn grads(&self) -> Result<Grads> {
        each!(self, t => t.model.download_grads())
    }

    /// One AdamW update on the device from the last step's gradients, skipped (`Ok(true)`,
    /// nothing written) when a gradient is not finite; refreshes the host model's W (which the
    /// host sample loss reads).
    pub fn update(&mut self, model: &mut HandModel) -> Result<bool> {
        each!(self, t => t.update(model))
    }

    /// Copies weights and moments to the host (for a checkpoint).
    pub fn download(&self, model: &mut HandModel, opt: &mut AdamW) -> Result<()> {
        each!(self, t => t.download(model, opt))
    }

    /// Replaces the device state by the host's (after a checkpoint was loaded).
    pub fn upload(&mut self, model: &mut HandModel, opt: &AdamW) -> Result<()> {
        each!(self, t => t.upload(model, opt))
    }

    pub fn describe(&self) -> String {
        let (name, p) = match self {
            GpuEngine::F32(t) => (t.model.backend().device_name(), "fp32"),
            GpuEngine::Bf16(t) => (t.model.backend().device_name(), "bf16"),
        };
        format!("{} ({p})", name.unwrap_or_else(|_| "CUDA device".into()))
    }
}

impl<T: Dtype> GpuTrainer<T> {
    pub fn new(be: CudaBackend, model: &mut HandModel, config: AdamWConfig) -> Result<Self> {
        let gm = GpuTrainModel::<T>::upload(be, model)?;
        let exp_avg = DevBuffers::zeros(gm.backend(), &gm.params.index)?;
        let exp_avg_sq = DevBuffers::zeros(gm.backend(), &gm.params.index)?;
        let adamw = gm.backend().adamw_workspace(0)?;
        Ok(GpuTrainer {
            model: gm,
            exp_avg,
            exp_avg_sq,
            adamw,
            config,
            step: 0,
        })
    }

    /// Forward, host losses, backward (drop-path off, as the CPU step).
    pub fn forward_backward(
        &mut self,
        model: &HandModel,
        disc: Option<&Discriminator<f32>>,
        batch: &Batch,
        opt: &StepOptions,
    ) -> Result<GpuStepOutput> {
        let u = model.config.uncertainty;
        let outs = self.model.forward(&batch.img, batch.b, None)?;
        let exact = opt.ours_nll_exact && u == Uncertainty::Ours;
        let HeadLosses {
            mut terms,
            mut total,
            grads: hg,
            disc,
        } = head_losses(
            model,
            disc,
            batch,
            opt,
            &HeadOutputs {
                rot: &outs.rot,
                betas: &outs.betas,
                kp3d: &outs.kp3d,
                kp2d: &outs.kp2d,
                raw: outs.raw.as_deref(),
            },
            exact,
        )?;
        self.model.clear_grads()?;
        let ex = exact.then(|| ExactNll {
            gt: &batch.keypoints_3d,
            jitter: opt.exact_jitter,
            weight: opt.weights.weight(u, Term::Nll),
        });
        let og = OutputGrads {
            d_kp2d: &hg.d_kp2d,
            d_kp3d: &hg.d_kp3d,
            d_rot: &hg.d_rot,
            d_betas: &hg.d_betas,
            d_raw: hg.d_raw.as_deref(),
            d_wcov: hg.d_wcov.as_deref(),
        };
        if let Some(nll) = self.model.backward(&og, ex, false)? {
            terms.nll = Some(nll);
            total = opt.weights.total(u, &terms).unwrap_or(f64::NAN);
        }
        self.model.backend().synchronize()?;
        Ok(GpuStepOutput { terms, total, disc })
    }

    /// AdamW on the device; `Ok(true)` when the step was skipped because a gradient was not
    /// finite (nothing is written then).
    pub fn update(&mut self, model: &mut HandModel) -> Result<bool> {
        let c = self.config;
        let hyper = AdamWHyper {
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            clip_norm: c.clip_norm,
        };
        // The model's own backend (not a `share()`d handle, whose empty module cache would load
        // and JIT the AdamW PTX again at every step).
        let (be, params, grads) = self.model.optimiser_parts();
        be.adamw_step(
            &mut self.adamw,
            &hyper,
            AdamWTensors {
                params: &mut params.master,
                grads: &grads.bufs,
                exp_avg: &mut self.exp_avg.bufs,
                exp_avg_sq: &mut self.exp_avg_sq.bufs,
                work: params.work.as_deref_mut(),
            },
            true,
        )?;
        let st = be.adamw_state(&self.adamw)?;
        self.step = st.step;
        if st.skipped {
            return Ok(true);
        }
        // The host sample loss reads W: bring the updated one back.
        if let Some(w) = model.out_layer_keypoints_3d.as_mut() {
            let dev = params.f("out_layer_keypoints_3d.weight")?;
            let host = be.download_f32::<f32>(&dev)?;
            w.data_mut().copy_from_slice(&host);
        }
        Ok(false)
    }

    pub fn download(&self, model: &mut HandModel, opt: &mut AdamW) -> Result<()> {
        let gm = &self.model;
        let be = gm.backend();
        gm.params.download_into(be, model)?;
        let idx = &gm.params.index;
        opt.step = self.step;
        opt.config = self.config;
        opt.exp_avg = self.exp_avg.download(be, idx)?.map;
        opt.exp_avg_sq = self.exp_avg_sq.download(be, idx)?.map;
        Ok(())
    }

    pub fn upload(&mut self, model: &mut HandModel, opt: &AdamW) -> Result<()> {
        let be = self.model.backend().share();
        self.model.params.upload_from(&be, model)?;
        let idx = self.model.params.index.clone();
        self.exp_avg.upload_from(&be, &idx, &opt.exp_avg)?;
        self.exp_avg_sq.upload_from(&be, &idx, &opt.exp_avg_sq)?;
        self.step = opt.step;
        be.adamw_set_step(&mut self.adamw, opt.step)?;
        if self.step > 0 && opt.exp_avg.is_empty() {
            return Err(Error::Input(
                "the checkpoint's optimiser state is empty but its step is not 0".into(),
            ));
        }
        Ok(())
    }
}
