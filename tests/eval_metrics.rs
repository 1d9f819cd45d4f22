//! Every metric building block of src/eval against NumPy / SciPy numbers
//! (tests/fixtures/eval/*.json, written by tests/reference/make_eval_fixtures.py).
//!
//! Tolerance: 1e-9 as `max|a − b| / max|b|` per quantity (absolute where the reference is 0).
//! All computations are f64; the agreement is limited only by summation order (≈ 1e-15), so
//! 1e-9 leaves room for ill-conditioned cases without hiding a wrong formula.

mod common;

use handcov::eval::calibration::calibration;
use handcov::eval::files::{Covariance, PointSets};
use handcov::eval::json::python_float_repr;
use handcov::eval::kdtree::KdTree;
use handcov::eval::linalg::{align_w_scale, orthogonal_procrustes, svd3};
use handcov::eval::pose::{auc, fscores, mean_of_part_means};
use handcov::eval::special::{chi2_ppf, gamma_p, ln_gamma};
use handcov::eval::stats::*;
use handcov::eval::uncertainty::scores;
use serde_json::Value;

const TOL: f64 = 1e-9;

fn load(name: &str) -> Value {
    let p = common::fixture(&format!("eval/{name}"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn vecf(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(f).collect()
}

fn points(v: &Value) -> Vec<[f64; 3]> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let p = vecf(p);
            [p[0], p[1], p[2]]
        })
        .collect()
}

fn from_bits(v: &Value) -> f64 {
    f64::from_bits(v.as_str().unwrap().parse::<u64>().unwrap())
}

/// max|a − b| / max|b| (absolute when b is all zeros).
fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let den = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

fn check(what: &str, a: &[f64], b: &[f64]) {
    let e = rel(a, b);
    assert!(
        e <= TOL,
        "{what}: rel error {e:e}\n ours {a:?}\n want {b:?}"
    );
}

fn check1(what: &str, a: f64, b: f64) {
    if a.is_nan() || b.is_nan() {
        assert!(a.is_nan() && b.is_nan(), "{what}: {a} vs {b}");
        return;
    }
    if b.abs() < 1e-12 {
        // A quantity that is 0 up to rounding (e.g. the Procrustes scale of a set of identical
        // points): absolute.
        assert!((a - b).abs() <= TOL, "{what}: {a:e} vs {b:e}");
        return;
    }
    check(what, &[a], &[b]);
}

#[test]
fn python_repr_matches() {
    let cases = load("repr.json");
    let mut n = 0;
    for c in cases.as_array().unwrap() {
        let x = from_bits(&c[0]);
        assert_eq!(
            python_float_repr(x),
            c[1].as_str().unwrap(),
            "bits {}",
            c[0]
        );
        n += 1;
    }
    assert!(n > 1000);
}

#[test]
fn svd3_reconstructs_and_is_orthogonal() {
    let mats: [[[f64; 3]; 3]; 4] = [
        [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 10.0]],
        [[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 0.0, 0.0]],
        [[0.0; 3]; 3],
        [[1e-12, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -3.0]],
    ];
    for a in &mats {
        let (u, s, v) = svd3(a);
        assert!(s[0] >= s[1] && s[1] >= s[2] && s[2] >= 0.0, "{s:?}");
        for i in 0..3 {
            for j in 0..3 {
                let rec: f64 = (0..3).map(|k| u[i][k] * s[k] * v[j][k]).sum();
                assert!((rec - a[i][j]).abs() <= 1e-14 * s[0].max(1.0), "{a:?}");
                let uu: f64 = (0..3).map(|k| u[k][i] * u[k][j]).sum();
                let vv: f64 = (0..3).map(|k| v[k][i] * v[k][j]).sum();
                let id = if i == j { 1.0 } else { 0.0 };
                assert!((uu - id).abs() < 1e-14 && (vv - id).abs() < 1e-14, "{a:?}");
            }
        }
    }
}

#[test]
fn procrustes_matches_scipy() {
    let cases = load("procrustes.json");
    for c in cases.as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let (gt, pred) = (points(&c["gt"]), points(&c["pred"]));
        let (aligned, sim) = align_w_scale(&gt, &pred);
        let flat = |p: &[[f64; 3]]| p.iter().flatten().copied().collect::<Vec<f64>>();
        check(
            &format!("{name} aligned"),
            &flat(&aligned),
            &flat(&points(&c["aligned"])),
        );
        check1(&format!("{name} s"), sim.s, f(&c["s"]));
        check1(&format!("{name} s1"), sim.s1, f(&c["s1"]));
        check1(&format!("{name} s2"), sim.s2, f(&c["s2"]));
        if c["r_unique"].as_bool().unwrap() {
            check(&format!("{name} R"), &flat(&sim.r), &flat(&points(&c["r"])));
            // orthogonal_procrustes on the raw (uncentred) sets too.
            let (r, s) = orthogonal_procrustes(&gt, &pred);
            check(
                &format!("{name} op R"),
                &flat(&r),
                &flat(&points(&c["op_r"])),
            );
            check1(&format!("{name} op scale"), s, f(&c["op_scale"]));
        }
    }
}

#[test]
fn simpson_trapz_linspace_match_numpy_scipy() {
    let s = load("stats.json");
    for c in s["simpson"].as_array().unwrap() {
        let (x, y) = (vecf(&c["x"]), vecf(&c["y"]));
        check1(
            &format!("simpson n={}", x.len()),
            simpson(&y, &x),
            f(&c["simpson"]),
        );
    }
    for c in s["trapz"].as_array().unwrap() {
        check1(
            "trapz",
            trapz(&vecf(&c["y"]), &vecf(&c["x"])),
            f(&c["trapz"]),
        );
    }
    let want: Vec<f64> = s["linspace_0_005_100"]
        .as_array()
        .unwrap()
        .iter()
        .map(from_bits)
        .collect();
    assert_eq!(linspace(0.0, 0.05, 100), want, "linspace bit for bit");
}

#[test]
fn percentile_and_pearson_match() {
    let s = load("stats.json");
    for c in s["percentile"].as_array().unwrap() {
        let mut v = vecf(&c["v"]);
        v.sort_by(f64::total_cmp);
        let got: Vec<f64> = vecf(&c["q"])
            .iter()
            .map(|&q| percentile_sorted(&v, q))
            .collect();
        check("percentile", &got, &vecf(&c["p"]));
    }
    for c in s["pearson"].as_array().unwrap() {
        let (e, u) = (vecf(&c["e"]), vecf(&c["u"]));
        check1("pearson", pearson(&e, &u), f(&c["r"]));
        check1(
            "pearson 1-99",
            pearson(&e, &clip_to_percentiles(&u, 1.0, 99.0)),
            f(&c["r_1_99"]),
        );
        check1(
            "pearson 5-95",
            pearson(&e, &clip_to_percentiles(&u, 5.0, 95.0)),
            f(&c["r_5_95"]),
        );
    }
    assert!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_nan());
}

#[test]
fn sparsification_matches_reference() {
    let s = load("stats.json");
    for c in s["sparsification"].as_array().unwrap() {
        let (e, u) = (vecf(&c["e"]), vecf(&c["u"]));
        let sp = sparsification(&e, &u);
        check("curve", &sp.curve, &vecf(&c["curve"]));
        check("oracle", &sp.oracle, &vecf(&c["oracle"]));
        check1("AUSC", sp.ausc, f(&c["ausc"]));
        check1("AUSE", sp.ause, f(&c["ause"]));
        assert_eq!(sp.ambiguous_cuts, 0);
    }
    // k = int(M * (p / 100)) in doubles: for M = 83 160 at p = 70 it is 58 211, not 58 212.
    let ks: Vec<usize> = (2..=100)
        .step_by(2)
        .map(|p| (83160.0 * (p as f64 / 100.0)) as usize)
        .collect();
    let want: Vec<usize> = s["k_freihand"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(ks, want);
    assert_eq!(ks[34], 58211);
    for c in s["scores"].as_array().unwrap() {
        let n = c["n"].as_u64().unwrap() as usize;
        let sc = scores(&vecf(&c["e"]), &vecf(&c["u"]), n);
        let got = [
            sc.pearson,
            sc.pearson_1_99,
            sc.pearson_5_95,
            sc.ausc,
            sc.ause,
        ];
        for (k, (a, b)) in got.iter().zip(vecf(&c["scores"])).enumerate() {
            check1(&format!("score {k}"), *a, b);
        }
    }
    // Ties straddling a cut are reported.
    let e: Vec<f64> = (0..100).map(|i| i as f64).collect();
    let u: Vec<f64> = (0..100).map(|i| (i / 2) as f64).collect();
    // A cut splits a pair exactly when k is odd (k = int(100·(p/100)) is p − 1 for some p).
    let odd = (2..=100)
        .step_by(2)
        .filter(|&p| ((100.0 * (p as f64 / 100.0)) as usize) % 2 == 1)
        .count();
    assert!(odd > 0);
    assert_eq!(sparsification(&e, &u).ambiguous_cuts, odd);
    let u: Vec<f64> = vec![1.0; 100];
    assert!(sparsification(&e, &u).ambiguous_cuts > 0);
}

#[test]
fn auc_matches_evalutil() {
    let s = load("stats.json");
    for c in s["auc"].as_array().unwrap() {
        let parts: Vec<Vec<f64>> = c["errors"].as_array().unwrap().iter().map(vecf).collect();
        check1("auc", auc(&parts, 0.05, 100), f(&c["auc"]));
        check1("mean", mean_of_part_means(&parts), f(&c["mean"]));
    }
}

#[test]
fn kdtree_nearest_and_fscores_match_ckdtree() {
    let k = load("kdtree.json");
    for c in k["nearest"].as_array().unwrap() {
        let pts = points(&c["points"]);
        let tree = KdTree::new(&pts);
        let want = vecf(&c["dist"]);
        for (q, w) in points(&c["queries"]).iter().zip(&want) {
            let (i, d2) = tree.nearest(q).unwrap();
            // The index must be a point at that distance (ties: any of them).
            let p = pts[i];
            let direct =
                ((q[0] - p[0]).powi(2) + (q[1] - p[1]).powi(2) + (q[2] - p[2]).powi(2)).sqrt();
            assert!((direct - d2.sqrt()).abs() <= 1e-15);
            check1("nn distance", d2.sqrt(), *w);
            // Brute force.
            let brute = pts
                .iter()
                .map(|p| (q[0] - p[0]).powi(2) + (q[1] - p[1]).powi(2) + (q[2] - p[2]).powi(2))
                .fold(f64::INFINITY, f64::min);
            assert_eq!(d2, brute);
        }
    }
    for c in k["fscore"].as_array().unwrap() {
        let got = fscores(&points(&c["gt"]), &points(&c["pred"]), &[0.005, 0.015]);
        check1("F@5", got[0], f(&c["f5"]));
        check1("F@15", got[1], f(&c["f15"]));
    }
}

#[test]
fn special_functions_match_scipy() {
    let s = load("special.json");
    for c in s["chi2_ppf"].as_array().unwrap() {
        let (q, k) = (f(&c["q"]), f(&c["k"]));
        check1(&format!("chi2.ppf({q}, {k})"), chi2_ppf(q, k), f(&c["x"]));
    }
    for c in s["gammainc"].as_array().unwrap() {
        let (a, x) = (f(&c["a"]), f(&c["x"]));
        check1(&format!("gammainc({a}, {x})"), gamma_p(a, x), f(&c["p"]));
    }
    for c in s["gammaln"].as_array().unwrap() {
        let x = f(&c["x"]);
        check1(&format!("gammaln({x})"), ln_gamma(x), f(&c["lgamma"]));
    }
    assert_eq!(chi2_ppf(0.0, 3.0), 0.0);
    assert_eq!(chi2_ppf(1.0, 3.0), f64::INFINITY);
    assert!(chi2_ppf(1.5, 3.0).is_nan());
}

#[test]
fn calibration_matches_numpy() {
    let c = load("calibration.json");
    let gt = points(
        &c["gt"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s.as_array().unwrap().clone())
            .collect(),
    );
    let pred = points(
        &c["pred"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s.as_array().unwrap().clone())
            .collect(),
    );
    let n = gt.len() / 21;
    let mut cov = Vec::with_capacity(n * 63 * 63);
    for fac in c["cov_factors"].as_array().unwrap() {
        let l: Vec<Vec<f64>> = fac["l"].as_array().unwrap().iter().map(vecf).collect();
        let d = vecf(&fac["d"]);
        for a in 0..63 {
            for b in 0..63 {
                let mut v: f64 = (0..l[a].len()).map(|k| l[a][k] * l[b][k]).sum();
                if a == b {
                    v += d[a];
                }
                cov.push(v);
            }
        }
    }
    let flat = |p: Vec<[f64; 3]>| p.into_iter().flatten().collect::<Vec<f64>>();
    let gt = PointSets::new(n, 21, flat(gt)).unwrap();
    let pred = PointSets::new(n, 21, flat(pred)).unwrap();
    let cov = Covariance::new(n, cov, None).unwrap();
    let cal = calibration(&pred, &gt, &cov).unwrap();
    let exp = &c["expected"];
    for (name, v) in [
        ("unaligned", &cal.unaligned),
        ("root_relative", &cal.root_relative),
        ("procrustes_aligned", &cal.procrustes_aligned),
    ] {
        let e = &exp[name];
        assert_eq!(v.k as u64, e["k"].as_u64().unwrap(), "{name}");
        assert_eq!(v.n_used as u64, e["n_used"].as_u64().unwrap(), "{name}");
        assert_eq!(v.n_not_pd as u64, e["n_not_pd"].as_u64().unwrap(), "{name}");
        assert_eq!(v.n_not_pd, 1, "{name}: sample 4 is not PD");
        check1(&format!("{name} nll"), v.nll, f(&e["nll"]));
        check1(
            &format!("{name} m"),
            v.mean_mahalanobis_sq,
            f(&e["mahalanobis_sq_mean"]),
        );
        check(
            &format!("{name} coverage"),
            &v.coverage,
            &vecf(&e["coverage"]),
        );
        check(
            &format!("{name} chi2"),
            &v.chi2_thresholds,
            &vecf(&e["chi2"]),
        );
    }
}
