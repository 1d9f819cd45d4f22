//! Launcher for `layernorm_fwd_f32` (kernels/layernorm.cu). CPU twin:
//! `crate::ops::layernorm::layernorm_fwd_cpu`.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{cuda_err, CudaBackend};
use crate::error::{Error, Result};

/// Largest row the kernel's warp path keeps in registers. Must match `LN_WARP_MAX_COLS` in
/// kernels/layernorm.cu; a mismatch would only cost speed (both kernel paths are correct for
/// any launch this file makes).
const LN_WARP_MAX_COLS: usize = 1280;
/// Threads per block on the block path (the kernel's `__launch_bounds__` is 256).
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

impl CudaBackend {
    /// LayerNorm over the last dimension: `out = (x − mean) / sqrt(var + eps) · gamma + beta` for
    /// each of the `rows` rows of `cols` values (biased variance, as PyTorch). `x` and `out` hold
    /// `rows × cols` floats row-major; `gamma` and `beta` hold `cols`. Queued on the stream.
    #[allow(clippy::too_many_arguments)] // the kernel's own argument list
    pub fn layernorm_fwd(
        &self,
        x: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        beta: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        let n = rows
            .checked_mul(cols)
            .filter(|_| rows <= i32::MAX as usize && cols <= i32::MAX as usize)
            .ok_or_else(|| {
                Error::Input(format!(
                    "layernorm: {rows} × {cols} is too large for the kernel"
                ))
            })?;
        for (what, len, want) in [
            ("x", x.len(), n),
            ("out", out.len(), n),
            ("gamma", gamma.len(), cols),
            ("beta", beta.len(), cols),
        ] {
            if len != want {
                return crate::input_err!(
                    "layernorm: {what} holds {len} floats but rows = {rows}, cols = {cols} needs {want}"
                );
            }
        }
        if !(eps.is_finite() && eps >= 0.0) {
            return crate::input_err!("layernorm: eps must be finite and >= 0, got {eps}");
        }
        for (what, ctx) in [
            ("x", x.context()),
            ("gamma", gamma.context()),
            ("beta", beta.context()),
            ("out", out.context()),
        ] {
            if **ctx != *self.ctx {
                return crate::input_err!(
                    "layernorm: {what} lives on another CUDA device than this backend"
                );
            }
        }
        if n == 0 {
            return Ok(());
        }

        let func = self.function("layernorm", "layernorm_fwd_f32")?;
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
        // const float*, float*, int, int, float) in order; the lengths were checked above, and the
        // kernel touches only x[0..rows·cols], gamma/beta[0..cols] and out[0..rows·cols]. `out`
        // is borrowed mutably, so it cannot alias the inputs (the kernel uses __restrict__).
        unsafe { launch.launch(cfg) }.map_err(cuda_err(format_args!(
            "launching layernorm_fwd_f32 ({rows} × {cols})"
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
