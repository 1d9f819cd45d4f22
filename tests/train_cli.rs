//! The `train` binary: the one-step gradient dump against PyTorch, a resumed run bitwise equal
//! to an uninterrupted one, a NaN in a batch skipped without touching the weights, and clean
//! errors for bad input.

mod common;

use common::*;
use handcov::model::config::Uncertainty;
use handcov::model::weights::TensorFile;
use handcov::tensor::rel_err;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn train(args: &[&str]) -> (i32, String, String) {
    common::run_binary(env!("CARGO_BIN_EXE_train"), args)
}

fn setup(name: &str, u: Uncertainty) -> (PathBuf, PathBuf, PathBuf) {
    let dir = scratch(name);
    let w = tiny_weights_for(u, &dir);
    let cfg = dir.join("cfg.json");
    std::fs::write(&cfg, tiny_config(u).to_json()).unwrap();
    (dir, w, cfg)
}

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

/// The fixture batch with tensor `name`'s values changed by `edit`, written to `dir/file`.
fn edited_batch(dir: &Path, file: &str, name: &str, edit: impl Fn(&mut [f32])) -> PathBuf {
    let mut t = read_all(&fixture("train_tiny_batch.safetensors"));
    let x = t.iter_mut().find(|x| x.name == name).unwrap();
    edit(bytemuck::cast_slice_mut(&mut x.data));
    let p = dir.join(file);
    write_all(&p, &t);
    p
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
fn bad_input_is_one_clean_error() {
    let (dir, w, cfg) = setup("train_cli_errors", Uncertainty::Diag);
    let batch = fixture("train_tiny_batch.safetensors");
    // One step on the fixture batch, with `extra` flags.
    let one_step = |extra: &[&str]| {
        let mut a = vec![
            "--config",
            s(&cfg),
            "--init",
            s(&w),
            "--batch-file",
            s(&batch),
            "--steps",
            "1",
            "--out",
            s(&dir),
        ];
        a.extend_from_slice(extra);
        train(&a)
    };
    assert_clean(
        one_step(&["--device", "cuda"]),
        // No usable GPU here (no driver, or a build without kernels): one clean CUDA error.
        "cuda:",
    );
    assert_clean(
        one_step(&["--device", "cpu", "--precision", "bf16"]),
        "needs the CUDA device",
    );
    assert_clean(
        train(&[
            "--config",
            s(&cfg),
            "--init",
            s(&w),
            "--batch-file",
            s(&dir.join("none.safetensors")),
            "--steps",
            "1",
            "--out",
            s(&dir),
        ]),
        "none.safetensors",
    );
    assert_clean(one_step(&["--ours-nll", "maybe"]), "--ours-nll");
    assert_clean(
        train(&[
            "--config",
            s(&cfg),
            "--init",
            s(&w),
            "--batch-file",
            s(&batch),
            "--steps",
            "1",
            "--out",
            s(&dir),
            "--resume",
            s(&w),
        ]),
        "not a handcov training checkpoint",
    );
    let mut t = read_all(&batch);
    t.retain(|x| x.name != "keypoints_2d");
    let bad = dir.join("short.safetensors");
    write_all(&bad, &t);
    assert_clean(
        train(&[
            "--config",
            s(&cfg),
            "--init",
            s(&w),
            "--batch-file",
            s(&bad),
            "--steps",
            "1",
            "--out",
            s(&dir),
        ]),
        "keypoints_2d",
    );
}

fn assert_clean(run: (i32, String, String), needle: &str) {
    let (code, _, err) = run;
    assert_eq!(code, 2, "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(needle), "`{needle}` not in {}", lines[0]);
}

/// A four-hand training set in the directory format (docs/training-data.md), one image missing.
fn tiny_dataset(dir: &Path) -> PathBuf {
    let root = dir.join("set");
    std::fs::create_dir_all(root.join("images")).unwrap();
    let mut lines = Vec::new();
    for i in 0..4 {
        let name = format!("images/{i}.png");
        if i != 2 {
            std::fs::copy(fixture("crop_src.png"), root.join(&name)).unwrap();
        }
        let kp2: Vec<[f32; 3]> = (0..21)
            .map(|j| [60.0 + j as f32, 50.0 + (j % 5) as f32 * 4.0, 1.0])
            .collect();
        let kp3: Vec<[f32; 4]> = (0..21)
            .map(|j| [0.01 * j as f32, -0.02, 0.6 + 0.001 * j as f32, 1.0])
            .collect();
        lines.push(
            serde_json::json!({
                "image": name, "center": [70.0 + i as f32, 60.0], "scale": 0.5, "is_right": i % 2 == 0,
                "keypoints_2d": kp2, "keypoints_3d": kp3,
                "mano": {"global_orient": [0.1, 0.0, 0.2], "hand_pose": vec![0.05f32; 45], "betas": vec![0.1f32; 10]},
            })
            .to_string(),
        );
    }
    std::fs::write(root.join("annotations.jsonl"), lines.join("\n")).unwrap();
    root
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

/// The fixture batch with its tensor list changed by `edit`, written to `dir/file`.
fn batch_with(dir: &Path, file: &str, edit: impl FnOnce(&mut Vec<RawTensor>)) -> PathBuf {
    let mut t = read_all(&fixture("train_tiny_batch.safetensors"));
    edit(&mut t);
    let p = dir.join(file);
    write_all(&p, &t);
    p
}

fn replace(t: &mut Vec<RawTensor>, new: RawTensor) {
    t.retain(|x| x.name != new.name);
    t.push(new);
}

#[test]
fn bad_batch_and_mocap_files_are_one_clean_error() {
    let (dir, w, cfg) = setup("train_cli_bad_batch", Uncertainty::Ours);
    let disc = fixture("train_tiny_discriminator.safetensors");
    let out = dir.join("out");
    let one_step = |batch: &Path, extra: &[&str]| {
        let mut a = vec![
            "--config",
            s(&cfg),
            "--init",
            s(&w),
            "--batch-file",
            s(batch),
            "--steps",
            "1",
            "--out",
            s(&out),
            "--discriminator",
            s(&disc),
        ];
        a.extend_from_slice(extra);
        train(&a)
    };
    // A 0-d `mocap.hand_pose` panicked in `Tensor::dim`.
    let scalar = batch_with(&dir, "mocap_scalar.safetensors", |t| {
        replace(t, f32_tensor("mocap.hand_pose", &[], &[1.0]))
    });
    assert_clean(
        one_step(&scalar, &[]),
        "`mocap.hand_pose` has shape [], expected [K, 45]",
    );
    // A batch is data: its safetensors errors are input errors, not "weights".
    let misshaped = batch_with(&dir, "kp_misshaped.safetensors", |t| {
        replace(t, f32_tensor("keypoints_3d", &[4, 20, 4], &[0.0; 320]))
    });
    assert_clean(one_step(&misshaped, &[]), "error: input: ");
    let empty = batch_with(&dir, "mocap_empty.safetensors", |t| {
        replace(t, f32_tensor("mocap.hand_pose", &[0, 45], &[]));
        replace(t, f32_tensor("mocap.betas", &[0, 10], &[]));
    });
    assert_clean(one_step(&empty, &[]), "holds no MoCap poses");
    let flag = edited_batch(
        &dir,
        "flag2.safetensors",
        "has_mano_params.hand_pose",
        |v| v[1] = 2.0,
    );
    assert_clean(
        one_step(&flag, &[]),
        "`has_mano_params.hand_pose`[1] = 2: a flag must be 0 or 1",
    );
    let nan = edited_batch(&dir, "kp_nan.safetensors", "keypoints_3d", |v| {
        v[5] = f32::NAN
    });
    assert_clean(
        one_step(&nan, &[]),
        "`keypoints_3d` holds a non-finite value (NaN) at flat index 5",
    );
    // The same checks hold for the validation batch.
    let ok = fixture("train_tiny_batch.safetensors");
    assert_clean(
        one_step(&ok, &["--val-batch", s(&nan)]),
        "kp_nan.safetensors: `keypoints_3d` holds a non-finite value",
    );
    let inf = edited_batch(&dir, "mocap_inf.safetensors", "mocap.betas", |v| {
        v[12] = f32::INFINITY
    });
    assert_clean(
        one_step(&inf, &[]),
        "`mocap.betas` holds a non-finite value (inf) at flat index 12",
    );
    let conf = edited_batch(&dir, "conf.safetensors", "keypoints_2d", |v| {
        v[3 * 2 + 2] = -1.0
    });
    assert_clean(
        one_step(&conf, &[]),
        "`keypoints_2d`[0, 2] has confidence -1, expected a value in [0, 1]",
    );
    let extra = batch_with(&dir, "extra.safetensors", |t| {
        t.push(f32_tensor("foo", &[1], &[0.0]))
    });
    assert_clean(one_step(&extra, &[]), "unknown tensor `foo`");

    // A `--mocap` file: a 0-d `hand_pose` panicked the same way.
    let mocap = dir.join("mocap_scalar_file.safetensors");
    write_all(
        &mocap,
        &[
            f32_tensor("hand_pose", &[], &[0.0]),
            f32_tensor("betas", &[3, 10], &[0.0; 30]),
        ],
    );
    assert_clean(
        one_step(&ok, &["--mocap", s(&mocap)]),
        "`hand_pose` has shape [], expected [K, 45]",
    );

    // --dump-grads writes no non-finite loss or gradient: an image of huge finite values
    // overflows the forward, which is an error naming the first non-finite term.
    let huge = edited_batch(&dir, "huge_img.safetensors", "img", |v| v.fill(3e38));
    let grads = dir.join("grads.safetensors");
    let r = train(&[
        "--config",
        s(&cfg),
        "--weights",
        s(&w),
        "--batch-file",
        s(&huge),
        "--discriminator",
        s(&disc),
        "--dump-grads",
        s(&grads),
    ]);
    assert_clean(r, "--dump-grads: the loss term `loss_");
    assert!(!grads.exists(), "a dump of non-finite values was written");
}

#[test]
fn bad_flags_are_one_clean_error() {
    let (dir, w, cfg) = setup("train_cli_bad_flags", Uncertainty::Diag);
    let batch = fixture("train_tiny_batch.safetensors");
    let out = dir.join("out");
    let base = |source: &[&str], extra: &[&str]| {
        let mut a = vec!["--config", s(&cfg), "--init", s(&w)];
        a.extend_from_slice(source);
        a.extend_from_slice(extra);
        train(&a)
    };
    let file = ["--batch-file", s(&batch), "--out", s(&out), "--steps", "1"];
    // --batch-size with --batch-file once only sized the MoCap stream; a huge one aborted.
    assert_clean(
        base(&file, &["--batch-size", "8"]),
        "--batch-size has no meaning with --batch-file",
    );
    assert_clean(
        base(&file, &["--batch-size", "1000000000000"]),
        "--batch-size 1000000000000: expected 1 to 4096",
    );
    let set = tiny_dataset(&dir);
    assert_clean(
        base(
            &["--data", s(&set), "--out", s(&out), "--steps", "1"],
            &["--batch-size", "10000000"],
        ),
        "--batch-size 10000000: expected 1 to 4096",
    );
    // -1 did gradient ascent, 0 froze the weights, nan and inf were ignored.
    for v in ["-1", "0", "nan", "inf"] {
        assert_clean(
            base(&file, &["--clip-grad", v]),
            "expected a finite number above 0",
        );
    }
    assert_clean(
        base(&file, &["--threads", "100000"]),
        "--threads 100000: expected 1 to 1024",
    );
    // Flags that had no effect in the chosen mode were silently ignored.
    assert_clean(
        base(&file, &["--threads", "2"]),
        "--threads sizes the --data loader's pool; with --batch-file there is no loader",
    );
    let grads = dir.join("g.safetensors");
    let dump = [
        "--config",
        s(&cfg),
        "--weights",
        s(&w),
        "--batch-file",
        s(&batch),
        "--dump-grads",
        s(&grads),
    ];
    assert_clean(
        train(&[&dump[..], &["--lr=1e-3"]].concat()),
        "--lr applies to training, not to --dump-grads",
    );
    assert!(!grads.exists());
    assert_clean(
        base(&file, &["--steps", "2"]),
        "--steps is given more than once",
    );
    assert_clean(
        base(
            &["--batch-file", s(&batch), "--out", s(&out)],
            &["--steps", "0"],
        ),
        "--steps 0: expected 1 to 1000000000",
    );
    assert_clean(
        base(&file, &["--log-every", "99999999999"]),
        "--log-every 99999999999: expected 0 to",
    );
    assert_clean(
        base(&file, &["--val-every", "5"]),
        "--val-every needs --val-batch",
    );
    assert_clean(
        base(&file, &["--weight-decay", "nan"]),
        "--weight-decay NaN",
    );
    // --out naming a file said "File exists (os error 17)".
    let plain = dir.join("plain.txt");
    std::fs::write(&plain, "x").unwrap();
    assert_clean(
        base(
            &[
                "--batch-file",
                s(&batch),
                "--out",
                s(&plain),
                "--steps",
                "1",
            ],
            &[],
        ),
        "is not a directory",
    );
}

/// A copy of checkpoint `src` at `dst`, its tensors and metadata changed by the edits.
fn rewrite_checkpoint(
    src: &Path,
    dst: &Path,
    tensors: impl FnOnce(&mut Vec<RawTensor>),
    meta: impl FnOnce(&mut std::collections::HashMap<String, String>),
) {
    let bytes = std::fs::read(src).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut m = header.metadata().clone().unwrap();
    meta(&mut m);
    let mut t = read_all(src);
    tensors(&mut t);
    write_all_with_metadata(dst, &t, Some(m));
}

#[test]
fn a_checkpoint_that_cannot_resume_exactly_is_an_error() {
    let (dir, w, cfg) = setup("train_cli_bad_ckpt", Uncertainty::Diag);
    let batch = fixture("train_tiny_batch.safetensors");
    let run = |out: &Path, steps: &str, resume: Option<&Path>| {
        let mut a = vec![
            "--config",
            s(&cfg),
            "--init",
            s(&w),
            "--batch-file",
            s(&batch),
            "--steps",
            steps,
            "--out",
            s(out),
            "--lr",
            "1e-4",
        ];
        if let Some(r) = resume {
            a.extend(["--resume", s(r)]);
        }
        train(&a)
    };
    let first = dir.join("first");
    assert_eq!(run(&first, "1", None).0, 0);
    let ck = first.join("last.safetensors");
    let no_tensor_edit = |_: &mut Vec<RawTensor>| {};
    let no_meta_edit = |_: &mut std::collections::HashMap<String, String>| {};
    // An unchanged copy resumes.
    let same = dir.join("same.safetensors");
    rewrite_checkpoint(&ck, &same, no_tensor_edit, no_meta_edit);
    let r = run(&dir.join("r_same"), "2", Some(&same));
    assert_eq!(r.0, 0, "{}", r.2);
    // A checkpoint already at --steps has nothing to train: said, not silently rewritten.
    let r = run(&dir.join("r_done"), "1", Some(&same));
    assert_clean(r, "is at step 1, and --steps 1 is the total to reach");

    const BIAS: &str = "mano_head.deccam.bias";
    type Edit = Box<dyn FnOnce(&mut Vec<RawTensor>)>;
    fn edit(name: &str, f: fn(&mut RawTensor)) -> Edit {
        let name = name.to_string();
        Box::new(move |t| f(t.iter_mut().find(|x| x.name == name).unwrap()))
    }
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "short_moment",
            edit(&format!("optim.exp_avg.{BIAS}"), |x| {
                x.data.truncate(4);
                x.shape = vec![1];
            }),
            "optim.exp_avg.mano_head.deccam.bias",
        ),
        (
            "missing_moment",
            Box::new(|t| t.retain(|x| x.name != format!("optim.exp_avg_sq.{BIAS}"))),
            "`optim.exp_avg_sq.mano_head.deccam.bias` is missing",
        ),
        (
            "negative_moment",
            edit(&format!("optim.exp_avg_sq.{BIAS}"), |x| {
                x.data[..4].copy_from_slice(&(-1f32).to_le_bytes())
            }),
            "holds a negative value (-1) at 0",
        ),
        (
            "reshaped_param",
            edit("mano_head.deccam.weight", |x| x.shape.reverse()),
            "`mano_head.deccam.weight` has shape",
        ),
    ];
    for (name, tensors, want) in cases {
        let p = dir.join(format!("{name}.safetensors"));
        rewrite_checkpoint(&ck, &p, tensors, no_meta_edit);
        assert_clean(run(&dir.join(format!("r_{name}")), "2", Some(&p)), want);
    }
    let meta_cases: Vec<(&str, &str, &str, &str)> = vec![
        (
            "cursor",
            "cursor",
            "garbage",
            "checkpoint metadata `cursor` = \"garbage\" is not EPOCH,POSITION",
        ),
        (
            "step",
            "step",
            "-5",
            "checkpoint metadata `step` = \"-5\" is not a non-negative integer",
        ),
        (
            "optim_step",
            "optim_step",
            "0",
            "is present but the optimiser step is 0",
        ),
    ];
    for (name, key, value, want) in meta_cases {
        let p = dir.join(format!("meta_{name}.safetensors"));
        rewrite_checkpoint(&ck, &p, no_tensor_edit, |m| {
            m.insert(key.to_string(), value.to_string());
        });
        assert_clean(run(&dir.join(format!("rm_{name}")), "2", Some(&p)), want);
    }
    let p = dir.join("meta_nocursor.safetensors");
    rewrite_checkpoint(&ck, &p, no_tensor_edit, |m| {
        m.remove("cursor");
    });
    assert_clean(
        run(&dir.join("rm_nocursor"), "2", Some(&p)),
        "checkpoint metadata lacks `cursor`",
    );
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
