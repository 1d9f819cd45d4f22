//! Launchers for kernels/attention_bwd.cu: the self-attention backward over packed qkv
//! (`self_attention_bwd_prep_{f32,bf16}`, then `self_attention_bwd_dq_<T>_d<DP>` and
//! `self_attention_bwd_dkv_<T>_d<DP>`, DP ∈ {32, 64, 80, 128}) and the one-query cross-attention
//! backward (`cross_attention_1q_bwd_{f32,bf16}`). CPU twins:
//! `ops::attention::{self_attention_packed_bwd_cpu, cross_attention_1q_bwd_cpu}`.

use cudarc::driver::{CudaView, CudaViewMut, DeviceSlice, LaunchConfig, PushKernelArg};

use super::super::elementwise::{check_lens, dims_product};
use super::super::{by_dtype, cuda_err, CudaBackend, Dtype};
use crate::error::Result;

const MODULE: &str = "attention_bwd";
/// Largest head dimension (`SAB_MAX_D`).
const MAX_HEAD_DIM: usize = 128;
/// Tile kernels: 128 threads, 64 queries or keys per block, score-buffer stride 68 floats.
const SAB_THREADS: u32 = 128;
const SAB_TILE: usize = 64;
const SAB_LDP: usize = 68;
/// D kernel: 256 threads, one warp per row; grid capped (it grid-strides).
const PREP_THREADS: u32 = 256;
const PREP_MAX_GRID: usize = 1 << 16;
/// Cross-attention: 256 threads per (batch, head).
const CAB_THREADS: u32 = 256;

/// The padded head dimensions the tile kernels come in (`SAB_ENTRIES` in the .cu file); a head
/// dimension d runs on the smallest that is ≥ d.
const DP_CLASSES: [usize; 4] = [32, 64, 80, 128];
/// The tile kernels by class: [dq f32, dq bf16, dkv f32, dkv bf16].
const SAB_KERNELS: [[&str; 4]; 4] = [
    [
        "self_attention_bwd_dq_f32_d32",
        "self_attention_bwd_dq_bf16_d32",
        "self_attention_bwd_dkv_f32_d32",
        "self_attention_bwd_dkv_bf16_d32",
    ],
    [
        "self_attention_bwd_dq_f32_d64",
        "self_attention_bwd_dq_bf16_d64",
        "self_attention_bwd_dkv_f32_d64",
        "self_attention_bwd_dkv_bf16_d64",
    ],
    [
        "self_attention_bwd_dq_f32_d80",
        "self_attention_bwd_dq_bf16_d80",
        "self_attention_bwd_dkv_f32_d80",
        "self_attention_bwd_dkv_bf16_d80",
    ],
    [
        "self_attention_bwd_dq_f32_d128",
        "self_attention_bwd_dq_bf16_d128",
        "self_attention_bwd_dkv_f32_d128",
        "self_attention_bwd_dkv_bf16_d128",
    ],
];

/// `(class index, DP)` of head dimension `1 ≤ d ≤ 128`.
pub(super) fn dp_class(d: usize) -> (usize, usize) {
    let i = DP_CLASSES
        .iter()
        .position(|&dp| dp >= d)
        .unwrap_or(DP_CLASSES.len() - 1);
    (i, DP_CLASSES[i])
}

/// Dynamic shared memory of the tile kernels for head dimension `d` (1 ≤ d ≤ 128): four
/// operands [64][DP + 4], the score buffer [64][68], lse and D [64], as floats.
fn tile_smem_bytes(d: usize) -> usize {
    let dp = dp_class(d).1;
    (4 * SAB_TILE * (dp + 4) + SAB_TILE * SAB_LDP + 2 * SAB_TILE) * 4
}

fn check_head_dim(op: &str, d: usize) -> Result<()> {
    if d == 0 || d > MAX_HEAD_DIM {
        return crate::input_err!(
            "{op}: head dimension d = {d} must be between 1 and {MAX_HEAD_DIM}"
        );
    }
    Ok(())
}

fn check_scale(op: &str, scale: f32) -> Result<()> {
    if !scale.is_finite() {
        return crate::input_err!("{op}: scale must be finite, got {scale}");
    }
    Ok(())
}

impl CudaBackend {
    /// Floats of scratch [`CudaBackend::self_attention_bwd`] needs: D and lse per
    /// (batch, head, query).
    pub fn self_attention_bwd_scratch_len(b: usize, s: usize, heads: usize) -> usize {
        b.saturating_mul(s).saturating_mul(heads).saturating_mul(2)
    }

    /// Backward of `self_attention_fwd` (the ViT's fused attention over packed qkv): from `qkv`
    /// `[b, s, 3·heads·d]`, the forward's output `out` and its gradient `dout` (both
    /// `[b, s, heads·d]`), writes `dqkv` `[b, s, 3·heads·d]` (overwritten, the packed layout).
    /// `scratch` holds at least [`CudaBackend::self_attention_bwd_scratch_len`] floats (the
    /// per-row D = dO·O and log-sum-exp). Any `s ≥ 1`, `1 ≤ d ≤ 128`; bf16: bf16 storage, fp32
    /// arithmetic. Three kernels are queued (D; lse and dQ; dK and dV).
    #[allow(clippy::too_many_arguments)] // the op's own argument list
    pub fn self_attention_bwd<T: Dtype>(
        &self,
        qkv: &CudaView<'_, T>,
        out: &CudaView<'_, T>,
        dout: &CudaView<'_, T>,
        dqkv: &mut CudaViewMut<'_, T>,
        scratch: &mut CudaViewMut<'_, f32>,
        b: usize,
        s: usize,
        heads: usize,
        d: usize,
        scale: f32,
    ) -> Result<()> {
        let op = "self_attention_bwd";
        let shape = format!("b = {b}, s = {s}, heads = {heads}, d = {d}");
        check_head_dim(op, d)?;
        check_scale(op, scale)?;
        // The kernels' int arguments and block indices: b·heads·ceil(s/64) blocks, 3·heads·d
        // features, s + 64 keys; every element count fits an i64.
        dims_product(
            op,
            &[
                ("b", b),
                ("heads", heads),
                ("ceil(s/64)", s.div_ceil(SAB_TILE)),
            ],
            false,
        )?;
        dims_product(op, &[("3", 3), ("heads", heads), ("d", d)], false)?;
        dims_product(op, &[("s + 64", s.saturating_add(SAB_TILE))], false)?;
        let n_out = dims_product(op, &[("b", b), ("s", s), ("heads", heads), ("d", d)], true)?;
        let n_qkv = dims_product(op, &[("3", 3), ("b·s·heads·d", n_out)], true)?;
        check_lens(
            op,
            &shape,
            &[
                ("qkv", qkv.len(), n_qkv),
                ("out", out.len(), n_out),
                ("dout", dout.len(), n_out),
                ("dqkv", dqkv.len(), n_qkv),
            ],
        )?;
        let need = Self::self_attention_bwd_scratch_len(b, s, heads);
        if scratch.len() < need {
            return crate::input_err!(
                "{op}: the scratch buffer holds {} floats but {shape} needs at least {need}",
                scratch.len()
            );
        }
        self.check_device(
            op,
            &[
                ("qkv", qkv.stream()),
                ("out", out.stream()),
                ("dout", dout.stream()),
                ("dqkv", dqkv.stream()),
                ("scratch", scratch.stream()),
            ],
        )?;
        if n_out == 0 {
            return Ok(());
        }
        let (b_i, s_i, h_i, d_i) = (b as i32, s as i32, heads as i32, d as i32);
        let mut stats = scratch.slice_mut(..need);

        // 1. D = rowsum(dO ∘ O).
        let kernel = by_dtype::<T>(
            "self_attention_bwd_prep_f32",
            "self_attention_bwd_prep_bf16",
        );
        let func = self.function(MODULE, kernel)?;
        let rows = b * s * heads;
        let warps = (PREP_THREADS / 32) as usize;
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(warps).clamp(1, PREP_MAX_GRID) as u32, 1, 1),
            block_dim: (PREP_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&func);
        launch
            .arg(out)
            .arg(dout)
            .arg(&mut stats)
            .arg(&b_i)
            .arg(&s_i)
            .arg(&h_i)
            .arg(&d_i);
        // SAFETY: (const T*, const T*, float*, int ×4) as declared; reads out, dout
        // [0..b·s·heads·d] and writes stats[0..b·heads·s] (lengths checked).
        unsafe { launch.launch(cfg) }
            .map_err(cuda_err(format_args!("launching {kernel} ({shape})")))?;

        // 2. lse and dQ; 3. dK and dV. Same grid, shared memory and arguments.
        let dp_index = dp_class(d).0; // d checked above
        let smem = tile_smem_bytes(d);
        let cfg = LaunchConfig {
            grid_dim: ((b * heads * s.div_ceil(SAB_TILE)) as u32, 1, 1),
            block_dim: (SAB_THREADS, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let which = if T::NAME == "f32" { 0 } else { 1 };
        for pass in [0, 2] {
            let kernel = SAB_KERNELS[dp_index][pass + which];
            let func = self.function(MODULE, kernel)?;
            self.bwd_allow_smem(&func, kernel, smem)?;
            let mut launch = self.stream.launch_builder(&func);
            launch
                .arg(qkv)
                .arg(dout)
                .arg(&mut stats)
                .arg(&mut *dqkv)
                .arg(&b_i)
                .arg(&s_i)
                .arg(&h_i)
                .arg(&d_i)
                .arg(&scale);
            // SAFETY: (const T*, const T*, float* (const in the dkv kernel), T*, int ×4, float)
            // as declared, T matching the kernel's name. The grid has one block per (batch,
            // head, 64-row tile); a block reads qkv and dout inside [0..b·s·3·heads·d] and
            // [0..b·s·heads·d], reads/writes stats[0..2·b·heads·s] (scratch checked) and writes
            // its own rows of one head's q (dq) or k and v (dkv) slots of dqkv (length checked).
            // The shared memory is what the kernel carves for its DP. dqkv and the scratch are
            // distinct mutable borrows, neither aliases qkv or dout (__restrict__).
            unsafe { launch.launch(cfg) }
                .map_err(cuda_err(format_args!("launching {kernel} ({shape})")))?;
        }
        Ok(())
    }

    /// Backward of `cross_attention_1q_fwd` (one query per sample): from `q` `[b, heads·d]`, `kv`
    /// `[b, t, 2·heads·d]` (keys then values) and `dout` `[b, heads·d]`, writes `dq`
    /// `[b, heads·d]` and `dkv` `[b, t, 2·heads·d]` (both overwritten). `t = 0` gives dq = 0
    /// (the forward's output is then the constant 0). `1 ≤ d ≤ 128`. Queued on the stream.
    #[allow(clippy::too_many_arguments)] // the op's own argument list
    pub fn cross_attention_1q_bwd<T: Dtype>(
        &self,
        q: &CudaView<'_, T>,
        kv: &CudaView<'_, T>,
        dout: &CudaView<'_, T>,
        dq: &mut CudaViewMut<'_, T>,
        dkv: &mut CudaViewMut<'_, T>,
        b: usize,
        t: usize,
        heads: usize,
        d: usize,
        scale: f32,
    ) -> Result<()> {
        let op = "cross_attention_1q_bwd";
        let shape = format!("b = {b}, t = {t}, heads = {heads}, d = {d}");
        check_head_dim(op, d)?;
        check_scale(op, scale)?;
        dims_product(op, &[("b", b), ("heads", heads)], false)?;
        dims_product(op, &[("2", 2), ("heads", heads), ("d", d)], false)?;
        dims_product(op, &[("t", t)], false)?;
        let n_q = dims_product(op, &[("b", b), ("heads", heads), ("d", d)], true)?;
        let n_kv = dims_product(
            op,
            &[("2", 2), ("b", b), ("t", t), ("heads", heads), ("d", d)],
            true,
        )?;
        check_lens(
            op,
            &shape,
            &[
                ("q", q.len(), n_q),
                ("dout", dout.len(), n_q),
                ("dq", dq.len(), n_q),
                ("kv", kv.len(), n_kv),
                ("dkv", dkv.len(), n_kv),
            ],
        )?;
        self.check_device(
            op,
            &[
                ("q", q.stream()),
                ("kv", kv.stream()),
                ("dout", dout.stream()),
                ("dq", dq.stream()),
                ("dkv", dkv.stream()),
            ],
        )?;
        if n_q == 0 {
            return Ok(());
        }
        if t == 0 {
            return self
                .stream
                .memset_zeros(dq)
                .map_err(cuda_err(format_args!("zeroing dq of {op} ({shape})")));
        }
        let kernel = by_dtype::<T>("cross_attention_1q_bwd_f32", "cross_attention_1q_bwd_bf16");
        let func = self.function(MODULE, kernel)?;
        let cfg = LaunchConfig {
            grid_dim: ((b * heads) as u32, 1, 1),
            block_dim: (CAB_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (b_i, t_i, h_i, d_i) = (b as i32, t as i32, heads as i32, d as i32);
        let mut launch = self.stream.launch_builder(&func);
        launch
            .arg(q)
            .arg(kv)
            .arg(dout)
            .arg(dq)
            .arg(dkv)
            .arg(&b_i)
            .arg(&t_i)
            .arg(&h_i)
            .arg(&d_i)
            .arg(&scale);
        // SAFETY: (const T* ×3, T* ×2, int ×4, float) as declared; block (bi, head) reads
        // q/dout[bi, head] and kv[bi, 0..t, ·, head] and writes dq[bi, head] and dkv[bi, 0..t,
        // ·, head] (lengths checked). dq and dkv are distinct mutable borrows.
        unsafe { launch.launch(cfg) }
            .map_err(cuda_err(format_args!("launching {kernel} ({shape})")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_kernels_and_shared_memory() {
        assert_eq!(tile_smem_bytes(80), 103_936);
        assert_eq!(tile_smem_bytes(128), 153_088);
        assert_eq!(dp_class(1), (0, 32));
        assert_eq!(dp_class(33), (1, 64));
        assert_eq!(dp_class(80), (2, 80));
        assert_eq!(dp_class(81), (3, 128));
        for d in 1..=MAX_HEAD_DIM {
            // Fits an H100 block (227 KiB opt-in).
            assert!(tile_smem_bytes(d) <= 227 * 1024, "d = {d}");
            let (i, dp) = dp_class(d);
            assert!(dp >= d && dp % 16 == 0);
            for name in SAB_KERNELS[i] {
                assert!(name.ends_with(&format!("_d{dp}")), "{name} for d = {d}");
            }
        }
    }
}
