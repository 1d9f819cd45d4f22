//! Per-joint uncertainty metrics: the reference's `uncertainty_eval/eval_uncertainty.py` exactly
//! (SPEC §9.3: Pearson, clipped Pearson, AUSC, AUSE on **unaligned** errors, the numbers of
//! `scores.txt`), the same five scores on root-aligned and Procrustes-aligned errors, and the
//! calibration of the covariance side file when it exists (SPEC §15b.3).
//!
//! Errors and uncertainties are stored joint-major (21 lists of N values) as in the reference:
//! entry `j·N + i` is joint j of sample i.
//!
//! * Pearson: joints 1..20 (wrist excluded) → 20N pairs, `pearsonr(e, u)`; the clipped variants
//!   clip u (not e) to its [1, 99] and [5, 95] percentiles (linear interpolation) first.
//! * AUSC / AUSE: all 21N entries, `E = 10·e`, sparsification by u ascending, `k = int(M·(p/100))`,
//!   p = 2, 4, …, 100, SciPy's `simpson` over p ([`crate::eval::stats::sparsification`]).
//!   Ties in u are ordered by position (stable); NumPy's argsort may order them differently, which
//!   changes the result only when a tie group straddles a cut point (reported as a note).
//! * Root-aligned errors: joint 0 subtracted from each set (the wrist's error is then 0: it still
//!   takes part in AUSC/AUSE, as in the reference's formula). Procrustes-aligned: per sample,
//!   `align_w_scale` on the 21 joints.
//!
//! At least [`MIN_SAMPLES`] = 3 samples are required (below that the 2 % cut is empty and AUSC /
//! AUSE would be NaN). A score the reference itself leaves undefined — Pearson when the
//! uncertainties (or the errors) of joints 1..20 are constant, SciPy's nan — is kept as NaN
//! (`nan` in `scores.txt`, as the reference writes it), and the report says why in
//! [`UncertaintyReport::warnings`], which the caller prints and `scores.json` lists.

use crate::error::{Error, Result};
use crate::eval::calibration::{calibration, Calibration, VariantCalibration, LEVELS};
use crate::eval::files::{self, check_same_n, Dataset, JointUncertainty, PointSets, NUM_JOINTS};
use crate::eval::json::python_float_repr;
use crate::eval::pose::{point_errors, procrustes_errors, root_aligned_errors};
use crate::eval::stats::{clip_to_percentiles, is_constant, pearson, sparsification};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The five reference scores (plus how many sparsification cuts depend on the order of ties).
#[derive(Clone, Debug, PartialEq)]
pub struct Scores {
    pub pearson: f64,
    pub pearson_1_99: f64,
    pub pearson_5_95: f64,
    pub ausc: f64,
    pub ause: f64,
    pub ambiguous_cuts: usize,
}

/// The reference's scores from joint-major errors `e` (metres) and uncertainties `u`, both
/// `21·n` long.
pub fn scores(e: &[f64], u: &[f64], n: usize) -> Scores {
    let (e_nw, u_nw) = (&e[n..NUM_JOINTS * n], &u[n..NUM_JOINTS * n]);
    let big_e: Vec<f64> = e.iter().map(|&v| 10.0 * v).collect();
    let sp = sparsification(&big_e, u);
    Scores {
        pearson: pearson(e_nw, u_nw),
        pearson_1_99: pearson(e_nw, &clip_to_percentiles(u_nw, 1.0, 99.0)),
        pearson_5_95: pearson(e_nw, &clip_to_percentiles(u_nw, 5.0, 95.0)),
        ausc: sp.ausc,
        ause: sp.ause,
        ambiguous_cuts: sp.ambiguous_cuts,
    }
}

/// How the per-joint error is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alignment {
    /// Raw coordinates (the reference).
    None,
    /// Joint 0 subtracted from each set.
    Root,
    /// `align_w_scale` per sample.
    Procrustes,
}

/// Joint-major per-joint errors (21·N) between ground truth and prediction.
pub fn joint_errors(gt: &PointSets, pred: &PointSets, how: Alignment) -> Vec<f64> {
    let n = gt.n();
    let rows: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let (g, p) = (gt.sample(i), pred.sample(i));
            match how {
                Alignment::None => point_errors(g, p),
                Alignment::Root => root_aligned_errors(g, p),
                Alignment::Procrustes => procrustes_errors(g, p),
            }
        })
        .collect();
    joint_major(&rows, n)
}

fn joint_major(rows: &[Vec<f64>], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; NUM_JOINTS * n];
    for (i, r) in rows.iter().enumerate() {
        for (j, &v) in r.iter().enumerate() {
            out[j * n + i] = v;
        }
    }
    out
}

/// The uncertainties joint-major (21·N).
pub fn uncertainty_joint_major(u: &JointUncertainty) -> Vec<f64> {
    let rows: Vec<Vec<f64>> = (0..u.n()).map(|i| u.sample(i).to_vec()).collect();
    joint_major(&rows, u.n())
}

/// The inputs of one evaluation.
#[derive(Clone, Debug)]
pub struct UncertaintyInputs {
    pub predictions: PathBuf,
    pub uncertainty: PathBuf,
    pub gt_xyz: PathBuf,
    /// The covariance side file, if it exists.
    pub covariance: Option<PathBuf>,
}

impl UncertaintyInputs {
    /// The reference's layout: `pred_dir/exp/{dataset}-val.json`,
    /// `pred_dir/exp/{dataset}-val_uncertainty.json`, `gt_dir/evaluation_xyz.json`, and the
    /// covariance side file beside the predictions when present.
    pub fn locate(
        dataset: Dataset,
        exp: &str,
        pred_dir: &Path,
        gt_dir: &Path,
    ) -> UncertaintyInputs {
        let dir = pred_dir.join(exp);
        let cov = dir.join(dataset.covariance_file());
        UncertaintyInputs {
            predictions: dir.join(dataset.predictions_file()),
            uncertainty: dir.join(dataset.uncertainty_file()),
            gt_xyz: gt_dir.join("evaluation_xyz.json"),
            covariance: cov.exists().then_some(cov),
        }
    }
}

/// Everything `eval uncertainty` reports.
#[derive(Clone, Debug)]
pub struct UncertaintyReport {
    pub dataset: Dataset,
    pub exp: String,
    pub n: usize,
    /// The reference's scores (unaligned errors): `scores.txt`.
    pub reference: Scores,
    pub root_aligned: Scores,
    pub procrustes_aligned: Scores,
    pub calibration: Option<Calibration>,
    /// The covariance file's `uncertainty` metadata.
    pub uncertainty_type: Option<String>,
    /// What makes a score undefined (NaN): the caller prints each as a `warning:` line;
    /// `scores.json` lists them first among its notes.
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

/// Reads the inputs, checks they agree, and computes every score.
pub fn evaluate(
    dataset: Dataset,
    exp: &str,
    inputs: &UncertaintyInputs,
) -> Result<UncertaintyReport> {
    let (pred, unc, gt) = {
        let (a, (b, c)) = rayon::join(
            || files::read_predictions(&inputs.predictions),
            || {
                rayon::join(
                    || files::read_uncertainty(&inputs.uncertainty),
                    || files::read_gt_xyz(&inputs.gt_xyz),
                )
            },
        );
        (a?, b?, c?)
    };
    let cov = inputs
        .covariance
        .as_deref()
        .map(files::read_covariance)
        .transpose()?;
    let mut counts = vec![
        (inputs.predictions.as_path(), pred.n()),
        (inputs.uncertainty.as_path(), unc.n()),
        (inputs.gt_xyz.as_path(), gt.n()),
    ];
    if let (Some(p), Some(c)) = (inputs.covariance.as_deref(), cov.as_ref()) {
        counts.push((p, c.n()));
    }
    let n = check_same_n(&counts)?;
    if n < MIN_SAMPLES {
        return Err(Error::Input(format!(
            "{}: {n} sample(s), but the uncertainty metrics need at least {MIN_SAMPLES}: with \
             21·N = {} entries the first sparsification cut (2 %) keeps none, and AUSC / AUSE \
             would be NaN",
            inputs.predictions.display(),
            NUM_JOINTS * n
        )));
    }
    let mut notes = Vec::new();
    if n != dataset.official_n() {
        notes.push(format!(
            "N = {n} differs from the official {} split ({} samples; the reference asserts it)",
            dataset.name(),
            dataset.official_n()
        ));
    }
    let u = uncertainty_joint_major(&unc);
    let errors = [Alignment::None, Alignment::Root, Alignment::Procrustes]
        .map(|how| joint_errors(&gt, &pred.xyz, how));
    let [reference, root_aligned, procrustes_aligned] =
        [0, 1, 2].map(|v| scores(&errors[v], &u, n));
    let mut warnings = undefined_scores(
        &u,
        n,
        &[
            ("unaligned (reference)", &errors[0], &reference),
            ("root-aligned", &errors[1], &root_aligned),
            ("Procrustes-aligned", &errors[2], &procrustes_aligned),
        ],
    );
    if reference.ambiguous_cuts > 0 {
        notes.push(format!(
            "{} sparsification cut(s) fall inside a group of tied uncertainties; ties are ordered \
             by position here, NumPy's argsort may order them differently (AUSC/AUSE may then \
             differ from the reference in the last digits)",
            reference.ambiguous_cuts
        ));
    }
    let (calibration, uncertainty_type) = match &cov {
        Some(c) => {
            let cal = calibration(&pred.xyz, &gt, c)?;
            for (name, v) in [
                ("unaligned", &cal.unaligned),
                ("root-relative", &cal.root_relative),
                ("Procrustes-aligned", &cal.procrustes_aligned),
            ] {
                if v.n_degenerate > 0 {
                    notes.push(format!(
                        "calibration, {name}: {} degenerate alignment(s) (column `c = 0`): \
                         the Procrustes scale c is 0 (a prediction with all joints at one \
                         point, e.g. all zeros), so the aligned covariance is 0; those samples \
                         are left out, they are not counted as not PD",
                        v.n_degenerate
                    ));
                }
                if v.n_used == 0 {
                    warnings.push(format!(
                        "calibration, {name}: no sample is usable ({} not positive definite, {} \
                         degenerate alignment(s)), so its NLL, Mahalanobis mean and coverages \
                         are nan (null in scores.json)",
                        v.n_not_pd, v.n_degenerate
                    ));
                }
            }
            (Some(cal), c.uncertainty.clone())
        }
        None => {
            notes.push(format!(
                "no covariance file {} beside the predictions: calibration omitted",
                dataset.covariance_file()
            ));
            (None, None)
        }
    };
    Ok(UncertaintyReport {
        dataset,
        exp: exp.to_string(),
        n,
        reference,
        root_aligned,
        procrustes_aligned,
        calibration,
        uncertainty_type,
        warnings,
        notes,
    })
}

/// The files [`UncertaintyReport::write`] writes into its directory.
pub const REPORT_FILES: [&str; 2] = ["scores.txt", "scores.json"];

/// The fewest samples the uncertainty metrics accept: with N ≤ 2 the 2 % sparsification cut
/// `int(21·N·0.02)` is 0 (an empty mean, NaN, as NumPy gives); from N = 3 every cut keeps at
/// least one entry.
pub const MIN_SAMPLES: usize = 3;

/// Why scores of the variants are NaN (the reference's NumPy / SciPy give nan there too, and
/// `scores.txt` keeps it): one message per cause, for a `warning:` line and the notes. `u` and
/// each variant's errors are joint-major, `21·n` long. Pearson uses joints 1..20.
fn undefined_scores(u: &[f64], n: usize, variants: &[(&str, &[f64], &Scores)]) -> Vec<String> {
    const WHY: &str = "Pearson's correlation with a constant is undefined";
    const AS_REFERENCE: &str = "(as NumPy / SciPy give; null in scores.json)";
    let mut out = Vec::new();
    let u_nw = &u[n..];
    if is_constant(u_nw) {
        out.push(format!(
            "every uncertainty of joints 1-20 is {}: {WHY}, so the three Pearson scores of \
             every variant are nan {AS_REFERENCE}",
            u_nw[0]
        ));
    } else {
        for (lo, hi) in [(1.0, 99.0), (5.0, 95.0)] {
            if is_constant(&clip_to_percentiles(u_nw, lo, hi)) {
                out.push(format!(
                    "the uncertainties of joints 1-20 clipped to their [{lo}, {hi}] percentiles \
                     are all equal: {WHY}, so Pearson Correlation_{lo}_{hi} of every variant is \
                     nan {AS_REFERENCE}"
                ));
            }
        }
    }
    for (name, e, _) in variants {
        if is_constant(&e[n..]) {
            out.push(format!(
                "every {name} error of joints 1-20 is {}: {WHY}, so the three Pearson scores of \
                 that variant are nan {AS_REFERENCE}",
                e[n]
            ));
        }
    }
    // Anything else (not expected with finite inputs and N ≥ MIN_SAMPLES) is still said.
    if out.is_empty() {
        for (name, _, s) in variants {
            let all = [s.pearson, s.pearson_1_99, s.pearson_5_95, s.ausc, s.ause];
            if all.iter().any(|v| v.is_nan()) {
                out.push(format!(
                    "the {name} scores (Pearson, _1_99, _5_95, AUSC, AUSE) hold a nan: {all:?}"
                ));
            }
        }
    }
    out
}

fn scores_json(s: &Scores, what: &str) -> Value {
    json!({
        "errors": what,
        "pearson": s.pearson,
        "pearson_1_99": s.pearson_1_99,
        "pearson_5_95": s.pearson_5_95,
        "ausc": s.ausc,
        "ause": s.ause,
        "ambiguous_sparsification_cuts": s.ambiguous_cuts,
    })
}

fn variant_json(v: &VariantCalibration, what: &str) -> Value {
    json!({
        "residual": what,
        "k": v.k,
        "n_used": v.n_used,
        "n_not_positive_definite": v.n_not_pd,
        "n_degenerate_alignment": v.n_degenerate,
        "nll_mean": v.nll,
        "mahalanobis_sq_mean": v.mean_mahalanobis_sq,
        "coverage_50": v.coverage[0],
        "coverage_90": v.coverage[1],
        "coverage_95": v.coverage[2],
        "chi2_ppf": {"0.5": v.chi2_thresholds[0], "0.9": v.chi2_thresholds[1], "0.95": v.chi2_thresholds[2]},
    })
}

impl UncertaintyReport {
    /// `scores.txt`: the reference's five lines, Python float repr.
    pub fn scores_txt(&self) -> String {
        let s = &self.reference;
        format!(
            "Pearson Correlation: {}\nPearson Correlation_1_99: {}\nPearson Correlation_5_95: {}\nAUSC: {}\nAUSE: {}\n",
            python_float_repr(s.pearson),
            python_float_repr(s.pearson_1_99),
            python_float_repr(s.pearson_5_95),
            python_float_repr(s.ausc),
            python_float_repr(s.ause)
        )
    }

    /// `scores.json`: the five numbers, the aligned variants and the calibration, labelled.
    pub fn scores_json(&self) -> Value {
        let r = &self.reference;
        let calib = self.calibration.as_ref().map(|c| {
            json!({
                "uncertainty_type": self.uncertainty_type,
                "levels": LEVELS,
                "unaligned": variant_json(&c.unaligned, "gt - pred, 63-D, covariance as stored"),
                "root_relative": variant_json(&c.root_relative, "(gt_j - gt_0) - (pred_j - pred_0), j = 1..20, 60-D, A Σ Aᵀ"),
                "procrustes_aligned": variant_json(&c.procrustes_aligned, "gt - align_w_scale(gt, pred), 63-D, (I⊗cR) Σ (I⊗cR)ᵀ"),
            })
        });
        json!({
            "dataset": self.dataset.name(),
            "exp": self.exp,
            "n": self.n,
            "pearson": r.pearson,
            "pearson_1_99": r.pearson_1_99,
            "pearson_5_95": r.pearson_5_95,
            "ausc": r.ausc,
            "ause": r.ause,
            "reference_unaligned": scores_json(r, "unaligned: ||gt - pred|| in the files' frames (the reference's scores.txt)"),
            "root_aligned": scores_json(&self.root_aligned, "root-aligned: joint 0 subtracted from gt and pred"),
            "procrustes_aligned": scores_json(&self.procrustes_aligned, "Procrustes-aligned: align_w_scale(gt, pred) on the 21 joints"),
            "calibration": calib,
            "notes": self.warnings.iter().chain(&self.notes).collect::<Vec<_>>(),
        })
    }

    /// A short human-readable table of the variants and the calibration.
    pub fn summary(&self) -> String {
        let mut t = String::new();
        t.push_str(&format!(
            "{:<22} {:>9} {:>9} {:>9} {:>10} {:>10}\n",
            "errors", "pearson", "p_1_99", "p_5_95", "AUSC", "AUSE"
        ));
        for (name, s) in [
            ("unaligned (reference)", &self.reference),
            ("root-aligned", &self.root_aligned),
            ("Procrustes-aligned", &self.procrustes_aligned),
        ] {
            t.push_str(&format!(
                "{name:<22} {:>9.4} {:>9.4} {:>9.4} {:>10.3} {:>10.3}\n",
                s.pearson, s.pearson_1_99, s.pearson_5_95, s.ausc, s.ause
            ));
        }
        if let Some(c) = &self.calibration {
            t.push_str(&format!(
                "\ncalibration of the covariances ({}):\n{:<22} {:>3} {:>12} {:>7} {:>7} {:>7} {:>7} {:>7}\n",
                self.uncertainty_type.as_deref().unwrap_or("type not recorded"),
                "residual",
                "k",
                "NLL",
                "cov50",
                "cov90",
                "cov95",
                "not PD",
                "c = 0"
            ));
            for (name, v) in [
                ("unaligned", &c.unaligned),
                ("root-relative", &c.root_relative),
                ("Procrustes-aligned", &c.procrustes_aligned),
            ] {
                t.push_str(&format!(
                    "{name:<22} {:>3} {:>12.3} {:>7.3} {:>7.3} {:>7.3} {:>7} {:>7}\n",
                    v.k,
                    v.nll,
                    v.coverage[0],
                    v.coverage[1],
                    v.coverage[2],
                    v.n_not_pd,
                    v.n_degenerate
                ));
            }
        }
        for n in &self.notes {
            t.push_str(&format!("note: {n}\n"));
        }
        t
    }

    /// Writes `dir/scores.txt` and `dir/scores.json` ([`REPORT_FILES`], creating `dir`); returns
    /// their paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let txt = dir.join(REPORT_FILES[0]);
        let js = dir.join(REPORT_FILES[1]);
        crate::model::weights::write_atomic(&txt, self.scores_txt().as_bytes())?;
        let text = serde_json::to_string_pretty(&self.scores_json())
            .map_err(|e| Error::Input(format!("cannot serialise scores.json: {e}")))?;
        crate::model::weights::write_atomic(&js, format!("{text}\n").as_bytes())?;
        Ok((txt, js))
    }
}
