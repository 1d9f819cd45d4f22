//! Launchers for kernels/layernorm.cu: `layernorm_fwd_{f32,bf16}` and the fused residual add +
//! LayerNorm `add_layernorm_fwd_{f32,bf16}`. CPU twin: `crate::ops::layernorm::layernorm_fwd_cpu`
//! (after `ops::elementwise::add_cpu` for the fused kernels).

use cudarc::driver::{CudaView, CudaViewMut, DeviceSlice, LaunchConfig, PushKernelArg};

use super::elementwise::{check_lens, dims_product};
use super::{by_dtype, cuda_err, CudaBackend, Dtype};
use crate::error::Result;

/// Largest row the kernel's warp path keeps in registers. Must match `LN_WARP_MAX_COLS` in
/// kernels/layernorm.cu; a mismatch would only cost speed (both kernel paths are correct for
/// any launch this file makes).
const LN_WARP_MAX_COLS: usize = 1280;
/// Threads per block on the block path (the kernels' `__launch_bounds__` allow at most 256).
const LN_BLOCK_THREADS: u32 = 256;
/// Dynamic shared memory available without opting in (48 KiB) minus the kernel's 256 bytes of
/// static reduction scratch.
const LN_MAX_DYNAMIC_SMEM: usize = 48 * 1024 - 256;

/// The launch layout for `rows × cols` on a device with `num_sms` multiprocessors:
/// - `cols <= 1280`: one warp per row, 4 warps per block (2 or 1 when there are too few rows to
///   give every SM a block), `ceil(rows / warps)` blocks, no shared memory;
/// - larger rows: one 256-thread block per row, the row staged in `cols * 4` bytes of dynamic
///   shared memory when that fits in 48 KiB (otherwise none: the kernel re-reads global memory).
fn launch_config(rows: usize, cols: usize, num_sms: usize) -> LaunchConfig {
    let max_grid = i32::MAX as usize;
    if cols <= LN_WARP_MAX_COLS {
        let warps = if rows >= 4 * num_sms {
            4
        } else if rows >= 2 * num_sms {
            2
        } else {
            1
        };
        LaunchConfig {
            grid_dim: (rows.div_ceil(warps).clamp(1, max_grid) as u32, 1, 1),
            block_dim: (32 * warps as u32, 1, 1),
            shared_mem_bytes: 0,
        }
    } else {
        let row_bytes = cols * std::mem::size_of::<f32>();
        LaunchConfig {
            grid_dim: (rows.clamp(1, max_grid) as u32, 1, 1),
            block_dim: (LN_BLOCK_THREADS, 1, 1),
            shared_mem_bytes: if row_bytes <= LN_MAX_DYNAMIC_SMEM {
                row_bytes as u32
            } else {
                0
            },
        }
    }
}

/// The checks shared by both launchers: `rows × cols` fits the kernel's `int`s, the buffers hold
/// `(what, len, per-row)` × rows (per-row = true) or `cols` (false) elements, eps is usable.
fn check_args(
    kernel: &str,
    rows: usize,
    cols: usize,
    eps: f32,
    bufs: &[(&str, usize, bool)],
) -> Result<usize> {
    let n = dims_product(kernel, &[("rows", rows), ("cols", cols)], true)?;
    let want: Vec<(&str, usize, usize)> = bufs
        .iter()
        .map(|&(what, len, per_row)| (what, len, if per_row { n } else { cols }))
        .collect();
    check_lens(kernel, format_args!("rows = {rows}, cols = {cols}"), &want)?;
    if !(eps.is_finite() && eps >= 0.0) {
        return crate::input_err!("{kernel}: eps must be finite and >= 0, got {eps}");
    }
    Ok(n)
}

impl CudaBackend {
    /// LayerNorm over the last dimension: `out = (x − mean) / sqrt(var + eps) · gamma + beta` for
    /// each of the `rows` rows of `cols` values (biased variance, as PyTorch). `x` holds
    /// `rows × cols` floats row-major, `out` as many `T` (f32, or bf16 rounded to nearest even
    /// from the f32 result); `gamma` and `beta` hold `cols`. Queued on the stream.
    #[allow(clippy::too_many_arguments)] // the kernel's own argument list
    pub fn layernorm_fwd<T: Dtype>(
        &self,
        x: &CudaView<'_, f32>,
        gamma: &CudaView<'_, f32>,
        beta: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, T>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        let kernel = by_dtype::<T>("layernorm_fwd_f32", "layernorm_fwd_bf16");
        let n = check_args(
            kernel,
            rows,
            cols,
            eps,
            &[
                ("x", x.len(), true),
                ("out", out.len(), true),
                ("gamma", gamma.len(), false),
                ("beta", beta.len(), false),
            ],
        )?;
        self.check_device(
            kernel,
            &[
                ("x", x.stream()),
                ("gamma", gamma.stream()),
                ("beta", beta.stream()),
                ("out", out.stream()),
            ],
        )?;
        if n == 0 {
            return Ok(());
        }

        let func = self.function("layernorm", kernel)?;
        let cfg = launch_config(rows, cols, self.num_sms);
        let (rows_i, cols_i) = (rows as i32, cols as i32);
        let mut launch = self.stream.launch_builder(&func);
        launch
            .arg(x)
            .arg(gamma)
            .arg(beta)
            .arg(out)
            .arg(&rows_i)
            .arg(&cols_i)
            .arg(&eps);
        // SAFETY: the arguments match the kernel's signature (const float*, const float*,
        // const float*, T*, int, int, float) in order; the lengths were checked above, and the
        // kernel touches only x[0..rows·cols], gamma/beta[0..cols] and out[0..rows·cols]. `out`
        // is borrowed mutably, so it cannot alias the inputs (the kernel uses __restrict__).
        unsafe { launch.launch(cfg) }.map_err(cuda_err(format_args!(
            "launching {kernel} ({rows} × {cols})"
        )))?;
        Ok(())
    }

    /// The residual add fused with the LayerNorm that follows it: `x += r` in place (f32, the
    /// residual stream), then `out = LayerNorm(x)` as [`CudaBackend::layernorm_fwd`]. `x`, `r`
    /// and `out` hold `rows × cols` elements, `gamma` and `beta` `cols`. Queued on the stream.
    #[allow(clippy::too_many_arguments)] // the kernel's own argument list
    pub fn add_layernorm_fwd<T: Dtype>(
        &self,
        x: &mut CudaViewMut<'_, f32>,
        r: &CudaView<'_, f32>,
        gamma: &CudaView<'_, f32>,
        beta: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, T>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        let kernel = by_dtype::<T>("add_layernorm_fwd_f32", "add_layernorm_fwd_bf16");
        let n = check_args(
            kernel,
            rows,
            cols,
            eps,
            &[
                ("x", x.len(), true),
                ("r", r.len(), true),
                ("out", out.len(), true),
                ("gamma", gamma.len(), false),
                ("beta", beta.len(), false),
            ],
        )?;
        self.check_device(
            kernel,
            &[
                ("x", x.stream()),
                ("r", r.stream()),
                ("gamma", gamma.stream()),
                ("beta", beta.stream()),
                ("out", out.stream()),
            ],
        )?;
        if n == 0 {
            return Ok(());
        }

        let func = self.function("layernorm", kernel)?;
        let cfg = launch_config(rows, cols, self.num_sms);
        let (rows_i, cols_i) = (rows as i32, cols as i32);
        let mut launch = self.stream.launch_builder(&func);
        launch
            .arg(x)
            .arg(r)
            .arg(gamma)
            .arg(beta)
            .arg(out)
            .arg(&rows_i)
            .arg(&cols_i)
            .arg(&eps);
        // SAFETY: the arguments match the kernel's signature (float*, const float*, const float*,
        // const float*, T*, int, int, float) in order; the lengths were checked above, and the
        // kernel touches only x, r, out[0..rows·cols] and gamma/beta[0..cols]. x and out are
        // distinct mutable borrows, so neither aliases the other or an input (__restrict__).
        unsafe { launch.launch(cfg) }.map_err(cuda_err(format_args!(
            "launching {kernel} ({rows} × {cols})"
        )))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Launch layouts the kernel accepts: whole warps, at most 256 threads, at least one block,
    /// and shared memory within the default 48 KiB.
    #[test]
    fn launch_configs_meet_the_kernel_requirements() {
        for num_sms in [1, 16, 132] {
            for rows in [1, 7, 192, 384, 6144, 100_000] {
                for cols in [
                    1, 3, 33, 1024, 1280, 1281, 1283, 5000, 12_224, 12_225, 100_000,
                ] {
                    let c = launch_config(rows, cols, num_sms);
                    let threads = c.block_dim.0;
                    assert!(
                        threads % 32 == 0 && (32..=256).contains(&threads),
                        "{rows}×{cols}: {c:?}"
                    );
                    assert_eq!(
                        (c.block_dim.1, c.block_dim.2, c.grid_dim.1, c.grid_dim.2),
                        (1, 1, 1, 1)
                    );
                    assert!(c.grid_dim.0 >= 1);
                    assert!(c.shared_mem_bytes as usize <= LN_MAX_DYNAMIC_SMEM);
                    if cols <= LN_WARP_MAX_COLS {
                        // one warp per row: enough warps for every row, no more blocks than needed
                        assert!(c.grid_dim.0 as usize * (threads as usize / 32) >= rows);
                        assert!((c.grid_dim.0 as usize - 1) * (threads as usize / 32) < rows);
                    } else {
                        assert_eq!(c.grid_dim.0 as usize, rows);
                        let staged = cols * 4 <= LN_MAX_DYNAMIC_SMEM;
                        assert_eq!(
                            c.shared_mem_bytes as usize,
                            if staged { cols * 4 } else { 0 }
                        );
                    }
                }
            }
        }
    }
}
