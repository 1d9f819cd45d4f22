//! Training: the losses of SPEC §6.5 / §7 with hand-written backward passes, the HMR-style
//! discriminator (§7.3), a batched f64 Cholesky for the exact low-rank NLL (§15b.2) and the
//! counter-based random numbers every stochastic part of training draws from.
//!
//! Gradient conventions (DESIGN.md, llm.c style): a backward pass OVERWRITES the gradients of
//! its inputs (activations) and ACCUMULATES (`+=`) into the gradients of parameters. Every loss
//! takes a `scale` and writes `scale · ∂L/∂x`, so the trainer passes the term's weight
//! (`LossWeights`) and no extra pass is needed; the returned value is the unscaled `L`.
//!
//! The loss and discriminator code is generic over [`Scalar`] (f32 in training, f64 in the
//! finite-difference tests, which therefore check exactly the code that trains).

pub mod adamw;
pub mod bench;
pub mod checkpoint;
pub mod cholesky;
pub mod data;
pub mod discriminator;
pub mod gpu;
pub mod losses;
pub mod nll;
pub mod rng;
pub mod step;
pub mod trainer;

#[cfg(test)]
pub(crate) mod gradcheck;
#[cfg(test)]
mod reference_tests;

use crate::error::{Error, Result};
use crate::ops::linear::{matmul_strided_cpu, Par, Strides};
use std::path::Path;

/// Checks the output directory `dir` of a run before any work: an empty path, or an existing
/// path that is not a directory, is an error that says so (rather than the system's "File
/// exists" when it is created); `flag` names it (`--out`).
pub fn check_out_dir(flag: &str, dir: &Path) -> Result<()> {
    if dir.as_os_str().is_empty() {
        return Err(Error::Input(format!("{flag}: empty path")));
    }
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(Error::Input(format!(
            "{flag} {}: exists and is not a directory ({flag} names the directory to write \
             into)",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// Creates the output directory `dir` of a run (and its parents) where it is missing, after
/// [`check_out_dir`].
pub fn create_out_dir(flag: &str, dir: &Path) -> Result<()> {
    check_out_dir(flag, dir)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// A float type the losses and the discriminator run in: f32 (the model's precision) or f64
/// (finite-difference checks). Loss values and 63×63 algebra are f64 either way.
pub trait Scalar:
    Copy + Default + PartialEq + PartialOrd + Send + Sync + std::fmt::Debug + 'static
{
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    /// `c[m,n] = a[m,k] · b[k,n]` (operands by (row, column) strides, `c` row-major,
    /// overwritten). The caller keeps every strided index inside its slice.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        m: usize,
        n: usize,
        k: usize,
        a: &[Self],
        sa: Strides,
        b: &[Self],
        sb: Strides,
        c: &mut [Self],
    );
}

impl Scalar for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn matmul(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        sa: Strides,
        b: &[f32],
        sb: Strides,
        c: &mut [f32],
    ) {
        matmul_strided_cpu(m, n, k, a, sa, b, sb, c, Par::Auto)
    }
}

impl Scalar for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn matmul(
        m: usize,
        n: usize,
        k: usize,
        a: &[f64],
        sa: Strides,
        b: &[f64],
        sb: Strides,
        c: &mut [f64],
    ) {
        use rayon::prelude::*;
        // Plain loops, one task per output element: f64 runs only in tests, on small problems.
        let nn = n.max(1);
        c[..m * n].par_iter_mut().enumerate().for_each(|(ij, cij)| {
            let (i, j) = (ij / nn, ij % nn);
            let mut acc = 0f64;
            for p in 0..k {
                acc += a[i * sa.0 + p * sa.1] * b[p * sb.0 + j * sb.1];
            }
            *cij = acc;
        });
    }
}

/// Checks that a slice has the length a loss expects; an `Error::Input` names it otherwise.
pub(crate) fn expect_len<T>(what: &str, v: &[T], len: usize) -> crate::Result<()> {
    if v.len() != len {
        return crate::input_err!("{what}: expected {len} values, got {}", v.len());
    }
    Ok(())
}

/// The batch size implied by `v.len() = b · per`, or an `Error::Input`.
pub(crate) fn batch_of<T>(what: &str, v: &[T], per: usize) -> crate::Result<usize> {
    if per == 0 || v.len() % per != 0 {
        return crate::input_err!("{what}: {} values is not a multiple of {per}", v.len());
    }
    Ok(v.len() / per)
}
