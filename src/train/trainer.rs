//! The training loop: one step = forward, losses, hand-written backward, a finiteness check
//! (a non-finite loss or gradient skips the step, counted, and never reaches the weights), the
//! AdamW update of the model, then the discriminator's own step; periodic checkpoints.

use super::adamw::{AdamW, AdamWConfig};
use super::checkpoint::{self, TrainState};
use super::discriminator::Discriminator;
use super::gpu::GpuEngine;
use super::losses::LossTerms;
use super::step::{read_mocap, train_step, Batch, StepOptions};
use crate::engine::Precision;
use crate::error::{Error, Result};
use crate::model::backward::Grads;
use crate::model::weights::TensorFile;
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
            // The step runs on a thread of the pool: its many parallel loops then fork from a
            // worker (the other workers steal halves) instead of each being injected from this
            // thread, which would sleep until the pool is done.
            let disc = self.disc.as_ref().map(|(d, _)| d);
            let out = rayon::scope(|_| train_step(&self.model, disc, batch, &opts))?;
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
/// served cyclically in a fixed order: step s takes the `per_step` rows `s·per_step …` mod K
/// (the trainer asks for 2·B rows, B the batch's size), so a resumed run sees the same real
/// batches.
pub struct MocapStream {
    pub hand_pose: Vec<f32>,
    pub betas: Vec<f32>,
}

impl MocapStream {
    /// Reads a `--mocap` file: `hand_pose` `[K, 45]` and `betas` `[K, 10]`, K ≥ 1, finite
    /// values, and no other tensor.
    pub fn load(path: &Path) -> Result<MocapStream> {
        let f = TensorFile::open(path).map_err(Error::as_input)?;
        let (hand_pose, betas) = read_mocap(&f, "").map_err(Error::as_input)?;
        if let Some(name) = f.unused().first() {
            return Err(Error::Input(format!(
                "{}: unknown tensor `{name}` in a MoCap file (it holds `hand_pose` [K, 45] and \
                 `betas` [K, 10])",
                path.display()
            )));
        }
        Ok(MocapStream { hand_pose, betas })
    }

    pub fn len(&self) -> usize {
        (self.hand_pose.len() / 45).min(self.betas.len() / 10)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `per_step` rows of step `step` (none from an empty stream).
    pub fn at(&self, step: u64, per_step: usize) -> (Vec<f32>, Vec<f32>) {
        if self.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let k = self.len() as u128;
        let (mut hp, mut b) = (
            Vec::with_capacity(per_step * 45),
            Vec::with_capacity(per_step * 10),
        );
        let first = step as u128 * per_step as u128;
        for i in 0..per_step {
            let r = ((first + i as u128) % k) as usize;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::save_f32;
    use crate::tensor::Tensor;

    #[test]
    fn mocap_rows_per_step_follow_the_asked_count() {
        // Three poses whose first value is the row number.
        let m = MocapStream {
            hand_pose: (0..3).flat_map(|r| [r as f32; 45]).collect(),
            betas: (0..3).flat_map(|r| [r as f32; 10]).collect(),
        };
        let rows = |(hp, b): (Vec<f32>, Vec<f32>)| -> Vec<f32> {
            assert_eq!(hp.len() / 45, b.len() / 10);
            hp.chunks(45).map(|c| c[0]).collect()
        };
        // Step 1 of 4 rows per step: rows 4..8 mod 3.
        assert_eq!(rows(m.at(1, 4)), vec![1.0, 2.0, 0.0, 1.0]);
        assert_eq!(rows(m.at(0, 2)), vec![0.0, 1.0]);
        // No overflow at huge steps: (2^63 · 2) mod 3 = 1.
        assert_eq!(rows(m.at(1 << 63, 2)), vec![1.0, 2.0]);
        let empty = MocapStream {
            hand_pose: Vec::new(),
            betas: Vec::new(),
        };
        assert_eq!(empty.at(3, 4), (Vec::new(), Vec::new()));
    }

    #[test]
    fn a_bad_mocap_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("handcov-mocap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, t: &[(&str, Vec<usize>, Vec<f32>)]| {
            let p = dir.join(name);
            let owned: Vec<(&str, Tensor)> = t
                .iter()
                .map(|(n, s, v)| (*n, Tensor::from_vec(s, v.clone()).unwrap()))
                .collect();
            let refs: Vec<(&str, &Tensor)> = owned.iter().map(|(n, t)| (*n, t)).collect();
            save_f32(&p, &refs, None).unwrap();
            p
        };
        let betas = ("betas", vec![2, 10], vec![0.0; 20]);
        let ok = write(
            "ok.safetensors",
            &[("hand_pose", vec![2, 45], vec![0.1; 90]), betas.clone()],
        );
        assert_eq!(MocapStream::load(&ok).unwrap().len(), 2);
        for (file, tensors, want) in [
            (
                "scalar.safetensors",
                vec![("hand_pose", vec![], vec![1.0]), betas.clone()],
                "`hand_pose` has shape [], expected [K, 45]",
            ),
            (
                "empty.safetensors",
                vec![
                    ("hand_pose", vec![0, 45], vec![]),
                    ("betas", vec![0, 10], vec![]),
                ],
                "holds no MoCap poses",
            ),
            (
                "nan.safetensors",
                vec![
                    ("hand_pose", vec![2, 45], vec![f32::NAN; 90]),
                    betas.clone(),
                ],
                "`hand_pose` holds a non-finite value (NaN) at flat index 0",
            ),
            (
                "extra.safetensors",
                vec![
                    ("hand_pose", vec![2, 45], vec![0.1; 90]),
                    betas.clone(),
                    ("global_orient", vec![2, 3], vec![0.0; 6]),
                ],
                "unknown tensor `global_orient`",
            ),
        ] {
            let p = write(file, &tensors);
            let e = MocapStream::load(&p).err().expect(file).to_string();
            assert!(e.contains(want) && e.contains(file), "{file}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
