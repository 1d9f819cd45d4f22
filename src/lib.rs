//! handcov: HaMeR's hand-pose model with correlation-aware aleatoric uncertainty heads, in Rust
//! with CUDA kernels of our own. See README.md for the commands and SPEC.md for the model.
//!
//! Data flows one way: `bin` → `model` → `ops` → (`cuda` | CPU twin).

pub mod cli;
pub mod cuda;
pub mod engine;
pub mod error;
pub mod eval;
pub mod infer;
pub mod model;
pub mod ops;
pub mod synth;
pub mod tensor;
pub mod textfile;
pub mod train;

pub use error::{Error, Result};
pub use tensor::{DType, Device, Tensor};
