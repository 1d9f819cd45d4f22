//! The whole model on the GPU against the CPU engine (itself checked against PyTorch):
//! the `tiny` fixtures for every uncertainty type and the `hamer` preset with random weights,
//! in fp32 (≤ 1e-4 relative, covariance ≤ 1e-3 as on the CPU) and bf16 (≤ 2e-2 on joints,
//! vertices and covariance), eager and as a CUDA graph.

mod common;

use common::*;
use handcov::engine::{DeviceChoice, Engine, Precision};
use handcov::model::config::{ModelConfig, Uncertainty};
use handcov::model::weights::TensorFile;
use handcov::model::{HandModel, Prediction};
use handcov::tensor::{rel_err, Tensor};

fn by_name(p: &Prediction) -> std::collections::HashMap<&'static str, &Tensor> {
    p.named().into_iter().collect()
}

/// Compares the GPU prediction with the CPU one, tensor by tensor.
fn compare(gpu: &Prediction, cpu: &Prediction, precision: Precision, what: &str) {
    let (g, c) = (by_name(gpu), by_name(cpu));
    for (name, want) in &c {
        let got = g
            .get(name)
            .unwrap_or_else(|| panic!("{what}: GPU lacks {name}"));
        assert_eq!(got.shape(), want.shape(), "{what}: {name}");
        let err = rel_err(got.data(), want.data());
        // fp32 (TF32 off): reordered fp32 sums through 32 blocks stay ~1e-6; the covariance
        // amplifies through exp() and a 63×63 inverse. bf16: weights and activations rounded to
        // 8 bits of mantissa; the bound on joints, vertices and covariance.
        let tol = match (precision, *name) {
            // The per-joint trace comes out of the same inverse as Σ.
            (Precision::Fp32, "keypoint_3d_cov" | "joint_uncertainty") => 1e-3,
            (Precision::Fp32, _) => 1e-4,
            (
                Precision::Bf16,
                "pred_keypoints_3d" | "pred_vertices" | "keypoint_3d_cov" | "joint_uncertainty",
            ) => 2e-2,
            // Everything else in bf16 is reported but only bounded loosely (raw features and
            // readouts are not what the bf16 mode promises).
            (Precision::Bf16, _) => 1e-1,
        };
        eprintln!("{what:>28} {name:<20} rel err {err:.2e} (tol {tol:.0e})");
        assert!(err <= tol, "{what}: {name} rel err {err:.3e} > {tol:e}");
    }
}

fn tiny_case(u: Uncertainty, precision: Precision, graph: bool) {
    let dir = scratch(&format!("cuda_forward_{}_{precision:?}_{graph}", u.name()));
    let wf = TensorFile::open(&tiny_weights_for(u, &dir)).unwrap();
    let img = TensorFile::open(&fixture("tiny_input.safetensors"))
        .unwrap()
        .f32("img", None)
        .unwrap();
    let cpu_model = HandModel::load(tiny_config(u), &wf, None).unwrap();
    let model = HandModel::load(tiny_config(u), &wf, None).unwrap();
    let mut engine = Engine::new(model, DeviceChoice::Cuda, precision, graph).expect("GPU");
    // A sequence that would expose a stale graph replay: a second image after the capture, the
    // first again, a batch-size change (new workspace, new capture) and back.
    let other = Tensor::from_vec(
        img.shape(),
        img.data().iter().map(|v| 0.1 - 0.5 * v).collect(),
    )
    .unwrap();
    let n1 = img.numel() / img.dim(0);
    let single = Tensor::from_vec(&[1, 3, 128, 128], img.data()[..n1].to_vec()).unwrap();
    for (pass, x) in [&img, &other, &img, &single, &other]
        .into_iter()
        .enumerate()
    {
        let want = cpu_model.forward(x).unwrap();
        let gpu = engine.forward(x).unwrap();
        compare(
            &gpu,
            &want,
            precision,
            &format!("tiny {} {precision:?} graph={graph} #{pass}", u.name()),
        );
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn tiny_all_types_fp32_and_bf16() {
    for u in Uncertainty::ALL {
        for precision in [Precision::Fp32, Precision::Bf16] {
            tiny_case(u, precision, false);
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn tiny_ours_as_a_cuda_graph() {
    tiny_case(Uncertainty::Ours, Precision::Fp32, true);
    tiny_case(Uncertainty::Full, Precision::Bf16, true);
}

/// `infer` in image mode (crop, batch, result files) on the GPU writes the hands the CPU
/// writes: fp32 within 1e-4 and bf16 as a CUDA graph within 2e-2 of each field's largest value,
/// the bounds of the forward's tests above.
#[test]
#[ignore = "needs a CUDA device"]
fn infer_image_mode_on_the_gpu_matches_the_cpu() {
    let dir = scratch("cuda_forward_infer_images");
    let weights = fixture("tiny_weights.safetensors");
    let image = fixture("crop_src.png");
    let run = |name: &str, extra: &[&str]| -> Vec<(String, f64)> {
        let out = dir.join(name);
        let mut args = vec![
            "--config",
            "tiny",
            "--uncertainty",
            "ours",
            "--allow-extra",
            "--weights",
            s(&weights),
            "--images",
            s(&image),
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        let (code, _, err) = run_binary(env!("CARGO_BIN_EXE_infer"), &args);
        assert_eq!(code, 0, "infer {extra:?}: {err}");
        json_numbers(&json(&out.join("crop_src.json")))
    };
    let cpu = run("cpu", &["--device", "cpu"]);
    for (name, extra, tol) in [
        ("fp32", &["--device", "cuda"][..], 1e-4),
        (
            "bf16",
            &["--device", "cuda", "--precision", "bf16", "--cuda-graph"][..],
            2e-2,
        ),
    ] {
        let gpu = run(name, extra);
        assert_eq!(gpu.len(), cpu.len(), "{name}: a different number of values");
        let mut scale = std::collections::HashMap::<&str, f64>::new();
        for (k, c) in &cpu {
            let m = scale.entry(k.as_str()).or_insert(0.0);
            *m = m.max(c.abs());
        }
        for ((kg, g), (kc, c)) in gpu.iter().zip(&cpu) {
            assert_eq!(kg, kc, "{name}: fields differ");
            let err = (g - c).abs() / scale[kc.as_str()].max(1e-12);
            assert!(err <= tol, "{name}: {kc}: GPU {g}, CPU {c} ({err:.2e})");
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn hamer_ours_gpu_matches_cpu() {
    let mano = TensorFile::open(&fixture("tiny_weights.safetensors")).unwrap();
    let mut cfg = ModelConfig::hamer();
    cfg.uncertainty = Uncertainty::Ours;
    let b = 2;
    let s = cfg.image_size;
    let img: Vec<f32> = (0..b * 3 * s * s)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 1.5)
        .collect();
    let img = Tensor::from_vec(&[b, 3, s, s], img).unwrap();
    let cpu_model = HandModel::random(cfg.clone(), &mano, 7).unwrap();
    let other = Tensor::from_vec(
        img.shape(),
        img.data().iter().map(|v| 0.2 - 0.7 * v).collect(),
    )
    .unwrap();
    let want = [
        cpu_model.forward(&img).unwrap(),
        cpu_model.forward(&other).unwrap(),
    ];
    for precision in [Precision::Fp32, Precision::Bf16] {
        let model = HandModel::random(cfg.clone(), &mano, 7).unwrap();
        let mut engine = Engine::new(model, DeviceChoice::Cuda, precision, true).expect("GPU");
        // Capture on the first image, replay on the second, then the first again.
        for (pass, (x, w)) in [(&img, &want[0]), (&other, &want[1]), (&img, &want[0])]
            .into_iter()
            .enumerate()
        {
            let gpu = engine.forward(x).unwrap();
            compare(
                &gpu,
                w,
                precision,
                &format!("hamer ours {precision:?} #{pass}"),
            );
        }
    }
}

#[test]
fn random_weights_build_a_working_model() {
    // Runs everywhere: the random-weight source satisfies every tensor a model asks for.
    let mano = TensorFile::open(&fixture("tiny_weights.safetensors")).unwrap();
    let mut cfg = ModelConfig::tiny();
    cfg.uncertainty = Uncertainty::Full;
    let m = HandModel::random(cfg, &mano, 3).unwrap();
    let img = Tensor::from_vec(&[1, 3, 128, 128], vec![0.1; 3 * 128 * 128]).unwrap();
    let p = m.forward(&img).unwrap();
    assert!(p.pred_vertices.data().iter().all(|v| v.is_finite()));
    assert!(p
        .uncertainty
        .unwrap()
        .keypoint_3d_cov
        .data()
        .iter()
        .all(|v| v.is_finite()));
}
