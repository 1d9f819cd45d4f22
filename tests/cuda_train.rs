//! The GPU training step against the CPU step (the reference that tests/train_step.rs checks
//! against PyTorch): every loss term and every parameter gradient of the `tiny` model for each
//! uncertainty type, in fp32 and bf16; AdamW trajectories; resume; NaN skipping; the
//! out-of-memory message; and the synthetic demo trained on the GPU against the CPU. All need a
//! GPU: `cargo test --release --test cuda_train -- --ignored`.

mod common;

use common::train_run::small_demo;
use common::*;
use handcov::engine::Precision;
use handcov::model::backward::Grads;
use handcov::model::config::Uncertainty;
use handcov::model::weights::TensorFile;
use handcov::model::HandModel;
use handcov::train::adamw::AdamWConfig;
use handcov::train::discriminator::Discriminator;
use handcov::train::gpu::GpuEngine;
use handcov::train::step::{train_step, Batch, StepOptions};
use handcov::train::trainer::Trainer;

/// fp32 on both engines, different summation orders (cuBLASLt, blocked reductions) over up to
/// 192 × 5120 products: 1e-4 relative per tensor, as the forward's bound.
const TOL_FP32: f64 = 1e-4;
/// bf16 activations (8-bit mantissa, ≈ 4e-3 per rounding) through the whole network: compared
/// norm-wise, ‖a − b‖ / ‖b‖ per gradient tensor, and loss terms to 2e-2. The L1 keypoint losses
/// take the sign of each residual, and a residual within bf16's error of 0 can flip it, which
/// moves a gradient by 10–20 % norm-wise on its own at this tiny batch: hence 0.25, which still
/// catches a wrong or missing term (those are O(1)).
const TOL_BF16_GRAD: f64 = 0.25;
const TOL_BF16_LOSS: f64 = 2e-2;

fn setup(u: Uncertainty) -> (HandModel, Discriminator<f32>, Batch) {
    // One folder per call: tests run in parallel and several set up the same head (a shared
    // folder was emptied by one test while another read its weights from it).
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = scratch(&format!("cuda_train_{}_{n}", u.name()));
    let wf = TensorFile::open(&tiny_weights_for(u, &dir)).unwrap();
    let model = HandModel::load(tiny_config(u), &wf, None).unwrap();
    let disc = Discriminator::<f32>::load(
        &TensorFile::open(&fixture("train_tiny_discriminator.safetensors")).unwrap(),
    )
    .unwrap();
    let batch = Batch::load(
        &TensorFile::open(&fixture("train_tiny_batch.safetensors")).unwrap(),
        128,
    )
    .unwrap();
    (model, disc, batch)
}

fn rel_max(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

fn rel_norm(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        d += (*x as f64 - *y as f64).powi(2);
        n += (*y as f64).powi(2);
    }
    if n == 0.0 {
        d.sqrt()
    } else {
        (d / n).sqrt()
    }
}

fn compare_step(u: Uncertainty, exact: bool, precision: Precision) {
    let (mut model, disc, batch) = setup(u);
    let opt = StepOptions {
        ours_nll_exact: exact,
        ..Default::default()
    };
    let cpu = train_step(&model, Some(&disc), &batch, &opt).unwrap();
    let mut gpu = GpuEngine::new(&mut model, precision, AdamWConfig::default()).unwrap();
    let out = gpu.step(&model, Some(&disc), &batch, &opt).unwrap();
    let grads: Grads = gpu.grads().unwrap();
    let what = format!(
        "{} {precision:?}{}",
        u.name(),
        if exact { " exact" } else { "" }
    );
    let (t_c, t_g) = (&cpu.terms, &out.terms);
    let loss_tol = match precision {
        Precision::Fp32 => 1e-5,
        Precision::Bf16 => TOL_BF16_LOSS,
    };
    let pairs = [
        ("total", cpu.total, out.total),
        ("keypoints_2d", t_c.keypoints_2d, t_g.keypoints_2d),
        ("keypoints_3d", t_c.keypoints_3d, t_g.keypoints_3d),
        ("global_orient", t_c.global_orient, t_g.global_orient),
        ("hand_pose", t_c.hand_pose, t_g.hand_pose),
        ("betas", t_c.betas, t_g.betas),
        ("adversarial", t_c.adversarial, t_g.adversarial),
        ("nll", t_c.nll.unwrap_or(0.0), t_g.nll.unwrap_or(0.0)),
        (
            "sample_mean",
            t_c.sample_mean.unwrap_or(0.0),
            t_g.sample_mean.unwrap_or(0.0),
        ),
    ];
    for (name, c, g) in pairs {
        let err = (g - c).abs() / c.abs().max(1e-12);
        eprintln!("{what:>24} loss {name:<14} cpu {c:.8e} gpu {g:.8e} rel {err:.1e}");
        assert!(err <= loss_tol || (g - c).abs() < 1e-9, "{what}: {name}");
    }
    assert_eq!(
        cpu.grads.map.keys().collect::<Vec<_>>(),
        grads
            .map
            .keys()
            .filter(|k| cpu.grads.map.contains_key(*k))
            .collect::<Vec<_>>()
    );
    let mut worst = (0f64, String::new());
    for (name, want) in &cpu.grads.map {
        let got = grads
            .map
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no GPU gradient for {name}"));
        assert_eq!(got.len(), want.len(), "{name}");
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{what}: {name} not finite"
        );
        let err = match precision {
            Precision::Fp32 => rel_max(got, want),
            Precision::Bf16 => rel_norm(got, want),
        };
        if err > worst.0 {
            worst = (err, name.clone());
        }
    }
    eprintln!(
        "{what:>24} worst gradient error {:.2e} ({})",
        worst.0, worst.1
    );
    let tol = match precision {
        Precision::Fp32 => TOL_FP32,
        Precision::Bf16 => TOL_BF16_GRAD,
    };
    assert!(worst.0 <= tol, "{what}: {} error {:.3e}", worst.1, worst.0);
}

macro_rules! step_tests {
    ($($name:ident: $u:expr, $exact:expr, $p:expr;)*) => {$(
        #[test]
        #[ignore = "needs a CUDA device"]
        fn $name() {
            compare_step($u, $exact, $p);
        }
    )*};
}

step_tests! {
    step_none_fp32: Uncertainty::None, false, Precision::Fp32;
    step_diag_fp32: Uncertainty::Diag, false, Precision::Fp32;
    step_full_fp32: Uncertainty::Full, false, Precision::Fp32;
    step_ours_fp32: Uncertainty::Ours, false, Precision::Fp32;
    step_ours_exact_fp32: Uncertainty::Ours, true, Precision::Fp32;
    step_ours_wo_linear_fp32: Uncertainty::OursWoLinear, false, Precision::Fp32;
    step_diag_bf16: Uncertainty::Diag, false, Precision::Bf16;
    step_ours_bf16: Uncertainty::Ours, false, Precision::Bf16;
    step_full_bf16: Uncertainty::Full, false, Precision::Bf16;
}

fn trainer(u: Uncertainty, gpu: bool) -> (Trainer, Batch) {
    let (model, disc, batch) = setup(u);
    let mut t = Trainer::new(
        model,
        AdamWConfig {
            lr: 1e-4,
            ..Default::default()
        },
        Some(disc),
        StepOptions::default(),
        7,
    );
    if gpu {
        t.use_gpu(Precision::Fp32).unwrap();
    }
    (t, batch)
}

/// Five AdamW steps on the GPU follow the CPU's loss trajectory.
#[test]
#[ignore = "needs a CUDA device"]
fn adamw_trajectory_matches_cpu() {
    let (mut cpu, batch) = trainer(Uncertainty::Ours, false);
    let (mut gpu, _) = trainer(Uncertainty::Ours, true);
    for k in 0..5 {
        let (a, b) = (cpu.step(&batch).unwrap(), gpu.step(&batch).unwrap());
        let err = (a.total - b.total).abs() / a.total.abs();
        eprintln!(
            "step {k}: cpu {:.8e} gpu {:.8e} rel {err:.1e}",
            a.total, b.total
        );
        assert!(!a.skipped && !b.skipped);
        assert!(err <= 1e-5, "step {k}");
    }
    // The weights the GPU holds come back to the host for checkpoints.
    gpu.sync_from_gpu().unwrap();
    let (pc, pg) = (cpu.model.params_mut(), gpu.model.params_mut());
    // Norm-wise: AdamW's first steps move every weight by about ±lr whatever the gradient's
    // size, so an element whose tiny gradient has opposite signs on the two engines ends 2·lr
    // apart; that must not fail the check, a wrong update must.
    for ((n, a), (_, b)) in pc.into_iter().zip(pg) {
        let err = rel_norm(b.data(), a.data());
        assert!(err <= 1e-4, "{n}: {err:e}");
    }
}

/// A run interrupted by a checkpoint continues with bitwise identical losses on the GPU.
#[test]
#[ignore = "needs a CUDA device"]
fn gpu_resume_is_bitwise_identical() {
    let dir = scratch("cuda_train_resume");
    let (mut a, batch) = trainer(Uncertainty::Ours, true);
    let straight: Vec<f64> = (0..4).map(|_| a.step(&batch).unwrap().total).collect();
    let (mut b, _) = trainer(Uncertainty::Ours, true);
    b.step(&batch).unwrap();
    b.step(&batch).unwrap();
    let ckpt = dir.join("ckpt.safetensors");
    b.save(&ckpt).unwrap();
    let (mut c, _) = trainer(Uncertainty::Ours, true);
    c.resume(&ckpt).unwrap();
    let resumed: Vec<f64> = (0..2).map(|_| c.step(&batch).unwrap().total).collect();
    assert_eq!(straight[2].to_bits(), resumed[0].to_bits());
    assert_eq!(straight[3].to_bits(), resumed[1].to_bits());
}

/// A NaN in the batch skips the step on the GPU and leaves the weights untouched.
#[test]
#[ignore = "needs a CUDA device"]
fn gpu_nan_step_is_skipped() {
    let (mut t, batch) = trainer(Uncertainty::Diag, true);
    let mut bad = batch.clone();
    bad.keypoints_3d[5] = f32::NAN;
    t.sync_from_gpu().unwrap();
    let before: Vec<Vec<f32>> = t
        .model
        .params_mut()
        .into_iter()
        .map(|(_, p)| p.data().to_vec())
        .collect();
    let r = t.step(&bad).unwrap();
    assert!(r.skipped);
    assert_eq!(t.state.skipped_steps, 1);
    t.sync_from_gpu().unwrap();
    for ((n, p), b) in t.model.params_mut().into_iter().zip(&before) {
        assert_eq!(p.data(), &b[..], "{n} changed on a skipped step");
    }
    assert!(!t.step(&batch).unwrap().skipped);
}

/// A batch that cannot fit gives an error naming the batch size, not a crash.
#[test]
#[ignore = "needs a CUDA device"]
fn out_of_memory_names_the_batch_size() {
    let (mut model, disc, batch) = setup(Uncertainty::Diag);
    let mut gpu = GpuEngine::new(&mut model, Precision::Fp32, AdamWConfig::default()).unwrap();
    // 2^21 tiny images: ≈ 400 GB of activations.
    let b = 1 << 21;
    let mut big = batch.clone();
    big.b = b;
    big.img = vec![0.0; b * 3 * 128 * 128 / 1024]; // wrong length on purpose: checked first
    let err = gpu
        .step(&model, Some(&disc), &big, &StepOptions::default())
        .err()
        .expect("a wrong image length must fail");
    assert!(err.to_string().contains("values is not"), "{err}");
    let mut engine = GpuEngine::new(&mut model, Precision::Fp32, AdamWConfig::default()).unwrap();
    let msg = engine.reserve(b).expect_err("must not fit").to_string();
    assert!(msg.contains(&format!("batch size {b}")), "{msg}");
    assert!(msg.contains("--batch-size"), "{msg}");
}

/// The synthetic demo trained on the GPU follows the same run on the CPU: the same set, initial
/// weights and batches, fp32 on both (TF32 off), only summation orders differ. After 8 steps at
/// lr 1e-3 the losses and the held-out pose metrics agree to 1e-3 relative (measured on the
/// emulator: equal to 5 digits after 30 steps); the uncertainty scores to 1e-2, since they rank
/// 24 samples whose near-ties a last-bit change may swap.
#[test]
#[ignore = "needs a CUDA device"]
fn the_demo_on_the_gpu_follows_the_cpu() {
    use handcov::engine::DeviceChoice;
    use handcov::synth::demo::run;
    let dir = scratch("cuda_train_demo");
    let mut o = small_demo(&dir);
    o.steps = Some(8);
    o.out = dir.join("cpu");
    let cpu = run(&o).unwrap();
    o.device = DeviceChoice::Cuda;
    o.out = dir.join("gpu");
    let gpu = run(&o).unwrap();
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-12);
    let (gp, cp) = (&gpu.model_pose, &cpu.model_pose);
    for (what, g, c, tol) in [
        ("first loss", gpu.first_loss, cpu.first_loss, 1e-3),
        ("last loss", gpu.last_loss, cpu.last_loss, 1e-3),
        ("PA-MPJPE", gp.pa_mpjpe_mm, cp.pa_mpjpe_mm, 1e-3),
        ("PA-MPVPE", gp.pa_mpvpe_mm, cp.pa_mpvpe_mm, 1e-3),
        ("AUSC", gpu.model_unc.ausc, cpu.model_unc.ausc, 1e-2),
        ("AUSE", gpu.model_unc.ause, cpu.model_unc.ause, 1e-2),
    ] {
        assert!(rel(g, c) <= tol, "{what}: GPU {g}, CPU {c}");
    }
    assert!(gpu.last_loss < gpu.first_loss, "the GPU run did not learn");
}
