//! Evaluation (SPEC §9): running a model over an evaluation set (`predict`), the official pose
//! metrics (`pose`), and the reference's uncertainty metrics with aligned variants and
//! calibration (`uncertainty`), plus the result file formats they share (`files`).

pub mod predict;
