//! The GPU benchmarks behind the `bench` binary, at small sizes: every section (kernels in fp32
//! and bf16, the whole forward, the exact NLL, the training step) runs and labels its rows the
//! way tests/reference/compare_bench.py pairs them with PyTorch's (`mode` fp32 / bf16, kernel
//! names it aliases). Timings are only checked to be measurements (finite, positive): their
//! values belong to `bench` on a real device.

use half::bf16;
use handcov::cuda::bench::{Bench, BenchRow};
use handcov::cuda::CudaBackend;
use handcov::engine::Precision;
use handcov::model::config::{ModelConfig, Uncertainty};
use handcov::model::mano::Mano;
use handcov::model::weights::TensorFile;
use handcov::model::HandModel;
use handcov::train::bench::{nll_exact, train_step};

const MANO: &str = "tests/fixtures/tiny_weights.safetensors";

#[test]
#[ignore = "needs a CUDA device"]
fn every_bench_section_runs_and_labels_its_rows_as_compare_bench_reads_them() {
    let be = CudaBackend::new(0).unwrap();
    let mut bench = Bench::new(&be, 0, 2).unwrap();
    let mano_file = TensorFile::open(std::path::Path::new(MANO)).unwrap();
    let mano = Mano::load(&mano_file).unwrap();
    let mut rows: Vec<BenchRow> = bench.kernels::<f32>(1, &mano.data(), 16).unwrap();
    rows.extend(bench.kernels::<bf16>(1, &mano.data(), 16).unwrap());
    let mut cfg = ModelConfig::tiny();
    cfg.uncertainty = Uncertainty::Ours;
    let model = || HandModel::random(cfg.clone(), &mano_file, 1).unwrap();
    rows.push(bench.forward::<f32>(&model(), 2, 1.0).unwrap());
    rows.push(bench.forward::<bf16>(&model(), 2, 1.0).unwrap());
    rows.push(nll_exact(&mut bench, 4).unwrap());
    for precision in [Precision::Fp32, Precision::Bf16] {
        rows.push(train_step(&mut bench, model(), precision, 2).unwrap());
    }

    for r in &rows {
        assert_eq!(r.engine, "handcov", "{r:?}");
        assert!(
            r.median_ms.is_finite() && r.median_ms > 0.0,
            "not a measurement: {r:?}"
        );
        // PyTorch's rows say fp32 / bf16 (f64 for the NLL); a dtype name such as "f32" would
        // never be paired with them.
        let want: &[&str] = if r.kind == "nll" {
            &["f64"]
        } else {
            &["fp32", "bf16"]
        };
        assert!(want.contains(&r.mode.as_str()), "mode of {r:?}");
    }
    let has = |kind: &str, kernel: &str, mode: &str| {
        rows.iter()
            .any(|r| r.kind == kind && r.kernel == kernel && r.mode == mode)
    };
    // The rows compare_bench.py sets against torch's sdpa / mano / model / train / nll rows.
    for mode in ["fp32", "bf16"] {
        assert!(
            has("kernel", "self_attention_fwd", mode),
            "sdpa pair {mode}"
        );
        assert!(has("forward", "hamer_ours", mode), "model row {mode}");
        assert!(has("train", "train_step", mode), "train row {mode}");
    }
    assert!(has("kernel", "mano_fwd", "fp32"), "mano pair");
    assert!(has("nll", "nll_exact", "f64"), "nll row");
}
