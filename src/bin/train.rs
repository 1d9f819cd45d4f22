//! `train`: fine-tune the model with hand-written backward passes (see `train --help`).

use handcov::engine::{DeviceChoice, Precision};
use handcov::error::{Error, Result};
use handcov::model::config::{ModelConfig, Uncertainty};
use handcov::model::weights::{save_f32, TensorFile};
use handcov::model::{detect_uncertainty, HandModel};
use handcov::synth::demo::DemoOptions;
use handcov::tensor::Tensor;
use handcov::train::adamw::AdamWConfig;
use handcov::train::data::{LoaderOptions, TrainSet};
use handcov::train::discriminator::Discriminator;
use handcov::train::gpu::GpuEngine;
use handcov::train::step::{train_step, Batch, StepOptions, StepOutput};
use handcov::train::trainer::{
    BatchSource, DatasetSource, MocapStream, RepeatBatch, StepReport, Trainer,
};
use std::io::Write;
use std::path::{Path, PathBuf};

const HELP: &str = "\
train: fine-tune HaMeR + an uncertainty head with hand-written backward passes (CPU or GPU)

USAGE (the demo: no arguments, or only these flags):
  train [--demo] [--steps N] [--batch-size 32] [--out demo] [--device auto|cpu|cuda]
        [--synth-train 12000] [--synth-test 600] [--cache DIR] [--lr 3e-4] [--pictures 8]
        [--seed 1] [--threads N]
      Generates (once, cached under $HANDCOV_CACHE or ~/.cache/handcov) a synthetic set of
      procedural hands rendered by handcov's rasteriser, trains the `tiny` preset with the
      `ours` head from scratch, evaluates it on the held-out split (PA-MPJPE, PA-MPVPE,
      Pearson, AUSC, AUSE next to the mean-pose and constant-uncertainty baselines) and writes
      weights, results, overlays, a sparsification plot and OBJ meshes under --out.
      --steps defaults to 4100 on the CPU (about six minutes on two cores) and 20000 on a GPU.
USAGE (one-step gradient dump, for comparison with PyTorch):
  train --config CFG --weights W.safetensors [--mano M.safetensors] --batch-file B.safetensors
        --dump-grads OUT.safetensors [--discriminator D.safetensors] [--ours-nll exact]
USAGE (training):
  train --config CFG --init W.safetensors [--mano M] (--data DIR | --batch-file B.safetensors)
        --steps N --out DIR [--resume CKPT] [--discriminator D --mocap MOCAP.safetensors]
        [--batch-size 64] [--threads N] [--no-augment] [--lr 1e-6] [--weight-decay 1e-4]
        [--clip-grad NORM] [--seed S] [--log-every N] [--ckpt-every N] [--ours-nll exact]

  --data DIR              a training-set directory (docs/training-data.md), augmented per
                          SPEC §1.4 on worker threads; --batch-file repeats one batch instead
  --val-batch FILE        a held-out batch file: its losses are logged every --val-every steps
                          (default 100) as `val_*` lines in the log
  --mocap FILE            MoCap poses for the discriminator: `hand_pose` [K,45] (axis-angle)
                          and `betas` [K,10]; 2·batch rows per step, cyclically
  --batch-size N          items per step with --data (1 to 4096, default 64); a batch file
                          sets its own (the two together are an error)
  --threads N             loader threads for --data (1 to 1024; default one per core)
  --clip-grad NORM        clip the gradients to this global L2 norm (a number above 0)
  --log-every N           a progress line every N steps (default 1; 0: none)
  --ckpt-every N          a checkpoint every N steps besides last.safetensors (default 0: none)

OPTIONS:
  --config NAME_OR_FILE   preset (hamer, tiny) or config JSON; --uncertainty overrides its type
  --uncertainty TYPE      none|diag|full|ours|ours_wo_linear (with a preset: read from weights)
  --device cpu|cuda|auto  default auto: the GPU when one is usable, else the CPU
  --precision fp32|bf16   GPU numerics (default fp32, TF32 off; bf16: bf16 weights and
                          activations, fp32 master weights, gradients, moments, statistics,
                          MANO and losses)
  --discriminator FILE    the discriminator's weights (`discriminator.*`); with a MoCap stream
                          in the batch (`mocap.hand_pose`, `mocap.betas`) the adversarial terms
                          are on; without one they are off (one notice)

The batch file holds the tensors of SPEC §1.5: img [B,3,S,S], keypoints_2d [B,21,3],
keypoints_3d [B,21,4], mano_params.{global_orient [B,3], hand_pose [B,45], betas [B,10]},
has_mano_params.{global_orient,hand_pose,betas} [B], optional sample_eps [B,N,63],
optional mocap.hand_pose [M,45] and mocap.betas [M,10] (M ≥ 1), and nothing else. Every value
is finite, the has_mano_params flags are 0 or 1 and the keypoint confidences lie in [0, 1].
A step with a non-finite loss or gradient is skipped and counted; checkpoints never hold one,
and --dump-grads writes none (it stops with an error naming the first).
--resume needs a checkpoint the run can continue bit for bit: every tensor of its shape, both
optimiser moments of every parameter, valid step, seed and cursor metadata.
";

/// Where `cli` sends the user for the usage.
const SEE: &str = "--help";
/// The most steps a run may ask for (far beyond any real run: HaMeR trains 275 000).
const MAX_STEPS: usize = 1_000_000_000;
/// The largest batch: far beyond what fits in memory at the model's sizes (HaMeR trains 64).
const MAX_BATCH: usize = 4096;
/// The demo's synthetic set sizes (the default is 12 000 + 600 hands, some 100 MB).
const MAX_SYNTH_TRAIN: usize = 1_000_000;
const MAX_SYNTH_TEST: usize = 100_000;

/// The largest `--lr`: AdamW moves every weight by about `lr` per step, so a rate above 1 can
/// only be a typo (1e30 wrote weights of 1e30 into the checkpoint).
const MAX_LR: f32 = 1.0;

/// `--lr`: finite, above 0 and at most [`MAX_LR`].
fn learning_rate(p: &mut pico_args::Arguments) -> Result<Option<f32>> {
    let lr = handcov::cli::positive(p, "--lr", SEE)?;
    if let Some(v) = lr.filter(|&v| v > MAX_LR) {
        return Err(Error::Input(format!(
            "--lr {v:e}: at most {MAX_LR} (AdamW moves each weight by about lr per step)"
        )));
    }
    Ok(lr)
}

struct Args {
    config: String,
    uncertainty: Option<String>,
    weights: Option<PathBuf>,
    init: Option<PathBuf>,
    mano: Option<PathBuf>,
    batch_file: Option<PathBuf>,
    dump_grads: Option<PathBuf>,
    discriminator: Option<PathBuf>,
    ours_nll: String,
    device: String,
    precision: String,
    steps: u64,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    lr: f32,
    weight_decay: f32,
    clip: Option<f32>,
    seed: u64,
    log_every: u64,
    ckpt_every: u64,
    data: Option<PathBuf>,
    /// `--batch-size` as given (only meaningful with `--data`; default 64 there).
    batch_size: Option<usize>,
    mocap: Option<PathBuf>,
    /// Loader threads (`None`: one per core).
    threads: Option<usize>,
    no_augment: bool,
    val_batch: Option<PathBuf>,
    val_every: Option<u64>,
}

fn parse() -> Result<Option<Args>> {
    use handcov::cli::{count, opt, positive};
    let mut p = pico_args::Arguments::from_env();
    if p.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(None);
    }
    let steps = |p: &mut pico_args::Arguments, flag, lo| -> Result<Option<u64>> {
        Ok(count(p, flag, lo, MAX_STEPS, SEE)?.map(|n| n as u64))
    };
    let a = Args {
        config: opt(&mut p, "--config", SEE)?.unwrap_or_else(|| "hamer".into()),
        uncertainty: opt(&mut p, "--uncertainty", SEE)?,
        weights: opt(&mut p, "--weights", SEE)?,
        init: opt(&mut p, "--init", SEE)?,
        mano: opt(&mut p, "--mano", SEE)?,
        batch_file: opt(&mut p, "--batch-file", SEE)?,
        dump_grads: opt(&mut p, "--dump-grads", SEE)?,
        discriminator: opt(&mut p, "--discriminator", SEE)?,
        ours_nll: opt(&mut p, "--ours-nll", SEE)?.unwrap_or_else(|| "reference".into()),
        device: opt(&mut p, "--device", SEE)?.unwrap_or_else(|| "auto".into()),
        precision: opt(&mut p, "--precision", SEE)?.unwrap_or_else(|| "fp32".into()),
        steps: steps(&mut p, "--steps", 1)?.unwrap_or(0),
        out: opt(&mut p, "--out", SEE)?,
        resume: opt(&mut p, "--resume", SEE)?,
        lr: learning_rate(&mut p)?.unwrap_or(1e-6),
        weight_decay: opt(&mut p, "--weight-decay", SEE)?.unwrap_or(1e-4),
        clip: positive(&mut p, "--clip-grad", SEE)?,
        seed: opt(&mut p, "--seed", SEE)?.unwrap_or(0),
        log_every: steps(&mut p, "--log-every", 0)?.unwrap_or(1),
        ckpt_every: steps(&mut p, "--ckpt-every", 0)?.unwrap_or(0),
        data: opt(&mut p, "--data", SEE)?,
        batch_size: count(&mut p, "--batch-size", 1, MAX_BATCH, SEE)?,
        mocap: opt(&mut p, "--mocap", SEE)?,
        threads: handcov::cli::threads(&mut p, SEE)?,
        no_augment: p.contains("--no-augment"),
        val_batch: opt(&mut p, "--val-batch", SEE)?,
        val_every: steps(&mut p, "--val-every", 1)?,
    };
    handcov::cli::finish(p, HELP, SEE)?;
    DeviceChoice::parse(&a.device)?;
    Precision::parse(&a.precision)?;
    if a.ours_nll != "reference" && a.ours_nll != "exact" {
        return Err(Error::Input(format!(
            "--ours-nll {}: expected reference or exact",
            a.ours_nll
        )));
    }
    if !(a.weight_decay.is_finite() && a.weight_decay >= 0.0) {
        return Err(Error::Input(format!(
            "--weight-decay {}: expected a finite number ≥ 0",
            a.weight_decay
        )));
    }
    if a.batch_file.is_some() && a.batch_size.is_some() {
        return Err(Error::Input(
            "--batch-size has no meaning with --batch-file: the batch file's `img` [B, 3, S, S] \
             sets the batch size (--batch-size is for --data)"
                .into(),
        ));
    }
    if a.batch_file.is_some() && a.threads.is_some() {
        return Err(Error::Input(
            "--threads sizes the --data loader's pool; with --batch-file there is no loader".into(),
        ));
    }
    if a.val_every.is_some() && a.val_batch.is_none() {
        return Err(Error::Input(
            "--val-every needs --val-batch FILE (the batch to validate on)".into(),
        ));
    }
    Ok(Some(a))
}

/// The GPU precision to train in, or `None` for the CPU (`--device auto` without a usable GPU).
fn gpu_precision(a: &Args) -> Result<Option<Precision>> {
    let precision = Precision::parse(&a.precision)?;
    let gpu = match DeviceChoice::parse(&a.device)? {
        DeviceChoice::Cpu => false,
        DeviceChoice::Cuda => true,
        DeviceChoice::Auto => handcov::cuda::CudaBackend::new(0).is_ok(),
    };
    if !gpu && precision == Precision::Bf16 {
        return Err(Error::Input(
            "--precision bf16 needs the CUDA device (the CPU path is fp32)".into(),
        ));
    }
    Ok(gpu.then_some(precision))
}

fn load_model(a: &Args, weights: &Path) -> Result<HandModel> {
    load_model_with(a, weights, false)
}

/// For training, a missing uncertainty head (a plain HaMeR checkpoint as `--init`) is freshly
/// initialised; for the gradient dump every tensor must be in the file.
fn load_model_with(a: &Args, weights: &Path, fresh_head: bool) -> Result<HandModel> {
    let wf = TensorFile::open(weights)?;
    let mano = a.mano.as_deref().map(TensorFile::open).transpose()?;
    let mut cfg = ModelConfig::load(&a.config)?;
    match &a.uncertainty {
        Some(u) => cfg.uncertainty = Uncertainty::parse(u)?,
        None if ModelConfig::preset(&a.config).is_some() => {
            cfg.uncertainty = detect_uncertainty(&wf)
        }
        None => {}
    }
    if fresh_head {
        HandModel::load_for_training(cfg, &wf, mano.as_ref(), a.seed)
    } else {
        HandModel::load(cfg, &wf, mano.as_ref())
    }
}

fn load_disc(a: &Args, batch: &Batch) -> Result<Option<Discriminator<f32>>> {
    match (&a.discriminator, &batch.mocap) {
        (Some(p), _) => Ok(Some(Discriminator::<f32>::load(&TensorFile::open(p)?)?)),
        (None, _) => {
            eprintln!("note: no --discriminator: the adversarial terms are off");
            Ok(None)
        }
    }
}

fn scalar(v: f64) -> Result<Tensor> {
    Tensor::from_vec(&[1], vec![v as f32])
}

fn dump_grads(a: &Args, weights: &Path, out: &Path) -> Result<()> {
    let model = load_model(a, weights)?;
    let bf = a
        .batch_file
        .as_ref()
        .ok_or_else(|| Error::Input("--dump-grads needs --batch-file".into()))?;
    let batch = Batch::load(
        &TensorFile::open(bf).map_err(Error::as_input)?,
        model.config.image_size,
    )?;
    let disc = load_disc(a, &batch)?;
    let opts = StepOptions {
        ours_nll_exact: a.ours_nll == "exact",
        seed: a.seed,
        ..Default::default()
    };
    let s = match gpu_precision(a)? {
        None => train_step(&model, disc.as_ref(), &batch, &opts)?,
        Some(p) => {
            let mut model = model;
            let mut gpu = GpuEngine::new(&mut model, p, Default::default())?;
            eprintln!("one step on {}", gpu.describe());
            let o = gpu.step(&model, disc.as_ref(), &batch, &opts)?;
            StepOutput {
                terms: o.terms,
                total: o.total,
                grads: gpu.grads()?,
                disc: o.disc,
                d_tokens: Vec::new(),
            }
        }
    };
    let t = &s.terms;
    let mut owned: Vec<(String, Tensor)> = vec![
        ("loss".into(), scalar(s.total)?),
        ("loss_keypoints_2d".into(), scalar(t.keypoints_2d)?),
        ("loss_keypoints_3d".into(), scalar(t.keypoints_3d)?),
        (
            "loss_keypoints_3d_nll".into(),
            scalar(t.nll.unwrap_or(0.0))?,
        ),
        (
            "loss_sample_mean_keypoints_3d".into(),
            scalar(t.sample_mean.unwrap_or(0.0))?,
        ),
        ("loss_global_orient".into(), scalar(t.global_orient)?),
        ("loss_hand_pose".into(), scalar(t.hand_pose)?),
        ("loss_betas".into(), scalar(t.betas)?),
        ("loss_adv".into(), scalar(t.adversarial)?),
    ];
    for (name, g) in &s.grads.map {
        owned.push((
            format!("grad.{name}"),
            Tensor::from_vec(&[g.len()], g.clone())?,
        ));
    }
    if let Some((l, dg)) = &s.disc {
        owned.push(("disc_loss".into(), scalar(*l)?));
        for (name, shape, v) in dg.tensors() {
            owned.push((
                format!("grad_disc.{name}"),
                Tensor::from_vec(&shape, v.to_vec())?,
            ));
        }
    }
    // A non-finite loss or gradient is no comparison: name the first one (the terms before
    // their total) instead of writing it.
    let bad = owned[1..].iter().chain(&owned[..1]).find_map(|(n, t)| {
        t.data()
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (n, i, t))
    });
    if let Some((name, i, t)) = bad {
        let what = if name.starts_with("grad") {
            format!("gradient `{name}` is {} at {i}", t.data()[i])
        } else {
            format!("loss term `{name}` is {}", t.data()[i])
        };
        return Err(Error::Input(format!(
            "--dump-grads: the {what} on {}; nothing written to {}",
            bf.display(),
            out.display()
        )));
    }
    let refs: Vec<(&str, &Tensor)> = owned.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_f32(out, &refs, None)?;
    eprintln!(
        "wrote {} (loss {:.6e}, {} parameter gradients)",
        out.display(),
        s.total,
        s.grads.map.len()
    );
    Ok(())
}

fn report_json(r: &StepReport, skipped_total: u64) -> String {
    let t = &r.terms;
    serde_json::json!({
        "step": r.step,
        "loss": r.total,
        "loss_keypoints_2d": t.keypoints_2d,
        "loss_keypoints_3d": t.keypoints_3d,
        "loss_keypoints_3d_nll": t.nll,
        "loss_sample_mean_keypoints_3d": t.sample_mean,
        "loss_global_orient": t.global_orient,
        "loss_hand_pose": t.hand_pose,
        "loss_betas": t.betas,
        "loss_adv": t.adversarial,
        "disc_loss": r.disc_loss,
        "skipped": r.skipped,
        "skipped_total": skipped_total,
        "images_per_s": r.batch as f64 / r.seconds.max(1e-9),
    })
    .to_string()
}

fn train(a: &Args) -> Result<()> {
    let init =
        a.init.as_ref().or(a.weights.as_ref()).ok_or_else(|| {
            Error::Input("training needs --init W.safetensors (see --help)".into())
        })?;
    let out = a
        .out
        .as_ref()
        .ok_or_else(|| Error::Input("training needs --out DIR".into()))?;
    if a.steps == 0 {
        return Err(Error::Input("training needs --steps N (1 or more)".into()));
    }
    handcov::train::check_out_dir("--out", out)?;
    let model = load_model_with(a, init, true)?;
    let size = model.config.image_size;
    // The batch size every step has: --batch-size, or the batch file's own.
    let mut step_batch = a.batch_size.unwrap_or(64);
    let mut source: Box<dyn BatchSource> = match (&a.data, &a.batch_file) {
        (Some(dir), None) => {
            let set = std::sync::Arc::new(TrainSet::open(dir)?);
            eprintln!("training set {}: {} hands", dir.display(), set.len());
            let opts = LoaderOptions {
                batch_size: step_batch,
                image_size: size,
                seed: a.seed,
                threads: a.threads.unwrap_or(0),
                augment: if a.no_augment {
                    None
                } else {
                    Some(Default::default())
                },
                ..Default::default()
            };
            Box::new(DatasetSource::new(set, opts)?)
        }
        (None, Some(bf)) => {
            let batch = Batch::load(&TensorFile::open(bf).map_err(Error::as_input)?, size)?;
            step_batch = batch.b;
            Box::new(RepeatBatch::new(batch))
        }
        _ => {
            return Err(Error::Input(
                "training needs exactly one of --data DIR and --batch-file FILE".into(),
            ))
        }
    };
    // MoCap rows per step: 2·B of the batch at hand (`MocapStream::at`).
    let mocap = a.mocap.as_deref().map(MocapStream::load).transpose()?;
    // The discriminator: --discriminator, else the one a converted HaMeR checkpoint carries.
    let disc_file = match &a.discriminator {
        Some(d) => Some(d.clone()),
        None if TensorFile::open(init)?.contains("discriminator.D_conv1.weight") => {
            Some(init.clone())
        }
        None => None,
    };
    let disc = match (&disc_file, mocap.is_some() || a.batch_file.is_some()) {
        (Some(d), true) => Some(Discriminator::<f32>::load(&TensorFile::open(d)?)?),
        (Some(_), false) => {
            eprintln!("note: no --mocap stream: the adversarial terms are off");
            None
        }
        (None, _) => {
            eprintln!("note: no --discriminator: the adversarial terms are off");
            None
        }
    };
    handcov::train::create_out_dir("--out", out)?;
    let adamw = AdamWConfig {
        lr: a.lr,
        weight_decay: a.weight_decay,
        clip_norm: a.clip,
        ..Default::default()
    };
    let opts = StepOptions {
        ours_nll_exact: a.ours_nll == "exact",
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, adamw, disc, opts, a.seed);
    match gpu_precision(a)? {
        Some(p) => {
            trainer.use_gpu(p)?;
            if let Some(g) = trainer.gpu.as_mut() {
                // Allocate the activations now: a batch that does not fit fails here, naming
                // its size, before any step or checkpoint.
                g.reserve(step_batch)?;
                eprintln!("training on {}", g.describe());
            }
        }
        None => eprintln!("training on the CPU"),
    }
    if let Some(ckpt) = &a.resume {
        trainer.resume(ckpt)?;
        source.seek(trainer.state.cursor)?;
        eprintln!(
            "resumed from {} at step {}",
            ckpt.display(),
            trainer.state.step
        );
        if trainer.state.step >= a.steps {
            return Err(Error::Input(format!(
                "{} is at step {}, and --steps {} is the total to reach: nothing to train \
                 (give a larger --steps)",
                ckpt.display(),
                trainer.state.step,
                a.steps
            )));
        }
    }
    let val = match &a.val_batch {
        Some(p) => Some(Batch::load(
            &TensorFile::open(p).map_err(Error::as_input)?,
            size,
        )?),
        None => None,
    };
    let log_path = out.join("log.jsonl");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(&log_path, e))?;
    let t_start = std::time::Instant::now();
    let first = trainer.state.step;
    let skipped_before = trainer.state.skipped_steps;
    while trainer.state.step < a.steps {
        let mut batch = source.next_batch()?;
        if let Some(m) = &mocap {
            batch.mocap = Some(m.at(trainer.state.step, 2 * batch.b));
        }
        let r = trainer.step(&batch)?;
        trainer.state.cursor = source.cursor();
        let line = report_json(&r, trainer.state.skipped_steps);
        writeln!(log, "{line}").map_err(|e| Error::io(&log_path, e))?;
        if r.skipped {
            eprintln!(
                "warning: step {}: non-finite loss or gradient, step skipped ({} so far)",
                r.step, trainer.state.skipped_steps
            );
        }
        let done = trainer.state.step - first;
        if a.log_every > 0 && (r.step % a.log_every == 0 || trainer.state.step == a.steps) {
            let eta = t_start.elapsed().as_secs_f64() / done as f64
                * (a.steps - trainer.state.step) as f64;
            println!(
                "step {:>6}  loss {:.6e}  2d {:.4e}  3d {:.4e}  nll {}  img/s {:.1}  eta {:.0}s",
                r.step,
                r.total,
                r.terms.keypoints_2d,
                r.terms.keypoints_3d,
                r.terms
                    .nll
                    .map(|v| format!("{v:.4e}"))
                    .unwrap_or_else(|| "-".into()),
                r.batch as f64 / r.seconds.max(1e-9),
                eta
            );
        }
        let val_every = a.val_every.unwrap_or(100);
        if let (Some(vb), true) = (&val, trainer.state.step % val_every == 0) {
            // Validation: the same objective on the held-out batch, no update.
            let opts = StepOptions {
                seed: a.seed,
                step: trainer.state.step,
                ..trainer.step_options
            };
            let v = trainer.validate(vb, &opts)?;
            let line = serde_json::json!({
                "step": trainer.state.step,
                "val_loss": v.total,
                "val_loss_keypoints_3d": v.terms.keypoints_3d,
                "val_loss_keypoints_2d": v.terms.keypoints_2d,
                "val_loss_keypoints_3d_nll": v.terms.nll,
            });
            writeln!(log, "{line}").map_err(|e| Error::io(&log_path, e))?;
            println!(
                "validation at step {}: loss {:.6e}",
                trainer.state.step, v.total
            );
        }
        if a.ckpt_every > 0 && trainer.state.step % a.ckpt_every == 0 {
            trainer.save(&out.join(format!("step_{:06}.safetensors", trainer.state.step)))?;
        }
    }
    trainer.save(&out.join("last.safetensors"))?;
    eprintln!(
        "done: {} steps, {} skipped; checkpoint {}",
        trainer.state.step,
        trainer.state.skipped_steps,
        out.join("last.safetensors").display()
    );
    let (ran, skipped) = (
        trainer.state.step - first,
        trainer.state.skipped_steps - skipped_before,
    );
    if ran > 0 && skipped == ran {
        return Err(Error::Input(format!(
            "all {ran} steps of this run had a non-finite loss or gradient and were skipped, so \
             the weights did not change: check the data's value ranges and --lr"
        )));
    }
    Ok(())
}

/// `train` with no arguments, or `train --demo [options]`: the synthetic-hand demo.
fn demo() -> Result<()> {
    use handcov::cli::{count, opt};
    let mut p = pico_args::Arguments::from_env();
    if p.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(());
    }
    let _ = p.contains("--demo");
    let d = DemoOptions::default();
    let mut o = DemoOptions {
        steps: count(&mut p, "--steps", 1, MAX_STEPS, SEE)?
            .map(|n| n as u64)
            .or(d.steps),
        batch_size: count(&mut p, "--batch-size", 1, MAX_BATCH, SEE)?.unwrap_or(d.batch_size),
        out: opt(&mut p, "--out", SEE)?.unwrap_or(d.out.clone()),
        cache: opt(&mut p, "--cache", SEE)?,
        threads: handcov::cli::threads(&mut p, SEE)?.unwrap_or(d.threads),
        seed: opt(&mut p, "--seed", SEE)?.unwrap_or(d.seed),
        lr: learning_rate(&mut p)?.unwrap_or(d.lr),
        pictures: count(&mut p, "--pictures", 0, MAX_SYNTH_TEST, SEE)?.unwrap_or(d.pictures),
        device: DeviceChoice::parse(
            &opt::<String>(&mut p, "--device", SEE)?.unwrap_or_else(|| "auto".into()),
        )?,
        ..d.clone()
    };
    o.synth.n_train =
        count(&mut p, "--synth-train", 1, MAX_SYNTH_TRAIN, SEE)?.unwrap_or(d.synth.n_train);
    o.synth.n_test = count(
        &mut p,
        "--synth-test",
        handcov::eval::uncertainty::MIN_SAMPLES,
        MAX_SYNTH_TEST,
        SEE,
    )?
    .unwrap_or(d.synth.n_test);
    handcov::cli::finish(p, HELP, SEE)?;
    if o.synth.n_train < o.batch_size {
        return Err(Error::Input(format!(
            "--synth-train {} is below the batch size {}: the demo needs at least one batch of \
             training hands",
            o.synth.n_train, o.batch_size
        )));
    }
    handcov::synth::demo::run(&o).map(|_| ())
}

/// The flags of the demo; a command line of only these runs it.
const DEMO_FLAGS: [&str; 12] = [
    "--demo",
    "--steps",
    "--batch-size",
    "--out",
    "--cache",
    "--threads",
    "--seed",
    "--lr",
    "--pictures",
    "--device",
    "--synth-train",
    "--synth-test",
];

/// The flags of training runs, which `--dump-grads` does not take.
const TRAINING_ONLY: [&str; 16] = [
    "--init",
    "--steps",
    "--out",
    "--resume",
    "--lr",
    "--weight-decay",
    "--clip-grad",
    "--log-every",
    "--ckpt-every",
    "--data",
    "--batch-size",
    "--mocap",
    "--threads",
    "--no-augment",
    "--val-batch",
    "--val-every",
];

fn run() -> Result<()> {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    // The demo: no arguments, `--demo`, or only the demo's own flags (`train --steps 800`).
    let is_demo_flag = |a: &std::ffi::OsString| {
        let a = a.to_string_lossy();
        !a.starts_with("--") || DEMO_FLAGS.contains(&handcov::cli::flag_name(&a))
    };
    if args.iter().any(|a| a == "--demo") || args.iter().all(is_demo_flag) {
        return demo();
    }
    let Some(a) = parse()? else { return Ok(()) };
    if a.dump_grads.is_some() {
        // One step's gradients, no training: the training flags would be silently ignored.
        let flag =
            |x: &std::ffi::OsString| handcov::cli::flag_name(&x.to_string_lossy()).to_string();
        if let Some(f) = args
            .iter()
            .map(flag)
            .find(|f| TRAINING_ONLY.contains(&f.as_str()))
        {
            return Err(Error::Input(format!(
                "{f} applies to training, not to --dump-grads (one forward + backward on the \
                 batch file, nothing trained)"
            )));
        }
    }
    match (&a.dump_grads, &a.weights) {
        (Some(out), Some(w)) => dump_grads(&a, w, out),
        (Some(_), None) => Err(Error::Input("--dump-grads needs --weights".into())),
        (None, _) => train(&a),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {}", e.one_line());
        std::process::exit(2);
    }
}
