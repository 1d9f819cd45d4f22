//! Pose metrics (SPEC §9.4), the FreiHAND official procedure on `{dataset}-val.json`:
//!
//! * per sample, joints and vertices are Procrustes-aligned **independently** to the ground truth
//!   with `align_w_scale` ([`crate::eval::linalg::align_w_scale`]);
//! * PA-MPJPE / PA-MPVPE: the mean over joints (vertices) of each one's mean error over the samples
//!   (FreiHAND's `EvalUtil.get_measures`), reported in mm;
//! * AUC_J / AUC_V: per joint (vertex) the PCK curve `mean(err ≤ t)` at
//!   `t = linspace(0, 0.05 m, 100)`, `trapz(pck, t) / trapz(1, t)`, averaged over joints
//!   (vertices); on the aligned errors, as published;
//! * F@5mm / F@15mm on the aligned vertices: nearest-neighbour distances both ways (exact, k-d
//!   tree), `a = mean(d_pred→gt < th)`, `b = mean(d_gt→pred < th)`, `F = 2ab/(a+b)` (0 when
//!   `a + b = 0`), averaged over the samples;
//! * beside them, not aligned: MPJPE (raw coordinates) and root-aligned MPJPE (joint 0 of each set
//!   subtracted; the mean over all 21 joints, the root contributing 0), in mm.
//!
//! For HO-3D both files are in HO-3D joint order and the GT is in the OpenGL camera frame (y and z
//! negated) while the prediction is in the MANO frame: Procrustes absorbs that, but MPJPE and
//! root-aligned MPJPE are then frame-dependent numbers (large, not comparable with FreiHAND's).

use crate::error::{Error, Result};
use crate::eval::files::{PointSets, Predictions, NUM_JOINTS};
use crate::eval::kdtree::KdTree;
use crate::eval::linalg::align_w_scale;
use crate::eval::stats::{linspace, trapz};
use rayon::prelude::*;

/// The F-score thresholds, metres.
pub const F_THRESHOLDS: [f64; 2] = [0.005, 0.015];

/// Every pose metric of one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct PoseMetrics {
    pub n: usize,
    pub pa_mpjpe_mm: f64,
    pub pa_mpvpe_mm: f64,
    pub auc_j: f64,
    pub auc_v: f64,
    pub f5: f64,
    pub f15: f64,
    pub mpjpe_mm: f64,
    pub root_mpjpe_mm: f64,
}

fn dist(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    let (dx, dy, dz) = (a[0] - b[0], a[1] - b[1], a[2] - b[2]);
    (dx * dx + dy * dy + dz * dz).sqrt()
}

/// `‖gt_i − pred_i‖` per point.
pub fn point_errors(gt: &[[f64; 3]], pred: &[[f64; 3]]) -> Vec<f64> {
    gt.iter().zip(pred).map(|(g, p)| dist(g, p)).collect()
}

/// Per-joint errors after subtracting joint 0 from each set.
pub fn root_aligned_errors(gt: &[[f64; 3]], pred: &[[f64; 3]]) -> Vec<f64> {
    let (g0, p0) = (gt[0], pred[0]);
    gt.iter()
        .zip(pred)
        .map(|(g, p)| {
            let a = [g[0] - g0[0], g[1] - g0[1], g[2] - g0[2]];
            let b = [p[0] - p0[0], p[1] - p0[1], p[2] - p0[2]];
            dist(&a, &b)
        })
        .collect()
}

/// Per-point errors after `align_w_scale(gt, pred)`.
pub fn procrustes_errors(gt: &[[f64; 3]], pred: &[[f64; 3]]) -> Vec<f64> {
    let (aligned, _) = align_w_scale(gt, pred);
    point_errors(gt, &aligned)
}

/// FreiHAND's `calculate_fscore(gt, pred, th)` for each threshold in `thresholds`: the F-score
/// from the exact nearest-neighbour distances in both directions.
pub fn fscores(gt: &[[f64; 3]], pred: &[[f64; 3]], thresholds: &[f64]) -> Vec<f64> {
    if gt.is_empty() || pred.is_empty() {
        return vec![0.0; thresholds.len()];
    }
    // Only whether the nearest distance is below each threshold matters. For the thresholds in
    // ascending order: search within a radius slightly above t, stopping at the first point
    // surely below t; such a point settles t and every larger threshold, otherwise the bounded
    // search was exhaustive and t is not met. The margins keep the decision `sqrt(d²) < t` the
    // same as with the exact nearest distance.
    let mut order: Vec<usize> = (0..thresholds.len()).collect();
    order.sort_by(|&a, &b| thresholds[a].total_cmp(&thresholds[b]));
    // When both sets have the same size their points usually correspond (mesh vertices): the
    // point with the query's index is tried first, and settles the thresholds it is below
    // without a tree search (any point below t decides t).
    let same_size = gt.len() == pred.len();
    let counts = |tree: &KdTree, queries: &[[f64; 3]], others: &[[f64; 3]]| -> Vec<usize> {
        let mut c = vec![0usize; thresholds.len()];
        for (i, q) in queries.iter().enumerate() {
            let hint = if same_size {
                dist(q, &others[i])
            } else {
                f64::INFINITY
            };
            for (rank, &k) in order.iter().enumerate() {
                let th = thresholds[k];
                let below = hint < th || {
                    let bound = (th * (1.0 + 1e-9)).powi(2);
                    let stop = (th * (1.0 - 1e-9)).powi(2);
                    tree.nearest_until(q, bound, stop)
                        .is_some_and(|(_, d2)| d2.sqrt() < th)
                };
                if below {
                    for &k2 in &order[rank..] {
                        c[k2] += 1;
                    }
                    break;
                }
            }
        }
        c
    };
    let gt_tree = KdTree::new(gt);
    let pred_tree = KdTree::new(pred);
    let pred_to_gt = counts(&gt_tree, pred, gt);
    let gt_to_pred = counts(&pred_tree, gt, pred);
    thresholds
        .iter()
        .enumerate()
        .map(|(k, _)| {
            let a = pred_to_gt[k] as f64 / pred.len() as f64;
            let b = gt_to_pred[k] as f64 / gt.len() as f64;
            if a + b > 0.0 {
                2.0 * a * b / (a + b)
            } else {
                0.0
            }
        })
        .collect()
}

/// FreiHAND's `EvalUtil.get_measures(0, 0.05, 100)` AUC from per-part error lists
/// (`errors[part]` = that part's errors over all samples): the mean over parts of
/// `trapz(pck, t)/trapz(1, t)` with `pck(t) = mean(err ≤ t)`.
pub fn auc(errors: &[Vec<f64>], t_max: f64, steps: usize) -> f64 {
    let t = linspace(0.0, t_max, steps);
    let ones = vec![1.0; steps];
    let norm = trapz(&ones, &t);
    let aucs: Vec<f64> = errors
        .par_iter()
        .map(|e| {
            let mut s = e.clone();
            s.sort_by(f64::total_cmp);
            let n = s.len() as f64;
            let pck: Vec<f64> = t
                .iter()
                .map(|&th| s.partition_point(|&v| v <= th) as f64 / n)
                .collect();
            trapz(&pck, &t) / norm
        })
        .collect();
    aucs.iter().sum::<f64>() / aucs.len() as f64
}

/// The mean over parts of each part's mean error (`EvalUtil`'s `epe_mean_all`).
pub fn mean_of_part_means(errors: &[Vec<f64>]) -> f64 {
    let means: Vec<f64> = errors
        .iter()
        .map(|e| e.iter().sum::<f64>() / e.len() as f64)
        .collect();
    means.iter().sum::<f64>() / means.len() as f64
}

/// Transposes per-sample rows (`rows[i][part]`) into per-part columns.
fn by_part(rows: &[Vec<f64>], parts: usize) -> Vec<Vec<f64>> {
    (0..parts)
        .map(|p| rows.iter().map(|r| r[p]).collect())
        .collect()
}

struct SampleResult {
    joint: Vec<f64>,
    joint_root: Vec<f64>,
    joint_pa: Vec<f64>,
    vert_pa: Vec<f64>,
    f: Vec<f64>,
}

/// All pose metrics. The three inputs must have the same N (checked).
pub fn pose_metrics(
    pred: &Predictions,
    gt_xyz: &PointSets,
    gt_verts: &PointSets,
) -> Result<PoseMetrics> {
    let n = pred.n();
    if gt_xyz.n() != n || gt_verts.n() != n {
        return Err(Error::Input(format!(
            "sample counts differ: predictions {n}, GT joints {}, GT vertices {}",
            gt_xyz.n(),
            gt_verts.n()
        )));
    }
    if n == 0 {
        return Err(Error::Input("no samples to evaluate".into()));
    }
    let results: Vec<SampleResult> = (0..n)
        .into_par_iter()
        .map(|i| {
            let (gj, pj) = (gt_xyz.sample(i), pred.xyz.sample(i));
            let (gv, pv) = (gt_verts.sample(i), pred.verts.sample(i));
            let (aligned_v, _) = align_w_scale(gv, pv);
            SampleResult {
                joint: point_errors(gj, pj),
                joint_root: root_aligned_errors(gj, pj),
                joint_pa: procrustes_errors(gj, pj),
                vert_pa: point_errors(gv, &aligned_v),
                f: fscores(gv, &aligned_v, &F_THRESHOLDS),
            }
        })
        .collect();
    let nv = gt_verts.per_sample();
    let take = |f: fn(&SampleResult) -> &Vec<f64>| -> Vec<Vec<f64>> {
        let rows: Vec<Vec<f64>> = results.iter().map(|r| f(r).clone()).collect();
        let parts = rows.first().map_or(0, |r| r.len());
        by_part(&rows, parts)
    };
    let joint_pa = take(|r| &r.joint_pa);
    let vert_pa = take(|r| &r.vert_pa);
    debug_assert_eq!(vert_pa.len(), nv);
    debug_assert_eq!(joint_pa.len(), NUM_JOINTS);
    let f_mean = |k: usize| results.iter().map(|r| r.f[k]).sum::<f64>() / n as f64;
    Ok(PoseMetrics {
        n,
        pa_mpjpe_mm: 1000.0 * mean_of_part_means(&joint_pa),
        pa_mpvpe_mm: 1000.0 * mean_of_part_means(&vert_pa),
        auc_j: auc(&joint_pa, 0.05, 100),
        auc_v: auc(&vert_pa, 0.05, 100),
        f5: f_mean(0),
        f15: f_mean(1),
        mpjpe_mm: 1000.0 * mean_of_part_means(&take(|r| &r.joint)),
        root_mpjpe_mm: 1000.0 * mean_of_part_means(&take(|r| &r.joint_root)),
    })
}

/// Reads the predictions and the ground truth (`gt_dir/evaluation_xyz.json`,
/// `gt_dir/evaluation_verts.json`) and computes every pose metric.
pub fn evaluate(pred_file: &std::path::Path, gt_dir: &std::path::Path) -> Result<PoseMetrics> {
    use crate::eval::files::{check_same_n, read_gt_verts, read_gt_xyz, read_predictions};
    let gx = gt_dir.join("evaluation_xyz.json");
    let gv = gt_dir.join("evaluation_verts.json");
    let (pred, (gt_xyz, gt_verts)) = rayon::join(
        || read_predictions(pred_file),
        || rayon::join(|| read_gt_xyz(&gx), || read_gt_verts(&gv)),
    );
    let (pred, gt_xyz, gt_verts) = (pred?, gt_xyz?, gt_verts?);
    check_same_n(&[
        (pred_file, pred.n()),
        (gx.as_path(), gt_xyz.n()),
        (gv.as_path(), gt_verts.n()),
    ])?;
    pose_metrics(&pred, &gt_xyz, &gt_verts)
}

impl PoseMetrics {
    /// The JSON object `eval pose` writes.
    pub fn to_json(&self, dataset: &str) -> serde_json::Value {
        serde_json::json!({
            "dataset": dataset,
            "n": self.n,
            "pa_mpjpe_mm": self.pa_mpjpe_mm,
            "pa_mpvpe_mm": self.pa_mpvpe_mm,
            "auc_j": self.auc_j,
            "auc_v": self.auc_v,
            "f5": self.f5,
            "f15": self.f15,
            "mpjpe_mm": self.mpjpe_mm,
            "root_mpjpe_mm": self.root_mpjpe_mm,
        })
    }

    /// A short table.
    pub fn table(&self) -> String {
        format!(
            "samples           {:>9}\n\
             PA-MPJPE   (mm)   {:>9.3}\n\
             PA-MPVPE   (mm)   {:>9.3}\n\
             AUC_J  (0-50 mm)  {:>9.4}\n\
             AUC_V  (0-50 mm)  {:>9.4}\n\
             F@5mm             {:>9.4}\n\
             F@15mm            {:>9.4}\n\
             MPJPE      (mm)   {:>9.3}   (unaligned)\n\
             root MPJPE (mm)   {:>9.3}   (joint 0 subtracted)\n",
            self.n,
            self.pa_mpjpe_mm,
            self.pa_mpvpe_mm,
            self.auc_j,
            self.auc_v,
            self.f5,
            self.f15,
            self.mpjpe_mm,
            self.root_mpjpe_mm
        )
    }
}
