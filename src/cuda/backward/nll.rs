//! Launchers for kernels/nll_bwd.cu: the exact low-rank Gaussian NLL of `ours`
//! (`--ours-nll exact`, SPEC §15b.2) through a batched 63×63 fp64 Cholesky,
//! `cholesky_nll_fwd_f64` and `cholesky_nll_bwd_f64` (+ `column_reduce_f64` for d_W). CPU twin:
//! `train::nll::nll_exact_lowrank` (with `train::cholesky`).

use cudarc::driver::{CudaView, CudaViewMut, DeviceSlice, LaunchConfig, PushKernelArg};

use super::super::elementwise::check_lens;
use super::super::{cuda_err, CudaBackend};
use crate::error::{Error, Result};

const MODULE: &str = "nll_bwd";
/// 21 joints × 3 coordinates.
const DIM: usize = 63;
const JOINTS: usize = 21;
/// Threads per block (the kernels' thread layout needs exactly 256).
const THREADS: u32 = 256;
/// Dynamic shared memory: two 63 × 64 fp64 matrices.
const SMEM_BYTES: usize = 2 * DIM * 64 * 8;

/// Most blocks the NLL kernels use (3 resident per SM on a 128-SM GPU); each block
/// grid-strides over samples. The grid is `min(b, NLL_MAX_BLOCKS)`, a function of the batch
/// alone, so the per-block d_W partial sums, and d_W, do not depend on the device.
pub const NLL_MAX_BLOCKS: usize = 384;

fn blocks(b: usize) -> usize {
    b.clamp(1, NLL_MAX_BLOCKS)
}

/// The checks both launchers share; returns nothing but errors.
fn check_inputs(op: &str, b: usize, lens: &[(&str, usize, usize)], jitter: f64) -> Result<()> {
    if b > i32::MAX as usize / (4 * JOINTS) {
        return crate::input_err!("{op}: batch {b} is too large for the kernel");
    }
    check_lens(op, format_args!("b = {b}"), lens)?;
    if !(jitter.is_finite() && jitter >= 0.0) {
        return crate::input_err!("{op}: the jitter must be finite and >= 0, got {jitter}");
    }
    Ok(())
}

impl CudaBackend {
    /// f64 elements of scratch [`CudaBackend::cholesky_nll_bwd`] needs for a batch of `b`: one
    /// 63×63 partial d_W per block.
    pub fn cholesky_nll_scratch_len(b: usize) -> usize {
        blocks(b) * DIM * DIM
    }

    /// `Err(Input)` naming the first sample whose Σ was not positive definite, from the `status`
    /// the NLL kernels wrote (copied to the host after the stream was synchronised): 0 = fine,
    /// k + 1 = pivot k was not > 0.
    pub fn cholesky_nll_check(status: &[i32], jitter: f64) -> Result<()> {
        match status.iter().position(|&v| v != 0) {
            None => Ok(()),
            Some(bi) => Err(Error::Input(format!(
                "nll_exact_lowrank (GPU): Σ of sample {bi} is not positive definite (pivot {}); \
                 raise the jitter ({jitter:e})",
                status[bi] - 1
            ))),
        }
    }

    /// The exact NLL per sample, `loss[b] = w_b·½(log det Σ_b + rᵀΣ_b⁻¹r)` in f64 with
    /// `Σ_b = W·diag(e^{s_b})·Wᵀ + jitter·I`, `r = g − μ`, `w_b = 1` iff all 21 confidences are
    /// exactly 1. `mu`, `s` `[b, 63]`, `w` `[63, 63]`, `gt` `[b, 21, 4]` f32; `status` `[b]`
    /// (0, or the failing pivot + 1: see [`CudaBackend::cholesky_nll_check`]; such a sample's
    /// loss is NaN). Queued on the stream.
    #[allow(clippy::too_many_arguments)] // the op's own argument list
    pub fn cholesky_nll_fwd(
        &self,
        mu: &CudaView<'_, f32>,
        s: &CudaView<'_, f32>,
        w: &CudaView<'_, f32>,
        gt: &CudaView<'_, f32>,
        jitter: f64,
        loss: &mut CudaViewMut<'_, f64>,
        status: &mut CudaViewMut<'_, i32>,
        b: usize,
    ) -> Result<()> {
        const K: &str = "cholesky_nll_fwd_f64";
        check_inputs(
            K,
            b,
            &[
                ("mu", mu.len(), b.saturating_mul(DIM)),
                ("s", s.len(), b.saturating_mul(DIM)),
                ("w", w.len(), DIM * DIM),
                ("gt", gt.len(), b.saturating_mul(JOINTS * 4)),
                ("loss", loss.len(), b),
                ("status", status.len(), b),
            ],
            jitter,
        )?;
        self.check_device(
            K,
            &[
                ("mu", mu.stream()),
                ("s", s.stream()),
                ("w", w.stream()),
                ("gt", gt.stream()),
                ("loss", loss.stream()),
                ("status", status.stream()),
            ],
        )?;
        if b == 0 {
            return Ok(());
        }
        let func = self.function(MODULE, K)?;
        self.bwd_allow_smem(&func, K, SMEM_BYTES)?;
        let b_i = b as i32;
        let mut launch = self.stream.launch_builder(&func);
        launch
            .arg(mu)
            .arg(s)
            .arg(w)
            .arg(gt)
            .arg(&jitter)
            .arg(loss)
            .arg(status)
            .arg(&b_i);
        // SAFETY: (const float* ×4, double, double*, int*, int) as declared; the kernel touches
        // mu, s [0..63b], w [0..3969], gt [0..84b], loss, status [0..b] (checked). Blocks of
        // exactly 256 threads and the 64 512 bytes of shared memory it carves.
        unsafe { launch.launch(config(b)) }
            .map_err(cuda_err(format_args!("launching {K} (b = {b})")))?;
        Ok(())
    }

    /// The exact NLL and its gradients: `loss` and `status` as [`CudaBackend::cholesky_nll_fwd`],
    /// `d_mu`, `d_s` `[b, 63]` ← `scale·∂L/∂μ`, `scale·∂L/∂s` (overwritten; 0 for samples with
    /// w_b = 0, NaN for a failed factorisation) and `d_w` `[63, 63]` += `scale·∂L/∂W` (summed
    /// in fp64 in a fixed order, rounded once). `scratch` holds at least
    /// [`CudaBackend::cholesky_nll_scratch_len`] f64 (overwritten). Two kernels are queued.
    #[allow(clippy::too_many_arguments)] // the op's own argument list
    pub fn cholesky_nll_bwd(
        &self,
        mu: &CudaView<'_, f32>,
        s: &CudaView<'_, f32>,
        w: &CudaView<'_, f32>,
        gt: &CudaView<'_, f32>,
        jitter: f64,
        scale: f64,
        loss: &mut CudaViewMut<'_, f64>,
        status: &mut CudaViewMut<'_, i32>,
        d_mu: &mut CudaViewMut<'_, f32>,
        d_s: &mut CudaViewMut<'_, f32>,
        d_w: &mut CudaViewMut<'_, f32>,
        scratch: &mut CudaViewMut<'_, f64>,
        b: usize,
    ) -> Result<()> {
        const K: &str = "cholesky_nll_bwd_f64";
        check_inputs(
            K,
            b,
            &[
                ("mu", mu.len(), b.saturating_mul(DIM)),
                ("s", s.len(), b.saturating_mul(DIM)),
                ("w", w.len(), DIM * DIM),
                ("gt", gt.len(), b.saturating_mul(JOINTS * 4)),
                ("loss", loss.len(), b),
                ("status", status.len(), b),
                ("d_mu", d_mu.len(), b.saturating_mul(DIM)),
                ("d_s", d_s.len(), b.saturating_mul(DIM)),
                ("d_w", d_w.len(), DIM * DIM),
            ],
            jitter,
        )?;
        if !scale.is_finite() {
            return crate::input_err!("{K}: scale must be finite, got {scale}");
        }
        let need = Self::cholesky_nll_scratch_len(b);
        if scratch.len() < need {
            return crate::input_err!(
                "{K}: the scratch buffer holds {} f64 but b = {b} needs at least {need}",
                scratch.len()
            );
        }
        self.check_device(
            K,
            &[
                ("mu", mu.stream()),
                ("s", s.stream()),
                ("w", w.stream()),
                ("gt", gt.stream()),
                ("loss", loss.stream()),
                ("status", status.stream()),
                ("d_mu", d_mu.stream()),
                ("d_s", d_s.stream()),
                ("d_w", d_w.stream()),
                ("scratch", scratch.stream()),
            ],
        )?;
        if b == 0 {
            return Ok(());
        }
        let func = self.function(MODULE, K)?;
        self.bwd_allow_smem(&func, K, SMEM_BYTES)?;
        let b_i = b as i32;
        let mut part = scratch.slice_mut(..need);
        let mut launch = self.stream.launch_builder(&func);
        launch
            .arg(mu)
            .arg(s)
            .arg(w)
            .arg(gt)
            .arg(&jitter)
            .arg(&scale)
            .arg(loss)
            .arg(status)
            .arg(d_mu)
            .arg(d_s)
            .arg(&mut part)
            .arg(&b_i);
        // SAFETY: (const float* ×4, double, double, double*, int*, float*, float*, double*, int)
        // as declared; the kernel touches mu, s, d_mu, d_s [0..63b], w [0..3969], gt [0..84b],
        // loss, status [0..b] and scratch [0..gridDim·3969] (all checked). All outputs are
        // distinct mutable borrows.
        unsafe { launch.launch(config(b)) }
            .map_err(cuda_err(format_args!("launching {K} (b = {b})")))?;
        let part = scratch.slice(..need);
        self.column_reduce_f64(&part, blocks(b), DIM * DIM, d_w, None)
    }
}

fn config(b: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks(b) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: SMEM_BYTES as u32,
    }
}
