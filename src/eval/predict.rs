//! `eval predict`: runs a model over an evaluation set (FreiHAND v2 / HO-3D v2 evaluation split)
//! and collects what the reference's `eval.py` and `eval_uncertainty.py` write (SPEC §9.1–9.2):
//! per sample the 21 joints and the vertices (metres, MANO frame, no camera translation, no root
//! centring), the per-joint uncertainty (trace of each joint's 3×3 covariance block) and the
//! 63×63 covariance, with the joints in the dataset's order.
//!
//! The evaluation-set file (eval/README.md) is an ordered list of samples — image path, box
//! `center` + `scale` (side in units of 200 px) and handedness. Crops follow the evaluation rule
//! (SPEC §1.2, `rescale_factor = -1`: the box expanded to 3:4, square crop, no blur) through
//! [`crate::infer`]; left hands are mirrored in and un-mirrored out as `infer` does.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::eval::files::{self, Dataset, DIM as COV_DIM, HO3D_ORDER, NUM_JOINTS};
use crate::infer::{
    hand_covariance, hand_keypoints_3d, hand_vertices, load_image, make_crop, stack, BoxEntry,
    HandCrop, Scale,
};
use crate::model::Prediction;
use crate::ops::image::CropBox;
use rayon::prelude::*;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Output joint k is the model's (OpenPose-order) joint `joint_order(dataset)[k]`: the identity
/// for FreiHAND, [`HO3D_ORDER`] for HO-3D (SPEC §9.1).
pub fn joint_order(dataset: Dataset) -> [usize; NUM_JOINTS] {
    match dataset {
        Dataset::FreiHand => std::array::from_fn(|j| j),
        Dataset::Ho3d => HO3D_ORDER,
    }
}

// ---- the evaluation-set file ----------------------------------------------------------------

/// One sample of an evaluation set: the image (as written in the file, and resolved) and its box.
#[derive(Clone, Debug)]
pub struct EvalSample {
    pub image: String,
    pub path: PathBuf,
    pub cbox: CropBox,
}

/// An evaluation set: the samples in output order.
#[derive(Clone, Debug)]
pub struct EvalSet {
    /// The file's `dataset` field, when it has one.
    pub dataset: Option<String>,
    pub samples: Vec<EvalSample>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFile {
    dataset: Option<String>,
    /// Free text (where the boxes came from); not used.
    #[allow(dead_code)]
    source: Option<String>,
    samples: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleFile {
    image: String,
    center: [f64; 2],
    scale: Scale,
    is_right: Option<bool>,
}

const SET_FORMAT: &str = "expected {\"dataset\": \"freihand\", \"samples\": [{\"image\": \"rgb/00000000.jpg\", \"center\": [cx, cy], \"scale\": s or [sw, sh], \"is_right\": true}, ...]} (see eval/README.md)";

/// Parses an evaluation-set file. Relative image paths are resolved against `root`.
pub fn parse_eval_set(text: &str, origin: &str, root: &Path) -> Result<EvalSet> {
    let file: SetFile = serde_json::from_str(text).map_err(|e| {
        Error::Input(format!(
            "{origin}: malformed evaluation set ({e}); {SET_FORMAT}"
        ))
    })?;
    if file.samples.is_empty() {
        return Err(Error::Input(format!(
            "{origin}: the evaluation set has no samples"
        )));
    }
    let samples = file
        .samples
        .into_iter()
        .enumerate()
        .map(|(k, v)| {
            let s: SampleFile = serde_json::from_value(v)
                .map_err(|e| Error::Input(format!("{origin}: sample {k}: {e}; {SET_FORMAT}")))?;
            if s.image.is_empty() {
                return Err(Error::Input(format!(
                    "{origin}: sample {k}: empty image path"
                )));
            }
            let entry = BoxEntry {
                center: Some(s.center),
                scale: Some(s.scale),
                bbox: None,
                rescale: None,
                is_right: s.is_right,
            };
            let cbox = entry.to_crop_box().map_err(|m| {
                Error::Input(format!("{origin}: sample {k} (\"{}\"): {m}", s.image))
            })?;
            let path = root.join(&s.image);
            Ok(EvalSample {
                image: s.image,
                path,
                cbox,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(EvalSet {
        dataset: file.dataset,
        samples,
    })
}

/// Reads and parses an evaluation-set file; images resolve against `root`, or against the file's
/// directory when `root` is `None`.
pub fn load_eval_set(path: &Path, root: Option<&Path>) -> Result<EvalSet> {
    files::check_regular_file(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let dir = match root {
        Some(r) => r.to_path_buf(),
        None => path.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    parse_eval_set(&text, &path.display().to_string(), &dir)
}

/// Checks, before any model work, that every image exists, is a regular file and has a readable
/// JPEG/PNG header (a full decode happens when its batch is loaded). The first failure in sample
/// order is reported, naming the sample and the file.
pub fn check_images(samples: &[EvalSample]) -> Result<()> {
    let bad = samples
        .par_iter()
        .enumerate()
        .filter_map(|(k, s)| {
            let what = |m: String| format!("sample {k}: {}: {m}", s.path.display());
            // A FIFO or device would block the open or the read: only regular files.
            if std::fs::metadata(&s.path).is_ok_and(|m| !m.is_file()) {
                return Some((k, what("not a regular file".into())));
            }
            let reader = match image::ImageReader::open(&s.path) {
                Ok(r) => r,
                Err(e) => return Some((k, what(e.to_string()))),
            };
            let reader = match reader.with_guessed_format() {
                Ok(r) => r,
                Err(e) => {
                    return Some((
                        k,
                        what(format!(
                            "not a readable image ({})",
                            crate::error::flatten(&e)
                        )),
                    ))
                }
            };
            if reader.format().is_none() {
                return Some((
                    k,
                    what("not a readable image (neither JPEG nor PNG)".into()),
                ));
            }
            match reader.into_dimensions() {
                Ok(_) => None,
                Err(e) => Some((
                    k,
                    what(format!(
                        "not a readable image ({})",
                        crate::error::flatten(&e)
                    )),
                )),
            }
        })
        .min_by_key(|(k, _)| *k);
    match bad {
        Some((_, m)) => Err(Error::Input(m)),
        None => Ok(()),
    }
}

// ---- reordering -----------------------------------------------------------------------------

/// The joints `[21·3]` in the order `order` (output joint k = input joint `order[k]`).
pub fn reorder_joints(xyz: &[f32], order: &[usize; NUM_JOINTS]) -> Vec<f32> {
    order
        .iter()
        .flat_map(|&j| xyz[3 * j..3 * j + 3].iter().copied())
        .collect()
}

/// Per-joint values `[21]` in the order `order`.
pub fn reorder_values(u: &[f32], order: &[usize; NUM_JOINTS]) -> Vec<f32> {
    order.iter().map(|&j| u[j]).collect()
}

/// The 63×63 covariance with rows and columns permuted alike: entry (3k+c, 3l+d) of the result
/// is entry (3·order[k]+c, 3·order[l]+d) of `cov`.
pub fn reorder_covariance(cov: &[f32], order: &[usize; NUM_JOINTS]) -> Vec<f32> {
    let idx: Vec<usize> = order
        .iter()
        .flat_map(|&j| [3 * j, 3 * j + 1, 3 * j + 2])
        .collect();
    let mut out = Vec::with_capacity(COV_DIM * COV_DIM);
    for &r in &idx {
        for &c in &idx {
            out.push(cov[r * COV_DIM + c]);
        }
    }
    out
}

// ---- the predictions ------------------------------------------------------------------------

/// Everything `eval predict` writes, flat and in output order (joints in the dataset's order).
#[derive(Clone, Debug, Default)]
pub struct EvalPredictions {
    /// Samples so far.
    pub n: usize,
    pub num_verts: usize,
    /// `[N, 21, 3]`, metres, MANO frame, the hand's own handedness.
    pub xyz: Vec<f32>,
    /// `[N, V, 3]`, never re-ordered.
    pub verts: Vec<f32>,
    /// `[N, 21]` (uncertainty models only): trace of each joint's 3×3 covariance block, m².
    pub uncertainty: Option<Vec<f32>>,
    /// `[N, 63, 63]` (uncertainty models only), index 3·joint + coordinate, m².
    pub covariance: Option<Vec<f32>>,
}

impl EvalPredictions {
    /// Appends the hands of one batch (`is_right[i]` for hand i of `pred`).
    pub fn push_batch(
        &mut self,
        pred: &Prediction,
        is_right: &[bool],
        order: &[usize; NUM_JOINTS],
    ) -> Result<()> {
        let b = pred.pred_keypoints_3d.dim(0);
        if b != is_right.len() {
            return Err(Error::Input(format!(
                "internal: batch of {b} predictions for {} hands",
                is_right.len()
            )));
        }
        self.num_verts = pred.pred_vertices.dim(1);
        for (i, &right) in is_right.iter().enumerate() {
            self.xyz
                .extend(reorder_joints(&hand_keypoints_3d(pred, i, right), order));
            self.verts.extend(hand_vertices(pred, i, right));
            if let Some(u) = &pred.uncertainty {
                // The trace of a joint's block is the same in the mirrored frame (DΣD keeps
                // the diagonal), so the model's per-joint values apply to both hands.
                let unc = &u.joint_uncertainty.data()[i * NUM_JOINTS..(i + 1) * NUM_JOINTS];
                self.uncertainty
                    .get_or_insert_with(Vec::new)
                    .extend(reorder_values(unc, order));
                if let Some(cov) = hand_covariance(pred, i, right) {
                    self.covariance
                        .get_or_insert_with(Vec::new)
                        .extend(reorder_covariance(&cov, order));
                }
            }
        }
        self.n += b;
        Ok(())
    }
}

/// Progress of a run, reported after every batch.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub elapsed: std::time::Duration,
}

/// Runs `engine` over `samples` in batches of `batch` (fp32 or whatever the engine was built
/// for; no augmentation) and collects the predictions in sample order. Images are decoded and
/// cropped on a second thread while the model runs. `progress` is called after every batch.
pub fn predict(
    engine: &mut Engine,
    samples: &[EvalSample],
    dataset: Dataset,
    batch: usize,
    mut progress: impl FnMut(Progress),
) -> Result<EvalPredictions> {
    if batch == 0 {
        return Err(Error::Input("the batch size must be at least 1".into()));
    }
    let size = engine.model().config.image_size;
    let order = joint_order(dataset);
    let start = std::time::Instant::now();
    let mut out = EvalPredictions::default();
    std::thread::scope(|scope| -> Result<()> {
        // Two batches in flight: one being run, one being loaded.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<HandCrop>>>(1);
        scope.spawn(move || {
            for (c, chunk) in samples.chunks(batch).enumerate() {
                let crops = chunk
                    .par_iter()
                    .enumerate()
                    .map(|(k, s)| {
                        let index = c * batch + k;
                        let img = load_image(&s.path).map_err(|e| {
                            Error::Input(format!("sample {index} (\"{}\"): {e}", s.image))
                        })?;
                        Ok(make_crop(index, &img, s.cbox, size))
                    })
                    .collect::<Result<Vec<_>>>();
                let failed = crops.is_err();
                // A closed channel means the model side stopped (an error): stop too.
                if tx.send(crops).is_err() || failed {
                    break;
                }
            }
        });
        for crops in rx {
            let crops = crops?;
            let refs: Vec<&HandCrop> = crops.iter().collect();
            let pred = engine.forward(&stack(&refs, size)?)?;
            let is_right: Vec<bool> = crops.iter().map(|c| c.cbox.is_right).collect();
            out.push_batch(&pred, &is_right, &order)?;
            progress(Progress {
                done: out.n,
                total: samples.len(),
                elapsed: start.elapsed(),
            });
        }
        Ok(())
    })?;
    if out.n != samples.len() {
        return Err(Error::Input(format!(
            "internal: {} predictions for {} samples",
            out.n,
            samples.len()
        )));
    }
    Ok(out)
}

/// The files of one run, under `{out}/{exp}/`.
#[derive(Clone, Debug)]
pub struct OutputPaths {
    pub predictions: PathBuf,
    pub uncertainty: PathBuf,
    pub covariance: PathBuf,
}

impl OutputPaths {
    pub fn new(dir: &Path, dataset: Dataset) -> OutputPaths {
        OutputPaths {
            predictions: dir.join(dataset.predictions_file()),
            uncertainty: dir.join(dataset.uncertainty_file()),
            covariance: dir.join(dataset.covariance_file()),
        }
    }
}

/// Writes the predictions (always) and, for an uncertainty model, the per-joint uncertainty and
/// the covariance (metadata `uncertainty` = `uncertainty_type`), each atomically, through the
/// writers of [`crate::eval::files`]. Returns the paths written.
pub fn write_outputs(
    paths: &OutputPaths,
    p: &EvalPredictions,
    uncertainty_type: &str,
) -> Result<Vec<PathBuf>> {
    if let Some(dir) = paths.predictions.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    files::write_predictions(&paths.predictions, p.n, &p.xyz, &p.verts)?;
    let mut written = vec![paths.predictions.clone()];
    if let (Some(u), Some(cov)) = (&p.uncertainty, &p.covariance) {
        files::write_uncertainty(&paths.uncertainty, p.n, u)?;
        files::write_covariance(&paths.covariance, p.n, cov, uncertainty_type)?;
        written.push(paths.uncertainty.clone());
        written.push(paths.covariance.clone());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ho3d_order_is_a_permutation() {
        let mut seen = [false; NUM_JOINTS];
        for &j in &HO3D_ORDER {
            assert!(!seen[j]);
            seen[j] = true;
        }
        assert_eq!(joint_order(Dataset::FreiHand)[20], 20);
        assert_eq!(joint_order(Dataset::Ho3d), HO3D_ORDER);
    }

    #[test]
    fn covariance_reorder_matches_joint_reorder() {
        // Σ = x xᵀ for a vector x: reordering Σ must equal the outer product of the reordered x.
        let x: Vec<f32> = (0..COV_DIM).map(|i| (i as f32) * 0.5 - 7.0).collect();
        let cov: Vec<f32> = (0..COV_DIM * COV_DIM)
            .map(|k| x[k / COV_DIM] * x[k % COV_DIM])
            .collect();
        let xr = reorder_joints(&x, &HO3D_ORDER);
        let cr = reorder_covariance(&cov, &HO3D_ORDER);
        for r in 0..COV_DIM {
            for c in 0..COV_DIM {
                assert_eq!(cr[r * COV_DIM + c], xr[r] * xr[c]);
            }
        }
        let u: Vec<f32> = (0..NUM_JOINTS).map(|j| j as f32).collect();
        assert_eq!(reorder_values(&u, &HO3D_ORDER)[1], 5.0);
    }

    #[test]
    fn eval_set_parses_and_rejects() {
        let root = Path::new("/data");
        let set = parse_eval_set(
            r#"{"dataset": "freihand", "samples": [
                {"image": "rgb/00000000.jpg", "center": [112, 100], "scale": 0.5},
                {"image": "/abs/b.png", "center": [10, 20], "scale": [0.3, 0.6], "is_right": false}]}"#,
            "set.json",
            root,
        )
        .unwrap();
        assert_eq!(set.dataset.as_deref(), Some("freihand"));
        assert_eq!(set.samples.len(), 2);
        assert_eq!(set.samples[0].path, Path::new("/data/rgb/00000000.jpg"));
        assert_eq!(set.samples[1].path, Path::new("/abs/b.png"));
        assert!(set.samples[0].cbox.is_right && !set.samples[1].cbox.is_right);
        // 100×100 px expanded to 3:4 → side 133.3; 60×120 px → max(120, 80) = 120.
        assert_eq!(set.samples[0].cbox.box_size, 100.0 * 4.0 / 3.0);
        assert_eq!(set.samples[1].cbox.box_size, 120.0);
        for (bad, needle) in [
            ("{", "malformed evaluation set"),
            (r#"{"samples": []}"#, "no samples"),
            (
                r#"{"samples": [{"image": "a.jpg", "center": [1, 2]}]}"#,
                "sample 0",
            ),
            (
                r#"{"samples": [{"image": "a.jpg", "center": [1, 2], "scale": 1}, {"image": "b.jpg", "center": [1, 2], "scale": -1}]}"#,
                "sample 1 (\"b.jpg\")",
            ),
            (
                r#"{"samples": [{"image": "a.jpg", "center": [1, 2], "scale": 1, "bbox": [0, 0, 1, 1]}]}"#,
                "unknown field",
            ),
            (r#"{"samples": [], "extra": 1}"#, "unknown field"),
            (
                r#"{"samples": [{"image": "", "center": [1, 2], "scale": 1}]}"#,
                "empty image path",
            ),
        ] {
            let e = parse_eval_set(bad, "set.json", root)
                .unwrap_err()
                .to_string();
            assert!(e.contains("set.json") && e.contains(needle), "{bad}: {e}");
        }
    }
}
