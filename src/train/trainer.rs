//! The training loop: one step = forward, losses, hand-written backward, a finiteness check
//! (a non-finite loss or gradient skips the step, counted, and never reaches the weights), the
//! AdamW update of the model, then the discriminator's own step; periodic checkpoints.

use super::adamw::{AdamW, AdamWConfig};
use super::checkpoint::{self, TrainState};
use super::discriminator::Discriminator;
use super::gpu::GpuEngine;
use super::losses::LossTerms;
use super::step::{train_step, Batch, StepOptions};
use crate::engine::Precision;
use crate::error::Result;
use crate::model::backward::Grads;
use crate::model::HandModel;
use std::path::Path;

/// Where batches come from. The cursor is saved in checkpoints so a resumed run continues
/// with exactly the batches an uninterrupted run would have seen.
pub trait BatchSource {
    fn next_batch(&mut self) -> Result<Batch>;
    fn cursor(&self) -> (u64, u64);
    fn seek(&mut self, cursor: (u64, u64)) -> Result<()>;
}

/// The same batch at every step (`train --batch-file`).
pub struct RepeatBatch {
    batch: Batch,
    served: u64,
}

impl RepeatBatch {
    pub fn new(batch: Batch) -> RepeatBatch {
        RepeatBatch { batch, served: 0 }
    }
}

impl BatchSource for RepeatBatch {
    fn next_batch(&mut self) -> Result<Batch> {
        self.served += 1;
        Ok(self.batch.clone())
    }
    fn cursor(&self) -> (u64, u64) {
        (0, self.served)
    }
    fn seek(&mut self, cursor: (u64, u64)) -> Result<()> {
        self.served = cursor.1;
        Ok(())
    }
}

/// What one step did.
#[derive(Clone, Debug)]
pub struct StepReport {
    pub step: u64,
    pub total: f64,
    pub terms: LossTerms,
    pub disc_loss: Option<f64>,
    /// The step was skipped (non-finite loss or gradient).
    pub skipped: bool,
    pub seconds: f64,
    pub batch: usize,
}

/// What either engine's step hands back to [`Trainer::step`].
struct StepParts {
    total: f64,
    terms: LossTerms,
    disc: Option<(f64, Discriminator<f32>)>,
    skipped: bool,
}

/// The losses of a validation batch.
pub struct Validation {
    pub total: f64,
    pub terms: LossTerms,
}

pub struct Trainer {
    pub model: HandModel,
    pub opt: AdamW,
    /// The discriminator and its optimiser (adversarial terms on); `None` turns them off.
    pub disc: Option<(Discriminator<f32>, AdamW)>,
    pub state: TrainState,
    pub step_options: StepOptions,
    /// The GPU engine when training runs there: it holds the live weights and moments, and
    /// `model` / `opt` are refreshed from it when a checkpoint is written.
    pub gpu: Option<GpuEngine>,
}

fn finite(g: &Grads) -> bool {
    use rayon::prelude::*;
    g.map
        .par_iter()
        .all(|(_, v)| v.iter().fold(true, |ok, x| ok & x.is_finite()))
}

/// The discriminator's loss and gradients are finite (or there are none).
fn disc_finite(d: &Option<(f64, Discriminator<f32>)>) -> bool {
    d.as_ref().is_none_or(|(l, g)| {
        l.is_finite()
            && g.tensors()
                .iter()
                .all(|(_, _, v)| v.iter().all(|x| x.is_finite()))
    })
}

impl Trainer {
    pub fn new(
        model: HandModel,
        adamw: AdamWConfig,
        disc: Option<Discriminator<f32>>,
        step_options: StepOptions,
        seed: u64,
    ) -> Trainer {
        Trainer {
            model,
            opt: AdamW::new(adamw),
            disc: disc.map(|d| (d, AdamW::new(adamw))),
            state: TrainState {
                seed,
                ..Default::default()
            },
            step_options,
            gpu: None,
        }
    }

    /// Moves training to the GPU in `precision` (weights, gradients and moments live there).
    pub fn use_gpu(&mut self, precision: Precision) -> Result<()> {
        self.gpu = Some(GpuEngine::new(&mut self.model, precision, self.opt.config)?);
        if self.opt.step > 0 {
            self.sync_to_gpu()?;
        }
        Ok(())
    }

    fn sync_to_gpu(&mut self) -> Result<()> {
        match self.gpu.as_mut() {
            Some(g) => g.upload(&mut self.model, &self.opt),
            None => Ok(()),
        }
    }

    /// Sets the learning rate of the next updates (a schedule calls this before each step).
    pub fn set_lr(&mut self, lr: f32) {
        self.opt.config.lr = lr;
        if let Some(g) = self.gpu.as_mut() {
            g.set_lr(lr);
        }
    }

    /// Brings the GPU's weights and moments to `model` / `opt` (no-op on the CPU).
    pub fn sync_from_gpu(&mut self) -> Result<()> {
        match self.gpu.as_ref() {
            Some(g) => g.download(&mut self.model, &mut self.opt),
            None => Ok(()),
        }
    }

    /// One GPU step: forward, losses, backward, the finiteness check on the device's global
    /// gradient norm, AdamW on the device; the discriminator's own step stays on the host.
    fn step_gpu(&mut self, batch: &Batch, opts: &StepOptions) -> Result<StepParts> {
        let g = self
            .gpu
            .as_mut()
            .ok_or_else(|| crate::error::Error::Cuda("no GPU engine".into()))?;
        let out = g.step(&self.model, self.disc.as_ref().map(|(d, _)| d), batch, opts)?;
        // A non-finite loss skips the step before the update; a non-finite gradient makes the
        // device update a no-op (checked there, on the global norm).
        let skipped = if out.total.is_finite() && disc_finite(&out.disc) {
            g.update(&mut self.model)?
        } else {
            true
        };
        Ok(StepParts {
            total: out.total,
            terms: out.terms,
            disc: out.disc,
            skipped,
        })
    }

    /// One training step on `batch`.
    pub fn step(&mut self, batch: &Batch) -> Result<StepReport> {
        let t0 = std::time::Instant::now();
        let opts = StepOptions {
            seed: self.state.seed,
            step: self.state.step,
            ..self.step_options
        };
        let StepParts {
            total,
            terms,
            disc: disc_out,
            skipped,
        } = if self.gpu.is_some() {
            self.step_gpu(batch, &opts)?
        } else {
            let out = train_step(
                &self.model,
                self.disc.as_ref().map(|(d, _)| d),
                batch,
                &opts,
            )?;
            let skipped = !(out.total.is_finite() && finite(&out.grads) && disc_finite(&out.disc));
            if !skipped {
                self.opt.update(
                    self.model
                        .params_mut()
                        .into_iter()
                        .map(|(n, t)| (n, t.data_mut())),
                    &out.grads,
                );
            }
            StepParts {
                total: out.total,
                terms: out.terms,
                disc: out.disc,
                skipped,
            }
        };
        if skipped {
            self.state.skipped_steps += 1;
        } else if let (Some((d, dopt)), Some((_, dg))) = (self.disc.as_mut(), disc_out.as_ref()) {
            let mut g = Grads::default();
            for (n, _, v) in dg.tensors() {
                g.put(&n, v.to_vec());
            }
            let names: Vec<String> = d.tensors().into_iter().map(|(n, _, _)| n).collect();
            dopt.update(names.into_iter().zip(d.tensors_mut()), &g);
        }
        let report = StepReport {
            step: self.state.step,
            total,
            terms,
            disc_loss: disc_out.as_ref().map(|(l, _)| *l),
            skipped,
            seconds: t0.elapsed().as_secs_f64(),
            batch: batch.b,
        };
        self.state.step += 1;
        Ok(report)
    }

    /// The objective on a held-out batch without an update (drop-path off), on the engine
    /// that trains.
    pub fn validate(&mut self, batch: &Batch, opts: &StepOptions) -> Result<Validation> {
        let disc = self.disc.as_ref().map(|(d, _)| d);
        match self.gpu.as_mut() {
            Some(g) => {
                let (total, terms) = g.evaluate(&self.model, disc, batch, opts)?;
                Ok(Validation { total, terms })
            }
            None => {
                let v = train_step(&self.model, disc, batch, opts)?;
                Ok(Validation {
                    total: v.total,
                    terms: v.terms,
                })
            }
        }
    }

    pub fn save(&mut self, path: &Path) -> Result<()> {
        self.sync_from_gpu()?;
        let disc = self.disc.as_ref().map(|(d, o)| (d, o));
        checkpoint::save(path, &mut self.model, &self.opt, disc, &self.state)
    }

    pub fn resume(&mut self, path: &Path) -> Result<()> {
        let disc = self.disc.as_mut().map(|(d, o)| (d, o));
        self.state = checkpoint::load(path, &mut self.model, &mut self.opt, disc)?;
        self.sync_to_gpu()
    }
}

/// MoCap poses for the discriminator (`hand_pose` `[K, 45]` axis-angle, `betas` `[K, 10]`),
/// served `per_step` rows at a time, cyclically, in a fixed order (step s takes rows
/// `s·per_step …` mod K), so a resumed run sees the same real batches.
pub struct MocapStream {
    pub hand_pose: Vec<f32>,
    pub betas: Vec<f32>,
    pub per_step: usize,
}

impl MocapStream {
    pub fn len(&self) -> usize {
        self.betas.len() / 10
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows of step `step`.
    pub fn at(&self, step: u64) -> (Vec<f32>, Vec<f32>) {
        let k = self.len().max(1);
        let (mut hp, mut b) = (
            Vec::with_capacity(self.per_step * 45),
            Vec::with_capacity(self.per_step * 10),
        );
        for i in 0..self.per_step {
            let r = ((step as usize).wrapping_mul(self.per_step) + i) % k;
            hp.extend_from_slice(&self.hand_pose[r * 45..(r + 1) * 45]);
            b.extend_from_slice(&self.betas[r * 10..(r + 1) * 10]);
        }
        (hp, b)
    }
}

/// Batches from a training-set directory (`train::data`), augmented on worker threads.
pub struct DatasetSource {
    set: std::sync::Arc<super::data::TrainSet>,
    opts: super::data::LoaderOptions,
    loader: super::data::Loader,
}

impl DatasetSource {
    pub fn new(
        set: std::sync::Arc<super::data::TrainSet>,
        opts: super::data::LoaderOptions,
    ) -> Result<DatasetSource> {
        let loader = super::data::Loader::new(set.clone(), opts, super::data::Cursor::default())?;
        Ok(DatasetSource { set, opts, loader })
    }

    /// Images skipped so far (missing or unreadable), with a warning each.
    pub fn skipped(&self) -> u64 {
        self.loader.skipped()
    }
}

impl BatchSource for DatasetSource {
    fn next_batch(&mut self) -> Result<Batch> {
        self.loader.next_batch()
    }
    fn cursor(&self) -> (u64, u64) {
        let c = self.loader.cursor();
        (c.epoch, c.position)
    }
    fn seek(&mut self, cursor: (u64, u64)) -> Result<()> {
        let c = super::data::Cursor {
            epoch: cursor.0,
            position: cursor.1,
        };
        self.loader = super::data::Loader::new(self.set.clone(), self.opts, c)?;
        Ok(())
    }
}
