//! The out-of-the-box demo (`train` with no arguments): on a fresh machine, with no weights and
//! no datasets, generate (and cache) the synthetic set, train the `tiny` preset with the `ours`
//! head from scratch (on the GPU when there is one, else the CPU), evaluate it on the held-out
//! split with the same code as `eval pose` / `eval uncertainty`, print the scores next to two
//! baselines (the mean pose; the same model with a constant uncertainty), and draw the result:
//! overlays of the predicted mesh with projected 2σ joint ellipses, the sparsification plot and
//! OBJ meshes.

use std::path::{Path, PathBuf};

use super::camera::{joint_blocks, Camera};
use super::dataset::{generate, sample, SynthConfig, SynthPaths};
use super::draw::save_png;
use super::hand::procedural_hand;
use super::overlay::{overlay, OverlayStyle};
use super::plot::sparsification_png;
use super::raster::MeshView;
use crate::engine::{DeviceChoice, Engine, Precision};
use crate::error::{Error, Result};
use crate::eval::files::{self, Dataset, PointSets};
use crate::eval::pose::{self, PoseMetrics};
use crate::eval::predict::{load_eval_set, predict, write_outputs, OutputPaths};
use crate::eval::stats::sparsification;
use crate::eval::uncertainty::{self, Alignment, Scores, UncertaintyInputs};
use crate::infer::{load_image, make_crop, obj_text, stack};
use crate::model::config::{ModelConfig, Uncertainty};
use crate::model::layers::{TensorSource, TorchDefaultInit};
use crate::model::mano::Mano;
use crate::model::HandModel;
use crate::ops::image::{RgbImage, IMAGE_MEAN, IMAGE_STD};
use crate::ops::mano::{mano_fwd_cpu, NUM_KEYPOINTS};
use crate::tensor::Tensor;
use crate::train::adamw::AdamWConfig;
use crate::train::data::{AugConfig, LoaderOptions, TrainSet};
use crate::train::losses::LossWeights;
use crate::train::step::StepOptions;
use crate::train::trainer::{BatchSource, DatasetSource, Trainer};

/// The default training steps on the CPU: about five and three-quarter minutes of a 2-core CPU
/// (380 images/s). PA-MPJPE falls slowly with the steps, about 0.9 mm per doubling (held-out,
/// default set: 17.9 mm at 800 steps, 16.6 at 2600, 16.1 at 4100, 15.4 at 8000, 13.95 at 20 000,
/// against 20.6 for the mean pose).
pub const CPU_STEPS: u64 = 4100;

/// The default training steps on the GPU: the 20 000 steps that reach 13.95 mm (Pearson 0.59)
/// on the CPU in 33 minutes, sized for a GPU's minutes.
pub const GPU_STEPS: u64 = 20_000;

/// What the demo does; `Default` is the README's first command.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub synth: SynthConfig,
    /// Where the synthetic set is cached (`None`: `$HANDCOV_CACHE` or `~/.cache/handcov`).
    pub cache: Option<PathBuf>,
    /// Results, pictures and the trained weights.
    pub out: PathBuf,
    /// Training steps; `None`: [`CPU_STEPS`] on the CPU, [`GPU_STEPS`] on the GPU.
    pub steps: Option<u64>,
    pub batch_size: usize,
    /// Peak learning rate (linear warm-up, then cosine decay to 5 %). The default was measured
    /// at 2600 steps of the default set: PA-MPJPE 18.8 mm at 1e-3, 17.5 at 5e-4, 17.1 at 3e-4,
    /// 17.2 at 2e-4 (where Pearson fell below 0.3).
    pub lr: f32,
    pub device: DeviceChoice,
    pub threads: usize,
    pub seed: u64,
    /// Overlays and meshes drawn for the first this many test hands.
    pub pictures: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            synth: SynthConfig::default(),
            cache: None,
            out: PathBuf::from("demo"),
            steps: None,
            batch_size: 32,
            lr: 3e-4,
            device: DeviceChoice::Auto,
            threads: 0,
            seed: 1,
            pictures: 8,
        }
    }
}

/// The initial weights of the from-scratch model: PyTorch's default init for every layer
/// (`TorchDefaultInit`) except the ViT's Linear layers (ViTPose's truncated N(0, 0.02²), zero
/// biases) and its position embedding (MAE's 2D sine-cosine), the head readouts scaled down so
/// the first predictions sit at the mean parameters, identity rotations and zero betas as the
/// mean pose, the mean camera `cam0`, and log-variances starting at (2 cm)².
struct DemoInit {
    base: TorchDefaultInit,
    cam0: f32,
    /// The ViT's patch grid (rows, columns).
    grid: (usize, usize),
}

impl TensorSource for DemoInit {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if name.ends_with("init_hand_pose") {
            let v = (0..n)
                .map(|i| if i % 6 == 0 || i % 6 == 4 { 1.0 } else { 0.0 })
                .collect();
            return Tensor::from_vec(shape, v);
        }
        if name.ends_with("init_betas") {
            return Tensor::from_vec(shape, vec![0.0; n]);
        }
        if name.ends_with("init_cam") {
            let v = (0..n)
                .map(|i| if i == 0 { self.cam0 } else { 0.0 })
                .collect();
            return Tensor::from_vec(shape, v);
        }
        // ViTPose's initialisation of the backbone's Linear layers (its `init_weights`):
        // truncated N(0, 0.02²) weights and zero biases, 2.5× smaller than PyTorch's default;
        // with the default the attention starts peaked and the ViT learns far more slowly.
        if name.starts_with("backbone.blocks.") && !name.contains("norm") {
            if name.ends_with(".bias") {
                return Tensor::from_vec(shape, vec![0.0; n]);
            }
            if shape.len() == 2 {
                return Tensor::from_vec(shape, trunc_normal(self.base.seed, name, n, 0.02));
            }
        }
        let t = self.base.tensor(name, shape)?;
        let head_readout = (name.starts_with("mano_head.dec") && !name.contains("transformer"))
            || (name.starts_with("uncertainty_head.dec") && !name.contains("transformer"));
        if name == "backbone.pos_embed" {
            let dim = shape.last().copied().unwrap_or(0);
            if n != (1 + self.grid.0 * self.grid.1) * dim || dim % 4 != 0 {
                return Err(Error::Input(format!(
                    "backbone.pos_embed {shape:?} does not fit a {}×{} patch grid",
                    self.grid.0, self.grid.1
                )));
            }
            return Tensor::from_vec(shape, sincos_pos_embed(self.grid, dim));
        }
        if head_readout {
            let is_unc_bias = name.starts_with("uncertainty_head.") && name.ends_with(".bias");
            let v = t
                .data()
                .iter()
                .map(|x| {
                    if is_unc_bias {
                        (0.02f32 * 0.02).ln()
                    } else {
                        0.05 * x
                    }
                })
                .collect();
            return Tensor::from_vec(shape, v);
        }
        Ok(t)
    }
}

/// MAE's fixed 2D sine-cosine position embedding `[1 + rows·cols, dim]` (slot 0, the unused
/// class slot, is zero): the first half of the channels encodes the row, the second the column,
/// each as `sin(p·ω_k), cos(p·ω_k)` with `ω_k = 10000^(−k/(dim/4))`. A from-scratch ViT with the
/// usual N(0, 0.02²) embedding starts blind to where its patches are (the patch content is 30×
/// larger) and learns positions slowly; ViTPose's own embedding descends from this one through
/// MAE pre-training.
fn sincos_pos_embed(grid: (usize, usize), dim: usize) -> Vec<f32> {
    let quarter = dim / 4;
    let mut out = vec![0f32; (1 + grid.0 * grid.1) * dim];
    for r in 0..grid.0 {
        for c in 0..grid.1 {
            let row = &mut out[(1 + r * grid.1 + c) * dim..][..dim];
            for (half, pos) in [(0, r), (1, c)] {
                for k in 0..quarter {
                    let omega = 10000f64.powf(-(k as f64) / quarter as f64);
                    let a = pos as f64 * omega;
                    row[half * 2 * quarter + k] = a.sin() as f32;
                    row[half * 2 * quarter + quarter + k] = a.cos() as f32;
                }
            }
        }
    }
    out
}

/// `n` draws of N(0, std²) truncated to ±2 std (redrawn beyond), from the counter RNG keyed by
/// (seed, name).
fn trunc_normal(seed: u64, name: &str, n: usize, std: f32) -> Vec<f32> {
    let p = crate::model::layers::init_stream(seed ^ 0x7a11_0002, name);
    let mut k = 0u64;
    (0..n)
        .map(|_| loop {
            let z = p.normal(k);
            k += 1;
            if z.abs() <= 2.0 {
                break std * z;
            }
        })
        .collect()
}

fn cache_root(o: &DemoOptions) -> PathBuf {
    if let Some(c) = &o.cache {
        return c.clone();
    }
    if let Ok(c) = std::env::var("HANDCOV_CACHE") {
        return PathBuf::from(c);
    }
    match std::env::var("HOME") {
        Ok(h) => Path::new(&h).join(".cache").join("handcov"),
        Err(_) => PathBuf::from(".handcov-cache"),
    }
}

/// The weak-perspective scale that maps the hands of the set onto their crops: the mean over a
/// few samples of 2·(extent in normalised crop units) / (extent in metres).
fn mean_camera_scale(mano: &Mano, cfg: &SynthConfig) -> Result<f32> {
    let mut acc = 0.0;
    let k = 32;
    for i in 0..k {
        let s = sample(mano, cfg.seed, i, cfg.image_px, 0.0)?;
        let ext = |f: &dyn Fn(usize) -> f64| {
            let v: Vec<f64> = (0..NUM_KEYPOINTS).map(f).collect();
            let lo = v.iter().cloned().fold(f64::MAX, f64::min);
            let hi = v.iter().cloned().fold(f64::MIN, f64::max);
            hi - lo
        };
        let px = ext(&|j| s.keypoints_2d[j][0]).max(ext(&|j| s.keypoints_2d[j][1]));
        let m = ext(&|j| s.keypoints_3d[j][0] as f64).max(ext(&|j| s.keypoints_3d[j][1] as f64));
        // Normalised crop coordinates are x_n = s·X/2 (SPEC §4: t_z = 2f/(S·s)).
        acc += 2.0 * (px / s.box_side) / m.max(1e-3);
    }
    Ok((acc / k as f64) as f32)
}

/// The mean-pose baseline: the mean keypoints and vertices of the training labels in the hand's
/// own frame (MANO with the global orientation left out), i.e. the average articulated hand.
/// PA-MPJPE aligns the rotation anyway; averaging hands in the camera frame instead would blur
/// differently oriented hands into a shrunken, implausible one and flatter the model (measured
/// on the default set: 23.0 mm against 20.6 mm for this baseline).
fn mean_pose(mano: &Mano, train: &Path, limit: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let ann = train.join("annotations.jsonl");
    let text = std::fs::read_to_string(&ann).map_err(|e| Error::io(&ann, e))?;
    let data = mano.data();
    let nv = mano.num_verts();
    let (mut kp_sum, mut v_sum) = (vec![0f64; NUM_KEYPOINTS * 3], vec![0f64; nv * 3]);
    let mut count = 0usize;
    for line in text.lines().take(limit) {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::Input(format!("{}: {e}", ann.display())))?;
        let get = |k: &str| -> Vec<f32> {
            v["mano"][k]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect())
                .unwrap_or_default()
        };
        let (go, hp, betas) = (get("global_orient"), get("hand_pose"), get("betas"));
        if go.len() != 3 || hp.len() != 45 || betas.len() != 10 {
            continue;
        }
        let mut hp45 = [0f32; 45];
        hp45.copy_from_slice(&hp);
        let rot = super::hand::pose_rotmats(&[0.0; 3], &hp45);
        let (mut verts, mut kp) = (vec![0f32; nv * 3], vec![0f32; NUM_KEYPOINTS * 3]);
        mano_fwd_cpu(&data, &rot, &betas, 1, &mut verts, &mut kp);
        for (s, x) in kp_sum.iter_mut().zip(&kp) {
            *s += *x as f64;
        }
        for (s, x) in v_sum.iter_mut().zip(&verts) {
            *s += *x as f64;
        }
        count += 1;
    }
    if count == 0 {
        return Err(Error::Input(format!("{}: no MANO labels", ann.display())));
    }
    let c = count as f64;
    Ok((
        kp_sum.iter().map(|s| (s / c) as f32).collect(),
        v_sum.iter().map(|s| (s / c) as f32).collect(),
    ))
}

/// The learning rate at `step`: linear warm-up over 5 % of the steps, cosine decay to 5 %.
fn lr_at(step: u64, steps: u64, peak: f32) -> f32 {
    let warm = (steps / 20).max(1);
    if step < warm {
        return peak * (step + 1) as f32 / warm as f32;
    }
    let t = (step - warm) as f32 / (steps - warm).max(1) as f32;
    peak * (0.05 + 0.95 * 0.5 * (1.0 + (std::f32::consts::PI * t).cos()))
}

/// The constant-uncertainty baseline: the mean of `u` everywhere, with ties broken in a fixed
/// pseudo-random order (a relative jitter of 1e-9). A plain constant would rank the entries in
/// their joint-major file order, wrists first, which are the easiest joints: not a neutral
/// baseline.
fn constant_uncertainty(u: &[f64]) -> Vec<f64> {
    let mean = u.iter().sum::<f64>() / u.len().max(1) as f64;
    let p = crate::train::rng::Philox::new(0xc0ffee, 0x5e, 0, 0);
    (0..u.len())
        .map(|i| mean * (1.0 + 1e-9 * p.uniform_f64(i as u64)))
        .collect()
}

/// The crop tensor `[3, S, S]` (normalised) back to RGB, enlarged `k` times (nearest).
fn crop_rgb(crop: &[f32], s: usize, k: usize) -> RgbImage {
    let sk = s * k;
    let mut img = RgbImage::new(sk, sk);
    for y in 0..sk {
        for x in 0..sk {
            let i = (y / k) * s + x / k;
            for c in 0..3 {
                let v = (crop[c * s * s + i] as f64 * IMAGE_STD[c] + IMAGE_MEAN[c]) * 255.0;
                img.data[(y * sk + x) * 3 + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    img
}

/// Everything the demo measured.
pub struct DemoReport {
    pub model_pose: PoseMetrics,
    pub mean_pose: PoseMetrics,
    pub model_unc: Scores,
    pub const_unc: Scores,
    pub train_seconds: f64,
    pub total_seconds: f64,
    pub first_loss: f64,
    pub last_loss: f64,
    /// Whether the pose follows the images: Pearson's r of predicted and true wrist-to-fingertip
    /// distance, averaged over the five fingers ([`curl_correlation`]).
    pub curl_correlation: f64,
}

/// Mean over the five fingers of Pearson's r between the predicted and the true distance from
/// the wrist to the fingertip (OpenPose joints 4, 8, 12, 16, 20) across the samples: ≈ 0 for a
/// model that draws the same hand on every image (its PA-MPJPE can still beat the mean pose by
/// predicting the median), → 1 as the predicted fingers follow the images.
pub fn curl_correlation(pred: &PointSets, gt: &PointSets) -> f64 {
    let dist = |s: &[[f64; 3]], tip: usize| {
        (0..3)
            .map(|a| (s[tip][a] - s[0][a]).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let n = pred.n().min(gt.n());
    let r: Vec<f64> = [4, 8, 12, 16, 20]
        .iter()
        .map(|&tip| {
            let p: Vec<f64> = (0..n).map(|i| dist(pred.sample(i), tip)).collect();
            let g: Vec<f64> = (0..n).map(|i| dist(gt.sample(i), tip)).collect();
            // A constant prediction has no correlation (Pearson's 0/0): count it as 0.
            let r = crate::eval::stats::pearson(&p, &g);
            if r.is_finite() {
                r
            } else {
                0.0
            }
        })
        .collect();
    r.iter().sum::<f64>() / r.len() as f64
}

fn table(r: &DemoReport) -> String {
    let f = |v: f64| {
        if v.is_finite() {
            format!("{v:>9.3}")
        } else {
            format!("{:>9}", "n/a")
        }
    };
    let mut s = String::new();
    s.push_str("                               PA-MPJPE  PA-MPVPE   Pearson      AUSC      AUSE\n");
    s.push_str("                                   (mm)      (mm)\n");
    let (p, u) = (&r.model_pose, &r.model_unc);
    s.push_str(&format!(
        "tiny + ours (trained here)    {} {} {} {} {}\n",
        f(p.pa_mpjpe_mm),
        f(p.pa_mpvpe_mm),
        f(u.pearson),
        f(u.ausc),
        f(u.ause)
    ));
    let c = &r.const_unc;
    s.push_str(&format!(
        "  same, constant uncertainty  {} {} {} {} {}\n",
        f(p.pa_mpjpe_mm),
        f(p.pa_mpvpe_mm),
        f(c.pearson),
        f(c.ausc),
        f(c.ause)
    ));
    let m = &r.mean_pose;
    s.push_str(&format!(
        "mean pose of the training set {} {} {:>9} {:>9} {:>9}\n",
        f(m.pa_mpjpe_mm),
        f(m.pa_mpvpe_mm),
        "-",
        "-",
        "-"
    ));
    s
}

/// Runs the demo end to end; prints progress and the final table, returns the numbers.
pub fn run(o: &DemoOptions) -> Result<DemoReport> {
    let t0 = std::time::Instant::now();
    let hand = procedural_hand();
    let mano = hand.mano()?;
    // The output directory first: a bad --out fails before minutes of generation.
    crate::train::create_out_dir("--out", &o.out)?;
    let root = cache_root(o).join(format!("synth-{}", o.synth.key()));
    eprintln!("demo: synthetic hands under {}", root.display());
    let paths: SynthPaths = generate(&root, &o.synth, &mano, true)?;
    let mano_path = o.out.join("procedural_hand.safetensors");
    hand.save(&mano_path)?;

    // The model, from scratch.
    let mut cfg = ModelConfig::tiny();
    cfg.uncertainty = Uncertainty::Ours;
    let cam0 = mean_camera_scale(&mano, &o.synth)?;
    let init = DemoInit {
        base: TorchDefaultInit::new(o.seed),
        cam0,
        grid: cfg.grid(),
    };
    let model = HandModel::build(cfg.clone(), &init, hand.mano()?)?;

    // Training.
    let set = std::sync::Arc::new(TrainSet::open(&paths.train)?);
    // Lighter augmentation than the reference's (SPEC §1.4): the synthetic set already varies
    // scale, rotation and colour, and a five-minute run cannot afford the harder problem.
    let lopts = LoaderOptions {
        batch_size: o.batch_size,
        image_size: cfg.image_size,
        seed: o.seed,
        threads: o.threads,
        augment: Some(AugConfig {
            trans_factor: 0.02,
            scale_factor: 0.1,
            rot_factor: 15.0,
            rot_aug_rate: 0.3,
            color_scale: 0.1,
        }),
        ..Default::default()
    };
    let mut source = DatasetSource::new(set, lopts)?;
    let adamw = AdamWConfig {
        lr: o.lr,
        weight_decay: 1e-4,
        clip_norm: Some(5.0),
        ..Default::default()
    };
    // `ours` with the exact NLL of its full covariance (SPEC §15b.2), so that W learns the
    // correlations of the residuals and the per-joint uncertainty (the trace of each joint's
    // block of W·diag(e^s)·Wᵀ) is fitted, not mixed by a random W.
    // Training from scratch, the MANO-parameter terms get 200× the reference's weights (SPEC
    // §7.2 tunes them for fine-tuning a pretrained model, where the keypoint terms dominate):
    // the rotation targets are the densest supervision a from-scratch model gets. Measured at
    // 800 steps: PA-MPJPE 22.1 mm without them, 21.3 at 1×, 20.1 at 10×, 20.0 at 50×, 19.5 at
    // 200× (mean pose 23.0).
    let weights = LossWeights {
        global_orient: 0.2,
        hand_pose: 0.2,
        betas: 0.1,
        ..Default::default()
    };
    let step_options = StepOptions {
        ours_nll_exact: true,
        weights,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, adamw, None, step_options, o.seed);
    let gpu = match o.device {
        DeviceChoice::Cpu => false,
        DeviceChoice::Cuda => true,
        DeviceChoice::Auto => crate::cuda::CudaBackend::new(0).is_ok(),
    };
    if gpu {
        trainer.use_gpu(Precision::Fp32)?;
    }
    let steps = o.steps.unwrap_or(if gpu { GPU_STEPS } else { CPU_STEPS });
    eprintln!(
        "demo: training tiny + ours from scratch on the {} for {} steps of {}",
        if gpu { "GPU" } else { "CPU" },
        steps,
        o.batch_size
    );
    let t_train = std::time::Instant::now();
    let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
    let mut window = Vec::new();
    while trainer.state.step < steps {
        let step = trainer.state.step;
        trainer.set_lr(lr_at(step, steps, o.lr));
        let batch = source.next_batch()?;
        let r = trainer.step(&batch)?;
        trainer.state.cursor = source.cursor();
        if r.total.is_finite() {
            window.push(r.total / batch.b as f64);
        }
        let every = (steps / 10).max(1);
        if (step + 1) % every == 0 || step + 1 == steps {
            let mean = window.iter().sum::<f64>() / window.len().max(1) as f64;
            if first_loss.is_nan() {
                first_loss = mean;
            }
            last_loss = mean;
            window.clear();
            let el = t_train.elapsed().as_secs_f64();
            eprintln!(
                "demo: step {:>5}/{}  loss/hand {mean:+.4e}  {:.0} img/s  eta {:.0}s",
                step + 1,
                steps,
                ((step + 1) as f64 * o.batch_size as f64) / el,
                el / (step + 1) as f64 * (steps - step - 1) as f64
            );
        }
    }
    let train_seconds = t_train.elapsed().as_secs_f64();
    trainer.save(&o.out.join("tiny_ours.safetensors"))?;

    // Predictions on the held-out split, with the evaluation code.
    let mut engine = Engine::new(trainer.model, DeviceChoice::Cpu, Precision::Fp32, false)?;
    let es = load_eval_set(&paths.eval_set, None)?;
    let pred = predict(&mut engine, &es.samples, Dataset::FreiHand, 32, |_| {})?;
    let results = o.out.join("results");
    let exp_dir = |name: &str| results.join(name);
    write_outputs(
        &OutputPaths::new(&exp_dir("synthetic"), Dataset::FreiHand),
        &pred,
        "ours",
    )?;
    let model_pose = pose::evaluate(
        &exp_dir("synthetic").join(Dataset::FreiHand.predictions_file()),
        &paths.test,
    )?;
    let inputs = UncertaintyInputs::locate(Dataset::FreiHand, "synthetic", &results, &paths.test);
    let rep = uncertainty::evaluate(Dataset::FreiHand, "synthetic", &inputs)?;
    rep.write(&o.out.join("uncertainty_eval").join("synthetic"))?;

    // Baselines.
    let n = pred.n;
    let (mkp, mv) = mean_pose(&mano, &paths.train, 2000)?;
    let mp_dir = exp_dir("mean_pose");
    std::fs::create_dir_all(&mp_dir).map_err(|e| Error::io(&mp_dir, e))?;
    let mp_file = mp_dir.join(Dataset::FreiHand.predictions_file());
    files::write_predictions(&mp_file, n, &mkp.repeat(n), &mv.repeat(n))?;
    let mean_pose = pose::evaluate(&mp_file, &paths.test)?;
    let gt = files::read_gt_xyz(&paths.test.join("evaluation_xyz.json"))?;
    let preds =
        files::read_predictions(&exp_dir("synthetic").join(Dataset::FreiHand.predictions_file()))?;
    let errors = uncertainty::joint_errors(&gt, &preds.xyz, Alignment::None);
    let u = uncertainty::uncertainty_joint_major(&files::read_uncertainty(&inputs.uncertainty)?);
    let u_const = constant_uncertainty(&u);
    let mut const_unc = uncertainty::scores(&errors, &u_const, n);
    // A correlation with a constant is undefined (SciPy returns NaN).
    const_unc.pearson = f64::NAN;
    const_unc.pearson_1_99 = f64::NAN;
    const_unc.pearson_5_95 = f64::NAN;
    let report = DemoReport {
        model_pose,
        mean_pose,
        model_unc: rep.reference.clone(),
        const_unc,
        train_seconds,
        total_seconds: 0.0,
        first_loss,
        last_loss,
        curl_correlation: curl_correlation(&preds.xyz, &gt),
    };

    // Pictures.
    let pics = o.out.join("pictures");
    std::fs::create_dir_all(&pics).map_err(|e| Error::io(&pics, e))?;
    let big_e: Vec<f64> = errors.iter().map(|v| 10.0 * v).collect();
    let sp_model = sparsification(&big_e, &u);
    let sp_const = sparsification(&big_e, &u_const);
    sparsification_png(
        &pics.join("sparsification.png"),
        &[
            ("tiny + ours", &sp_model.curve, [200, 60, 40]),
            ("oracle", &sp_model.oracle, [40, 140, 60]),
            ("constant uncertainty", &sp_const.curve, [90, 90, 200]),
        ],
        &sp_model.x,
        "synthetic test set: sparsification (error x10 m)",
        [720, 480],
    )?;
    draw_examples(
        &mut engine,
        &es.samples,
        o.pictures.min(es.samples.len()),
        &pics,
        &o.out,
    )?;
    let total_seconds = t0.elapsed().as_secs_f64();
    let report = DemoReport {
        total_seconds,
        ..report
    };
    println!(
        "\nheld-out synthetic hands: {n}   (training {:.0} s, total {:.0} s)\n{}",
        report.train_seconds,
        report.total_seconds,
        table(&report)
    );
    println!(
        "the pose follows the images: r(predicted, true wrist-to-fingertip distance) = {:.2} \
         (mean of the 5 fingers; 0 for the same hand drawn on every image)\n",
        report.curl_correlation
    );
    println!(
        "files: {} (weights), {} (predictions, scores), {} (overlays, sparsification plot), {} (OBJ)",
        o.out.join("tiny_ours.safetensors").display(),
        results.display(),
        pics.display(),
        o.out.join("meshes").display()
    );
    Ok(report)
}

/// Overlays (mesh, skeleton, 2σ ellipses) on the crops of the first `k` test hands, and their
/// meshes as OBJ.
fn draw_examples(
    engine: &mut Engine,
    samples: &[crate::eval::predict::EvalSample],
    k: usize,
    pics: &Path,
    out: &Path,
) -> Result<()> {
    if k == 0 {
        return Ok(());
    }
    let size = engine.model().config.image_size;
    let focal = engine.model().config.focal_length;
    let faces = engine.model().mano.faces.clone();
    let crops = samples[..k]
        .iter()
        .enumerate()
        .map(|(i, s)| Ok(make_crop(i, &load_image(&s.path)?, s.cbox, size)))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<_> = crops.iter().collect();
    let pred = engine.forward(&stack(&refs, size)?)?;
    let meshes = out.join("meshes");
    std::fs::create_dir_all(&meshes).map_err(|e| Error::io(&meshes, e))?;
    let nv = pred.pred_vertices.dim(1);
    for (i, c) in crops.iter().enumerate() {
        let verts = &pred.pred_vertices.data()[i * nv * 3..(i + 1) * nv * 3];
        let kp: Vec<[f32; 3]> = pred.pred_keypoints_3d.data()
            [i * NUM_KEYPOINTS * 3..(i + 1) * NUM_KEYPOINTS * 3]
            .chunks(3)
            .map(|v| [v[0], v[1], v[2]])
            .collect();
        let t = &pred.pred_cam_t.data()[i * 3..i * 3 + 3];
        // Drawn at k× the crop: the same camera with the focal length scaled, and the crop's
        // pixel centre (u, v) at (k·u + (k − 1)/2, …) of the enlarged image.
        let k = 3;
        let mut cam = Camera::crop(
            focal * k as f64,
            size * k,
            [t[0] as f64, t[1] as f64, t[2] as f64],
        );
        cam.cx = k as f64 * (size as f64 / 2.0) + (k as f64 - 1.0) / 2.0;
        cam.cy = cam.cx;
        let cov = match &pred.uncertainty {
            Some(u) => Some(joint_blocks(
                &u.keypoint_3d_cov.data()[i * 63 * 63..(i + 1) * 63 * 63],
                NUM_KEYPOINTS,
            )?),
            None => None,
        };
        let mesh = MeshView::from_flat(verts, &faces)?;
        let img = overlay(
            &crop_rgb(&c.crop, size, k),
            &mesh,
            &cam,
            &kp,
            cov.as_deref(),
            &OverlayStyle::scaled_for(size * k),
        )?;
        save_png(&pics.join(format!("overlay_{i:03}.png")), &img)?;
        let obj = meshes.join(format!("hand_{i:03}.obj"));
        std::fs::write(&obj, obj_text(verts, &faces, true)).map_err(|e| Error::io(&obj, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The baseline is the average articulated hand: two labels with the same articulation
    /// and shape but opposite global rotations average to that hand itself (in the camera
    /// frame they would average to a hand squashed towards its root).
    #[test]
    fn mean_pose_leaves_the_global_rotation_out() {
        let mano = procedural_hand().mano().unwrap();
        let dir = std::env::temp_dir().join(format!("handcov-meanpose-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hp: Vec<f32> = (0..45).map(|i| 0.02 * (i % 7) as f32).collect();
        let betas = [0.5f32, -0.3, 0.2, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0];
        let line = |go: [f32; 3]| {
            serde_json::json!({"mano": {"global_orient": go, "hand_pose": hp, "betas": betas}})
                .to_string()
        };
        let text = [line([2.0, 0.3, 0.0]), line([-1.0, 0.0, 2.5])].join("\n");
        std::fs::write(dir.join("annotations.jsonl"), text).unwrap();
        let (kp, verts) = mean_pose(&mano, &dir, 10).unwrap();
        let mut hp45 = [0f32; 45];
        hp45.copy_from_slice(&hp);
        let rot = super::super::hand::pose_rotmats(&[0.0; 3], &hp45);
        let (mut want_v, mut want_kp) = (vec![0f32; verts.len()], vec![0f32; kp.len()]);
        mano_fwd_cpu(&mano.data(), &rot, &betas, 1, &mut want_v, &mut want_kp);
        let max_diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        assert!(
            max_diff(&kp, &want_kp) < 1e-6,
            "{}",
            max_diff(&kp, &want_kp)
        );
        assert!(max_diff(&verts, &want_v) < 1e-6);
        // A full-size hand: the middle fingertip lies more than 5 cm from the wrist.
        let d = (0..3)
            .map(|a| (kp[12 * 3 + a] - kp[a]).powi(2))
            .sum::<f32>()
            .sqrt();
        assert!(d > 0.05, "{d}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn sincos_embedding_encodes_row_and_column() {
        let (grid, dim) = ((8, 6), 128);
        let e = sincos_pos_embed(grid, dim);
        assert_eq!(e.len(), (1 + 48) * dim);
        assert!(e[..dim].iter().all(|&v| v == 0.0), "slot 0 is unused");
        let tok = |r: usize, c: usize| &e[(1 + r * grid.1 + c) * dim..][..dim];
        // Every token has the same norm (sin² + cos² per frequency) ...
        for (r, c) in [(0, 0), (3, 2), (7, 5)] {
            let n2: f32 = tok(r, c).iter().map(|v| v * v).sum();
            assert!((n2 - (dim / 2) as f32).abs() < 1e-3, "{n2}");
        }
        // ... the first half depends on the row only, the second on the column only.
        assert_eq!(tok(2, 0)[..dim / 2], tok(2, 5)[..dim / 2]);
        assert_eq!(tok(0, 4)[dim / 2..], tok(7, 4)[dim / 2..]);
        assert_ne!(tok(2, 0)[..dim / 2], tok(3, 0)[..dim / 2]);
        // Token (r, c): sin(r) at channel 0 and cos(c) at channel dim/2 + dim/4 (ω_0 = 1).
        assert!((tok(3, 1)[0] - 3f32.sin()).abs() < 1e-6);
        assert!((tok(3, 1)[dim / 2 + dim / 4] - 1f32.cos()).abs() < 1e-6);
    }

    #[test]
    fn curl_correlation_tells_a_constant_hand_from_one_that_follows() {
        // Hands whose five fingertips sit at a per-sample distance from the wrist.
        let hands = |dist: &dyn Fn(usize, usize) -> f64| {
            let n = 40;
            let mut v = vec![0f64; n * 21 * 3];
            for i in 0..n {
                for (f, tip) in [4, 8, 12, 16, 20].into_iter().enumerate() {
                    v[(i * 21 + tip) * 3 + 1] = dist(i, f);
                }
            }
            PointSets::new(n, 21, v).unwrap()
        };
        let d = |i: usize, f: usize| 0.05 + 0.001 * ((i * 7 + f * 3) % 40) as f64;
        let gt = hands(&d);
        assert!((curl_correlation(&gt, &gt) - 1.0).abs() < 1e-12);
        assert!(curl_correlation(&hands(&|_, _| 0.07), &gt).abs() < 1e-9);
        let anti = hands(&|i, f| 0.2 - d(i, f));
        assert!((curl_correlation(&anti, &gt) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn trunc_normal_is_bounded_and_has_the_asked_spread() {
        let v = trunc_normal(7, "backbone.blocks.0.attn.qkv.weight", 20_000, 0.02);
        assert!(v.iter().all(|x| x.abs() <= 0.04));
        let sd = (v.iter().map(|x| (x * x) as f64).sum::<f64>() / v.len() as f64).sqrt();
        // A normal truncated at ±2σ keeps 88 % of its variance: σ_t ≈ 0.88·σ.
        assert!((sd - 0.0176).abs() < 0.0005, "{sd}");
        assert_eq!(
            v,
            trunc_normal(7, "backbone.blocks.0.attn.qkv.weight", 20_000, 0.02)
        );
        assert_ne!(
            v,
            trunc_normal(7, "backbone.blocks.1.attn.qkv.weight", 20_000, 0.02)
        );
    }
}
