//! Evaluation (SPEC §9): running a model over an evaluation set (`predict`), the official pose
//! metrics (`pose`), and the reference's uncertainty metrics with aligned variants and
//! calibration (`uncertainty`), plus the result file formats they share (`files`).
//!
//! Metric building blocks, each matching its NumPy / SciPy counterpart to ≤ 1e-9 (tests in
//! `tests/eval_metrics.rs` against `tests/fixtures/eval/`): `linalg` (3 × 3 SVD, FreiHAND's
//! `align_w_scale`, Cholesky), `kdtree` (exact nearest neighbours), `stats` (Pearson,
//! percentiles, Simpson, trapz, sparsification), `special` (incomplete gamma, `chi2.ppf`),
//! `calibration` (Gaussian NLL and ellipsoid coverage of the covariance side file), `json`
//! (the nested-array reader and Python's float repr).

pub mod calibration;
pub mod files;
pub mod json;
pub mod kdtree;
pub mod linalg;
pub mod pose;
pub mod predict;
pub mod special;
pub mod stats;
pub mod uncertainty;
