//! Launchers for kernels/elementwise_bwd.cu: `gelu_bwd_{f32,bf16}`, `scale_rows_f32`,
//! `rot6d_bwd_f32` and `camera_bwd_f32`. CPU twins: `ops::math::gelu_bwd_inplace`,
//! `ops::drop_path::scale_rows`, `ops::geometry::{rot6d_to_rotmat_bwd_cpu, project_bwd_cpu,
//! cam_translation_bwd}`.

use cudarc::driver::{CudaView, CudaViewMut, DeviceSlice, LaunchConfig, PushKernelArg};

use super::super::elementwise::{check_lens, dims_product};
use super::super::{by_dtype, cuda_err, CudaBackend, Dtype};
use crate::error::Result;

const MODULE: &str = "elementwise_bwd";
/// Threads per block (the kernels' `__launch_bounds__` maximum).
const THREADS: usize = 256;
/// Largest grid x-dimension (the kernels grid-stride beyond it).
const MAX_GRID_X: usize = 1 << 20;
/// Largest grid y-dimension (CUDA's limit; samples beyond it are grid-strided).
const MAX_GRID_Y: usize = 65_535;

/// A 1-D launch with one thread per `items` (grid-strided beyond 2^20 blocks).
fn per_item(items: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (items.div_ceil(THREADS).clamp(1, MAX_GRID_X) as u32, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    /// GELU backward in place: `dy[i] *= gelu'(pre[i])` with the exact erf GELU,
    /// `gelu'(x) = Φ(x) + x·φ(x)`; `pre` is the GELU's input, as long as `dy`. bf16 storage is
    /// widened to f32, computed in f32 and rounded back. Queued on the stream.
    pub fn gelu_bwd<T: Dtype>(
        &self,
        pre: &CudaView<'_, T>,
        dy: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        let kernel = by_dtype::<T>("gelu_bwd_f32", "gelu_bwd_bf16");
        let n = dy.len();
        check_lens(
            kernel,
            format_args!("dy of {n} elements"),
            &[("pre", pre.len(), n)],
        )?;
        self.check_device(kernel, &[("pre", pre.stream()), ("dy", dy.stream())])?;
        if n == 0 {
            return Ok(());
        }
        let func = self.function(MODULE, kernel)?;
        let n_i = n as i64;
        let mut launch = self.stream.launch_builder(&func);
        launch.arg(pre).arg(dy).arg(&n_i);
        // SAFETY: (const T*, T*, long long) as declared; touches pre[0..n], dy[0..n] (checked).
        // dy is borrowed mutably, so it does not alias pre.
        unsafe { launch.launch(per_item(n.div_ceil(4))) }
            .map_err(cuda_err(format_args!("launching {kernel} ({n} elements)")))?;
        Ok(())
    }

    /// Drop-path scaling in place: `x[i·per_sample .. (i+1)·per_sample] *= scales[i]` for each of
    /// the `scales.len()` samples; a scale of exactly 0 writes zeros, exactly 1 leaves the sample
    /// untouched. The forward (on a residual branch's output) and the backward (on its gradient)
    /// are this same op. `x` must hold `scales.len() · per_sample` floats. Queued on the stream.
    pub fn scale_rows(
        &self,
        x: &mut CudaViewMut<'_, f32>,
        scales: &CudaView<'_, f32>,
        per_sample: usize,
    ) -> Result<()> {
        const K: &str = "scale_rows_f32";
        let samples = scales.len();
        let n = dims_product(K, &[("samples", samples), ("per_sample", per_sample)], true)?;
        check_lens(
            K,
            format_args!("{samples} samples of {per_sample}"),
            &[("x", x.len(), n)],
        )?;
        self.check_device(K, &[("x", x.stream()), ("scales", scales.stream())])?;
        if n == 0 {
            return Ok(());
        }
        let func = self.function(MODULE, K)?;
        let groups = per_sample.div_ceil(4);
        let threads = (groups.div_ceil(32) * 32).min(THREADS);
        let cfg = LaunchConfig {
            grid_dim: (
                groups.div_ceil(threads).clamp(1, MAX_GRID_X) as u32,
                samples.clamp(1, MAX_GRID_Y) as u32,
                1,
            ),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (samples_i, per_i) = (samples as i32, per_sample as i64);
        let mut launch = self.stream.launch_builder(&func);
        launch.arg(x).arg(scales).arg(&samples_i).arg(&per_i);
        // SAFETY: (float*, const float*, int, long long) as declared; touches
        // x[0..samples·per_sample] and scales[0..samples] (checked; samples fits an int).
        unsafe { launch.launch(cfg) }.map_err(cuda_err(format_args!(
            "launching {K} ({samples} × {per_sample})"
        )))?;
        Ok(())
    }

    /// Backward of `rot6d_fwd`: `x` `[n, 6]` (the 6D codes), `d_r` `[n, 3, 3]` (the gradient of
    /// the row-major rotation matrices) → `dx` `[n, 6]` (overwritten), bit for bit
    /// `ops::geometry::rot6d_to_rotmat_bwd_cpu`. Queued on the stream.
    pub fn rot6d_bwd(
        &self,
        x: &CudaView<'_, f32>,
        d_r: &CudaView<'_, f32>,
        dx: &mut CudaViewMut<'_, f32>,
        n: usize,
    ) -> Result<()> {
        const K: &str = "rot6d_bwd_f32";
        let n6 = dims_product(K, &[("n", n), ("6", 6)], true)?;
        let n9 = dims_product(K, &[("n", n), ("9", 9)], true)?;
        check_lens(
            K,
            format_args!("n = {n}"),
            &[
                ("x", x.len(), n6),
                ("d_r", d_r.len(), n9),
                ("dx", dx.len(), n6),
            ],
        )?;
        self.check_device(
            K,
            &[
                ("x", x.stream()),
                ("d_r", d_r.stream()),
                ("dx", dx.stream()),
            ],
        )?;
        if n == 0 {
            return Ok(());
        }
        let func = self.function(MODULE, K)?;
        let n_i = n as i64;
        let mut launch = self.stream.launch_builder(&func);
        launch.arg(x).arg(d_r).arg(dx).arg(&n_i);
        // SAFETY: (const float*, const float*, float*, long long) as declared; touches
        // x[0..6n], d_r[0..9n], dx[0..6n] (checked). dx is a distinct mutable borrow.
        unsafe { launch.launch(per_item(n)) }
            .map_err(cuda_err(format_args!("launching {K} (n = {n})")))?;
        Ok(())
    }

    /// Backward of `camera_fwd` (SPEC §4): `cam` `[b, 3]` = (s, tx, ty), `kp` `[b, n, 3]`,
    /// `d_kp2d` `[b, n, 2]` → `d_kp` `[b, n, 3]` and `d_cam` `[b, 3]` (both overwritten), through
    /// cam_t = (tx, ty, 2f / (S·s + 1e-9)) and the projection with focal f / S; d cam_t is summed
    /// over the keypoints in order. Bit for bit `ops::geometry::{project_bwd_cpu,
    /// cam_translation_bwd}`. Queued on the stream.
    #[allow(clippy::too_many_arguments)] // the kernel's own argument list
    pub fn camera_bwd(
        &self,
        cam: &CudaView<'_, f32>,
        kp: &CudaView<'_, f32>,
        d_kp2d: &CudaView<'_, f32>,
        d_kp: &mut CudaViewMut<'_, f32>,
        d_cam: &mut CudaViewMut<'_, f32>,
        b: usize,
        n: usize,
        focal_length: f32,
        image_size: f32,
    ) -> Result<()> {
        const K: &str = "camera_bwd_f32";
        let bn = dims_product(K, &[("b", b), ("n", n)], true)?;
        let cam_len = dims_product(K, &[("b", b), ("3", 3)], true)?;
        let kp_len = dims_product(K, &[("b·n", bn), ("3", 3)], true)?;
        let kp2d_len = dims_product(K, &[("b·n", bn), ("2", 2)], true)?;
        check_lens(
            K,
            format_args!("b = {b}, n = {n}"),
            &[
                ("cam", cam.len(), cam_len),
                ("d_cam", d_cam.len(), cam_len),
                ("kp", kp.len(), kp_len),
                ("d_kp", d_kp.len(), kp_len),
                ("d_kp2d", d_kp2d.len(), kp2d_len),
            ],
        )?;
        if !(focal_length.is_finite() && image_size.is_finite() && image_size != 0.0) {
            return crate::input_err!(
                "{K}: focal length {focal_length} and image size {image_size} must be finite, \
                 the size non-zero"
            );
        }
        self.check_device(
            K,
            &[
                ("cam", cam.stream()),
                ("kp", kp.stream()),
                ("d_kp2d", d_kp2d.stream()),
                ("d_kp", d_kp.stream()),
                ("d_cam", d_cam.stream()),
            ],
        )?;
        if b == 0 {
            return Ok(());
        }
        let func = self.function(MODULE, K)?;
        let (b_i, n_i) = (b as i32, n as i32);
        let mut launch = self.stream.launch_builder(&func);
        launch
            .arg(cam)
            .arg(kp)
            .arg(d_kp2d)
            .arg(d_kp)
            .arg(d_cam)
            .arg(&b_i)
            .arg(&n_i)
            .arg(&focal_length)
            .arg(&image_size);
        // SAFETY: (const float* ×3, float* ×2, int, int, float, float) as declared; touches
        // cam[0..3b], kp[0..3bn], d_kp2d[0..2bn], d_kp[0..3bn], d_cam[0..3b] (all checked; b·n
        // fits the kernel's 64-bit index arithmetic). d_kp and d_cam are distinct mutable
        // borrows.
        unsafe { launch.launch(per_item(b)) }
            .map_err(cuda_err(format_args!("launching {K} (b = {b}, n = {n})")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The bit-exact kernels transcribed operation for operation from kernels/elementwise_bwd.cu
    //! (Rust f32 arithmetic is IEEE with no FMA contraction, like the __f*_rn intrinsics), checked
    //! bit for bit against the CPU twins: this checks the kernels' operation order on the host.
    use crate::ops::geometry::{
        cam_translation, cam_translation_bwd, project_bwd_cpu, rot6d_to_rotmat_bwd_cpu,
    };

    type V = [f32; 3];

    fn dot(a: V, b: V) -> f32 {
        (a[0] * b[0] + a[1] * b[1]) + a[2] * b[2]
    }
    fn cross(a: V, b: V) -> V {
        [
            a[1] * b[2] - a[2] * b[1],
            a[2] * b[0] - a[0] * b[2],
            a[0] * b[1] - a[1] * b[0],
        ]
    }
    fn normalize(v: V) -> (V, f32, bool) {
        let raw = dot(v, v).sqrt();
        let n = raw.max(1e-12);
        ([v[0] / n, v[1] / n, v[2] / n], n, raw <= 1e-12)
    }
    fn normalize_bwd(b: V, n: f32, clamped: bool, g: V) -> V {
        let bg = if clamped { 0.0 } else { dot(b, g) };
        [
            (g[0] - b[0] * bg) / n,
            (g[1] - b[1] * bg) / n,
            (g[2] - b[2] * bg) / n,
        ]
    }

    /// rot6d_bwd_f32's body for one code.
    fn rot6d_bwd_kernel(a: &[f32], g: &[f32]) -> [f32; 6] {
        let (a1, a2) = ([a[0], a[1], a[2]], [a[3], a[4], a[5]]);
        let (b1, n1, c1f) = normalize(a1);
        let dot_ = dot(b1, a2);
        let u = [
            a2[0] - dot_ * b1[0],
            a2[1] - dot_ * b1[1],
            a2[2] - dot_ * b1[2],
        ];
        let (b2, n2, c2f) = normalize(u);
        let (g1, g2, g3) = ([g[0], g[3], g[6]], [g[1], g[4], g[7]], [g[2], g[5], g[8]]);
        let (c1, c2) = (cross(b2, g3), cross(g3, b1));
        let mut gb1 = [g1[0] + c1[0], g1[1] + c1[1], g1[2] + c1[2]];
        let gb2 = [g2[0] + c2[0], g2[1] + c2[1], g2[2] + c2[2]];
        let gu = normalize_bwd(b2, n2, c2f, gb2);
        let gdot = -dot(gu, b1);
        for i in 0..3 {
            gb1[i] += gdot * a2[i] - dot_ * gu[i];
        }
        let ga2 = [
            gu[0] + gdot * b1[0],
            gu[1] + gdot * b1[1],
            gu[2] + gdot * b1[2],
        ];
        let ga1 = normalize_bwd(b1, n1, c1f, gb1);
        [ga1[0], ga1[1], ga1[2], ga2[0], ga2[1], ga2[2]]
    }

    fn vals(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn rot6d_bwd_kernel_order_is_the_twins() {
        let n = 500;
        let mut x = vals(6 * n, 1);
        x[6..9].copy_from_slice(&[0.0; 3]); // first clamp
        x[12..18].copy_from_slice(&[0.3, -0.2, 0.1, 0.6, -0.4, 0.2]); // second clamp
        let d_r = vals(9 * n, 2);
        let mut want = vec![0f32; 6 * n];
        rot6d_to_rotmat_bwd_cpu(&x, &d_r, &mut want);
        for i in 0..n {
            let got = rot6d_bwd_kernel(&x[6 * i..6 * i + 6], &d_r[9 * i..9 * i + 9]);
            for (k, (g, w)) in got.iter().zip(&want[6 * i..6 * i + 6]).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "code {i}, component {k}");
            }
        }
    }

    #[test]
    fn camera_bwd_kernel_order_is_the_twins() {
        let (focal, size) = (5000.0f32, 256.0f32);
        let (b, n) = (40, 21);
        let cam: Vec<f32> = vals(3 * b, 3)
            .chunks(3)
            .flat_map(|c| [0.9 + 0.2 * c[0], 0.1 * c[1], 0.1 * c[2]])
            .collect();
        let kp: Vec<f32> = vals(3 * b * n, 4).iter().map(|v| 0.1 * v).collect();
        let g = vals(2 * b * n, 5);
        for bi in 0..b {
            // The twin, as src/train/step.rs calls it.
            let c = [cam[3 * bi], cam[3 * bi + 1], cam[3 * bi + 2]];
            let t = cam_translation(&c, focal, size);
            let (mut want_kp, mut d_t) = (vec![0f32; 3 * n], [0f32; 3]);
            let pts = &kp[3 * n * bi..3 * n * (bi + 1)];
            let gg = &g[2 * n * bi..2 * n * (bi + 1)];
            project_bwd_cpu(pts, &t, focal / size, gg, &mut want_kp, &mut d_t);
            let want_cam = cam_translation_bwd(&c, focal, size, &d_t);
            // camera_bwd_f32's body.
            let focal_norm = focal / size;
            let den = size * c[0] + 1e-9;
            let tz = (2.0 * focal) / den;
            let mut dt = [0f32; 3];
            for j in 0..n {
                let p = &pts[3 * j..3 * j + 3];
                let (x, y, z) = (p[0] + c[1], p[1] + c[2], p[2] + tz);
                let fz = focal_norm / z;
                let (gx, gy) = (fz * gg[2 * j], fz * gg[2 * j + 1]);
                let gz = -((fz * (gg[2 * j] * x + gg[2 * j + 1] * y)) / z);
                for (k, v) in [gx, gy, gz].iter().enumerate() {
                    assert_eq!(
                        v.to_bits(),
                        want_kp[3 * j + k].to_bits(),
                        "image {bi} point {j}"
                    );
                    dt[k] += v;
                }
            }
            let ds = -((((dt[2] * 2.0) * focal) * size) / (den * den));
            for (k, v) in [ds, dt[0], dt[1]].iter().enumerate() {
                assert_eq!(v.to_bits(), want_cam[k].to_bits(), "image {bi} d_cam {k}");
            }
        }
    }
}
