//! Launchers for kernels/attention.cu: `self_attention_fwd_{f32,bf16}` (the ViT's fused
//! flash-style self-attention over the packed qkv layout, SPEC §2.2 step 3) and
//! `cross_attention_1q_fwd_{f32,bf16}` (the decoder's cross-attention of one query token over
//! the context, SPEC §3.2 step 3). CPU twins: `crate::ops::attention::{self_attention_packed_cpu,
//! cross_attention_1q_cpu}`.
//!
//! Every argument is checked before anything is queued; a bad one is `Error::Input`.

use std::sync::Arc;

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DeviceSlice, LaunchConfig, PushKernelArg};

use super::{by_dtype, cuda_err, CudaBackend, Dtype};
use crate::error::{Error, Result};

/// Largest head dimension the attention kernels take (`SA_MAX_D` in kernels/attention.cu).
pub const ATTENTION_MAX_HEAD_DIM: usize = 128;

/// Self-attention: threads per block (4 warps; the kernels' `__launch_bounds__` is 128).
const SA_THREADS: u32 = 128;
/// Self-attention: queries per block and keys per shared-memory tile (`SA_QTILE`, `SA_KTILE`).
const SA_QTILE: usize = 64;
const SA_KTILE: usize = 64;
/// f32 self-attention: row stride in floats of the transposed Q / K tiles and of P (`SF_LD`).
const SF_LD: usize = 68;
/// Cross-attention: threads per block (8 warps; `CA_THREADS`).
const CA_THREADS: u32 = 256;
/// Dynamic shared memory a kernel may use without raising its limit.
const DEFAULT_DYNAMIC_SMEM: usize = 48 * 1024;

/// The head dimension padded to the kernels' granularity (a multiple of 16).
fn padded_head_dim(d: usize) -> usize {
    d.div_ceil(16) * 16
}

/// Dynamic shared memory of `self_attention_fwd_<T>` for head dimension `d` (1 ≤ d ≤ 128);
/// mirrors the carving in kernels/attention.cu:
/// - bf16: sQ, sK, sV, each 64 rows × (DP + 8) bf16;
/// - f32: Qᵀ [d][68], Kᵀ-then-P [max(d, 64)][68], V [64][DP] floats.
fn self_attention_smem_bytes<T: Dtype>(d: usize) -> usize {
    let dp = padded_head_dim(d);
    if T::NAME == "bf16" {
        (SA_QTILE + 2 * SA_KTILE) * (dp + 8) * 2
    } else {
        (d * SF_LD + d.max(SA_KTILE) * SF_LD + SA_KTILE * dp) * 4
    }
}

/// The launch of the self-attention kernels: one block of 128 threads per (batch, head, tile
/// of 64 queries).
fn self_attention_config<T: Dtype>(b: usize, s: usize, heads: usize, d: usize) -> LaunchConfig {
    let blocks = b * heads * s.div_ceil(SA_QTILE);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (SA_THREADS, 1, 1),
        shared_mem_bytes: self_attention_smem_bytes::<T>(d) as u32,
    }
}

/// The product of `dims` if it fits in an `i32` (and so does every factor), else `Err(Input)`.
fn product_i32(op: &str, dims: &[(&str, usize)]) -> Result<usize> {
    let mut n: usize = 1;
    for &(_, v) in dims {
        n = match n.checked_mul(v) {
            Some(p) if p <= i32::MAX as usize => p,
            _ => {
                let list: Vec<String> = dims.iter().map(|(w, v)| format!("{w} = {v}")).collect();
                return crate::input_err!("{op}: {} is too large for the kernel", list.join(" × "));
            }
        };
    }
    Ok(n)
}

/// The product of `dims` as a buffer length, or `Err(Input)` when it overflows.
fn product_len(op: &str, dims: &[(&str, usize)]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |n, &(_, v)| n.checked_mul(v))
        .ok_or_else(|| {
            let list: Vec<String> = dims.iter().map(|(w, v)| format!("{w} = {v}")).collect();
            Error::Input(format!("{op}: {} overflows", list.join(" × ")))
        })
}

fn check_len(op: &str, what: &str, len: usize, want: usize, shape: &str) -> Result<()> {
    if len != want {
        return crate::input_err!("{op}: {what} holds {len} elements but {shape} needs {want}");
    }
    Ok(())
}

fn check_head_dim(op: &str, d: usize) -> Result<()> {
    if d > ATTENTION_MAX_HEAD_DIM {
        return crate::input_err!(
            "{op}: head dimension d = {d} is larger than the kernel's maximum of \
             {ATTENTION_MAX_HEAD_DIM}"
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
    /// `Err(Input)` unless every buffer lives in this backend's CUDA context.
    fn attention_check_device(&self, op: &str, bufs: &[(&str, &Arc<CudaStream>)]) -> Result<()> {
        for &(what, stream) in bufs {
            if **stream.context() != *self.ctx {
                return crate::input_err!(
                    "{op}: {what} lives on another CUDA device than this backend"
                );
            }
        }
        Ok(())
    }

    /// Raises `func`'s dynamic shared memory limit to `bytes` when that is above the default
    /// 48 KiB (an error from the driver, e.g. a GPU with less shared memory per block, is
    /// `Error::Cuda`).
    fn attention_allow_smem(
        &self,
        func: &cudarc::driver::CudaFunction,
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

    /// ViT self-attention over the packed qkv layout: for each batch element and head,
    /// `out = softmax(scale · q · kᵀ) · v`, softmax over the `s` keys. `qkv` is `[b, s, 3·heads·d]`
    /// with feature `which·(heads·d) + head·d + i` (which = q, k, v); `out` is `[b, s, heads·d]`,
    /// heads concatenated. Any `s`, `1 ≤ d ≤ 128` (padded to a multiple of 16 inside). bf16:
    /// bf16 in and out, fp32 scores, statistics and accumulators. Queued on the stream.
    #[allow(clippy::too_many_arguments)] // the kernel's own argument list
    pub fn self_attention_fwd<T: Dtype>(
        &self,
        qkv: &CudaView<'_, T>,
        out: &mut CudaViewMut<'_, T>,
        b: usize,
        s: usize,
        heads: usize,
        d: usize,
        scale: f32,
    ) -> Result<()> {
        let op = "self_attention";
        let shape = format!("b = {b}, s = {s}, heads = {heads}, d = {d}");
        check_head_dim(op, d)?;
        check_scale(op, scale)?;
        let n_out = product_len(op, &[("b", b), ("s", s), ("heads", heads), ("d", d)])?;
        let n_qkv = product_len(
            op,
            &[("3", 3), ("b", b), ("s", s), ("heads", heads), ("d", d)],
        )?;
        check_len(op, "qkv", qkv.len(), n_qkv, &shape)?;
        check_len(op, "out", out.len(), n_out, &shape)?;
        // The kernel's int arguments and block index: b·heads·ceil(s/64) blocks, 3·heads·d
        // features, s + 63 keys.
        product_i32(
            op,
            &[
                ("b", b),
                ("heads", heads),
                ("ceil(s/64)", s.div_ceil(SA_QTILE)),
            ],
        )?;
        product_i32(op, &[("3", 3), ("heads", heads), ("d", d)])?;
        product_i32(op, &[("s + 64", s.saturating_add(SA_QTILE))])?;
        product_i32(op, &[("b", b)])?;
        self.attention_check_device(
            op,
            &[
                ("qkv", DeviceSlice::stream(qkv)),
                ("out", DeviceSlice::stream(out)),
            ],
        )?;
        if n_out == 0 {
            return Ok(());
        }

        let kernel = by_dtype::<T>("self_attention_fwd_f32", "self_attention_fwd_bf16");
        let func = self.function("attention", kernel)?;
        let cfg = self_attention_config::<T>(b, s, heads, d);
        self.attention_allow_smem(&func, kernel, cfg.shared_mem_bytes as usize)?;
        let (b_i, s_i, h_i, d_i) = (b as i32, s as i32, heads as i32, d as i32);
        let mut launch = self.stream.launch_builder(&func);
        launch
            .arg(qkv)
            .arg(out)
            .arg(&b_i)
            .arg(&s_i)
            .arg(&h_i)
            .arg(&d_i)
            .arg(&scale);
        // SAFETY: the arguments match the kernel's signature (const T*, T*, int, int, int, int,
        // float) in order, T being float or bf16 (2-byte bits) as the kernel name says; the
        // lengths were checked above and the kernel touches only qkv[0..b·s·3·heads·d] and
        // out[0..b·s·heads·d]. The grid and shared memory are those the kernel expects for d.
        // `out` is borrowed mutably, so it cannot alias qkv (the kernel uses __restrict__).
        unsafe { launch.launch(cfg) }
            .map_err(cuda_err(format_args!("launching {kernel} ({shape})")))?;
        Ok(())
    }

    /// Decoder cross-attention with one query per sample: for each batch element and head,
    /// `out = softmax(scale · q · kᵀ) · v` over the `t` context tokens. `q` is `[b, heads·d]`,
    /// `kv` is `[b, t, 2·heads·d]` (keys in the first `heads·d` features, values in the
    /// second), `out` is `[b, heads·d]`. Any `t ≥ 1`, `1 ≤ d ≤ 128`. Queued on the stream.
    #[allow(clippy::too_many_arguments)] // the kernel's own argument list
    pub fn cross_attention_1q_fwd<T: Dtype>(
        &self,
        q: &CudaView<'_, T>,
        kv: &CudaView<'_, T>,
        out: &mut CudaViewMut<'_, T>,
        b: usize,
        t: usize,
        heads: usize,
        d: usize,
        scale: f32,
    ) -> Result<()> {
        let op = "cross_attention_1q";
        let shape = format!("b = {b}, t = {t}, heads = {heads}, d = {d}");
        check_head_dim(op, d)?;
        check_scale(op, scale)?;
        let n_q = product_len(op, &[("b", b), ("heads", heads), ("d", d)])?;
        let n_kv = product_len(
            op,
            &[("2", 2), ("b", b), ("t", t), ("heads", heads), ("d", d)],
        )?;
        check_len(op, "q", q.len(), n_q, &shape)?;
        check_len(op, "kv", kv.len(), n_kv, &shape)?;
        check_len(op, "out", out.len(), n_q, &shape)?;
        product_i32(op, &[("b", b), ("heads", heads)])?;
        product_i32(op, &[("2", 2), ("heads", heads), ("d", d)])?;
        product_i32(op, &[("t", t)])?;
        self.attention_check_device(
            op,
            &[
                ("q", DeviceSlice::stream(q)),
                ("kv", DeviceSlice::stream(kv)),
                ("out", DeviceSlice::stream(out)),
            ],
        )?;
        if n_q == 0 {
            return Ok(());
        }
        if t == 0 {
            return crate::input_err!("{op}: softmax over t = 0 context tokens ({shape})");
        }

        let kernel = by_dtype::<T>("cross_attention_1q_fwd_f32", "cross_attention_1q_fwd_bf16");
        let func = self.function("attention", kernel)?;
        let cfg = LaunchConfig {
            grid_dim: ((b * heads) as u32, 1, 1),
            block_dim: (CA_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (b_i, t_i, h_i, d_i) = (b as i32, t as i32, heads as i32, d as i32);
        let mut launch = self.stream.launch_builder(&func);
        launch
            .arg(q)
            .arg(kv)
            .arg(out)
            .arg(&b_i)
            .arg(&t_i)
            .arg(&h_i)
            .arg(&d_i)
            .arg(&scale);
        // SAFETY: the arguments match the kernel's signature (const T*, const T*, T*, int, int,
        // int, int, float) in order; the lengths were checked above and the kernel touches only
        // q[0..b·heads·d], kv[0..b·t·2·heads·d] and out[0..b·heads·d]. `out` is borrowed
        // mutably, so it cannot alias the inputs.
        unsafe { launch.launch(cfg) }
            .map_err(cuda_err(format_args!("launching {kernel} ({shape})")))?;
        Ok(())
    }
}

#[cfg(test)]
mod mirror;
#[cfg(test)]
mod mirror_kernels;

#[cfg(test)]
mod tests {
    //! The kernels' CPU mirrors (mirror_kernels.rs) against the CPU twins, and the launch
    //! arithmetic. These run everywhere; the GPU itself is tested in tests/cuda_attention.rs.
    use super::mirror::*;
    use super::mirror_kernels::*;
    use super::*;
    use crate::ops::attention::{cross_attention_1q_cpu, self_attention_packed_cpu};
    use crate::tensor::rel_err;
    use half::bf16;

    const SELF_SHAPES: &[(usize, usize, usize, usize)] = &[
        // (b, s, heads, d)
        (1, 1, 1, 32),
        (2, 7, 2, 20),
        (1, 48, 4, 32),
        (1, 65, 1, 80),
        (1, 130, 2, 16),
        (1, 70, 1, 128),
        (1, 9, 1, 96),
        (1, 33, 1, 3),
        (1, 64, 1, 112),
    ];

    #[test]
    fn self_attention_f32_mirror_matches_the_cpu_twin() {
        for (n, &(b, s, heads, d)) in SELF_SHAPES.iter().enumerate() {
            let scale = (d as f32).powf(-0.5);
            let qkv = inputs(b * s * 3 * heads * d, 11 + n as u64, 2.0);
            let mut want = vec![0f32; b * s * heads * d];
            self_attention_packed_cpu(&qkv, b, s, heads, d, scale, &mut want);
            let mut got = vec![f32::NAN; want.len()];
            let mut hits = vec![0u32; want.len()];
            emulate_self_f32(&qkv, &mut got, &mut hits, b, s, heads, d, scale);
            assert!(
                hits.iter().all(|&h| h == 1),
                "b{b} s{s} h{heads} d{d}: coverage"
            );
            let e = rel_err(&got, &want);
            // fp32 throughout; only the summation orders and exp2 vs exp differ.
            assert!(e < 1e-5, "b{b} s{s} h{heads} d{d}: rel err {e}");
        }
    }

    #[test]
    fn self_attention_bf16_mirror_matches_the_cpu_twin() {
        for (n, &(b, s, heads, d)) in SELF_SHAPES.iter().enumerate() {
            for vec in [true, false] {
                if vec && d % 8 != 0 {
                    continue;
                }
                let scale = (d as f32).powf(-0.5);
                let qkv: Vec<f32> = inputs(b * s * 3 * heads * d, 23 + n as u64, 2.0);
                let qkv_bits: Vec<u16> = qkv.iter().map(|&v| bf(v)).collect();
                let rounded: Vec<f32> = qkv_bits.iter().map(|&v| fb(v)).collect();
                let mut want = vec![0f32; b * s * heads * d];
                self_attention_packed_cpu(&rounded, b, s, heads, d, scale, &mut want);
                let mut got = vec![bf(f32::NAN); want.len()];
                let mut hits = vec![0u32; want.len()];
                emulate_self_bf16(&qkv_bits, &mut got, &mut hits, b, s, heads, d, scale, vec);
                assert!(
                    hits.iter().all(|&h| h == 1),
                    "b{b} s{s} h{heads} d{d}: coverage"
                );
                let got: Vec<f32> = got.iter().map(|&v| fb(v)).collect();
                let e = rel_err(&got, &want);
                // P and the output rounded to bf16 (2^-9 relative each): ~1e-2 of max|out|.
                assert!(e < 1e-2, "b{b} s{s} h{heads} d{d} vec {vec}: rel err {e}");
            }
        }
    }

    #[test]
    fn cross_attention_mirror_matches_the_cpu_twin() {
        for (n, &(b, t, heads, d)) in [
            (1, 1, 1, 32),
            (2, 7, 3, 20),
            (1, 48, 4, 32),
            (2, 192, 8, 64),
            (1, 37, 1, 128),
            (1, 100, 2, 1),
        ]
        .iter()
        .enumerate()
        {
            let scale = (d as f32).powf(-0.5);
            let q = inputs(b * heads * d, 31 + n as u64, 2.0);
            let kv = inputs(b * t * 2 * heads * d, 37 + n as u64, 2.0);
            let mut want = vec![0f32; b * heads * d];
            cross_attention_1q_cpu(&q, &kv, b, t, heads, d, scale, &mut want);
            let mut got = vec![f32::NAN; want.len()];
            let mut hits = vec![0u32; want.len()];
            emulate_cross(&q, &kv, &mut got, &mut hits, b, t, heads, d, scale);
            assert!(
                hits.iter().all(|&h| h == 1),
                "b{b} t{t} h{heads} d{d}: coverage"
            );
            let e = rel_err(&got, &want);
            // fp32; summation orders differ.
            assert!(e < 1e-5, "b{b} t{t} h{heads} d{d}: rel err {e}");
        }
    }

    /// Shared memory fits an H100 block (227 KiB opt-in) for every head dimension, and the
    /// hamer shapes get the expected sizes.
    #[test]
    fn shared_memory_sizes() {
        for d in 1..=ATTENTION_MAX_HEAD_DIM {
            assert!(
                self_attention_smem_bytes::<f32>(d) <= 227 * 1024,
                "f32 d = {d}"
            );
            assert!(
                self_attention_smem_bytes::<bf16>(d) <= 227 * 1024,
                "bf16 d = {d}"
            );
        }
        assert_eq!(self_attention_smem_bytes::<bf16>(80), 33_792);
        assert_eq!(self_attention_smem_bytes::<f32>(80), 64_000);
        assert_eq!(self_attention_smem_bytes::<bf16>(128), 52_224);
        assert_eq!(self_attention_smem_bytes::<f32>(128), 102_400);
        let c = self_attention_config::<bf16>(64, 192, 16, 80);
        assert_eq!(c.grid_dim, (64 * 16 * 3, 1, 1));
    }
}
