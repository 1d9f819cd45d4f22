//! Launchers for kernels/elementwise.cu: bf16 casts, bias + exact GELU, residual add, broadcast
//! row add, positional embedding, im2col, rot6d and the camera. CPU twins: `ops::elementwise`,
//! `ops::patch_embed::im2col_cpu`, `ops::geometry::{rot6d_to_rotmat_cpu, cam_translation,
//! project_cpu}`.
//!
//! Also the argument checks shared with the LayerNorm launchers (`check_lens`, `dims_product`,
//! `CudaBackend::check_device`). Every check runs before anything is queued; a failed check is
//! `Error::Input`, never a panic.

use std::fmt::Display;
use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DeviceSlice, LaunchConfig, PushKernelArg};
use half::bf16;

use super::{by_dtype, cuda_err, CudaBackend, Dtype};
use crate::error::{Error, Result};
use crate::ops::patch_embed::PatchGeometry;

/// Threads per block (the kernels' `__launch_bounds__` maximum is 256).
const EW_THREADS: u32 = 256;
/// Largest grid x-dimension the flat and row launchers use; the kernels grid-stride, so a
/// smaller grid only means more iterations per thread.
const EW_MAX_GRID_X: usize = 1 << 20;
/// Largest grid y-dimension (CUDA's limit); rows beyond it are grid-strided.
const EW_MAX_GRID_Y: usize = 65_535;

/// `Err(Input)` unless every `(what, len, want)` has `len == want`. `shape` describes the call,
/// for the message.
pub(super) fn check_lens(
    op: &str,
    shape: impl Display,
    items: &[(&str, usize, usize)],
) -> Result<()> {
    for &(what, len, want) in items {
        if len != want {
            return crate::input_err!("{op}: {what} holds {len} elements but {shape} needs {want}");
        }
    }
    Ok(())
}

/// The product of `dims`, when every factor and every partial product fits in an `i32` (the
/// kernels' `int` arguments) — or in an `i64` when `only_product_i64`, for kernels that take
/// the product as a `long long` but the factors as `int`.
pub(super) fn dims_product(
    op: &str,
    dims: &[(&str, usize)],
    only_product_i64: bool,
) -> Result<usize> {
    let limit = if only_product_i64 {
        i64::MAX as usize
    } else {
        i32::MAX as usize
    };
    let mut n: usize = 1;
    for &(what, d) in dims {
        if d > i32::MAX as usize {
            return crate::input_err!("{op}: {what} = {d} is too large for the kernel");
        }
        n = n.checked_mul(d).filter(|&p| p <= limit).ok_or_else(|| {
            let list: Vec<String> = dims.iter().map(|(w, d)| format!("{w} = {d}")).collect();
            Error::Input(format!(
                "{op}: {} is too large for the kernel",
                list.join(", ")
            ))
        })?;
    }
    Ok(n)
}

impl CudaBackend {
    /// `Err(Input)` unless every buffer belongs to this backend's CUDA context.
    pub(super) fn check_device(&self, op: &str, bufs: &[(&str, &Arc<CudaStream>)]) -> Result<()> {
        for &(what, stream) in bufs {
            if **stream.context() != *self.ctx {
                return crate::input_err!(
                    "{op}: {what} lives on another CUDA device than this backend"
                );
            }
        }
        Ok(())
    }

    /// A 1-D launch for `n` elements processed 4 per thread (grid-strided).
    fn flat_config(n: usize) -> LaunchConfig {
        let blocks = n
            .div_ceil(4)
            .div_ceil(EW_THREADS as usize)
            .clamp(1, EW_MAX_GRID_X);
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (EW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// `y = bf16(x)`, round to nearest even (as `half::bf16::from_f32`, NaNs included), over
    /// `x.len()` elements; `y` must be as long. Queued on the stream.
    pub fn cast_fwd_f32_to_bf16(
        &self,
        x: &CudaView<'_, f32>,
        y: &mut CudaViewMut<'_, bf16>,
    ) -> Result<()> {
        self.cast(x, y, "cast_fwd_f32_to_bf16")
    }

    /// `y = f32(x)` (exact) over `x.len()` elements; `y` must be as long. Queued on the stream.
    pub fn cast_fwd_bf16_to_f32(
        &self,
        x: &CudaView<'_, bf16>,
        y: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        self.cast(x, y, "cast_fwd_bf16_to_f32")
    }

    fn cast<A, B>(
        &self,
        x: &CudaView<'_, A>,
        y: &mut CudaViewMut<'_, B>,
        kernel: &'static str,
    ) -> Result<()> {
        let n = x.len();
        check_lens(
            kernel,
            format_args!("x of {n} elements"),
            &[("y", y.len(), n)],
        )?;
        self.check_device(kernel, &[("x", x.stream()), ("y", y.stream())])?;
        if n == 0 {
            return Ok(());
        }
        let func = self.function("elementwise", kernel)?;
        let n_i = n as i64;
        let mut launch = self.stream.launch_builder(&func);
        launch.arg(x).arg(y).arg(&n_i);
        // SAFETY: (const T*, U*, long long) as the kernel declares; it touches x[0..n], y[0..n],
        // both checked. y is borrowed mutably, so it does not alias x.
        unsafe { launch.launch(Self::flat_config(n)) }
            .map_err(cuda_err(format_args!("launching {kernel} ({n} elements)")))?;
        Ok(())
    }

    /// In place on `y` `[rows, cols]`: `y = act(y + bias)`, with `bias` `[cols]` (optional) and
    /// act = the exact GELU `0.5·v·erfc(−v/√2)` when `gelu`, else the identity. bf16 storage is
    /// widened to f32, computed in f32 and rounded back. Queued on the stream.
    pub fn bias_gelu_fwd<T: Dtype>(
        &self,
        y: &mut CudaViewMut<'_, T>,
        bias: Option<&CudaView<'_, f32>>,
        rows: usize,
        cols: usize,
        gelu: bool,
    ) -> Result<()> {
        let kernel = by_dtype::<T>("bias_gelu_fwd_f32", "bias_gelu_fwd_bf16");
        let n = dims_product(kernel, &[("rows", rows), ("cols", cols)], true)?;
        let shape = format_args!("rows = {rows}, cols = {cols}");
        check_lens(kernel, shape, &[("y", y.len(), n)])?;
        if let Some(b) = bias {
            check_lens(kernel, shape, &[("bias", b.len(), cols)])?;
            self.check_device(kernel, &[("bias", b.stream())])?;
        }
        self.check_device(kernel, &[("y", y.stream())])?;
        if n == 0 || (bias.is_none() && !gelu) {
            return Ok(());
        }
        let func = self.function("elementwise", kernel)?;
        let (rows_i, cols_i, gelu_i) = (rows as i32, cols as i32, gelu as i32);
        let null: u64 = 0;
        let mut launch = self.stream.launch_builder(&func);
        launch.arg(y);
        match bias {
            Some(b) => launch.arg(b),
            None => launch.arg(&null), // a null `const float*`: the kernel adds no bias
        };
        launch.arg(&rows_i).arg(&cols_i).arg(&gelu_i);
        // SAFETY: (T*, const float*, int, int, int) as the kernel declares; it touches
        // y[0..rows·cols] and bias[0..cols] (or nothing of a null bias), lengths checked.
        unsafe { launch.launch(rows_config(rows, cols)) }.map_err(cuda_err(format_args!(
            "launching {kernel} ({rows} × {cols})"
        )))?;
        Ok(())
    }

    /// `x[r, j] += v[j]` for `x` `[rows, n]` and `v` `[n]` (the mean parameters onto the head
    /// readouts). Queued on the stream.
    pub fn add_rows_fwd(
        &self,
        x: &mut CudaViewMut<'_, f32>,
        v: &CudaView<'_, f32>,
        rows: usize,
        n: usize,
    ) -> Result<()> {
        const K: &str = "add_rows_fwd_f32";
        let total = dims_product(K, &[("rows", rows), ("n", n)], true)?;
        check_lens(
            K,
            format_args!("rows = {rows}, n = {n}"),
            &[("x", x.len(), total), ("v", v.len(), n)],
        )?;
        self.check_device(K, &[("x", x.stream()), ("v", v.stream())])?;
        if total == 0 {
            return Ok(());
        }
        let func = self.function("elementwise", K)?;
        let (rows_i, n_i) = (rows as i32, n as i32);
        let mut launch = self.stream.launch_builder(&func);
        launch.arg(x).arg(v).arg(&rows_i).arg(&n_i);
        // SAFETY: (float*, const float*, int, int) as declared; touches x[0..rows·n], v[0..n].
        unsafe { launch.launch(rows_config(rows, n)) }
            .map_err(cuda_err(format_args!("launching {K} ({rows} × {n})")))?;
        Ok(())
    }

    /// `x += y` elementwise (the residual add); `y` must be as long as `x`. Queued on the stream.
    pub fn add_fwd(&self, x: &mut CudaViewMut<'_, f32>, y: &CudaView<'_, f32>) -> Result<()> {
        const K: &str = "add_fwd_f32";
        let n = x.len();
        check_lens(K, format_args!("x of {n} elements"), &[("y", y.len(), n)])?;
        self.check_device(K, &[("x", x.stream()), ("y", y.stream())])?;
        if n == 0 {
            return Ok(());
        }
        let func = self.function("elementwise", K)?;
        let n_i = n as i64;
        let mut launch = self.stream.launch_builder(&func);
        launch.arg(x).arg(y).arg(&n_i);
        // SAFETY: (float*, const float*, long long) as declared; touches x[0..n], y[0..n].
        unsafe { launch.launch(Self::flat_config(n)) }
            .map_err(cuda_err(format_args!("launching {K} ({n} elements)")))?;
        Ok(())
    }

    /// The ViT's positional embedding, in place on `x` `[b, t, c]` with `pos` `[1 + t, c]`:
    /// `x = (x + pos[1 + token]) + pos[0]` (SPEC §2.2 step 2, in that order). Queued.
    pub fn add_pos_embed_fwd(
        &self,
        x: &mut CudaViewMut<'_, f32>,
        pos: &CudaView<'_, f32>,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        const K: &str = "add_pos_embed_fwd_f32";
        let rows = dims_product(K, &[("b", b), ("t", t)], false)?;
        let n = dims_product(K, &[("b", b), ("t", t), ("c", c)], true)?;
        let slots = dims_product(K, &[("1 + t", t.saturating_add(1)), ("c", c)], true)?;
        check_lens(
            K,
            format_args!("b = {b}, t = {t}, c = {c}"),
            &[("x", x.len(), n), ("pos", pos.len(), slots)],
        )?;
        self.check_device(K, &[("x", x.stream()), ("pos", pos.stream())])?;
        if n == 0 {
            return Ok(());
        }
        let func = self.function("elementwise", K)?;
        let (rows_i, t_i, c_i) = (rows as i32, t as i32, c as i32);
        let mut launch = self.stream.launch_builder(&func);
        launch.arg(x).arg(pos).arg(&rows_i).arg(&t_i).arg(&c_i);
        // SAFETY: (float*, const float*, int, int, int) as declared; touches x[0..b·t·c] and
        // pos[0..(1 + t)·c], lengths checked.
        unsafe { launch.launch(rows_config(rows, c)) }
            .map_err(cuda_err(format_args!("launching {K} ({b} × {t} × {c})")))?;
        Ok(())
    }

    /// im2col of the patch embedding (exactly `ops::patch_embed::im2col_cpu`): `img`
    /// `[b, 3, S, S]` f32 → `out` `[b·rows·cols, 3·P·P]` in (channel, ky, kx) order, zero
    /// padding outside the window; bf16 outputs are rounded to nearest even. Queued.
    pub fn im2col_fwd<T: Dtype>(
        &self,
        img: &CudaView<'_, f32>,
        b: usize,
        g: &PatchGeometry,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        let kernel = by_dtype::<T>("im2col_fwd_f32", "im2col_fwd_bf16");
        let s = g.image_size;
        // Window row/column coordinates reach (rows or cols)·P + pad; keep them in an i32 too.
        for (what, v) in [
            ("image_size", s),
            ("win_h", g.win_h),
            ("win_w", g.win_w),
            ("col0", g.col0),
            ("pad", g.pad),
        ] {
            dims_product(kernel, &[(what, v)], false)?;
        }
        dims_product(
            kernel,
            &[("rows + 1", g.rows.saturating_add(1)), ("patch", g.patch)],
            false,
        )?;
        dims_product(
            kernel,
            &[("cols + 1", g.cols.saturating_add(1)), ("patch", g.patch)],
            false,
        )?;
        let plen = dims_product(
            kernel,
            &[("3", 3), ("patch", g.patch), ("patch", g.patch)],
            false,
        )?;
        let tokens = dims_product(kernel, &[("rows", g.rows), ("cols", g.cols)], false)?;
        let out_len = dims_product(
            kernel,
            &[("b", b), ("tokens", tokens), ("3·P·P", plen)],
            true,
        )?;
        let img_len = dims_product(kernel, &[("b", b), ("3", 3), ("S", s), ("S", s)], true)?;
        if g.win_h > s || g.col0.checked_add(g.win_w).is_none_or(|e| e > s) {
            return crate::input_err!(
                "{kernel}: the window ({} rows, columns {}..{}+{}) does not fit in the {s}×{s} image",
                g.win_h, g.col0, g.col0, g.win_w
            );
        }
        let shape = format_args!(
            "b = {b}, S = {s}, {} × {} patches of {}",
            g.rows, g.cols, g.patch
        );
        check_lens(
            kernel,
            shape,
            &[("img", img.len(), img_len), ("out", out.len(), out_len)],
        )?;
        self.check_device(kernel, &[("img", img.stream()), ("out", out.stream())])?;
        if out_len == 0 {
            return Ok(());
        }
        let func = self.function("elementwise", kernel)?;
        let rows_total = b * tokens; // <= out_len, fits in i64
        let threads = (plen.div_ceil(32) * 32).min(EW_THREADS as usize) as u32;
        let cfg = LaunchConfig {
            grid_dim: (rows_total.min(i32::MAX as usize) as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let a = [
            b, s, g.win_h, g.win_w, g.col0, g.patch, g.pad, g.rows, g.cols,
        ]
        .map(|v| v as i32);
        let mut launch = self.stream.launch_builder(&func);
        launch.arg(img).arg(out);
        for v in &a {
            launch.arg(v);
        }
        // SAFETY: (const float*, T*, int × 9) as declared, in this order (b, S, win_h, win_w,
        // col0, P, pad, grid rows, grid cols); every value was checked to fit an int. The kernel
        // writes out[0..b·tokens·3P²] and reads img only at rows < win_h <= S and columns
        // col0 + x < col0 + win_w <= S of planes < 3b, all inside the checked lengths.
        unsafe { launch.launch(cfg) }
            .map_err(cuda_err(format_args!("launching {kernel} ({shape})")))?;
        Ok(())
    }

    /// 6D rotation codes `x` `[n, 6]` → rotation matrices `out` `[n, 3, 3]` (SPEC §3.3, exactly
    /// `ops::geometry::rot6d_to_rotmat`). Queued on the stream.
    pub fn rot6d_fwd(
        &self,
        x: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, f32>,
        n: usize,
    ) -> Result<()> {
        const K: &str = "rot6d_fwd_f32";
        let xn = dims_product(K, &[("n", n), ("6", 6)], true)?;
        let on = dims_product(K, &[("n", n), ("9", 9)], true)?;
        check_lens(
            K,
            format_args!("n = {n}"),
            &[("x", x.len(), xn), ("out", out.len(), on)],
        )?;
        self.check_device(K, &[("x", x.stream()), ("out", out.stream())])?;
        if n == 0 {
            return Ok(());
        }
        let func = self.function("elementwise", K)?;
        let n_i = n as i64;
        let mut launch = self.stream.launch_builder(&func);
        launch.arg(x).arg(out).arg(&n_i);
        // SAFETY: (const float*, float*, long long) as declared; touches x[0..6n], out[0..9n].
        unsafe { launch.launch(thread_per_item_config(n)) }
            .map_err(cuda_err(format_args!("launching {K} (n = {n})")))?;
        Ok(())
    }

    /// The camera of SPEC §4: `cam` `[b, 3]` = (s, tx, ty) → `cam_t` `[b, 3]` =
    /// (tx, ty, 2f / (S·s + 1e-9)), and keypoints `kp` `[b, n, 3]` → `kp2d` `[b, n, 2]`, their
    /// perspective projection after translation by `cam_t` with focal f / S (exactly
    /// `ops::geometry::{cam_translation, project_cpu}`). Queued on the stream.
    #[allow(clippy::too_many_arguments)] // the kernel's own argument list
    pub fn camera_fwd(
        &self,
        cam: &CudaView<'_, f32>,
        kp: &CudaView<'_, f32>,
        cam_t: &mut CudaViewMut<'_, f32>,
        kp2d: &mut CudaViewMut<'_, f32>,
        b: usize,
        n: usize,
        focal_length: f32,
        image_size: f32,
    ) -> Result<()> {
        const K: &str = "camera_fwd_f32";
        let bn = dims_product(K, &[("b", b), ("n", n)], true)?;
        let cam_len = dims_product(K, &[("b", b), ("3", 3)], true)?;
        let kp_len = dims_product(K, &[("b·n", bn), ("3", 3)], true)?;
        let kp2d_len = dims_product(K, &[("b·n", bn), ("2", 2)], true)?;
        check_lens(
            K,
            format_args!("b = {b}, n = {n}"),
            &[
                ("cam", cam.len(), cam_len),
                ("cam_t", cam_t.len(), cam_len),
                ("kp", kp.len(), kp_len),
                ("kp2d", kp2d.len(), kp2d_len),
            ],
        )?;
        if !(focal_length.is_finite() && image_size.is_finite() && image_size != 0.0) {
            return crate::input_err!(
                "{K}: focal length {focal_length} and image size {image_size} must be finite, the size non-zero"
            );
        }
        self.check_device(
            K,
            &[
                ("cam", cam.stream()),
                ("kp", kp.stream()),
                ("cam_t", cam_t.stream()),
                ("kp2d", kp2d.stream()),
            ],
        )?;
        if b == 0 {
            return Ok(());
        }
        let func = self.function("elementwise", K)?;
        let (b_i, n_i) = (b as i32, n as i32);
        let mut launch = self.stream.launch_builder(&func);
        launch
            .arg(cam)
            .arg(kp)
            .arg(cam_t)
            .arg(kp2d)
            .arg(&b_i)
            .arg(&n_i)
            .arg(&focal_length)
            .arg(&image_size);
        // SAFETY: (const float*, const float*, float*, float*, int, int, float, float) as
        // declared; touches cam[0..3b], kp[0..3bn], cam_t[0..3b], kp2d[0..2bn], all checked.
        // cam_t and kp2d are distinct mutable borrows, so no output aliases another buffer.
        unsafe { launch.launch(thread_per_item_config(b * n.max(1))) }
            .map_err(cuda_err(format_args!("launching {K} (b = {b}, n = {n})")))?;
        Ok(())
    }
}

/// A 2-D launch over a `rows × cols` matrix: blockIdx.y strides over rows, the x-dimension over
/// column groups of 4 (the kernels fall back to one column per thread when unaligned, looping).
fn rows_config(rows: usize, cols: usize) -> LaunchConfig {
    let groups = cols.div_ceil(4).max(1);
    let threads = (groups.div_ceil(32) * 32).min(EW_THREADS as usize);
    LaunchConfig {
        grid_dim: (
            groups.div_ceil(threads).clamp(1, EW_MAX_GRID_X) as u32,
            rows.clamp(1, EW_MAX_GRID_Y) as u32,
            1,
        ),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A 1-D launch with one thread per item (grid-strided beyond 2^20 blocks).
fn thread_per_item_config(items: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            items.div_ceil(EW_THREADS as usize).clamp(1, EW_MAX_GRID_X) as u32,
            1,
            1,
        ),
        block_dim: (EW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mirrors the kernels' index loops on the CPU for the launch configurations above: every
    /// element is visited exactly once (flat and row kernels, vector and scalar paths).
    #[test]
    fn grid_stride_loops_cover_every_element_once() {
        // ew_flat
        for n in [1usize, 3, 4, 5, 1023, 1024, 4097, 100_003] {
            let cfg = CudaBackend::flat_config(n);
            let (blocks, threads) = (cfg.grid_dim.0 as i64, cfg.block_dim.0 as i64);
            for vec in [false, true] {
                let mut seen = vec![0u8; n];
                let n = n as i64;
                let mut done = 0;
                for tid in 0..blocks * threads {
                    if vec {
                        let mut i = tid;
                        while i < n / 4 {
                            for k in 0..4 {
                                seen[(4 * i + k) as usize] += 1;
                            }
                            i += blocks * threads;
                        }
                    }
                }
                if vec {
                    done = 4 * (n / 4);
                }
                for tid in 0..blocks * threads {
                    let mut i = done + tid;
                    while i < n {
                        seen[i as usize] += 1;
                        i += blocks * threads;
                    }
                }
                assert!(seen.iter().all(|&s| s == 1), "flat n={n} vec={vec}");
            }
        }
        // ew_rows
        for (rows, cols) in [
            (1usize, 1usize),
            (3, 3),
            (7, 96),
            (5, 1283),
            (70_000, 8),
            (2, 5120),
        ] {
            let cfg = rows_config(rows, cols);
            assert!(cfg.block_dim.0 % 32 == 0 && cfg.block_dim.0 <= EW_THREADS);
            assert!(cfg.grid_dim.1 as usize <= EW_MAX_GRID_Y);
            for vec in [false, true] {
                if vec && cols % 4 != 0 {
                    continue;
                }
                let mut seen = vec![0u8; rows * cols];
                let groups = if vec { cols / 4 } else { cols } as i64;
                let stride = (cfg.grid_dim.0 * cfg.block_dim.0) as i64;
                for by in 0..cfg.grid_dim.1 as usize {
                    let mut row = by;
                    while row < rows {
                        for t in 0..stride {
                            let mut g = t;
                            while g < groups {
                                let c = if vec { 4 * g as usize } else { g as usize };
                                for k in 0..if vec { 4 } else { 1 } {
                                    seen[row * cols + c + k] += 1;
                                }
                                g += stride;
                            }
                        }
                        row += cfg.grid_dim.1 as usize;
                    }
                }
                assert!(seen.iter().all(|&s| s == 1), "rows {rows}×{cols} vec={vec}");
            }
        }
    }

    /// The im2col kernel's index arithmetic (one block per token, features decoded as
    /// (channel, ky, kx)) reproduces `im2col_cpu` exactly, on the real geometry and on odd ones.
    #[test]
    fn im2col_index_math_matches_cpu_twin() {
        use crate::ops::patch_embed::im2col_cpu;
        let geometries = [
            // the model: 256×256 crop, 256×192 window at column 32, P = 16, pad 2, 16×12 grid
            (
                2usize,
                PatchGeometry {
                    image_size: 256,
                    win_h: 256,
                    win_w: 192,
                    col0: 32,
                    patch: 16,
                    pad: 2,
                    rows: 16,
                    cols: 12,
                },
            ),
            (
                1,
                PatchGeometry {
                    image_size: 13,
                    win_h: 11,
                    win_w: 9,
                    col0: 3,
                    patch: 3,
                    pad: 1,
                    rows: 4,
                    cols: 3,
                },
            ),
            (
                3,
                PatchGeometry {
                    image_size: 7,
                    win_h: 7,
                    win_w: 7,
                    col0: 0,
                    patch: 5,
                    pad: 0,
                    rows: 2,
                    cols: 2,
                },
            ),
        ];
        for (b, g) in geometries {
            let s = g.image_size;
            let img: Vec<f32> = (0..b * 3 * s * s).map(|i| i as f32 + 0.5).collect();
            let mut want = vec![0f32; b * g.rows * g.cols * g.patch_len()];
            im2col_cpu(&img, b, &g, &mut want);
            let mut got = vec![f32::NAN; want.len()];
            let (tokens, pp) = (g.rows * g.cols, g.patch * g.patch);
            let plen = 3 * pp;
            for bt in 0..b * tokens {
                let (bi, tok) = (bt / tokens, bt % tokens);
                let (ti, tj) = (tok / g.cols, tok % g.cols);
                for f in 0..plen {
                    let ch = f / pp;
                    let rem = f - ch * pp;
                    let (ky, kx) = (rem / g.patch, rem % g.patch);
                    let yy = (ti * g.patch + ky) as i64 - g.pad as i64;
                    let xx = (tj * g.patch + kx) as i64 - g.pad as i64;
                    let mut v = 0.0;
                    if yy >= 0 && yy < g.win_h as i64 && xx >= 0 && xx < g.win_w as i64 {
                        let idx = ((bi as i64 * 3 + ch as i64) * s as i64 + yy) * s as i64
                            + g.col0 as i64
                            + xx;
                        v = img[idx as usize];
                    }
                    got[bt * plen + f] = v;
                }
            }
            assert_eq!(got, want, "{g:?}");
        }
    }

    #[test]
    fn dims_product_rejects_overflow() {
        assert_eq!(dims_product("t", &[("a", 3), ("b", 4)], false).unwrap(), 12);
        assert!(dims_product("t", &[("a", 1 << 16), ("b", 1 << 16)], false).is_err());
        assert!(dims_product("t", &[("a", 1 << 16), ("b", 1 << 16)], true).is_ok());
        assert!(dims_product("t", &[("a", usize::MAX), ("b", 2)], true).is_err());
        assert!(dims_product("t", &[("a", 1 << 31), ("b", 1)], true).is_err());
    }
}
