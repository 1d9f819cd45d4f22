//! The `eval pose` and `eval uncertainty` subcommands on bad input: one `error: ...` line with
//! exit code 2 for every kind of bad file, value and flag (missing or malformed files, values
//! beyond float32, too few samples, outputs naming an input, FIFOs), and the warnings for
//! constant uncertainties and degenerate alignments. Uses the generated set of
//! tests/common/eval_set.rs; the runs matching the reference are in tests/eval_cli.rs.

mod common;

use common::eval_set::{eval, generate, write_set, Set};
use common::{s, scratch};
use handcov::eval::files::{
    write_covariance, write_gt_points, write_predictions, write_uncertainty, PointSets,
};
use serde_json::Value;
use std::path::Path;

/// One `error: ...` line on stderr and exit code 2.
fn assert_error(run: (i32, String, String), needle: &str) {
    assert_eq!(run.0, 2, "stdout {} stderr {}", run.1, run.2);
    let lines: Vec<&str> = run.2.lines().collect();
    assert_eq!(lines.len(), 1, "{}", run.2);
    assert!(lines[0].starts_with("error: "), "{}", run.2);
    assert!(
        lines[0].contains(needle),
        "expected {needle:?} in {}",
        lines[0]
    );
}

#[test]
fn bad_inputs_give_one_error_line() {
    let set = generate(40);
    let root = scratch("eval_cli_errors");
    let (pred_dir, gt_dir) = write_set(&root, &set, true);
    let out = root.join("save");
    let unc_args = |pd: &Path, gt: &Path, dataset: &str| -> Vec<String> {
        [
            "uncertainty",
            "--dataset",
            dataset,
            "--exp",
            "e2e",
            "--pred-dir",
            s(pd),
            "--gt-dir",
            s(gt),
            "--out",
            s(&out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let run_owned = |a: Vec<String>| eval(&a.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    let pred = pred_dir.join("e2e/freihand-val.json");

    assert_error(
        run_owned(unc_args(&pred_dir, &gt_dir, "frei")),
        "unknown dataset",
    );
    assert_error(
        eval(&[
            "pose",
            "--dataset",
            "ho4d",
            "--pred",
            s(&pred),
            "--gt-dir",
            s(&gt_dir),
        ]),
        "unknown dataset",
    );
    // ho3d: its files are not there.
    assert_error(
        run_owned(unc_args(&pred_dir, &gt_dir, "ho3d")),
        "ho3d-val.json",
    );
    assert_error(eval(&["uncertainty", "--dataset", "freihand"]), "--exp");
    assert_error(
        eval(&["pose", "--dataset", "freihand", "--pred", s(&pred)]),
        "--gt-dir",
    );
    assert_error(
        eval(&[
            "pose",
            "--dataset",
            "freihand",
            "--pred",
            s(&pred),
            "--gt-dir",
            s(&gt_dir),
            "--bogus",
        ]),
        "--bogus",
    );
    assert_error(eval(&["posture"]), "unknown subcommand");

    // Missing GT vertices (pose only needs them).
    let gt2 = root.join("gt_no_verts");
    std::fs::create_dir_all(&gt2).unwrap();
    std::fs::copy(
        gt_dir.join("evaluation_xyz.json"),
        gt2.join("evaluation_xyz.json"),
    )
    .unwrap();
    assert_error(
        eval(&[
            "pose",
            "--dataset",
            "freihand",
            "--pred",
            s(&pred),
            "--gt-dir",
            s(&gt2),
        ]),
        "evaluation_verts.json",
    );
    // ... but uncertainty does not.
    let run = run_owned(unc_args(&pred_dir, &gt2, "freihand"));
    assert_eq!(run.0, 0, "{}", run.2);

    // N mismatch: an uncertainty file with 39 samples.
    let bad = root.join("bad_n/e2e");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(&pred, bad.join("freihand-val.json")).unwrap();
    write_uncertainty(
        &bad.join("freihand-val_uncertainty.json"),
        39,
        &set.unc[..39 * 21],
    )
    .unwrap();
    assert_error(
        run_owned(unc_args(&root.join("bad_n"), &gt_dir, "freihand")),
        "39 samples",
    );
    // Covariance with a different N.
    write_uncertainty(&bad.join("freihand-val_uncertainty.json"), 40, &set.unc).unwrap();
    write_covariance(
        &bad.join("freihand-val_covariance.safetensors"),
        2,
        &set.cov[..2 * 3969],
        "ours",
    )
    .unwrap();
    assert_error(
        run_owned(unc_args(&root.join("bad_n"), &gt_dir, "freihand")),
        "2 samples",
    );

    // NaN in the predictions (as Python's json writes it).
    let nan_dir = root.join("nan/e2e");
    std::fs::create_dir_all(&nan_dir).unwrap();
    let mut xyz = set.pred_xyz.clone();
    xyz[3 * 21 * 5 + 3 * 2 + 1] = f32::NAN; // sample 5, joint 2, coordinate 1
    write_predictions(
        &nan_dir.join("freihand-val.json"),
        40,
        &xyz,
        &set.pred_verts,
    )
    .unwrap();
    std::fs::copy(
        pred_dir.join("e2e/freihand-val_uncertainty.json"),
        nan_dir.join("freihand-val_uncertainty.json"),
    )
    .unwrap();
    assert_error(
        run_owned(unc_args(&root.join("nan"), &gt_dir, "freihand")),
        "NaN at xyz_list, sample 5, joint 2, coordinate 1",
    );
    assert_error(
        eval(&[
            "pose",
            "--dataset",
            "freihand",
            "--pred",
            s(&nan_dir.join("freihand-val.json")),
            "--gt-dir",
            s(&gt_dir),
        ]),
        "NaN",
    );

    // Wrong shape: 20 joints in the GT.
    let gt3 = root.join("gt_20");
    std::fs::create_dir_all(&gt3).unwrap();
    let xyz20: Vec<f64> = (0..40)
        .flat_map(|i| set.gt_xyz[i * 63..i * 63 + 60].to_vec())
        .collect();
    write_gt_points(
        &gt3.join("evaluation_xyz.json"),
        &PointSets::new(40, 20, xyz20).unwrap(),
    )
    .unwrap();
    assert_error(
        run_owned(unc_args(&pred_dir, &gt3, "freihand")),
        "sample 0 has 20 joints, expected 21",
    );

    // Malformed JSON.
    std::fs::write(gt3.join("evaluation_xyz.json"), "[[[0.1, 0.2, 0.3]").unwrap();
    assert_error(
        run_owned(unc_args(&pred_dir, &gt3, "freihand")),
        "malformed JSON",
    );
    // A covariance file that is not safetensors.
    let cov_dir = root.join("badcov/e2e");
    std::fs::create_dir_all(&cov_dir).unwrap();
    for f in ["freihand-val.json", "freihand-val_uncertainty.json"] {
        std::fs::copy(pred_dir.join("e2e").join(f), cov_dir.join(f)).unwrap();
    }
    std::fs::write(
        cov_dir.join("freihand-val_covariance.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    assert_error(
        run_owned(unc_args(&root.join("badcov"), &gt_dir, "freihand")),
        "freihand-val_covariance.safetensors",
    );
}

/// Like [`eval`], but a run still going after `secs` seconds is killed and reported as exit
/// code -1 (an input that blocks, such as a FIFO, must fail the test, not hang it).
fn eval_within(args: &[&str], secs: u64) -> (i32, String, String) {
    common::run_binary_within(env!("CARGO_BIN_EXE_eval"), args, secs)
}

fn unc_run(pred_dir: &Path, gt_dir: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "uncertainty",
        "--dataset",
        "freihand",
        "--exp",
        "e2e",
        "--pred-dir",
        s(pred_dir),
        "--gt-dir",
        s(gt_dir),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    eval_within(&args, 60)
}

fn pose_run(pred: &Path, gt_dir: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "pose",
        "--dataset",
        "freihand",
        "--pred",
        s(pred),
        "--gt-dir",
        s(gt_dir),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    eval_within(&args, 60)
}

/// `text` with the `k`-th number token (counting from 0) replaced by `with`.
fn replace_number(text: &str, k: usize, with: &str) -> String {
    let mut count = 0;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(|c: char| c == '-' || c.is_ascii_digit()) {
        let end = rest[i..].find([',', ']']).map_or(rest.len(), |e| i + e);
        out.push_str(&rest[..i]);
        out.push_str(if count == k { with } else { &rest[i..end] });
        count += 1;
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn values_beyond_float32_and_negative_uncertainties_are_errors() {
    let set = generate(40);
    let root = scratch("eval_cli_huge");
    let (pred_dir, gt_dir) = write_set(&root, &set, false);
    let out = root.join("save");
    let exp = pred_dir.join("e2e");
    let pred = exp.join("freihand-val.json");
    let unc = exp.join("freihand-val_uncertainty.json");
    let gt = gt_dir.join("evaluation_xyz.json");
    let (pred_text, unc_text, gt_text) = (
        std::fs::read_to_string(&pred).unwrap(),
        std::fs::read_to_string(&unc).unwrap(),
        std::fs::read_to_string(&gt).unwrap(),
    );
    // Sample 2, joint 4, coordinate 1 of the joints; sample 3, joint 5 of the uncertainties.
    let at_xyz = 2 * 63 + 4 * 3 + 1;
    let at_unc = 3 * 21 + 5;
    for (file, original, k, bad, needle) in [
        (
            &pred,
            &pred_text,
            at_xyz,
            "1e160",
            "xyz_list, sample 2, joint 4, coordinate 1",
        ),
        (
            &pred,
            &pred_text,
            at_xyz,
            "-3.5e38",
            "xyz_list, sample 2, joint 4, coordinate 1",
        ),
        (
            &unc,
            &unc_text,
            at_unc,
            "1e300",
            "uncertainty_list, sample 3, joint 5",
        ),
        (
            &gt,
            &gt_text,
            at_xyz,
            "1e300",
            "sample 2, joint 4, coordinate 1",
        ),
    ] {
        std::fs::write(file, replace_number(original, k, bad)).unwrap();
        let run = unc_run(&pred_dir, &gt_dir, &out, &[]);
        assert!(
            run.2.contains("float32") && run.2.contains(s(file)),
            "{}",
            run.2
        );
        assert_error(run, needle);
        if file != &unc {
            // eval pose wrote null metrics for such predictions.
            let run = pose_run(&pred, &gt_dir, &root.join("pose.json"), &[]);
            assert_error(run, "float32");
        }
        std::fs::write(file, original).unwrap();
    }
    // f32::MAX itself is a float32 value.
    std::fs::write(
        &pred,
        replace_number(&pred_text, at_xyz, "3.4028234663852886e+38"),
    )
    .unwrap();
    let run = pose_run(&pred, &gt_dir, &root.join("pose.json"), &[]);
    assert_eq!(run.0, 0, "{}", run.2);
    std::fs::write(&pred, &pred_text).unwrap();
    // A negative per-joint uncertainty.
    std::fs::write(&unc, replace_number(&unc_text, at_unc, "-0.001")).unwrap();
    assert_error(
        unc_run(&pred_dir, &gt_dir, &out, &[]),
        "uncertainty_list, sample 3, joint 5 is negative (-0.001)",
    );
    // A leading zero (JSON forbids it).
    std::fs::write(&unc, replace_number(&unc_text, at_unc, "00.001")).unwrap();
    assert_error(
        unc_run(&pred_dir, &gt_dir, &out, &[]),
        "uncertainty_list, sample 3, joint 5 has a leading zero",
    );
}

#[test]
fn uncertainty_needs_three_samples() {
    let full = generate(3);
    for n in [1, 2] {
        let root = scratch(&format!("eval_cli_n{n}"));
        let set = Set {
            n,
            gt_verts: full.gt_verts[..n * 778 * 3].to_vec(),
            gt_xyz: full.gt_xyz[..n * 63].to_vec(),
            pred_verts: full.pred_verts[..n * 778 * 3].to_vec(),
            pred_xyz: full.pred_xyz[..n * 63].to_vec(),
            unc: full.unc[..n * 21].to_vec(),
            cov: full.cov[..n * 3969].to_vec(),
        };
        let (pred_dir, gt_dir) = write_set(&root, &set, true);
        let out = root.join("save");
        assert_error(
            unc_run(&pred_dir, &gt_dir, &out, &[]),
            &format!("{n} sample(s), but the uncertainty metrics need at least 3"),
        );
        assert!(!out.exists(), "nothing is written");
    }
    // Three samples: every sparsification cut keeps an entry, the scores are numbers.
    let root = scratch("eval_cli_n3");
    let (pred_dir, gt_dir) = write_set(&root, &full, true);
    let out = root.join("save");
    let run = unc_run(&pred_dir, &gt_dir, &out, &[]);
    assert_eq!(run.0, 0, "{}", run.2);
    assert!(!run.2.contains("warning"), "{}", run.2);
    let txt = std::fs::read_to_string(out.join("freihand/e2e/scores.txt")).unwrap();
    assert!(!txt.contains("nan"), "{txt}");
}

#[test]
fn constant_uncertainty_keeps_nan_with_a_warning() {
    for (name, value) in [("const", 1.5e-4f32), ("zero", 0.0)] {
        let mut set = generate(40);
        set.unc = vec![value; set.unc.len()];
        let root = scratch(&format!("eval_cli_unc_{name}"));
        let (pred_dir, gt_dir) = write_set(&root, &set, false);
        let out = root.join("save");
        let run = unc_run(&pred_dir, &gt_dir, &out, &[]);
        assert_eq!(run.0, 0, "{}", run.2);
        // One warning line saying why; the reference's nan stays in scores.txt.
        let warnings: Vec<&str> = run.2.lines().collect();
        assert_eq!(warnings.len(), 1, "{}", run.2);
        assert!(
            warnings[0].starts_with("warning: every uncertainty of joints 1-20 is ")
                && warnings[0].contains("undefined"),
            "{}",
            run.2
        );
        let txt = std::fs::read_to_string(out.join("freihand/e2e/scores.txt")).unwrap();
        for label in [
            "Pearson Correlation",
            "Pearson Correlation_1_99",
            "Pearson Correlation_5_95",
        ] {
            assert!(txt.contains(&format!("{label}: nan\n")), "{txt}");
        }
        let js: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("freihand/e2e/scores.json")).unwrap(),
        )
        .unwrap();
        assert!(js["pearson"].is_null());
        assert!(js["ausc"].as_f64().unwrap().is_finite());
        let notes = js["notes"].as_array().unwrap();
        assert!(
            notes[0]
                .as_str()
                .unwrap()
                .contains("uncertainty of joints 1-20"),
            "{notes:?}"
        );
    }
}

#[test]
fn degenerate_alignments_are_not_counted_as_not_positive_definite() {
    let mut set = generate(40);
    set.pred_xyz = vec![0.0; set.pred_xyz.len()];
    let root = scratch("eval_cli_zeros");
    let (pred_dir, gt_dir) = write_set(&root, &set, true);
    let out = root.join("save");
    let run = unc_run(&pred_dir, &gt_dir, &out, &[]);
    assert_eq!(run.0, 0, "{}", run.2);
    assert!(
        run.1
            .contains("calibration, Procrustes-aligned: 40 degenerate alignment(s)"),
        "{}",
        run.1
    );
    // No sample is left for that variant's NLL: said on stderr, not only as a NaN.
    assert!(
        run.2
            .starts_with("warning: calibration, Procrustes-aligned: no sample is usable"),
        "{}",
        run.2
    );
    let js: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("freihand/e2e/scores.json")).unwrap(),
    )
    .unwrap();
    let pa = &js["calibration"]["procrustes_aligned"];
    assert_eq!(pa["n_degenerate_alignment"], 40);
    // generate() makes sample 7's covariance indefinite: the only sample not PD.
    assert_eq!(pa["n_not_positive_definite"], 0);
    assert_eq!(js["calibration"]["unaligned"]["n_not_positive_definite"], 1);
    assert_eq!(js["calibration"]["unaligned"]["n_degenerate_alignment"], 0);
}

#[test]
fn flags_are_bounded_and_named() {
    let set = generate(40);
    let root = scratch("eval_cli_flags");
    let (pred_dir, gt_dir) = write_set(&root, &set, false);
    let pred = pred_dir.join("e2e/freihand-val.json");
    let out = root.join("save");
    let pose_out = root.join("pose.json");
    for threads in ["0", "100000", "-1"] {
        assert_error(
            unc_run(&pred_dir, &gt_dir, &out, &["--threads", threads]),
            "--threads",
        );
        assert_error(
            pose_run(&pred, &gt_dir, &pose_out, &["--threads", threads]),
            "--threads",
        );
    }
    assert_error(
        unc_run(
            &pred_dir,
            &gt_dir,
            &out,
            &["--threads", "1", "--threads", "2"],
        ),
        "--threads is given more than once",
    );
    assert_error(
        pose_run(&pred, &gt_dir, &pose_out, &["--out", s(&pose_out)]),
        "--out is given more than once",
    );
    let run = pose_run(&pred, &gt_dir, &pose_out, &["--threads", "2"]);
    assert_eq!(run.0, 0, "{}", run.2);
}

#[test]
fn outputs_never_overwrite_inputs() {
    let set = generate(40);
    let root = scratch("eval_cli_clobber");
    let (pred_dir, gt_dir) = write_set(&root, &set, true);
    let pred = pred_dir.join("e2e/freihand-val.json");
    let gt_xyz = gt_dir.join("evaluation_xyz.json");
    let gt_verts = gt_dir.join("evaluation_verts.json");
    let before: Vec<Vec<u8>> = [&pred, &gt_xyz, &gt_verts]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    // The same file, spelt as given or another way.
    let pred_other = pred_dir.join("e2e/../e2e/./freihand-val.json");
    for (out, needle) in [
        (pred.clone(), "is the same file as --pred"),
        (pred_other, "is the same file as --pred"),
        (gt_xyz.clone(), "is the same file as the ground truth"),
        (gt_verts.clone(), "is the same file as the ground truth"),
    ] {
        assert_error(pose_run(&pred, &gt_dir, &out, &[]), needle);
    }
    // The report files of eval uncertainty, through a symbolic link to the ground truth.
    let out = root.join("save");
    let dir = out.join("freihand/e2e");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(&gt_xyz, dir.join("scores.json")).unwrap();
    assert_error(
        unc_run(&pred_dir, &gt_dir, &out, &[]),
        "is the same file as the ground truth",
    );
    assert!(!dir.join("scores.txt").exists(), "nothing is written");
    let after: Vec<Vec<u8>> = [&pred, &gt_xyz, &gt_verts]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(before == after, "an input was changed");
}

#[test]
fn inputs_that_are_not_regular_files() {
    let set = generate(40);
    let root = scratch("eval_cli_fifo");
    let (pred_dir, gt_dir) = write_set(&root, &set, true);
    let fifo = root.join("fifo.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // A FIFO blocked the read forever; a directory gave the OS's "Is a directory".
    for (input, want) in [(&fifo, "is not a regular file"), (&root, "is a directory")] {
        assert_error(pose_run(input, &gt_dir, &root.join("pose.json"), &[]), want);
    }
    let pd = root.join("fifo_pred");
    std::fs::create_dir_all(pd.join("e2e")).unwrap();
    for f in ["freihand-val.json", "freihand-val_uncertainty.json"] {
        std::fs::copy(pred_dir.join("e2e").join(f), pd.join("e2e").join(f)).unwrap();
    }
    std::os::unix::fs::symlink(&fifo, pd.join("e2e/freihand-val_covariance.safetensors")).unwrap();
    assert_error(
        unc_run(&pd, &gt_dir, &root.join("save"), &[]),
        "not a regular file",
    );
}
