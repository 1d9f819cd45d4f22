//! The out-of-the-box demo end to end, with a reduced set and step count: the library call
//! lowers the loss and reports every metric; the `train --demo` command writes every file.

mod common;

use common::scratch;
use common::train_run::small_demo as small;
use handcov::synth::demo::run;
use std::process::Command;

/// A short run on a few dozen hands lowers the training loss and fills every metric.
#[test]
fn a_short_run_lowers_the_loss() {
    let dir = scratch("synth_demo_lib");
    let r = run(&small(&dir)).unwrap();
    assert!(
        r.last_loss < r.first_loss,
        "loss went from {} to {}",
        r.first_loss,
        r.last_loss
    );
    for v in [
        r.model_pose.pa_mpjpe_mm,
        r.model_pose.pa_mpvpe_mm,
        r.mean_pose.pa_mpjpe_mm,
        r.model_unc.pearson,
        r.model_unc.ausc,
        r.model_unc.ause,
        r.const_unc.ausc,
        r.curl_correlation,
    ] {
        assert!(v.is_finite(), "{v}");
    }
    // Hand-sized errors, in millimetres.
    assert!(r.model_pose.pa_mpjpe_mm > 0.1 && r.model_pose.pa_mpjpe_mm < 200.0);
    assert!(
        r.const_unc.pearson.is_nan(),
        "a constant has no correlation"
    );
}

#[test]
fn the_demo_command_writes_everything() {
    let dir = scratch("synth_demo_cli");
    let out = dir.join("out");
    // Only demo flags, without `--demo`: the demo (it was an error that called --cache
    // "given more than once").
    let o = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(["--steps", "12", "--batch-size", "8", "--synth-train", "64"])
        .args([
            "--synth-test",
            "16",
            "--pictures",
            "2",
            "--device",
            "cpu",
            "--out",
        ])
        .arg(&out)
        .arg("--cache")
        .arg(dir.join("cache"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    for needle in [
        "PA-MPJPE",
        "Pearson",
        "AUSC",
        "AUSE",
        "mean pose",
        "constant uncertainty",
    ] {
        assert!(stdout.contains(needle), "{needle} missing in\n{stdout}");
    }
    for f in [
        "tiny_ours.safetensors",
        "procedural_hand.safetensors",
        "results/synthetic/freihand-val.json",
        "results/synthetic/freihand-val_uncertainty.json",
        "results/synthetic/freihand-val_covariance.safetensors",
        "uncertainty_eval/synthetic/scores.txt",
        "pictures/sparsification.png",
        "pictures/overlay_000.png",
        "pictures/overlay_001.png",
        "meshes/hand_000.obj",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The overlay is a PNG of 3× the tiny crop.
    let img = image::open(out.join("pictures/overlay_000.png")).unwrap();
    assert_eq!((img.width(), img.height()), (384, 384));
    // Bad demo flags are one clean error, before any generation or training.
    let plain = dir.join("plain.txt");
    std::fs::write(&plain, "x").unwrap();
    for (args, want) in [
        (vec!["--steps", "0"], "--steps 0: expected 1 to"),
        // --lr -1 trained by gradient ascent, 0 did not train.
        (
            vec!["--lr", "-1"],
            "--lr -1: expected a finite number above 0",
        ),
        (
            vec!["--lr", "0"],
            "--lr 0: expected a finite number above 0",
        ),
        (
            vec!["--lr", "nan"],
            "--lr NaN: expected a finite number above 0",
        ),
        // 1e30 wrote weights of 1e30 into the checkpoint.
        (vec!["--lr", "1e30"], "--lr 1e30: at most 1"),
        // 100000 threads hung for minutes.
        (
            vec!["--threads", "100000"],
            "--threads 100000: expected 1 to 1024",
        ),
        (
            vec!["--batch-size", "100000"],
            "--batch-size 100000: expected 1 to 4096",
        ),
        (
            vec!["--synth-train", "99999999999"],
            "--synth-train 99999999999: expected 1 to",
        ),
        (vec!["--synth-test", "0"], "--synth-test 0: expected 3 to"),
        (vec!["--synth-test", "2"], "--synth-test 2: expected 3 to"),
        (vec!["--pictures", "-1"], "--pictures"),
        (
            vec!["--synth-train", "4", "--batch-size", "8"],
            "--synth-train 4 is below the batch size 8",
        ),
        (
            vec!["--steps", "1", "--steps", "2"],
            "--steps is given more than once",
        ),
        // --out naming a file said "File exists (os error 17)".
        (vec!["--out", plain.to_str().unwrap()], "is not a directory"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_train"))
            .arg("--demo")
            .args(&args)
            .args(["--device", "cpu", "--cache"])
            .arg(dir.join("no_cache"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(
            lines[0].contains(want),
            "{args:?}: `{want}` not in {}",
            lines[0]
        );
    }
    assert!(
        !dir.join("no_cache").exists(),
        "a bad flag started the generation"
    );
    // A demo flag beside a training run's flags is one of another usage, not a repeat.
    let o = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(["--config", "tiny", "--steps", "1", "--cache"])
        .arg(dir.join("no_cache"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--cache does not go with the other flags given"),
        "{err}"
    );
    assert!(!dir.join("no_cache").exists());
}
