//! The evaluation's file formats (SPEC §9.1–§9.3): readers and writers, f64 in memory.
//!
//! | file | content |
//! |---|---|
//! | `{dataset}-val.json` | JSON `[xyz_list, verts_list]`: N × 21 × 3 joints and N × 778 × 3 vertices, metres, MANO frame; HO-3D joint order for `ho3d` |
//! | `{dataset}-val_uncertainty.json` | JSON `[uncertainty_list]` (one extra list level): N × 21 per-joint traces, m² |
//! | `{dataset}-val_covariance.safetensors` | tensor `covariance` f32 [N, 63, 63] (handcov's side file): index `3·j + c`, joints in the order of the xyz list, m²; metadata `uncertainty` = the head's type name |
//! | `evaluation_xyz.json`, `evaluation_verts.json` | ground truth: N × 21 × 3 and N × 778 × 3 |
//!
//! Readers take N from the file (never assume 3 960 / 11 524) and check that it is a regular
//! file, every level's length, the JSON syntax, that every number is a finite float32 value and
//! that no per-joint uncertainty is negative; any problem is one [`Error::Input`] (or
//! [`Error::Io`]) line naming the file and the place ("sample 17: 20 joints, expected 21").
//! Writers of the tools refuse an output path that is one of their inputs
//! ([`check_not_an_input`]). Points are kept as
//! [`PointSets`]: flat row-major f64, one `&[[f64; 3]]` slice per sample.
//!
//! Writers take flat f32 slices (the engine's outputs) plus N and write each value as Python's
//! `json.dumps(tensor.tolist())` would: the f32 cast to f64 and printed as Python's `repr` of that
//! f64 (shortest round-trip digits), `", "` separators. So a file we write and one the reference
//! writes are read back by either side as identical f64 numbers (and are identical text). Every
//! write is atomic (temporary file + rename).
//!
//! ```text
//! write_predictions(path, n, xyz: &[f32] /* n·21·3 */, verts: &[f32] /* n·778·3 */)
//! write_uncertainty(path, n, u: &[f32] /* n·21 */)
//! write_covariance(path, n, cov: &[f32] /* n·63·63 */, uncertainty: &str)
//! write_gt_points(path, &PointSets)                 // evaluation_{xyz,verts}.json layout
//! read_predictions(path) -> Predictions { xyz, verts }
//! read_uncertainty(path) -> JointUncertainty        // n × 21
//! read_covariance(path)  -> Covariance              // n × 63 × 63, f64
//! read_gt_xyz(path) / read_gt_verts(path) -> PointSets
//! check_same_n(&[(path, n), ...]) -> n                // one clear error when the Ns differ
//! check_regular_file(path)                           // not a directory, FIFO or device
//! check_not_an_input("--out", out, &[("--pred", pred), ...])  // out would clobber an input
//! Dataset::{FreiHand, Ho3d}: parse("freihand"|"ho3d"), name(), official_n(),
//!     predictions_file(), uncertainty_file(), covariance_file()
//! HO3D_ORDER, NUM_JOINTS = 21, NUM_VERTS = 778, DIM = 63
//! ```

use crate::error::{Error, Result};
use crate::eval::json::{self, Level};
use crate::model::weights::{save_f32, write_atomic, TensorFile};
use crate::tensor::Tensor;
use std::path::Path;

pub const NUM_JOINTS: usize = 21;
pub const NUM_VERTS: usize = 778;
/// Dimension of a flattened joint vector, `3·21`.
pub const DIM: usize = 3 * NUM_JOINTS;

/// HO-3D joint order: `ho3d_joint[k] = openpose_joint[HO3D_ORDER[k]]` (SPEC §9.1).
pub const HO3D_ORDER: [usize; NUM_JOINTS] = [
    0, 5, 6, 7, 9, 10, 11, 17, 18, 19, 13, 14, 15, 1, 2, 3, 4, 8, 12, 16, 20,
];

/// The two evaluation sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dataset {
    FreiHand,
    Ho3d,
}

impl Dataset {
    /// `freihand` or `ho3d` (the reference's `--dataset` values).
    pub fn parse(s: &str) -> Result<Dataset> {
        match s {
            "freihand" => Ok(Dataset::FreiHand),
            "ho3d" => Ok(Dataset::Ho3d),
            other => Err(Error::Input(format!(
                "unknown dataset {other:?}: expected freihand or ho3d"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dataset::FreiHand => "freihand",
            Dataset::Ho3d => "ho3d",
        }
    }

    /// The size of the official evaluation split (the reference asserts it; we only report a
    /// different N).
    pub fn official_n(self) -> usize {
        match self {
            Dataset::FreiHand => 3960,
            Dataset::Ho3d => 11524,
        }
    }

    /// `{dataset}-val.json`
    pub fn predictions_file(self) -> String {
        format!("{}-val.json", self.name())
    }

    /// `{dataset}-val_uncertainty.json` (the name `uncertainty_eval/eval_uncertainty.py` reads,
    /// SPEC §9.3; §9.2 calls the file `{dataset}_uncertainty.json`).
    pub fn uncertainty_file(self) -> String {
        format!("{}-val_uncertainty.json", self.name())
    }

    /// `{dataset}-val_covariance.safetensors`
    pub fn covariance_file(self) -> String {
        format!("{}-val_covariance.safetensors", self.name())
    }
}

/// N sets of `per_sample` 3D points, flat row-major f64.
#[derive(Clone, Debug, PartialEq)]
pub struct PointSets {
    n: usize,
    per_sample: usize,
    data: Vec<f64>,
}

impl PointSets {
    /// `data.len()` must be `n · per_sample · 3`.
    pub fn new(n: usize, per_sample: usize, data: Vec<f64>) -> Result<PointSets> {
        if data.len() != n * per_sample * 3 {
            return Err(Error::Input(format!(
                "point sets: {} values for {n} × {per_sample} × 3",
                data.len()
            )));
        }
        Ok(PointSets {
            n,
            per_sample,
            data,
        })
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn per_sample(&self) -> usize {
        self.per_sample
    }

    /// The points of sample `i` (`i < n`).
    pub fn sample(&self, i: usize) -> &[[f64; 3]] {
        let k = self.per_sample * 3;
        bytemuck::cast_slice(&self.data[i * k..(i + 1) * k])
    }

    /// All points, sample-major.
    pub fn points(&self) -> &[[f64; 3]] {
        bytemuck::cast_slice(&self.data)
    }

    pub fn as_flat(&self) -> &[f64] {
        &self.data
    }
}

/// The contents of `{dataset}-val.json`.
#[derive(Clone, Debug)]
pub struct Predictions {
    /// N × 21 joints.
    pub xyz: PointSets,
    /// N × 778 vertices.
    pub verts: PointSets,
}

impl Predictions {
    pub fn n(&self) -> usize {
        self.xyz.n()
    }
}

/// The contents of `{dataset}-val_uncertainty.json`: N × 21 per-joint values.
#[derive(Clone, Debug, PartialEq)]
pub struct JointUncertainty {
    n: usize,
    data: Vec<f64>,
}

impl JointUncertainty {
    pub fn new(n: usize, data: Vec<f64>) -> Result<JointUncertainty> {
        if data.len() != n * NUM_JOINTS {
            return Err(Error::Input(format!(
                "uncertainty: {} values for {n} × 21",
                data.len()
            )));
        }
        Ok(JointUncertainty { n, data })
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// The 21 values of sample `i`.
    pub fn sample(&self, i: usize) -> &[f64] {
        &self.data[i * NUM_JOINTS..(i + 1) * NUM_JOINTS]
    }

    pub fn as_flat(&self) -> &[f64] {
        &self.data
    }
}

/// The covariance side file: N covariance matrices 63 × 63 (f64 from the stored f32).
#[derive(Clone, Debug)]
pub struct Covariance {
    n: usize,
    data: Vec<f64>,
    /// The metadata `uncertainty` (the head's type), when present.
    pub uncertainty: Option<String>,
}

impl Covariance {
    pub fn new(n: usize, data: Vec<f64>, uncertainty: Option<String>) -> Result<Covariance> {
        if data.len() != n * DIM * DIM {
            return Err(Error::Input(format!(
                "covariance: {} values for {n} × 63 × 63",
                data.len()
            )));
        }
        Ok(Covariance {
            n,
            data,
            uncertainty,
        })
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Sample `i`'s matrix, row-major 63 × 63.
    pub fn sample(&self, i: usize) -> &[f64] {
        &self.data[i * DIM * DIM..(i + 1) * DIM * DIM]
    }
}

/// Checks that `path` is a regular file (following symbolic links) before it is opened: a
/// directory gives a clear message, and a FIFO or a device would block or never end.
pub fn check_regular_file(path: &Path) -> Result<()> {
    crate::textfile::check_regular(path).map(|_| ())
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    check_regular_file(path)?;
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Refuses to write `output` when it is (resolves to) one of the `inputs` (a label for the
/// message, such as `--pred` or `the ground truth`, and the path): writing would destroy that input. Paths are
/// compared canonicalised (symbolic links and `..` resolved); an output that does not exist
/// yet cannot be an existing input.
pub fn check_not_an_input(flag: &str, output: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    let Ok(out) = std::fs::canonicalize(output) else {
        return Ok(());
    };
    for &(label, input) in inputs {
        if std::fs::canonicalize(input).is_ok_and(|c| c == out) {
            return Err(Error::Input(format!(
                "{flag} {} is the same file as {label} {}: writing there would destroy that \
                 input; choose another output path",
                output.display(),
                input.display()
            )));
        }
    }
    Ok(())
}

const XYZ_LEVELS: [Level; 3] = [
    Level::any("samples"),
    Level::exactly(NUM_JOINTS, "joints"),
    Level::exactly(3, "coordinates"),
];
const VERTS_LEVELS: [Level; 3] = [
    Level::any("samples"),
    Level::exactly(NUM_VERTS, "vertices"),
    Level::exactly(3, "coordinates"),
];
const UNC_LEVELS: [Level; 2] = [Level::any("samples"), Level::exactly(NUM_JOINTS, "joints")];

/// Reads `{dataset}-val.json`; the two lists must have the same N.
pub fn read_predictions(path: &Path) -> Result<Predictions> {
    let bytes = read_bytes(path)?;
    let mut parts = json::parse_parts(
        path,
        &bytes,
        &[("xyz_list", &XYZ_LEVELS), ("verts_list", &VERTS_LEVELS)],
    )?;
    let (nv, verts) = parts.pop().unwrap_or_default();
    let (nx, xyz) = parts.pop().unwrap_or_default();
    if nx != nv {
        return Err(Error::Input(format!(
            "{}: xyz_list has {nx} samples but verts_list has {nv}",
            path.display()
        )));
    }
    Ok(Predictions {
        xyz: PointSets::new(nx, NUM_JOINTS, xyz)?,
        verts: PointSets::new(nv, NUM_VERTS, verts)?,
    })
}

/// Reads `{dataset}-val_uncertainty.json` (`[uncertainty_list]`, N × 21).
pub fn read_uncertainty(path: &Path) -> Result<JointUncertainty> {
    let bytes = read_bytes(path)?;
    let mut parts = json::parse_parts(path, &bytes, &[("uncertainty_list", &UNC_LEVELS)])?;
    let (n, data) = parts.pop().unwrap_or_default();
    if let Some(k) = data.iter().position(|v| *v < 0.0) {
        return Err(Error::Input(format!(
            "{}: uncertainty_list, sample {}, joint {} is negative ({}); a per-joint \
             uncertainty is a variance (m²) and cannot be below 0",
            path.display(),
            k / NUM_JOINTS,
            k % NUM_JOINTS,
            data[k]
        )));
    }
    JointUncertainty::new(n, data)
}

/// Reads a ground-truth `evaluation_xyz.json` (N × 21 × 3).
pub fn read_gt_xyz(path: &Path) -> Result<PointSets> {
    let bytes = read_bytes(path)?;
    let (n, data) = json::parse_nested(path, &bytes, &XYZ_LEVELS)?;
    PointSets::new(n, NUM_JOINTS, data)
}

/// Reads a ground-truth `evaluation_verts.json` (N × 778 × 3).
pub fn read_gt_verts(path: &Path) -> Result<PointSets> {
    let bytes = read_bytes(path)?;
    let (n, data) = json::parse_nested(path, &bytes, &VERTS_LEVELS)?;
    PointSets::new(n, NUM_VERTS, data)
}

/// Reads the covariance side file: tensor `covariance` [N, 63, 63] (any float dtype), finite.
pub fn read_covariance(path: &Path) -> Result<Covariance> {
    let shown = path.display();
    check_regular_file(path)?;
    let file = TensorFile::open(path).map_err(Error::as_input)?;
    let shape = file.shape("covariance").ok_or_else(|| {
        Error::Input(format!(
            "{shown}: no tensor `covariance` (expected f32 [N, 63, 63])"
        ))
    })?;
    if shape.len() != 3 || shape[1] != DIM || shape[2] != DIM || shape[0] == 0 {
        return Err(Error::Input(format!(
            "{shown}: tensor `covariance` has shape {shape:?}, expected [N, 63, 63] with N ≥ 1"
        )));
    }
    let n = shape[0];
    let t = file.f32("covariance", None).map_err(Error::as_input)?;
    let data: Vec<f64> = t.data().iter().map(|&v| v as f64).collect();
    if let Some(k) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::Input(format!(
            "{shown}: covariance of sample {} has a non-finite entry ({}) at row {}, column {}",
            k / (DIM * DIM),
            data[k],
            (k / DIM) % DIM,
            k % DIM
        )));
    }
    let uncertainty = file.metadata().and_then(|m| m.get("uncertainty").cloned());
    Covariance::new(n, data, uncertainty)
}

fn check_len(what: &str, got: usize, n: usize, per: usize, shape: &str) -> Result<()> {
    if got != n * per {
        return Err(Error::Input(format!(
            "{what}: {got} values, expected N × {shape} = {} for N = {n}",
            n * per
        )));
    }
    Ok(())
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Writes `{dataset}-val.json`: `xyz` holds `n·21·3` values, `verts` `n·778·3` (row-major).
pub fn write_predictions(path: &Path, n: usize, xyz: &[f32], verts: &[f32]) -> Result<()> {
    check_len("predictions xyz", xyz.len(), n, NUM_JOINTS * 3, "21 × 3")?;
    check_len(
        "predictions verts",
        verts.len(),
        n,
        NUM_VERTS * 3,
        "778 × 3",
    )?;
    let a = json::json_nested_parallel(&[n, NUM_JOINTS, 3], &widen(xyz));
    let b = json::json_nested_parallel(&[n, NUM_VERTS, 3], &widen(verts));
    let text = format!("[{a}, {b}]");
    write_atomic(path, text.as_bytes())
}

/// Writes `{dataset}-val_uncertainty.json` (`[uncertainty_list]`): `u` holds `n·21` values.
pub fn write_uncertainty(path: &Path, n: usize, u: &[f32]) -> Result<()> {
    check_len("uncertainty", u.len(), n, NUM_JOINTS, "21")?;
    let a = json::json_nested_parallel(&[n, NUM_JOINTS], &widen(u));
    write_atomic(path, format!("[{a}]").as_bytes())
}

/// Writes the covariance side file: `cov` holds `n·63·63` values (sample-major, row-major, index
/// `3·j + c`); `uncertainty` (the head's type name) goes into the metadata.
pub fn write_covariance(path: &Path, n: usize, cov: &[f32], uncertainty: &str) -> Result<()> {
    check_len("covariance", cov.len(), n, DIM * DIM, "63 × 63")?;
    let t = Tensor::from_vec(&[n, DIM, DIM], cov.to_vec())?;
    let meta =
        std::collections::HashMap::from([("uncertainty".to_string(), uncertainty.to_string())]);
    save_f32(path, &[("covariance", &t)], Some(meta))
}

/// Writes point sets in the ground-truth layout (`evaluation_xyz.json` / `evaluation_verts.json`:
/// N × P × 3, f64 values in Python's repr).
pub fn write_gt_points(path: &Path, points: &PointSets) -> Result<()> {
    let text = json::json_nested_parallel(&[points.n(), points.per_sample(), 3], points.as_flat());
    write_atomic(path, text.as_bytes())
}

/// Checks that every file of an evaluation has the same N: `files` are (file name, N).
pub fn check_same_n(files: &[(&Path, usize)]) -> Result<usize> {
    let Some(&(first, n)) = files.first() else {
        return Err(Error::Input("no input files".into()));
    };
    for &(p, m) in &files[1..] {
        if m != n {
            return Err(Error::Input(format!(
                "{} has {m} samples but {} has {n}: the files must come from the same evaluation set",
                p.display(),
                first.display()
            )));
        }
    }
    Ok(n)
}
