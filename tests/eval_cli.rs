//! The `eval pose` and `eval uncertainty` subcommands end to end on a generated 40-sample set
//! (tests/fixtures/eval/e2e.json: the generator, checksums and the NumPy/SciPy reference
//! numbers from tests/reference/make_eval_fixtures.py), and one `error: ...` line with exit
//! code 2 for every kind of bad input.

mod common;

use common::scratch;
use handcov::eval::files::{
    write_covariance, write_gt_points, write_predictions, write_uncertainty, PointSets,
};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Same tolerance as tests/eval_metrics.rs: f64 throughout, only summation order differs.
const TOL: f64 = 1e-9;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn eval(args: &[&str]) -> (i32, String, String) {
    common::run_binary(env!("CARGO_BIN_EXE_eval"), args)
}

fn close(what: &str, a: f64, b: f64) {
    let err = if b.abs() < 1e-12 {
        (a - b).abs()
    } else {
        (a - b).abs() / b.abs()
    };
    assert!(err <= TOL, "{what}: {a} vs {b} (err {err:e})");
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn u(stream: u64, i: usize) -> f64 {
    (splitmix64((stream << 32) + i as u64) >> 11) as f64 * 2f64.powi(-53)
}

/// The generated set (see `E2E` in make_eval_fixtures.py): GT in f64, the rest in f32.
struct Set {
    n: usize,
    gt_verts: Vec<f64>,
    gt_xyz: Vec<f64>,
    pred_verts: Vec<f32>,
    pred_xyz: Vec<f32>,
    unc: Vec<f32>,
    cov: Vec<f32>,
}

fn generate(n: usize) -> Set {
    const SIZE: [f64; 3] = [0.10, 0.08, 0.03];
    let t: Vec<[f64; 3]> = (0..778)
        .map(|v| [0, 1, 2].map(|c| (u(1, 3 * v + c) - 0.5) * SIZE[c]))
        .collect();
    let rot3 = |x: [f64; 3]| {
        [
            x[0] * 0.6 + x[1] * -0.8 + x[2] * 0.0,
            x[0] * 0.8 + x[1] * 0.6 + x[2] * 0.0,
            x[0] * 0.0 + x[1] * 0.0 + x[2] * 1.0,
        ]
    };
    let rt: Vec<[f64; 3]> = t.iter().map(|&x| rot3(x)).collect();
    let mut set = Set {
        n,
        gt_verts: vec![],
        gt_xyz: vec![],
        pred_verts: vec![],
        pred_xyz: vec![],
        unc: vec![],
        cov: vec![],
    };
    for i in 0..n {
        let off = [
            (u(2, 3 * i) - 0.5) * 0.2,
            (u(2, 3 * i + 1) - 0.5) * 0.2,
            0.5 + u(2, 3 * i + 2) * 0.5,
        ];
        let sc = 0.9 + 0.2 * u(3, i);
        let noise = 0.002 + 0.02 * u(6, i);
        for v in 0..778 {
            for c in 0..3 {
                let k = (778 * i + v) * 3 + c;
                set.gt_verts
                    .push(t[v][c] * sc + off[c] + (u(4, k) - 0.5) * 0.002);
                set.pred_verts
                    .push((rt[v][c] + (u(5, k) - 0.5) * noise) as f32);
            }
        }
        for j in 0..21 {
            let jv = (37 * j) % 778;
            for c in 0..3 {
                let k = (21 * i + j) * 3 + c;
                set.gt_xyz
                    .push(t[jv][c] * sc + off[c] + (u(7, k) - 0.5) * 0.002);
                set.pred_xyz
                    .push((rt[jv][c] + (u(8, k) - 0.5) * noise * 2.0) as f32);
            }
            set.unc
                .push((noise * noise * (0.5 + u(9, 21 * i + j))) as f32);
        }
        let cv: Vec<f64> = (0..63).map(|a| (u(10, 63 * i + a) - 0.5) * noise).collect();
        let mut d: Vec<f64> = (0..63)
            .map(|a| noise * noise * (0.2 + 0.3 * u(11, 63 * i + a)))
            .collect();
        if i == 7 {
            d[5] = -1.0;
        }
        for a in 0..63 {
            for b in 0..63 {
                set.cov
                    .push((cv[a] * cv[b] + if a == b { d[a] } else { 0.0 }) as f32);
            }
        }
    }
    set
}

fn expected() -> Value {
    let p = common::fixture("eval/e2e.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Writes the set in the reference's layout: `root/results/e2e/freihand-val*.{json,safetensors}`
/// and `root/gt/evaluation_{xyz,verts}.json`.
fn write_set(root: &Path, set: &Set, with_cov: bool) -> (PathBuf, PathBuf) {
    let exp = root.join("results/e2e");
    let gt = root.join("gt");
    std::fs::create_dir_all(&exp).unwrap();
    std::fs::create_dir_all(&gt).unwrap();
    write_predictions(
        &exp.join("freihand-val.json"),
        set.n,
        &set.pred_xyz,
        &set.pred_verts,
    )
    .unwrap();
    write_uncertainty(&exp.join("freihand-val_uncertainty.json"), set.n, &set.unc).unwrap();
    if with_cov {
        write_covariance(
            &exp.join("freihand-val_covariance.safetensors"),
            set.n,
            &set.cov,
            "ours",
        )
        .unwrap();
    }
    let xyz = PointSets::new(set.n, 21, set.gt_xyz.clone()).unwrap();
    let verts = PointSets::new(set.n, 778, set.gt_verts.clone()).unwrap();
    write_gt_points(&gt.join("evaluation_xyz.json"), &xyz).unwrap();
    write_gt_points(&gt.join("evaluation_verts.json"), &verts).unwrap();
    (root.join("results"), gt)
}

#[test]
fn generator_matches_the_fixture_script() {
    let exp = expected();
    let set = generate(exp["n"].as_u64().unwrap() as usize);
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    for (name, vals) in [
        ("gt_verts", set.gt_verts.clone()),
        ("pred_verts", wide(&set.pred_verts)),
        ("gt_xyz", set.gt_xyz.clone()),
        ("pred_xyz", wide(&set.pred_xyz)),
        ("unc", wide(&set.unc)),
        ("cov", wide(&set.cov)),
    ] {
        let first: Vec<u64> = exp["first_bits"][name]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap().parse().unwrap())
            .collect();
        let ours: Vec<u64> = vals[..5].iter().map(|v| v.to_bits()).collect();
        assert_eq!(ours, first, "{name}: first values bit for bit");
        close(
            &format!("{name} sum"),
            vals.iter().sum(),
            exp["sums"][name].as_f64().unwrap(),
        );
    }
}

#[test]
fn uncertainty_and_pose_match_the_reference() {
    let exp = expected();
    let set = generate(exp["n"].as_u64().unwrap() as usize);
    let root = scratch("eval_cli_e2e");
    let (pred_dir, gt_dir) = write_set(&root, &set, true);
    let out = root.join("save");
    let run = eval(&[
        "uncertainty",
        "--dataset",
        "freihand",
        "--exp",
        "e2e",
        "--pred-dir",
        s(&pred_dir),
        "--gt-dir",
        s(&gt_dir),
        "--out",
        s(&out),
    ]);
    assert_eq!(run.0, 0, "{}", run.2);
    assert!(run.1.starts_with("Pearson Correlation: "), "{}", run.1);

    // scores.txt: exactly the reference's five lines.
    let txt = std::fs::read_to_string(out.join("freihand/e2e/scores.txt")).unwrap();
    let lines: Vec<&str> = txt.lines().collect();
    assert_eq!(lines.len(), 5, "{txt}");
    assert!(txt.ends_with('\n'));
    let labels = [
        "Pearson Correlation",
        "Pearson Correlation_1_99",
        "Pearson Correlation_5_95",
        "AUSC",
        "AUSE",
    ];
    let want = exp["scores_txt"].as_array().unwrap();
    for ((line, label), w) in lines.iter().zip(labels).zip(want) {
        let (l, v) = line.split_once(": ").unwrap();
        assert_eq!(l, label);
        let v: f64 = v.parse().unwrap();
        // Python float repr: parsing the text gives the value back exactly.
        assert_eq!(
            handcov::eval::json::python_float_repr(v),
            line.split_once(": ").unwrap().1
        );
        close(label, v, w.as_f64().unwrap());
    }

    // scores.json: the same numbers, the aligned variants, the calibration.
    let js: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("freihand/e2e/scores.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(js["n"], 40);
    let keys = ["pearson", "pearson_1_99", "pearson_5_95", "ausc", "ause"];
    for (k, w) in keys.iter().zip(want) {
        close(k, js[k].as_f64().unwrap(), w.as_f64().unwrap());
        close(
            k,
            js["reference_unaligned"][k].as_f64().unwrap(),
            w.as_f64().unwrap(),
        );
    }
    for variant in ["root_aligned", "procrustes_aligned"] {
        for (k, w) in keys.iter().zip(exp[variant].as_array().unwrap()) {
            close(
                &format!("{variant} {k}"),
                js[variant][k].as_f64().unwrap(),
                w.as_f64().unwrap(),
            );
        }
    }
    let cal = &js["calibration"];
    assert_eq!(cal["uncertainty_type"], "ours");
    for variant in ["unaligned", "root_relative", "procrustes_aligned"] {
        let (g, w) = (&cal[variant], &exp["calibration"][variant]);
        assert_eq!(g["k"], w["k"]);
        assert_eq!(g["n_used"], w["n_used"]);
        assert_eq!(g["n_not_positive_definite"], w["n_not_pd"]);
        close(
            &format!("{variant} nll"),
            g["nll_mean"].as_f64().unwrap(),
            w["nll"].as_f64().unwrap(),
        );
        close(
            &format!("{variant} m"),
            g["mahalanobis_sq_mean"].as_f64().unwrap(),
            w["mahalanobis_sq_mean"].as_f64().unwrap(),
        );
        for (k, key) in ["coverage_50", "coverage_90", "coverage_95"]
            .iter()
            .enumerate()
        {
            close(
                key,
                g[key].as_f64().unwrap(),
                w["coverage"][k].as_f64().unwrap(),
            );
        }
    }

    // eval pose, default output beside the predictions.
    let pred = pred_dir.join("e2e/freihand-val.json");
    let run = eval(&[
        "pose",
        "--dataset",
        "freihand",
        "--pred",
        s(&pred),
        "--gt-dir",
        s(&gt_dir),
    ]);
    assert_eq!(run.0, 0, "{}", run.2);
    assert!(run.1.contains("PA-MPJPE"), "{}", run.1);
    let js: Value = serde_json::from_str(
        &std::fs::read_to_string(pred_dir.join("e2e/pose_metrics.json")).unwrap(),
    )
    .unwrap();
    let w = &exp["pose"];
    assert_eq!(js["n"], w["n"]);
    for k in [
        "pa_mpjpe_mm",
        "pa_mpvpe_mm",
        "auc_j",
        "auc_v",
        "f5",
        "f15",
        "mpjpe_mm",
        "root_mpjpe_mm",
    ] {
        close(k, js[k].as_f64().unwrap(), w[k].as_f64().unwrap());
    }
}

#[test]
fn uncertainty_without_covariance_omits_calibration() {
    let set = generate(40);
    let root = scratch("eval_cli_no_cov");
    let (pred_dir, gt_dir) = write_set(&root, &set, false);
    let out = root.join("save");
    let run = eval(&[
        "uncertainty",
        "--dataset",
        "freihand",
        "--exp",
        "e2e",
        "--pred-dir",
        s(&pred_dir),
        "--gt-dir",
        s(&gt_dir),
        "--out",
        s(&out),
    ]);
    assert_eq!(run.0, 0, "{}", run.2);
    assert!(run.1.contains("calibration omitted"), "{}", run.1);
    let js: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("freihand/e2e/scores.json")).unwrap(),
    )
    .unwrap();
    assert!(js["calibration"].is_null());
    let want = expected();
    close(
        "AUSC",
        js["ausc"].as_f64().unwrap(),
        want["scores_txt"][3].as_f64().unwrap(),
    );
}

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

#[test]
fn help_texts() {
    for sub in ["pose", "uncertainty"] {
        let run = eval(&[sub, "--help"]);
        assert_eq!(run.0, 0);
        assert!(run.1.contains("USAGE"), "{}", run.1);
    }
    assert!(eval(&["uncertainty", "--help"])
        .1
        .contains("uncertainty_eval/save"));
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
