//! Launchers of the backward kernels (kernels/*_bwd.cu) and the cuBLASLt gradient GEMMs of the
//! linear layer. This file: the parameter-gradient reductions of kernels/reduce_bwd.cu —
//! LayerNorm (`layernorm_bwd_f32`), bias (`bias_grad_{f32,bf16}`), positional embedding
//! (`pos_embed_bwd_f32`) and the deterministic `column_reduce_{f32,f64}` they end with.
//! Submodules: [`elementwise`] (GELU, drop-path, rot6d, camera), [`attention`] (self- and
//! cross-attention), [`nll`] (the exact-NLL Cholesky) and [`gemm`] ([`GradGemm`]).
//!
//! Conventions (DESIGN.md): input gradients are OVERWRITTEN, parameter gradients ACCUMULATED
//! (`+=`). A parameter gradient that sums over rows is a fixed two-stage tree: the first kernel
//! writes per-block partial sums of a fixed range of rows into a caller-provided scratch buffer,
//! `column_reduce` sums them in row order (fp64) and adds the result. The row ranges depend only
//! on the shape (never on the device), so the gradients are the same bits on every run and GPU.
//! Scratch sizes are given by the `*_scratch_len` associated functions; a longer scratch buffer
//! is fine (buffers are allocated once per batch size and shared).
//!
//! Every argument is checked before anything is queued; a bad one is `Error::Input`.

mod attention;
mod elementwise;
#[cfg(test)]
mod emu;
mod gemm;
mod mano;
#[cfg(test)]
mod mirror_attention;
#[cfg(test)]
mod mirror_mano;
#[cfg(test)]
mod mirror_nll;
mod nll;

pub use gemm::GradGemm;
pub use nll::NLL_MAX_BLOCKS;

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaFunction, CudaView, CudaViewMut, DeviceRepr, DeviceSlice, LaunchConfig, PushKernelArg,
};

use super::elementwise::{check_lens, dims_product};
use super::{by_dtype, cuda_err, CudaBackend, Dtype};
use crate::error::Result;

/// PTX module of the reduction kernels (kernels/reduce_bwd.cu).
const MODULE: &str = "reduce_bwd";
/// LayerNorm backward: largest block (the kernel's `__launch_bounds__`), and the largest row the
/// register path holds per thread (4 slots of 4 columns): beyond 4·4·256 = 4096 columns the
/// kernel streams the row from global memory (correct for any size, slower).
const LNB_MAX_THREADS: usize = 256;
const LNB_MAX_V: usize = 4;
/// Rows per block of the row-sum kernels: at least this many, and few enough blocks that the
/// partial sums stay a small fraction of the input (at most `MAX_ROW_BLOCKS` blocks).
const MIN_ROWS_PER_BLOCK: usize = 16;
const MAX_ROW_BLOCKS: usize = 1024;
/// Threads of the 1-D elementwise-style kernels (bias partials, positional embedding).
const SCALAR_THREADS: u32 = 256;
/// `column_reduce`: threads per block (32 columns × 16 row groups) and columns per block.
const CR_THREADS: u32 = 512;
const CR_COLS: usize = 32;
/// Largest grid of the grid-strided kernels here.
const MAX_GRID: usize = 1 << 20;
/// Dynamic shared memory a kernel may use without raising its limit.
const DEFAULT_DYNAMIC_SMEM: usize = 48 * 1024;

/// `(rows_per_block, blocks)` of a row-sum kernel over `rows` rows: depends on `rows` only.
fn row_blocks(rows: usize) -> (usize, usize) {
    let rpb = MIN_ROWS_PER_BLOCK.max(rows.div_ceil(MAX_ROW_BLOCKS));
    (rpb, rows.div_ceil(rpb).max(1))
}

/// The LayerNorm backward's block size for `cols`: the fewest 4-column slots per thread V (1–4)
/// for which ceil(cols / 4V) rounded up to whole warps fits in 256 threads (1280 columns: V = 2,
/// 160 threads; 1024: V = 1, 256 threads); 256 threads (stream path) when none does.
fn layernorm_bwd_threads(cols: usize) -> u32 {
    for v in 1..=LNB_MAX_V {
        let threads = cols.div_ceil(4 * v).div_ceil(32) * 32;
        if threads <= LNB_MAX_THREADS {
            return threads.max(32) as u32;
        }
    }
    LNB_MAX_THREADS as u32
}

/// `Err(Input)` unless `scratch_len >= want`.
fn check_scratch(
    op: &str,
    scratch_len: usize,
    want: usize,
    shape: impl std::fmt::Display,
) -> Result<()> {
    if scratch_len < want {
        return crate::input_err!(
            "{op}: the scratch buffer holds {scratch_len} elements but {shape} needs at \
             least {want}"
        );
    }
    Ok(())
}

impl CudaBackend {
    /// Raises `func`'s dynamic shared memory limit to `bytes` when that is above the default
    /// 48 KiB (the driver refusing, e.g. on a GPU with less shared memory, is `Error::Cuda`).
    pub(super) fn bwd_allow_smem(
        &self,
        func: &CudaFunction,
        kernel: &str,
        bytes: usize,
    ) -> Result<()> {
        if bytes > DEFAULT_DYNAMIC_SMEM {
            // The driver call acts on the calling thread's current context.
            self.ctx
                .bind_to_thread()
                .map_err(cuda_err("binding the CUDA context to this thread"))?;
            func.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(cuda_err(format_args!(
                "allowing {kernel} {bytes} bytes of shared memory per block"
            )))?;
        }
        Ok(())
    }

    /// Floats of scratch [`CudaBackend::layernorm_bwd`] needs for `rows × cols`.
    pub fn layernorm_bwd_scratch_len(rows: usize, cols: usize) -> usize {
        row_blocks(rows).1.saturating_mul(2).saturating_mul(cols)
    }

    /// LayerNorm backward (the forward of kernels/layernorm.cu, statistics recomputed the same
    /// way): `dx` ← ∂L/∂x (overwritten), `dgamma += Σ_rows dy·x̂`, `dbeta += Σ_rows dy`. `x`, `dy`,
    /// `dx` hold `rows × cols` floats, `gamma`, `dgamma`, `dbeta` `cols`; `scratch` at least
    /// [`CudaBackend::layernorm_bwd_scratch_len`] floats (overwritten). Two kernels queued: the
    /// row pass and the column reduction. CPU twin: `ops::layernorm::layernorm_bwd_cpu`.
    #[allow(clippy::too_many_arguments)] // the op's own argument list
    pub fn layernorm_bwd(
        &self,
        x: &CudaView<'_, f32>,
        gamma: &CudaView<'_, f32>,
        dy: &CudaView<'_, f32>,
        dx: &mut CudaViewMut<'_, f32>,
        dgamma: &mut CudaViewMut<'_, f32>,
        dbeta: &mut CudaViewMut<'_, f32>,
        scratch: &mut CudaViewMut<'_, f32>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        const K: &str = "layernorm_bwd_f32";
        let n = dims_product(K, &[("rows", rows), ("cols", cols)], true)?;
        let shape = format!("rows = {rows}, cols = {cols}");
        check_lens(
            K,
            &shape,
            &[
                ("x", x.len(), n),
                ("dy", dy.len(), n),
                ("dx", dx.len(), n),
                ("gamma", gamma.len(), cols),
                ("dgamma", dgamma.len(), cols),
                ("dbeta", dbeta.len(), cols),
            ],
        )?;
        if !(eps.is_finite() && eps >= 0.0) {
            return crate::input_err!("{K}: eps must be finite and >= 0, got {eps}");
        }
        let (rpb, blocks) = row_blocks(rows);
        let need = Self::layernorm_bwd_scratch_len(rows, cols);
        check_scratch(K, scratch.len(), need, &shape)?;
        dims_product(K, &[("row blocks", blocks), ("2·cols", 2 * cols)], true)?;
        self.check_device(
            K,
            &[
                ("x", x.stream()),
                ("gamma", gamma.stream()),
                ("dy", dy.stream()),
                ("dx", dx.stream()),
                ("dgamma", dgamma.stream()),
                ("dbeta", dbeta.stream()),
                ("scratch", scratch.stream()),
            ],
        )?;
        if n == 0 {
            return Ok(());
        }

        let func = self.function(MODULE, K)?;
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (layernorm_bwd_threads(cols), 1, 1),
            shared_mem_bytes: 0,
        };
        let (rows_i, cols_i, rpb_i) = (rows as i32, cols as i32, rpb as i32);
        let mut part = scratch.slice_mut(..need);
        let mut launch = self.stream.launch_builder(&func);
        launch
            .arg(x)
            .arg(gamma)
            .arg(dy)
            .arg(&mut *dx)
            .arg(&mut part)
            .arg(&rows_i)
            .arg(&cols_i)
            .arg(&eps)
            .arg(&rpb_i);
        // SAFETY: (const float* ×3, float* ×2, int, int, float, int) as the kernel declares. The
        // grid has exactly `blocks` = ceil(rows / rpb) blocks; block b touches rows [b·rpb,
        // (b+1)·rpb) ∩ [0, rows) of x, dy, dx (lengths checked), gamma[0..cols] and its own
        // 2·cols floats of the scratch (blocks·2·cols checked). dx and scratch are distinct
        // mutable borrows, so nothing aliases (__restrict__).
        unsafe { launch.launch(cfg) }.map_err(cuda_err(format_args!("launching {K} ({shape})")))?;
        let part = scratch.slice(..need);
        self.column_reduce_f32(&part, blocks, 2 * cols, dgamma, Some(dbeta))
    }

    /// Floats of scratch [`CudaBackend::bias_grad`] needs for `rows × cols`.
    pub fn bias_grad_scratch_len(rows: usize, cols: usize) -> usize {
        row_blocks(rows).1.saturating_mul(cols)
    }

    /// The bias gradient of a linear layer: `db += Σ_rows dy` for `dy` `[rows, cols]` (f32 or
    /// bf16, summed in f32 per block of rows, the blocks in fp64), `db` `[cols]`; `scratch` at
    /// least [`CudaBackend::bias_grad_scratch_len`] floats. CPU twin:
    /// `ops::linear::column_sums_acc`.
    pub fn bias_grad<T: Dtype>(
        &self,
        dy: &CudaView<'_, T>,
        db: &mut CudaViewMut<'_, f32>,
        scratch: &mut CudaViewMut<'_, f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let kernel = by_dtype::<T>("bias_grad_f32", "bias_grad_bf16");
        let n = dims_product(kernel, &[("rows", rows), ("cols", cols)], true)?;
        let shape = format!("rows = {rows}, cols = {cols}");
        check_lens(
            kernel,
            &shape,
            &[("dy", dy.len(), n), ("db", db.len(), cols)],
        )?;
        let (rpb, blocks) = row_blocks(rows);
        let need = Self::bias_grad_scratch_len(rows, cols);
        check_scratch(kernel, scratch.len(), need, &shape)?;
        self.check_device(
            kernel,
            &[
                ("dy", dy.stream()),
                ("db", db.stream()),
                ("scratch", scratch.stream()),
            ],
        )?;
        if cols == 0 || rows == 0 {
            return Ok(()); // no columns, or an empty sum: db stays as it is
        }
        let func = self.function(MODULE, kernel)?;
        let cfg = LaunchConfig {
            grid_dim: (
                cols.div_ceil(SCALAR_THREADS as usize).min(MAX_GRID) as u32,
                blocks as u32, // <= MAX_ROW_BLOCKS < 65 536
                1,
            ),
            block_dim: (SCALAR_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (rows_i, cols_i, rpb_i) = (rows as i32, cols as i32, rpb as i32);
        let mut part = scratch.slice_mut(..need);
        let mut launch = self.stream.launch_builder(&func);
        launch
            .arg(dy)
            .arg(&mut part)
            .arg(&rows_i)
            .arg(&cols_i)
            .arg(&rpb_i);
        // SAFETY: (const T*, float*, int, int, int) as declared; block row y reads rows
        // [y·rpb, (y+1)·rpb) ∩ [0, rows) of dy (length checked) and writes row y of the scratch
        // (gridDim.y = blocks, blocks·cols checked).
        unsafe { launch.launch(cfg) }
            .map_err(cuda_err(format_args!("launching {kernel} ({shape})")))?;
        let part = scratch.slice(..need);
        self.column_reduce_f32(&part, blocks, cols, db, None)
    }

    /// Floats of scratch [`CudaBackend::pos_embed_bwd`] needs for `t` tokens of `c` channels.
    pub fn pos_embed_bwd_scratch_len(t: usize, c: usize) -> usize {
        t.saturating_mul(c)
    }

    /// Backward of the ViT positional embedding `x = (x + pos[1 + t]) + pos[0]`
    /// (`add_pos_embed_fwd_f32`): `dpos[1 + t] += Σ_b dx[b, t]` and `dpos[0] += Σ_b Σ_t dx[b, t]`
    /// for `dx` `[b, t, c]` and `dpos` `[1 + t, c]`; dx passes through unchanged. `scratch` at
    /// least [`CudaBackend::pos_embed_bwd_scratch_len`] floats. CPU twin: the positional-embedding
    /// loop of `model::backward` (ViT).
    pub fn pos_embed_bwd(
        &self,
        dx: &CudaView<'_, f32>,
        dpos: &mut CudaViewMut<'_, f32>,
        scratch: &mut CudaViewMut<'_, f32>,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        const K: &str = "pos_embed_bwd_f32";
        let n = dims_product(K, &[("b", b), ("t", t), ("c", c)], true)?;
        let slots = dims_product(K, &[("1 + t", t.saturating_add(1)), ("c", c)], true)?;
        let shape = format!("b = {b}, t = {t}, c = {c}");
        check_lens(
            K,
            &shape,
            &[("dx", dx.len(), n), ("dpos", dpos.len(), slots)],
        )?;
        let need = Self::pos_embed_bwd_scratch_len(t, c);
        check_scratch(K, scratch.len(), need, &shape)?;
        self.check_device(
            K,
            &[
                ("dx", dx.stream()),
                ("dpos", dpos.stream()),
                ("scratch", scratch.stream()),
            ],
        )?;
        if n == 0 {
            return Ok(()); // no tokens, channels or images: every sum is 0
        }
        let func = self.function(MODULE, K)?;
        let cfg = LaunchConfig {
            grid_dim: (
                need.div_ceil(SCALAR_THREADS as usize).min(MAX_GRID) as u32,
                1,
                1,
            ),
            block_dim: (SCALAR_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (b_i, t_i, c_i) = (b as i32, t as i32, c as i32);
        let mut part = scratch.slice_mut(..need);
        let mut launch = self.stream.launch_builder(&func);
        launch
            .arg(dx)
            .arg(&mut *dpos)
            .arg(&mut part)
            .arg(&b_i)
            .arg(&t_i)
            .arg(&c_i);
        // SAFETY: (const float*, float*, float*, int, int, int) as declared; the kernel reads
        // dx[0..b·t·c], updates dpos[c..(1 + t)·c] and writes scratch[0..t·c] (lengths checked;
        // every dimension and b·t·c fit the kernel's integers). dpos and scratch are distinct
        // mutable borrows.
        unsafe { launch.launch(cfg) }.map_err(cuda_err(format_args!("launching {K} ({shape})")))?;
        let part = scratch.slice(..need);
        let mut slot0 = dpos.slice_mut(..c);
        self.column_reduce_f32(&part, t, c, &mut slot0, None)
    }

    /// `out0[j] += Σ_r partial[r, j]` for `j < out0.len()` and `out1[j − out0.len()]` for the
    /// rest of the `ncols` columns (`partial` `[nrows, ncols]` row-major), summed in row order in
    /// fp64 and rounded once (`column_reduce_f32`).
    pub(super) fn column_reduce_f32(
        &self,
        partial: &CudaView<'_, f32>,
        nrows: usize,
        ncols: usize,
        out0: &mut CudaViewMut<'_, f32>,
        out1: Option<&mut CudaViewMut<'_, f32>>,
    ) -> Result<()> {
        self.column_reduce("column_reduce_f32", partial, nrows, ncols, out0, out1)
    }

    /// As [`CudaBackend::column_reduce_f32`] over fp64 partials (`column_reduce_f64`).
    pub(super) fn column_reduce_f64(
        &self,
        partial: &CudaView<'_, f64>,
        nrows: usize,
        ncols: usize,
        out0: &mut CudaViewMut<'_, f32>,
        out1: Option<&mut CudaViewMut<'_, f32>>,
    ) -> Result<()> {
        self.column_reduce("column_reduce_f64", partial, nrows, ncols, out0, out1)
    }

    fn column_reduce<T: DeviceRepr>(
        &self,
        kernel: &'static str,
        partial: &CudaView<'_, T>,
        nrows: usize,
        ncols: usize,
        out0: &mut CudaViewMut<'_, f32>,
        out1: Option<&mut CudaViewMut<'_, f32>>,
    ) -> Result<()> {
        let n = dims_product(kernel, &[("nrows", nrows), ("ncols", ncols)], true)?;
        let split = out0.len();
        let rest = out1.as_ref().map_or(0, |o| o.len());
        let shape = format!("{nrows} × {ncols} partial sums");
        check_lens(
            kernel,
            &shape,
            &[
                ("partial", partial.len(), n),
                ("out0 + out1", split + rest, ncols),
            ],
        )?;
        let mut streams = vec![("partial", partial.stream()), ("out0", out0.stream())];
        if let Some(o) = out1.as_ref() {
            streams.push(("out1", o.stream()));
        }
        self.check_device(kernel, &streams)?;
        if ncols == 0 || nrows == 0 {
            return Ok(());
        }
        let func = self.function(MODULE, kernel)?;
        let cfg = LaunchConfig {
            grid_dim: (ncols.div_ceil(CR_COLS).min(MAX_GRID) as u32, 1, 1),
            block_dim: (CR_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (nrows_i, ncols_i, split_i) = (nrows as i64, ncols as i64, split as i64);
        let null: u64 = 0;
        let mut launch = self.stream.launch_builder(&func);
        launch.arg(partial).arg(&mut *out0);
        let mut out1 = out1;
        match out1.as_mut() {
            Some(o) => launch.arg(&mut **o),
            None => launch.arg(&null), // split == ncols: never dereferenced
        };
        launch.arg(&nrows_i).arg(&ncols_i).arg(&split_i);
        // SAFETY: (const T*, float*, float*, long long ×3) as declared; the kernel reads
        // partial[0..nrows·ncols] and updates out0[0..split], out1[0..ncols − split] (lengths
        // checked above; out1 is only dereferenced for columns >= split, which exist only when it
        // is given). The outputs are distinct mutable borrows.
        unsafe { launch.launch(cfg) }
            .map_err(cuda_err(format_args!("launching {kernel} ({shape})")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row blocks cover every row exactly once, none is empty, there are at most 1024, and
    /// they depend on the row count only.
    #[test]
    fn row_blocks_partition_the_rows() {
        for rows in [
            0usize,
            1,
            15,
            16,
            17,
            1000,
            12_288,
            16_385,
            1 << 20,
            3_000_001,
        ] {
            let (rpb, blocks) = row_blocks(rows);
            assert!(rpb >= MIN_ROWS_PER_BLOCK && (1..=MAX_ROW_BLOCKS).contains(&blocks));
            assert!(blocks * rpb >= rows, "{rows}");
            if rows > 0 {
                assert!((blocks - 1) * rpb < rows, "{rows}: an empty block");
            }
        }
    }

    /// Block sizes are whole warps within the kernel's bound, and the register path holds the
    /// row (V ≤ 4) whenever a block can.
    #[test]
    fn layernorm_bwd_block_sizes() {
        assert_eq!(layernorm_bwd_threads(1280), 160);
        assert_eq!(layernorm_bwd_threads(1024), 256);
        assert_eq!(layernorm_bwd_threads(63), 32);
        for cols in [
            1usize, 5, 63, 64, 127, 1000, 1024, 1280, 2048, 4096, 4097, 100_000,
        ] {
            let t = layernorm_bwd_threads(cols) as usize;
            assert!(
                t % 32 == 0 && (32..=LNB_MAX_THREADS).contains(&t),
                "{cols}: {t}"
            );
            let v = cols.div_ceil(4 * t);
            assert_eq!(
                v <= LNB_MAX_V,
                cols <= 4 * LNB_MAX_V * LNB_MAX_THREADS,
                "{cols}"
            );
        }
    }
}
