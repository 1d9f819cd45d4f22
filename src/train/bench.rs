//! Training benchmarks behind `bench --train`: the whole fine-tune step on the GPU (forward,
//! losses, backward, AdamW, the discriminator's own step) and the exact-NLL Cholesky kernel,
//! timed with CUDA events after warm-up (medians), as the rows `tests/reference/
//! compare_bench.py` joins with `bench_train_torch.py`'s; and `bench --cpu-train`, the CPU step
//! of the synthetic demo, wall-clock timed, against `bench_train_torch.py --device cpu
//! --config tiny --no-disc`.

use super::adamw::AdamWConfig;
use super::discriminator::Discriminator;
use super::step::{Batch, StepOptions};
use super::trainer::Trainer;
use crate::cuda::bench::{Bench, BenchRow};
use crate::cuda::CudaBackend;
use crate::engine::Precision;
use crate::error::{Error, Result};
use crate::model::HandModel;
use crate::ops::mano::NUM_KEYPOINTS;

/// SPEC §11: forward ≈ 254.2 GFLOP per image; a training step ≈ 3× that.
const TRAIN_GFLOP_PER_IMAGE: f64 = 3.0 * 254.2;

/// Deterministic values in [lo, hi).
fn uniform(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// A synthetic training batch of `b` hands at `size` px: every label present, confidences 1,
/// keypoints at hand scale, and 2·b MoCap poses for the discriminator.
pub fn synthetic_batch(b: usize, size: usize, seed: u64) -> Batch {
    let mut kp2d = uniform(b * NUM_KEYPOINTS * 3, seed, -0.4, 0.4);
    for k in kp2d.chunks_mut(3) {
        k[2] = 1.0;
    }
    let mut kp3d = uniform(b * NUM_KEYPOINTS * 4, seed + 1, -0.08, 0.08);
    for k in kp3d.chunks_mut(4) {
        k[3] = 1.0;
    }
    Batch {
        b,
        img: uniform(b * 3 * size * size, seed + 2, -2.0, 2.0),
        keypoints_2d: kp2d,
        keypoints_3d: kp3d,
        global_orient: uniform(b * 3, seed + 3, -1.0, 1.0),
        hand_pose: uniform(b * 45, seed + 4, -0.3, 0.3),
        betas: uniform(b * 10, seed + 5, -1.0, 1.0),
        has_global_orient: vec![1.0; b],
        has_hand_pose: vec![1.0; b],
        has_betas: vec![1.0; b],
        sample_eps: None,
        mocap: Some((
            uniform(2 * b * 45, seed + 6, -0.3, 0.3),
            uniform(2 * b * 10, seed + 7, -1.0, 1.0),
        )),
    }
}

/// The CPU training step of the synthetic demo (`tiny` + `ours` with the exact NLL, the
/// procedural hand, no discriminator, AdamW) at batch `b` on a synthetic batch: wall-clock
/// median, p10 and p90 over `runs` steps after `warmup`, and images/s.
pub fn cpu_train_step(b: usize, warmup: usize, runs: usize) -> Result<BenchRow> {
    use crate::model::config::{ModelConfig, Uncertainty};
    use crate::model::layers::TorchDefaultInit;
    if b == 0 || runs == 0 {
        return Err(Error::Input(
            "cpu train-step benchmark: batch and runs must be at least 1".into(),
        ));
    }
    let mut cfg = ModelConfig::tiny();
    cfg.uncertainty = Uncertainty::Ours;
    let hand = crate::synth::hand::procedural_hand();
    let model = HandModel::build(cfg, &TorchDefaultInit::new(1), hand.mano()?)?;
    let size = model.config.image_size;
    let opts = StepOptions {
        ours_nll_exact: true,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, AdamWConfig::default(), None, opts, 1);
    let batch = synthetic_batch(b, size, 11);
    let mut ms = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        let t = std::time::Instant::now();
        let rep = trainer.step(&batch)?;
        if rep.skipped {
            return Err(Error::Input(
                "cpu train-step benchmark: a step was skipped (non-finite loss or gradient)".into(),
            ));
        }
        if i >= warmup {
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    let q = |f: f64| ms[((ms.len() - 1) as f64 * f).round() as usize];
    let med = q(0.5);
    Ok(BenchRow {
        engine: "handcov",
        kind: "train",
        kernel: "cpu_train_step".into(),
        mode: Precision::Fp32.name().into(),
        batch: b,
        median_ms: med,
        p10_ms: q(0.1),
        p90_ms: q(0.9),
        gbps: None,
        tflops: None,
        frac_of_ceiling: None,
        images_per_s: Some(b as f64 / med * 1e3),
        peak_mem_mib: None,
        mfu: None,
        device: format!("CPU, {} threads", rayon::current_num_threads()),
    })
}

/// The full training step of `model` (moved onto the GPU) at batch `b` in `precision`: median
/// step time, images/s, MFU against the measured GEMM ceiling, and the device memory the engine
/// holds after the steps (weights, gradients, moments, activations; cuMemGetInfo, so the CUDA
/// context and cuBLASLt workspaces are included).
pub fn train_step(
    bench: &mut Bench,
    model: HandModel,
    precision: Precision,
    b: usize,
) -> Result<BenchRow> {
    let be = bench.be;
    be.synchronize()?;
    let mem0 = be.memory_used()?;
    let size = model.config.image_size;
    let mut trainer = Trainer::new(
        model,
        AdamWConfig::default(),
        Some(Discriminator::<f32>::xavier_uniform(3)),
        StepOptions::default(),
        1,
    );
    trainer.use_gpu(precision)?;
    if let Some(g) = trainer.gpu.as_mut() {
        g.reserve(b)?;
    }
    let batch = synthetic_batch(b, size, 11);
    let mut skipped = 0usize;
    let (w, r) = (bench.warmup.min(3), bench.runs.min(20));
    let t = bench.timer.time(be, w, r, || {
        let rep = trainer.step(&batch)?;
        skipped += rep.skipped as usize;
        Ok(())
    })?;
    if skipped > 0 {
        return Err(Error::Input(format!(
            "train-step benchmark: {skipped} steps were skipped (non-finite loss or gradient)"
        )));
    }
    be.synchronize()?;
    let mem = be.memory_used()?.saturating_sub(mem0);
    let med = t.median() as f64;
    // GFLOP per ms = TFLOP/s.
    let tflops = TRAIN_GFLOP_PER_IMAGE * b as f64 / med;
    let ceiling = bench.ceilings.map(|c| match precision {
        Precision::Fp32 => c.gemm_f32_tflops,
        Precision::Bf16 => c.gemm_bf16_tflops,
    });
    Ok(BenchRow {
        engine: "handcov",
        kind: "train",
        kernel: "train_step".into(),
        mode: precision.name().into(),
        batch: b,
        median_ms: med,
        p10_ms: t.quantile(0.1) as f64,
        p90_ms: t.quantile(0.9) as f64,
        tflops: Some(tflops),
        mfu: ceiling.map(|c| tflops / c),
        images_per_s: Some(b as f64 / (med / 1e3)),
        peak_mem_mib: Some(mem as f64 / (1024.0 * 1024.0)),
        device: bench.device.clone(),
        ..Default::default()
    })
}

/// The exact-NLL kernels (forward and backward in one launcher: loss, d_mu, d_s, d_W) at batch
/// `b`, as `--ours-nll exact` runs them.
pub fn nll_exact(bench: &mut Bench, b: usize) -> Result<BenchRow> {
    let be: &CudaBackend = bench.be;
    let up = |v: Vec<f32>| be.upload::<f32>(&v);
    let mu = up(uniform(b * 63, 21, -0.05, 0.05))?;
    let s = up(uniform(b * 63, 22, -9.0, -5.0))?;
    let w = up(uniform(63 * 63, 23, -0.12, 0.12))?;
    let mut gt4 = uniform(b * 84, 24, -0.05, 0.05);
    for k in gt4.chunks_mut(4) {
        k[3] = 1.0;
    }
    let gt = up(gt4)?;
    let alloc_f64 = |n: usize| {
        be.stream()
            .alloc_zeros::<f64>(n.max(1))
            .map_err(|e| Error::Cuda(format!("allocating the NLL benchmark: {e}")))
    };
    let mut loss = alloc_f64(b)?;
    let mut scratch = alloc_f64(CudaBackend::cholesky_nll_scratch_len(b))?;
    let mut status = be
        .stream()
        .alloc_zeros::<i32>(b)
        .map_err(|e| Error::Cuda(format!("allocating the NLL benchmark: {e}")))?;
    let mut d_mu = up(vec![0.0; b * 63])?;
    let mut d_s = up(vec![0.0; b * 63])?;
    let mut d_w = up(vec![0.0; 63 * 63])?;
    let (wu, ru) = (bench.warmup, bench.runs);
    let t = bench.timer.time(be, wu, ru, || {
        be.cholesky_nll_bwd(
            &mu.as_view(),
            &s.as_view(),
            &w.as_view(),
            &gt.as_view(),
            1e-6,
            1.0,
            &mut loss.as_view_mut(),
            &mut status.as_view_mut(),
            &mut d_mu.as_view_mut(),
            &mut d_s.as_view_mut(),
            &mut d_w.as_view_mut(),
            &mut scratch.as_view_mut(),
            b,
        )
    })?;
    let st: Vec<i32> = be
        .stream()
        .clone_dtoh(&status)
        .map_err(|e| Error::Cuda(format!("reading the NLL status: {e}")))?;
    CudaBackend::cholesky_nll_check(&st, 1e-6)?;
    let med = t.median() as f64;
    Ok(BenchRow {
        engine: "handcov",
        kind: "nll",
        kernel: "nll_exact".into(),
        mode: "f64".into(),
        batch: b,
        median_ms: med,
        p10_ms: t.quantile(0.1) as f64,
        p90_ms: t.quantile(0.9) as f64,
        device: bench.device.clone(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    /// The CPU step benchmark runs real steps and reports consistent figures.
    #[test]
    fn cpu_train_step_reports_its_timing() {
        let r = super::cpu_train_step(2, 1, 3).unwrap();
        assert_eq!((r.kernel.as_str(), r.batch), ("cpu_train_step", 2));
        assert!(r.median_ms > 0.0 && r.p10_ms <= r.median_ms && r.median_ms <= r.p90_ms);
        let ips = r.images_per_s.unwrap();
        assert!((ips - 2.0 / r.median_ms * 1e3).abs() < 1e-9 * ips);
        assert!(super::cpu_train_step(0, 1, 1).is_err());
    }
}
