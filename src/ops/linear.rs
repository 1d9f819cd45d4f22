//! Linear layers, `y = x·Wᵀ + b` with `W` stored `[out, in]` (PyTorch), and the GELU epilogue.
//! On the CPU the GEMM is the `gemm` crate's (multi-threaded, AVX-512/AVX2 kernels); bias and
//! GELU are one extra pass over the output.

use crate::error::{Error, Result};
use crate::tensor::{fmt_shape, Tensor};
use rayon::prelude::*;

/// What to apply to the GEMM result, in the order bias then activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    Gelu,
}

/// Below this many multiply-adds a GEMM runs on the calling thread.
const PARALLEL_MACS: usize = 1 << 20;

/// Whether a GEMM may split itself over the thread pool. Callers that already run inside a
/// parallel loop (one task per attention head, say) pass `Serial`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Par {
    Auto,
    Serial,
}

fn parallelism(macs: usize, par: Par) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if par == Par::Serial || macs < PARALLEL_MACS || threads <= 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    }
}

/// `c[m,n] = a[m,k] · b[k,n]` for row-major operands given by (row stride, column stride).
/// The caller checks that every index `i·rs + j·cs` stays inside each slice.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided_cpu(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    c: &mut [f32],
    par: Par,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rs: usize, cs: usize, r: usize, cc: usize| (r.saturating_sub(1)) * rs + (cc.saturating_sub(1)) * cs;
    assert!(k == 0 || (last(a_rs, a_cs, m, k) < a.len() && last(b_rs, b_cs, k, n) < b.len()));
    assert!(c.len() >= m * n);
    if k == 0 {
        c[..m * n].fill(0.0);
        return;
    }
    // SAFETY: the asserts above keep every access of the three operands in bounds; `c` is
    // exclusively borrowed and does not alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism(m * n * k, par),
        );
    }
}

/// CPU twin of the linear layer: `x` is `[rows, d_in]`, `w` is `[d_out, d_in]`, `y` is
/// `[rows, d_out]`.
pub fn linear_cpu(x: &[f32], w: &[f32], b: Option<&[f32]>, d_in: usize, d_out: usize, epi: Epilogue, y: &mut [f32]) {
    let rows = x.len() / d_in.max(1);
    // x·Wᵀ: Wᵀ[k, j] = w[j·d_in + k], i.e. row stride 1, column stride d_in.
    matmul_strided_cpu(rows, d_out, d_in, x, (d_in, 1), w, (1, d_in), y, Par::Auto);
    if b.is_none() && epi == Epilogue::None {
        return;
    }
    y.par_chunks_mut(d_out).for_each(|row| {
        if let Some(b) = b {
            for (v, &bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
        if epi == Epilogue::Gelu {
            for v in row.iter_mut() {
                *v = gelu(*v);
            }
        }
    });
}

/// `y = x·Wᵀ + b` over the last dimension of `x`, then the epilogue.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, epi: Epilogue) -> Result<Tensor> {
    let d_in = x.dim(-1);
    if w.shape().len() != 2 || w.dim(1) != d_in {
        return Err(Error::Input(format!(
            "linear: input {} does not match weight {}",
            fmt_shape(x.shape()),
            fmt_shape(w.shape())
        )));
    }
    let d_out = w.dim(0);
    if let Some(b) = b {
        b.expect_shape("linear bias", &[d_out])?;
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap_or(&mut 0) = d_out;
    let mut y = Tensor::zeros(&shape);
    linear_cpu(x.data(), w.data(), b.map(|b| b.data()), d_in, d_out, epi, y.data_mut());
    Ok(y)
}

/// GELU with the exact error function (PyTorch's default `approximate='none'`).
#[inline]
pub fn gelu(x: f32) -> f32 {
    let xd = x as f64;
    (0.5 * xd * (1.0 + erf(xd * std::f64::consts::FRAC_1_SQRT_2))) as f32
}

/// Error function in f64 with relative error below 1.2e-7 everywhere (Chebyshev-fitted
/// `erfc`, the classic Numerical-Recipes coefficients), ample for an f32 activation.
#[inline]
pub fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 {
        1.0 - erfc
    } else {
        erfc - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // erf values from tables (Abramowitz & Stegun 7.1).
        for (x, e) in [(0.0, 0.0), (0.5, 0.520_499_877_8), (1.0, 0.842_700_792_9), (2.0, 0.995_322_265_0), (-1.5, -0.966_105_146_5)] {
            assert!((erf(x) - e).abs() < 2e-7, "erf({x}) = {} vs {e}", erf(x));
        }
    }

    #[test]
    fn linear_matches_naive() {
        let (rows, d_in, d_out) = (5, 7, 3);
        let x: Vec<f32> = (0..rows * d_in).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1).collect();
        let w: Vec<f32> = (0..d_out * d_in).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.2).collect();
        let b = [0.5f32, -1.0, 2.0];
        let mut y = vec![0.0; rows * d_out];
        linear_cpu(&x, &w, Some(&b), d_in, d_out, Epilogue::Gelu, &mut y);
        for r in 0..rows {
            for o in 0..d_out {
                let mut acc = b[o] as f64;
                for k in 0..d_in {
                    acc += x[r * d_in + k] as f64 * w[o * d_in + k] as f64;
                }
                let want = gelu(acc as f32);
                assert!((y[r * d_out + o] - want).abs() < 1e-5);
            }
        }
    }
}
