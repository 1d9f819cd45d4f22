//! The `train` binary: the one-step gradient dump against PyTorch, a resumed run bitwise equal
//! to an uninterrupted one (from a batch file and from a dataset directory), a NaN in a batch
//! skipped without touching the weights, fine-tuning a fresh uncertainty head, and a training
//! set with a BOM. Bad input, flags and checkpoints are in tests/train_bad_input.rs.

mod common;

use common::train_run::{assert_clean, edited_batch, setup, tiny_dataset, train};
use common::*;
use handcov::model::config::Uncertainty;
use handcov::model::weights::TensorFile;
use handcov::tensor::rel_err;
use std::path::Path;

#[test]
fn dump_grads_matches_pytorch() {
    let (dir, w, cfg) = setup("train_cli_dump", Uncertainty::Ours);
    let out = dir.join("grads.safetensors");
    let run = train(&[
        "--config",
        s(&cfg),
        "--weights",
        s(&w),
        "--batch-file",
        s(&fixture("train_tiny_batch.safetensors")),
        "--discriminator",
        s(&fixture("train_tiny_discriminator.safetensors")),
        "--dump-grads",
        s(&out),
    ]);
    assert_eq!(run.0, 0, "{}", run.2);
    let got = TensorFile::open(&out).unwrap();
    let want = TensorFile::open(&fixture("train_tiny_ours_step.safetensors")).unwrap();
    let mut n = 0;
    for name in want
        .names()
        .filter(|n| n.starts_with("grad.") || (n.starts_with("loss") && !n.ends_with("_exact")))
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
    {
        let (a, b) = (
            got.f32(&name, None).unwrap(),
            want.f32(&name, None).unwrap(),
        );
        // fp32 engine vs float64 autograd (tests/train_step.rs measures ≤ 1e-6).
        assert!(rel_err(a.data(), b.data()) <= 1e-4, "{name}");
        n += 1;
    }
    assert!(n > 80, "{n}");
}

fn read_log(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn resume_is_bitwise_identical() {
    let (dir, w, cfg) = setup("train_cli_resume", Uncertainty::Ours);
    let batch = fixture("train_tiny_batch.safetensors");
    let disc = fixture("train_tiny_discriminator.safetensors");
    let base = |out: &Path, steps: &str| -> Vec<String> {
        [
            "--config",
            s(&cfg),
            "--init",
            s(&w),
            "--batch-file",
            s(&batch),
            "--discriminator",
            s(&disc),
            "--lr",
            "1e-4",
            "--steps",
            steps,
            "--out",
            s(out),
            "--ckpt-every",
            "2",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let (full, part) = (dir.join("full"), dir.join("part"));
    let args: Vec<String> = base(&full, "4");
    let r = train(&args.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    assert_eq!(r.0, 0, "{}", r.2);
    let args: Vec<String> = base(&part, "2");
    assert_eq!(
        train(&args.iter().map(|x| x.as_str()).collect::<Vec<_>>()).0,
        0
    );
    let mut args: Vec<String> = base(&part, "4");
    args.extend([
        "--resume".to_string(),
        s(&part.join("step_000002.safetensors")).to_string(),
    ]);
    let r = train(&args.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    assert_eq!(r.0, 0, "{}", r.2);
    let (a, b) = (
        read_log(&full.join("log.jsonl")),
        read_log(&part.join("log.jsonl")),
    );
    assert_eq!(a.len(), 4);
    assert_eq!(b.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            x["loss"], y["loss"],
            "step {}: losses differ after resume",
            x["step"]
        );
        assert_eq!(x["disc_loss"], y["disc_loss"]);
    }
    // The final weights too, bit for bit.
    let (fa, fb) = (
        TensorFile::open(&full.join("last.safetensors")).unwrap(),
        TensorFile::open(&part.join("last.safetensors")).unwrap(),
    );
    for name in fa.names().filter(|n| !n.starts_with("mano.")) {
        assert_eq!(
            fa.f32(name, None).unwrap().data(),
            fb.f32(name, None).unwrap().data(),
            "{name}"
        );
    }
    // Loss went down on the repeated batch.
    assert!(a[3]["loss"].as_f64().unwrap() < a[0]["loss"].as_f64().unwrap());
}

#[test]
fn a_non_finite_step_is_skipped() {
    // A NaN label is an error at load (below); an image of finite but huge values gets
    // through and overflows the forward: the steps are skipped, the weights untouched.
    let (dir, w, cfg) = setup("train_cli_nan", Uncertainty::Diag);
    let bad = edited_batch(&dir, "huge_img.safetensors", "img", |v| v.fill(3e38));
    let out = dir.join("out");
    let r = train(&[
        "--config",
        s(&cfg),
        "--init",
        s(&w),
        "--batch-file",
        s(&bad),
        "--steps",
        "2",
        "--out",
        s(&out),
        "--lr",
        "1e-3",
    ]);
    // Every step skipped: the run says so and fails (it used to exit 0 having done nothing).
    assert!(r.2.contains("warning: step 0: non-finite loss"), "{}", r.2);
    assert_clean(
        r,
        "all 2 steps of this run had a non-finite loss or gradient",
    );
    let log = read_log(&out.join("log.jsonl"));
    assert!(log.iter().all(|l| l["skipped"] == true));
    assert_eq!(log[1]["skipped_total"], 2);
    // The weights are exactly the initial ones: nothing non-finite reached them.
    let (init, last) = (
        TensorFile::open(&w).unwrap(),
        TensorFile::open(&out.join("last.safetensors")).unwrap(),
    );
    for name in last
        .names()
        .filter(|n| !n.starts_with("optim") && !n.starts_with("mano."))
    {
        let (a, b) = (last.f32(name, None).unwrap(), init.f32(name, None).unwrap());
        assert!(a.data().iter().all(|x| x.is_finite()), "{name}");
        assert_eq!(a.data(), b.data(), "{name} changed");
    }
}

#[test]
fn trains_from_a_dataset_directory_and_resumes() {
    let (dir, w, cfg) = setup("train_cli_data", Uncertainty::Ours);
    let set = tiny_dataset(&dir);
    let disc = fixture("train_tiny_discriminator.safetensors");
    let mocap = dir.join("mocap.safetensors");
    write_all(
        &mocap,
        &[
            f32_tensor("hand_pose", &[3, 45], &vec![0.1; 135]),
            f32_tensor("betas", &[3, 10], &[0.0; 30]),
        ],
    );
    let args = |out: &Path, steps: &str| -> Vec<String> {
        [
            "--config",
            s(&cfg),
            "--init",
            s(&w),
            "--data",
            s(&set),
            "--batch-size",
            "2",
            "--steps",
            steps,
            "--out",
            s(out),
            "--discriminator",
            s(&disc),
            "--mocap",
            s(&mocap),
            "--ckpt-every",
            "2",
            "--lr",
            "1e-4",
            "--seed",
            "5",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let run = |v: Vec<String>| train(&v.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    let (full, part) = (dir.join("full"), dir.join("part"));
    let r = run(args(&full, "4"));
    assert_eq!(r.0, 0, "{}", r.2);
    assert!(
        r.2.contains("skipping"),
        "the missing image is reported: {}",
        r.2
    );
    assert_eq!(run(args(&part, "2")).0, 0);
    let mut v = args(&part, "4");
    v.extend([
        "--resume".to_string(),
        s(&part.join("step_000002.safetensors")).to_string(),
    ]);
    let r = run(v);
    assert_eq!(r.0, 0, "{}", r.2);
    let (a, b) = (
        read_log(&full.join("log.jsonl")),
        read_log(&part.join("log.jsonl")),
    );
    assert_eq!((a.len(), b.len()), (4, 4));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["loss"], y["loss"], "step {}", x["step"]);
        assert!(x["disc_loss"].is_number(), "the adversarial terms are on");
    }
}

#[test]
fn fine_tunes_an_uncertainty_head_from_a_plain_hamer_checkpoint() {
    // `none` weights (a converted hamer.ckpt) + `--uncertainty ours`: the head and W start from
    // PyTorch's default initialisation (SPEC §6) and train.
    let dir = scratch("train_cli_fresh_head");
    let w = tiny_weights_for(Uncertainty::None, &dir);
    let cfg = dir.join("cfg.json");
    std::fs::write(&cfg, tiny_config(Uncertainty::Ours).to_json()).unwrap();
    let out = dir.join("out");
    let batch = fixture("train_tiny_batch.safetensors");
    let r = train(&[
        "--config",
        s(&cfg),
        "--init",
        s(&w),
        "--batch-file",
        s(&batch),
        "--steps",
        "2",
        "--out",
        s(&out),
        "--lr",
        "1e-4",
        "--val-batch",
        s(&batch),
        "--val-every",
        "1",
    ]);
    assert_eq!(r.0, 0, "{}", r.2);
    let vals: Vec<f64> = read_log(&out.join("log.jsonl"))
        .iter()
        .filter_map(|l| l["val_loss"].as_f64())
        .collect();
    assert_eq!(vals.len(), 2, "one validation line per step");
    assert!(
        vals[1] < vals[0],
        "validation loss on the training batch goes down: {vals:?}"
    );
    let ck = TensorFile::open(&out.join("last.safetensors")).unwrap();
    let wcov = ck
        .f32("out_layer_keypoints_3d.weight", Some(&[63, 63]))
        .unwrap();
    let bound = 1.0 / 63f32.sqrt() + 1e-3; // U(±1/√63), moved by two Adam steps of 1e-4
    assert!(wcov.data().iter().all(|v| v.abs() <= bound));
    assert!(
        wcov.data().iter().any(|v| v.abs() > 0.5 * bound),
        "W is not a degenerate init"
    );
    let tok = ck
        .f32(
            "uncertainty_head.transformer.to_token_embedding.weight",
            None,
        )
        .unwrap();
    assert!(
        tok.data().iter().all(|v| v.abs() <= 1.0 + 1e-3)
            && tok.data().iter().any(|v| v.abs() > 0.5)
    );
    let log = read_log(&out.join("log.jsonl"));
    assert!(log[0]["loss_keypoints_3d_nll"].is_number());
    assert!(log
        .iter()
        .any(|l| l["val_loss_keypoints_3d_nll"].is_number()));
    // The checkpoint is a weights file for inference (its optimiser state is ignored).
    let model = handcov::model::HandModel::load(tiny_config(Uncertainty::Ours), &ck, None).unwrap();
    assert!(model.uncertainty_head.is_some());
}

#[test]
fn a_training_set_with_a_bom_trains_and_an_empty_one_says_why_in_words() {
    let (dir, w, cfg) = setup("train_cli_set_text", Uncertainty::Diag);
    let set = tiny_dataset(&dir);
    let ann = set.join("annotations.jsonl");
    let text = std::fs::read_to_string(&ann).unwrap();
    std::fs::write(&ann, format!("\u{feff}{text}")).unwrap();
    let args = |out: &Path| -> Vec<String> {
        [
            "--config",
            s(&cfg),
            "--init",
            s(&w),
            "--data",
            s(&set),
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--out",
            s(out),
            "--threads",
            "1",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let run = |v: Vec<String>| train(&v.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    let r = run(args(&dir.join("bom")));
    assert_eq!(r.0, 0, "{}", r.2);
    // Every item dropped by the filters (reprojection loss): the counts in words.
    let dropped: String = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["reprojection_loss"] = serde_json::json!(5e4);
            format!("{v}\n")
        })
        .collect();
    std::fs::write(&ann, dropped).unwrap();
    assert_clean(
        run(args(&dir.join("dropped"))),
        "no items left after filtering (4 annotation lines read, 0 kept; dropped: 0 with at \
         most 4 2D keypoints of confidence ≥ 0.3, 4 with reprojection_loss ≥ 31000)",
    );
}
