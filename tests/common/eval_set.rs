//! The generated 40-sample evaluation set shared by tests/eval_cli.rs and
//! tests/eval_cli_bad_input.rs (the `E2E` set of tests/reference/make_eval_fixtures.py), its
//! files in the reference's layout, and a runner for the `eval` binary.

use super::run_binary;
use handcov::eval::files::{
    write_covariance, write_gt_points, write_predictions, write_uncertainty, PointSets,
};
use std::path::{Path, PathBuf};

/// Runs the `eval` binary; returns (exit code, stdout, stderr).
pub fn eval(args: &[&str]) -> (i32, String, String) {
    run_binary(env!("CARGO_BIN_EXE_eval"), args)
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
pub struct Set {
    pub n: usize,
    pub gt_verts: Vec<f64>,
    pub gt_xyz: Vec<f64>,
    pub pred_verts: Vec<f32>,
    pub pred_xyz: Vec<f32>,
    pub unc: Vec<f32>,
    pub cov: Vec<f32>,
}

pub fn generate(n: usize) -> Set {
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

/// Writes the set in the reference's layout: `root/results/e2e/freihand-val*.{json,safetensors}`
/// and `root/gt/evaluation_{xyz,verts}.json`.
pub fn write_set(root: &Path, set: &Set, with_cov: bool) -> (PathBuf, PathBuf) {
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
