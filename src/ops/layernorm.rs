//! LayerNorm over the last dimension: `y = (x − mean) / sqrt(var + eps) · γ + β`, biased variance
//! (PyTorch `nn.LayerNorm`). Statistics in f64 on the CPU so the twin is a tight reference.

use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// CPU twin of `layernorm_fwd`: `x` and `out` are `rows × cols` row-major.
pub fn layernorm_fwd_cpu(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    cols: usize,
    out: &mut [f32],
) {
    debug_assert_eq!(x.len(), out.len());
    debug_assert!(gamma.len() == cols && beta.len() == cols);
    out.par_chunks_mut(cols)
        .zip(x.par_chunks(cols))
        .for_each(|(o, r)| {
            let n = cols as f64;
            let mean = r.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = r
                .iter()
                .map(|&v| (v as f64 - mean) * (v as f64 - mean))
                .sum::<f64>()
                / n;
            let inv = 1.0 / (var + eps as f64).sqrt();
            for j in 0..cols {
                o[j] = (((r[j] as f64 - mean) * inv) as f32) * gamma[j] + beta[j];
            }
        });
}

/// LayerNorm of a tensor over its last dimension.
pub fn layernorm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
    let cols = x.dim(-1);
    gamma.expect_shape("layernorm weight", &[cols])?;
    beta.expect_shape("layernorm bias", &[cols])?;
    let mut out = Tensor::zeros(x.shape());
    layernorm_fwd_cpu(
        x.data(),
        gamma.data(),
        beta.data(),
        eps,
        cols,
        out.data_mut(),
    );
    Ok(out)
}
