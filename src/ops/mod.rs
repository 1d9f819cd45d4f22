//! One file per op family, named as in kernels/. Each op has a plain CPU implementation (the
//! "CPU twin", the reference for its CUDA kernel) and dispatches on the tensor's device.

pub mod attention;
pub mod covariance;
pub mod drop_path;
pub mod elementwise;
pub mod geometry;
pub mod image;
pub mod layernorm;
pub mod linear;
pub mod mano;
pub mod math;
pub mod patch_embed;
