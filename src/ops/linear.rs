//! Linear layers, `y = x·Wᵀ + b` with `W` stored `[out, in]` (PyTorch), and the GELU epilogue.
//! On the CPU the GEMM is the `gemm` crate's (multi-threaded, AVX-512/AVX2 kernels); bias and
//! GELU are one extra pass over the output.

use super::math::{gelu_inplace, simd};
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

/// A matrix operand: (row stride, column stride) in elements.
pub type Strides = (usize, usize);

/// `c[m,n] = a[m,k] · b[k,n]` for operands given by their strides; `c` row-major.
/// The caller checks that every index `i·rs + j·cs` stays inside each slice.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided_cpu(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    sa: Strides,
    b: &[f32],
    sb: Strides,
    c: &mut [f32],
    par: Par,
) {
    matmul_into(m, n, k, a, sa, b, sb, c, (n, 1), par)
}

/// `c += a · b` for operands and output given by their strides (`c` may be strided too).
/// The caller checks that every index `i·rs + j·cs` stays inside each slice.
#[allow(clippy::too_many_arguments)]
pub fn matmul_acc_strided_cpu(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    sa: Strides,
    b: &[f32],
    sb: Strides,
    c: &mut [f32],
    sc: Strides,
    par: Par,
) {
    gemm_call(m, n, k, a, sa, b, sb, c, sc, true, par)
}

/// `c = a · b` (overwritten) with `c` given by its strides too (`c` may be strided).
/// The caller checks that every index `i·rs + j·cs` stays inside each slice.
#[allow(clippy::too_many_arguments)]
pub fn matmul_into(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    sa: Strides,
    b: &[f32],
    sb: Strides,
    c: &mut [f32],
    sc: Strides,
    par: Par,
) {
    gemm_call(m, n, k, a, sa, b, sb, c, sc, false, par)
}

/// `c = a · b`, or `c += a · b` with `accumulate`, through the `gemm` crate.
#[allow(clippy::too_many_arguments)]
fn gemm_call(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    sa: Strides,
    b: &[f32],
    sb: Strides,
    c: &mut [f32],
    (c_rs, c_cs): Strides,
    accumulate: bool,
    par: Par,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rs: usize, cs: usize, r: usize, cc: usize| (r - 1) * rs + (cc.max(1) - 1) * cs;
    assert!(last(c_rs, c_cs, m, n) < c.len());
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[i * c_rs + j * c_cs] = 0.0;
                }
            }
        }
        return;
    }
    // SAFETY: `c` is an exclusively borrowed slice that holds every index `i·c_rs + j·c_cs`
    // (asserted above) and does not alias `a` or `b`.
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            a,
            sa,
            b,
            sb,
            c.as_mut_ptr(),
            (c_rs, c_cs),
            accumulate,
            par,
        )
    }
}

/// The `gemm` crate's `dst := alpha·dst + beta·a·b` with `alpha = 1, beta = 1` when
/// `accumulate` (dst read and added to) and `read_dst = false` otherwise: then the crate
/// stores `a·b` into each of the `m × n` elements of `dst` without loading any of them.
/// Asserts that `a` and `b` hold every index their strides reach; `k ≥ 1`.
///
/// # Safety
/// `dst` must be valid for writes (and, with `accumulate`, reads of initialised values) at
/// every `i·rs + j·cs` for `i < m`, `j < n`, and must not alias `a` or `b`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    (a_rs, a_cs): Strides,
    b: &[f32],
    (b_rs, b_cs): Strides,
    dst: *mut f32,
    (c_rs, c_cs): Strides,
    accumulate: bool,
    par: Par,
) {
    let last = |rs: usize, cs: usize, r: usize, cc: usize| (r - 1) * rs + (cc.max(1) - 1) * cs;
    assert!(m > 0 && n > 0 && k > 0);
    assert!(last(a_rs, a_cs, m, k) < a.len() && last(b_rs, b_cs, k, n) < b.len());
    gemm::gemm(
        m,
        n,
        k,
        dst,
        c_cs as isize,
        c_rs as isize,
        accumulate,
        a.as_ptr(),
        a_cs as isize,
        a_rs as isize,
        b.as_ptr(),
        b_cs as isize,
        b_rs as isize,
        if accumulate { 1.0f32 } else { 0.0f32 },
        1.0f32,
        false,
        false,
        false,
        parallelism(m * n * k, par),
    );
}

/// `a · b` as a new `m × n` vector, row-major or (`column_major`) column-major. The GEMM
/// stores every element, so the vector is not zero-filled first (a 3 MB output's memset cost
/// as much as a tenth of its GEMM).
#[allow(clippy::too_many_arguments)]
pub fn matmul_new(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    sa: Strides,
    b: &[f32],
    sb: Strides,
    column_major: bool,
    par: Par,
) -> Vec<f32> {
    let len = m * n;
    if len == 0 || k == 0 {
        return vec![0f32; len];
    }
    let sc = if column_major { (1, m) } else { (n, 1) };
    let mut c = Vec::<f32>::with_capacity(len);
    // SAFETY: the capacity holds indices 0..m·n, exactly the set {i·rs + j·cs} of either
    // layout, so every store is in bounds, and the fresh allocation aliases nothing. With
    // `accumulate = false` the `gemm` crate reads no element of `dst` and stores all m·n of
    // them (`dst := a·b`; its microkernels take the `alpha_status == 0` branch, which only
    // writes), so after the call the first m·n elements are initialised and `set_len` is
    // sound. `c.as_mut_ptr()` is taken once, after the allocation, and not invalidated.
    unsafe {
        gemm_raw(m, n, k, a, sa, b, sb, c.as_mut_ptr(), sc, false, par);
        c.set_len(len);
    }
    c
}

/// Below this many rows the linear layer has the GEMM write its output column-major and
/// transposes it in the epilogue pass. The `gemm` crate vectorises along the output's
/// contiguous dimension and packs that operand; with few rows, packing the activations instead
/// of the `[out, in]` weight is much cheaper (measured on a 2-core AVX-512 Xeon, 192 rows:
/// 1280→5120 331 → 403 GFLOP/s, 5120→1280 227 → 330 GFLOP/s; at 3072 rows both give 417).
const COLUMN_MAJOR_BELOW_ROWS: usize = 1024;

/// CPU twin of the linear layer: `x` is `[rows, d_in]`, `w` is `[d_out, d_in]`, `y` is
/// `[rows, d_out]`.
pub fn linear_cpu(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    d_in: usize,
    d_out: usize,
    epi: Epilogue,
    y: &mut [f32],
) {
    let rows = x.len() / d_in.max(1);
    if rows < COLUMN_MAJOR_BELOW_ROWS && d_out > 1 {
        transposing_epilogue(&column_major_product(x, w, d_in, d_out), b, d_out, epi, y);
        return;
    }
    // x·Wᵀ: Wᵀ[k, j] = w[j·d_in + k], i.e. row stride 1, column stride d_in.
    matmul_strided_cpu(rows, d_out, d_in, x, (d_in, 1), w, (1, d_in), y, Par::Auto);
    row_epilogue(y, b, d_out, epi);
}

/// [`linear_cpu`] into a new vector (`[rows, d_out]`), which the GEMM fills without a zero
/// fill first when it writes the output row-major.
pub fn linear_new(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    d_in: usize,
    d_out: usize,
    epi: Epilogue,
) -> Vec<f32> {
    let rows = x.len() / d_in.max(1);
    if rows < COLUMN_MAJOR_BELOW_ROWS && d_out > 1 {
        let mut y = vec![0f32; rows * d_out];
        linear_cpu(x, w, b, d_in, d_out, epi, &mut y);
        return y;
    }
    let mut y = matmul_new(
        rows,
        d_out,
        d_in,
        x,
        (d_in, 1),
        w,
        (1, d_in),
        false,
        Par::Auto,
    );
    row_epilogue(&mut y, b, d_out, epi);
    y
}

/// `x·Wᵀ` written column-major (`[d_out, rows]`), for the few-rows path.
fn column_major_product(x: &[f32], w: &[f32], d_in: usize, d_out: usize) -> Vec<f32> {
    let rows = x.len() / d_in.max(1);
    matmul_new(
        rows,
        d_out,
        d_in,
        x,
        (d_in, 1),
        w,
        (1, d_in),
        true,
        Par::Auto,
    )
}

/// `y[r, o] = act(t[o, r] + b[o])` from the column-major product `t`: tasks of 16 rows of `y`.
fn transposing_epilogue(t: &[f32], b: Option<&[f32]>, d_out: usize, epi: Epilogue, y: &mut [f32]) {
    let rows = y.len() / d_out;
    const R: usize = 16;
    y.par_chunks_mut(R * d_out)
        .enumerate()
        .for_each(|(chunk, yc)| {
            let r0 = chunk * R;
            let nr = yc.len() / d_out;
            for o in 0..d_out {
                let col = &t[o * rows + r0..o * rows + r0 + nr];
                let bias = b.map_or(0.0, |b| b[o]);
                for (r, &v) in col.iter().enumerate() {
                    yc[r * d_out + o] = if b.is_some() { v + bias } else { v };
                }
            }
            if epi == Epilogue::Gelu {
                gelu_inplace(yc);
            }
        });
}

/// Bias and activation in place on a row-major `y`, one task per block of 16 rows.
fn row_epilogue(y: &mut [f32], b: Option<&[f32]>, d_out: usize, epi: Epilogue) {
    if b.is_none() && epi == Epilogue::None {
        return;
    }
    const ROWS: usize = 16;
    y.par_chunks_mut(ROWS * d_out).for_each(|rows| {
        simd(
            #[inline(always)]
            || {
                for row in rows.chunks_mut(d_out) {
                    if let Some(b) = b {
                        for (v, &bo) in row.iter_mut().zip(b) {
                            *v += bo;
                        }
                    }
                    if epi == Epilogue::Gelu {
                        gelu_inplace(row);
                    }
                }
            },
        )
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
    linear_cpu(
        x.data(),
        w.data(),
        b.map(|b| b.data()),
        d_in,
        d_out,
        epi,
        y.data_mut(),
    );
    Ok(y)
}

/// Backward of [`linear_cpu`] without the epilogue (a GELU epilogue is undone first with
/// [`super::math::gelu_bwd_inplace`] on the pre-activation). `x` is `[rows, d_in]`, `w`
/// `[d_out, d_in]`, `dy` `[rows, d_out]`:
/// `dx = dy·W` (overwritten, skipped when `None`), `dw += dyᵀ·x`, `db += Σ_rows dy`.
#[allow(clippy::too_many_arguments)]
pub fn linear_bwd_cpu(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    d_in: usize,
    d_out: usize,
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    if let Some(dx) = dx {
        linear_bwd_input_cpu(w, dy, d_in, d_out, dx);
    }
    linear_bwd_params_cpu(x, dy, d_in, d_out, dw, db);
}

/// The input gradient of the linear layer alone: `dx = dy·W`, overwritten.
pub fn linear_bwd_input_cpu(w: &[f32], dy: &[f32], d_in: usize, d_out: usize, dx: &mut [f32]) {
    let rows = dy.len() / d_out.max(1);
    debug_assert_eq!(dx.len(), rows * d_in);
    debug_assert_eq!(w.len(), d_out * d_in);
    // Row-major dx: the gemm crate works on dxᵀ = Wᵀ·dyᵀ, whose left operand Wᵀ is
    // column-major as stored, so the big weight is read in place. Measured on the 2-core
    // AVX-512 Xeon of the forward's note, ViT shapes: 192 rows 300–360 GFLOP/s, 768 rows ~400,
    // 3072 rows ~420; a column-major scratch + transpose (the forward's trick) is 20–30 % slower.
    matmul_strided_cpu(
        rows,
        d_in,
        d_out,
        dy,
        (d_out, 1),
        w,
        (d_in, 1),
        dx,
        Par::Auto,
    );
}

/// [`linear_bwd_input_cpu`] into a new vector (`[rows, d_in]`), filled by the GEMM without a
/// zero fill first.
pub fn linear_bwd_input_new(w: &[f32], dy: &[f32], d_in: usize, d_out: usize) -> Vec<f32> {
    let rows = dy.len() / d_out.max(1);
    debug_assert_eq!(w.len(), d_out * d_in);
    matmul_new(
        rows,
        d_in,
        d_out,
        dy,
        (d_out, 1),
        w,
        (d_in, 1),
        false,
        Par::Auto,
    )
}

/// The parameter gradients of the linear layer: `dw += dyᵀ·x`, `db += Σ_rows dy`.
pub fn linear_bwd_params_cpu(
    x: &[f32],
    dy: &[f32],
    d_in: usize,
    d_out: usize,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    let rows = dy.len() / d_out.max(1);
    debug_assert_eq!(x.len(), rows * d_in);
    debug_assert_eq!(dw.len(), d_out * d_in);
    // dW[o, i] += Σ_r dy[r, o]·x[r, i]: dyᵀ has strides (1, d_out); dw row-major, accumulated
    // by the GEMM itself (same machine: 192 rows 360–390 GFLOP/s, 768 and 3072 rows ~400; a
    // transposed scratch then an add pass is slower everywhere, up to 2.5× at 192 rows).
    matmul_acc_strided_cpu(
        d_out,
        d_in,
        rows,
        dy,
        (1, d_out),
        x,
        (d_in, 1),
        dw,
        (d_in, 1),
        Par::Auto,
    );
    if let Some(db) = db {
        column_sums_acc(dy, d_out, db);
    }
}

/// The weight gradient of the linear layer into a new vector: `dyᵀ·x` (`[d_out, d_in]`),
/// written by the GEMM without a zero fill first. The same products as
/// [`linear_bwd_params_cpu`] accumulating into a zeroed `dw`.
pub fn linear_bwd_weight_new(x: &[f32], dy: &[f32], d_in: usize, d_out: usize) -> Vec<f32> {
    let rows = dy.len() / d_out.max(1);
    debug_assert_eq!(x.len(), rows * d_in);
    matmul_new(
        d_out,
        d_in,
        rows,
        dy,
        (1, d_out),
        x,
        (d_in, 1),
        false,
        Par::Auto,
    )
}

/// `acc[j] += Σ_r m[r, j]` for a row-major `m` with `cols` columns: each task owns a block of
/// columns and sums its rows in order, in f64, so the result does not depend on the threads.
pub fn column_sums_acc(m: &[f32], cols: usize, acc: &mut [f32]) {
    const BLOCK: usize = 64;
    debug_assert_eq!(acc.len(), cols);
    if cols == 0 {
        return;
    }
    acc.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(blk, out)| {
            simd(
                #[inline(always)]
                || {
                    let c0 = blk * BLOCK;
                    let mut sums = [0f64; BLOCK];
                    for row in m.chunks_exact(cols) {
                        for (s, &v) in sums.iter_mut().zip(&row[c0..c0 + out.len()]) {
                            *s += v as f64;
                        }
                    }
                    for (o, s) in out.iter_mut().zip(sums) {
                        *o += s as f32;
                    }
                },
            )
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::math::fd;

    #[test]
    fn linear_matches_naive_in_both_layouts() {
        check_linear(5, 7, 3); // column-major GEMM output + transposing epilogue
        check_linear(COLUMN_MAJOR_BELOW_ROWS + 3, 7, 3); // row-major GEMM output
    }

    fn check_linear(rows: usize, d_in: usize, d_out: usize) {
        let x: Vec<f32> = (0..rows * d_in)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1)
            .collect();
        let w: Vec<f32> = (0..d_out * d_in)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.2)
            .collect();
        let b = [0.5f32, -1.0, 2.0];
        let mut y = vec![0.0; rows * d_out];
        linear_cpu(&x, &w, Some(&b), d_in, d_out, Epilogue::Gelu, &mut y);
        for r in 0..rows {
            for o in 0..d_out {
                let mut acc = b[o] as f64;
                for k in 0..d_in {
                    acc += x[r * d_in + k] as f64 * w[o * d_in + k] as f64;
                }
                let want = crate::ops::math::gelu(acc as f32);
                assert!((y[r * d_out + o] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn new_outputs_match_the_slice_forms_bitwise() {
        let mut rng = fd::Rng(0x7e3);
        // Small (single-threaded) and large enough for the threaded GEMM; a few rows (the
        // column-major path of the linear layer) and many.
        for &(rows, d_in, d_out) in &[(5, 7, 3), (40, 96, 130), (COLUMN_MAJOR_BELOW_ROWS, 64, 40)] {
            let x = rng.vec(rows * d_in, 1.0);
            let w = rng.vec(d_out * d_in, 1.0);
            let b = rng.vec(d_out, 1.0);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for epi in [Epilogue::None, Epilogue::Gelu] {
                let mut y = vec![f32::NAN; rows * d_out];
                linear_cpu(&x, &w, Some(&b), d_in, d_out, epi, &mut y);
                assert_eq!(
                    bits(&y),
                    bits(&linear_new(&x, &w, Some(&b), d_in, d_out, epi))
                );
            }
            let dy = rng.vec(rows * d_out, 1.0);
            let mut dx = vec![f32::NAN; rows * d_in];
            linear_bwd_input_cpu(&w, &dy, d_in, d_out, &mut dx);
            assert_eq!(bits(&dx), bits(&linear_bwd_input_new(&w, &dy, d_in, d_out)));
            // The weight gradient: a new buffer holds what accumulating into zeros gives (up to
            // the sign of an exact zero, which 0 + (−0) makes +0).
            let mut dw = vec![0f32; d_out * d_in];
            linear_bwd_params_cpu(&x, &dy, d_in, d_out, &mut dw, None);
            let unsigned_zero = |v: &[f32]| bits(&v.iter().map(|&x| x + 0.0).collect::<Vec<_>>());
            assert_eq!(
                unsigned_zero(&dw),
                unsigned_zero(&linear_bwd_weight_new(&x, &dy, d_in, d_out))
            );
            // Column-major output: element (i, j) at j·m + i.
            let cm = matmul_new(
                rows,
                d_out,
                d_in,
                &x,
                (d_in, 1),
                &w,
                (1, d_in),
                true,
                Par::Auto,
            );
            let mut rm = vec![0f32; rows * d_out];
            matmul_strided_cpu(
                rows,
                d_out,
                d_in,
                &x,
                (d_in, 1),
                &w,
                (1, d_in),
                &mut rm,
                Par::Auto,
            );
            for i in 0..rows {
                for j in 0..d_out {
                    let (a, r) = (cm[j * rows + i] as f64, rm[i * d_out + j] as f64);
                    assert!((a - r).abs() <= 1e-5 * (1.0 + r.abs()), "({i}, {j})");
                }
            }
        }
        assert!(matmul_new(3, 4, 0, &[], (0, 1), &[], (4, 1), false, Par::Auto) == [0.0; 12]);
    }

    /// `Σ r ∘ (x·Wᵀ + b)` in f64.
    fn functional(x: &[f64], w: &[f64], b: Option<&[f64]>, r: &[f32], d_in: usize) -> f64 {
        let d_out = w.len() / d_in;
        let mut l = 0.0;
        for (row, rr) in x.chunks(d_in).zip(r.chunks(d_out)) {
            for (o, &ro) in rr.iter().enumerate() {
                let y = fd::dot(row, &w[o * d_in..(o + 1) * d_in]) + b.map_or(0.0, |b| b[o]);
                l += ro as f64 * y;
            }
        }
        l
    }

    #[test]
    fn linear_bwd_matches_finite_differences() {
        let mut rng = fd::Rng(0x11ea);
        for &(rows, d_in, d_out, bias) in &[
            (1, 1, 1, true),
            (3, 5, 4, true),
            (3, 5, 4, false),
            (7, 2, 9, true),
            (4, 9, 1, false),
            (17, 6, 5, true),
        ] {
            let x = rng.vec(rows * d_in, 1.0);
            let w = rng.vec(d_out * d_in, 1.0);
            let b = rng.vec(d_out, 1.0);
            let r = rng.vec(rows * d_out, 1.0);
            let (x64, w64, b64) = (fd::to64(&x), fd::to64(&w), fd::to64(&b));
            let b_opt = |b: &[f64]| if bias { Some(b.to_vec()) } else { None };
            let h = 1e-6;
            let gx = fd::grad(&x, h, |p| {
                functional(p, &w64, b_opt(&b64).as_deref(), &r, d_in)
            });
            let gw = fd::grad(&w, h, |p| {
                functional(&x64, p, b_opt(&b64).as_deref(), &r, d_in)
            });
            let gb = fd::grad(&b, h, |p| functional(&x64, &w64, Some(p), &r, d_in));
            // dx is overwritten (start from garbage), dw and db accumulate (start from an
            // offset that is subtracted afterwards).
            let mut dx = vec![7.0f32; rows * d_in];
            let mut dw = vec![0.5f32; d_out * d_in];
            let mut db = vec![0.25f32; d_out];
            linear_bwd_cpu(
                &x,
                &w,
                &r,
                d_in,
                d_out,
                Some(&mut dx),
                &mut dw,
                if bias { Some(&mut db) } else { None },
            );
            dw.iter_mut().for_each(|v| *v -= 0.5);
            db.iter_mut().for_each(|v| *v -= 0.25);
            let errs = [
                fd::rel_err(&dx, &gx),
                fd::rel_err(&dw, &gw),
                if bias { fd::rel_err(&db, &gb) } else { 0.0 },
            ];
            eprintln!("linear_bwd ({rows},{d_in},{d_out},bias {bias}): dx dw db {errs:?}");
            // The FD of a functional linear in each argument is exact up to f64 rounding
            // (~1e-10 at h = 1e-6); the analytic side is f32 sums of ≤ 17 products of O(1)
            // terms, ~1e-7 relative, plus the ±0.5 offset round trip (~3e-8 absolute).
            for e in errs {
                assert!(e < 1e-5, "linear_bwd ({rows},{d_in},{d_out}): {errs:?}");
            }
            if !bias {
                assert!(db.iter().all(|&v| v == 0.0), "db touched without a bias");
            }
        }
    }

    #[test]
    fn linear_bwd_without_dx_and_on_the_threaded_path() {
        // Big enough for the multi-threaded GEMM (> PARALLEL_MACS) and the column blocks of
        // the bias sum; checked against the formulas in f64 (their FD check is above).
        let (rows, d_in, d_out) = (200, 96, 130);
        let mut rng = fd::Rng(0xb16);
        let x = rng.vec(rows * d_in, 1.0);
        let w = rng.vec(d_out * d_in, 1.0);
        let dy = rng.vec(rows * d_out, 1.0);
        let mut dx = vec![0f32; rows * d_in];
        let mut dw = vec![0f32; d_out * d_in];
        let mut db = vec![0f32; d_out];
        linear_bwd_cpu(
            &x,
            &w,
            &dy,
            d_in,
            d_out,
            Some(&mut dx),
            &mut dw,
            Some(&mut db),
        );
        let (mut dw2, mut db2) = (vec![0f32; d_out * d_in], vec![0f32; d_out]);
        linear_bwd_cpu(&x, &w, &dy, d_in, d_out, None, &mut dw2, Some(&mut db2));
        assert!(dw == dw2 && db == db2);
        let mut want_dx = vec![0f64; rows * d_in];
        let mut want_dw = vec![0f64; d_out * d_in];
        let mut want_db = vec![0f64; d_out];
        for r in 0..rows {
            for o in 0..d_out {
                let g = dy[r * d_out + o] as f64;
                want_db[o] += g;
                for i in 0..d_in {
                    want_dx[r * d_in + i] += g * w[o * d_in + i] as f64;
                    want_dw[o * d_in + i] += g * x[r * d_in + i] as f64;
                }
            }
        }
        let errs = [
            fd::rel_err(&dx, &want_dx),
            fd::rel_err(&dw, &want_dw),
            fd::rel_err(&db, &want_db),
        ];
        eprintln!("linear_bwd threaded: dx dw db {errs:?}");
        // f32 GEMM sums of up to 200 products of O(1) terms: ~1e-6 relative to the largest.
        assert!(errs.iter().all(|&e| e < 1e-5), "{errs:?}");
    }

    #[test]
    fn linear_bwd_does_not_depend_on_the_thread_count() {
        let (rows, d_in, d_out) = (300, 80, 130);
        let mut rng = fd::Rng(0xde7);
        let x = rng.vec(rows * d_in, 1.0);
        let w = rng.vec(d_out * d_in, 1.0);
        let dy = rng.vec(rows * d_out, 1.0);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool");
            pool.install(|| {
                let mut dx = vec![0f32; rows * d_in];
                let (mut dw, mut db) = (vec![0f32; d_out * d_in], vec![0f32; d_out]);
                linear_bwd_cpu(
                    &x,
                    &w,
                    &dy,
                    d_in,
                    d_out,
                    Some(&mut dx),
                    &mut dw,
                    Some(&mut db),
                );
                (dx, dw, db)
            })
        };
        let one = run(1);
        for threads in [2, 3, 4] {
            assert!(one == run(threads), "{threads} threads");
        }
    }
}
