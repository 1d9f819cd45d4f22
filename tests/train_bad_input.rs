//! The `train` binary on bad input: one clean error line with exit code 2 for bad batch and
//! MoCap files, bad flags, and checkpoints that cannot resume exactly. Correct runs are in
//! tests/train_cli.rs.

mod common;

use common::train_run::{assert_clean, edited_batch, setup, tiny_dataset, train};
use common::*;
use handcov::model::config::Uncertainty;
use std::path::{Path, PathBuf};

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
