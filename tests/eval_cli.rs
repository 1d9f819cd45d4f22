//! The `eval pose` and `eval uncertainty` subcommands end to end on a generated 40-sample set
//! (tests/fixtures/eval/e2e.json: the generator, checksums and the NumPy/SciPy reference
//! numbers from tests/reference/make_eval_fixtures.py): the generator, both reports against the
//! reference, a run without covariance, and the help texts. Bad input is in
//! tests/eval_cli_bad_input.rs.

mod common;

use common::eval_set::{eval, generate, write_set};
use common::{s, scratch};
use serde_json::Value;

/// Same tolerance as tests/eval_metrics.rs: f64 throughout, only summation order differs.
const TOL: f64 = 1e-9;

fn close(what: &str, a: f64, b: f64) {
    let err = if b.abs() < 1e-12 {
        (a - b).abs()
    } else {
        (a - b).abs() / b.abs()
    };
    assert!(err <= TOL, "{what}: {a} vs {b} (err {err:e})");
}

fn expected() -> Value {
    let p = common::fixture("eval/e2e.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
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
