//! The kernel and whole-forward benchmarks behind the `bench` binary: CUDA-event timing after
//! warm-up with a cold L2, medians of many runs, and each figure next to the ceiling measured
//! on the same device (copy bandwidth for memory-bound kernels, cuBLASLt GEMM throughput for
//! compute-bound ones).

use half::bf16;

use super::{CudaBackend, Dtype, GpuModel, Timer};
use crate::engine::Precision;
use crate::error::Result;
use crate::model::HandModel;
use crate::ops::covariance::CovParam;
use crate::ops::mano::ManoData;

/// One measurement, printed as a table row and as one JSON line.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BenchRow {
    pub engine: &'static str,
    /// "ceiling", "kernel" or "forward".
    pub kind: &'static str,
    pub kernel: String,
    pub mode: String,
    pub batch: usize,
    pub median_ms: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gbps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tflops: Option<f64>,
    /// Fraction of the matching ceiling measured on this device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frac_of_ceiling: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_mem_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
    pub device: String,
}

/// The device's ceilings.
#[derive(Clone, Copy, Debug)]
pub struct Ceilings {
    pub copy_gbps: f64,
    pub gemm_f32_tflops: f64,
    pub gemm_bf16_tflops: f64,
}

pub struct Bench<'a> {
    pub be: &'a CudaBackend,
    pub timer: Timer,
    pub warmup: usize,
    pub runs: usize,
    pub device: String,
    pub ceilings: Option<Ceilings>,
}

/// Deterministic pseudo-random values in [−1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

impl<'a> Bench<'a> {
    pub fn new(be: &'a CudaBackend, warmup: usize, runs: usize) -> Result<Bench<'a>> {
        Ok(Bench {
            be,
            timer: be.timer(true)?,
            warmup,
            runs,
            device: be.device_name()?,
            ceilings: None,
        })
    }

    fn row(
        &self,
        kind: &'static str,
        kernel: &str,
        mode: &str,
        batch: usize,
        t: &super::Timings,
    ) -> BenchRow {
        BenchRow {
            engine: "handcov",
            kind,
            kernel: kernel.into(),
            mode: mode.into(),
            batch,
            median_ms: t.median() as f64,
            p10_ms: t.quantile(0.1) as f64,
            p90_ms: t.quantile(0.9) as f64,
            device: self.device.clone(),
            ..Default::default()
        }
    }

    /// Measures and remembers the ceilings.
    pub fn ceilings(&mut self) -> Result<Vec<BenchRow>> {
        let be = self.be;
        let copy = be.copy_bandwidth_gbps(&mut self.timer)?;
        let f32_t = be.gemm_ceiling_tflops::<f32>(&mut self.timer)?;
        let bf16_t = be.gemm_ceiling_tflops::<bf16>(&mut self.timer)?;
        self.ceilings = Some(Ceilings {
            copy_gbps: copy,
            gemm_f32_tflops: f32_t,
            gemm_bf16_tflops: bf16_t,
        });
        let mk = |name: &str, mode: &str, g: Option<f64>, t: Option<f64>| BenchRow {
            engine: "handcov",
            kind: "ceiling",
            kernel: name.into(),
            mode: mode.into(),
            gbps: g,
            tflops: t,
            device: self.device.clone(),
            ..Default::default()
        };
        Ok(vec![
            mk("copy_dtod_1GiB", "-", Some(copy), None),
            mk("gemm_8192", "fp32", None, Some(f32_t)),
            mk("gemm_8192", "bf16", None, Some(bf16_t)),
        ])
    }

    fn with_bytes(&self, mut r: BenchRow, bytes: f64) -> BenchRow {
        let g = bytes / (r.median_ms * 1e-3) / 1e9;
        r.gbps = Some(g);
        r.frac_of_ceiling = self.ceilings.map(|c| g / c.copy_gbps);
        r
    }

    fn with_flops<T: Dtype>(&self, mut r: BenchRow, flops: f64) -> BenchRow {
        let t = flops / (r.median_ms * 1e-3) / 1e12;
        r.tflops = Some(t);
        r.frac_of_ceiling = self.ceilings.map(|c| {
            t / if T::NAME == "f32" {
                c.gemm_f32_tflops
            } else {
                c.gemm_bf16_tflops
            }
        });
        r
    }

    /// Every kernel at the `hamer` shapes of a batch of `b` images (MANO and covariance at batch
    /// `mano_batch`).
    pub fn kernels<T: Dtype>(
        &mut self,
        b: usize,
        mano: &ManoData,
        mano_batch: usize,
    ) -> Result<Vec<BenchRow>> {
        let be = self.be;
        let (s, c, heads, d, hidden) = (192usize, 1280usize, 16usize, 80usize, 5120usize);
        let rows = b * s;
        let es = std::mem::size_of::<T>() as f64;
        let mode = precision_name::<T>();
        let (w, r_) = (self.warmup, self.runs);
        let mut out = Vec::new();

        // LayerNorm and fused add + LayerNorm on the ViT residual stream.
        let x = be.upload::<f32>(&noise(rows * c, 1))?;
        let mut xm = be.upload::<f32>(&noise(rows * c, 2))?;
        let gamma = be.upload::<f32>(&noise(c, 3))?;
        let beta = be.upload::<f32>(&noise(c, 4))?;
        let mut ln_out = be.upload::<T>(&noise(rows * c, 5))?;
        let t = self.timer.time(be, w, r_, || {
            be.layernorm_fwd::<T>(
                &x.as_view(),
                &gamma.as_view(),
                &beta.as_view(),
                &mut ln_out.as_view_mut(),
                rows,
                c,
                1e-6,
            )
        })?;
        out.push(self.with_bytes(
            self.row("kernel", "layernorm_fwd", mode, b, &t),
            rows as f64 * c as f64 * (4.0 + es),
        ));
        let t = self.timer.time(be, w, r_, || {
            be.add_layernorm_fwd::<T>(
                &mut xm.as_view_mut(),
                &x.as_view(),
                &gamma.as_view(),
                &beta.as_view(),
                &mut ln_out.as_view_mut(),
                rows,
                c,
                1e-6,
            )
        })?;
        out.push(self.with_bytes(
            self.row("kernel", "add_layernorm_fwd", mode, b, &t),
            rows as f64 * c as f64 * (12.0 + es),
        ));

        // Self-attention (B, 16, 192, 80): 4·B·H·S²·D FLOPs.
        let qkv = be.upload::<T>(&noise(rows * 3 * c, 6))?;
        let mut att = be.upload::<T>(&noise(rows * c, 7))?;
        let t = self.timer.time(be, w, r_, || {
            be.self_attention_fwd::<T>(
                &qkv.as_view(),
                &mut att.as_view_mut(),
                b,
                s,
                heads,
                d,
                (d as f32).powf(-0.5),
            )
        })?;
        let flops = 4.0 * (b * heads) as f64 * (s * s) as f64 * d as f64;
        out.push(
            self.with_flops::<T>(self.row("kernel", "self_attention_fwd", mode, b, &t), flops),
        );

        // Cross-attention of one query over 192 tokens, 8 heads × 64: bandwidth-bound on K/V.
        let (dh, dd) = (8usize, 64usize);
        let inner = dh * dd;
        let q = be.upload::<T>(&noise(b * inner, 8))?;
        let kv = be.upload::<T>(&noise(rows * 2 * inner, 9))?;
        let mut o = be.upload::<T>(&noise(b * inner, 10))?;
        let t = self.timer.time(be, w, r_, || {
            be.cross_attention_1q_fwd::<T>(
                &q.as_view(),
                &kv.as_view(),
                &mut o.as_view_mut(),
                b,
                s,
                dh,
                dd,
                (dd as f32).powf(-0.5),
            )
        })?;
        out.push(self.with_bytes(
            self.row("kernel", "cross_attention_1q_fwd", mode, b, &t),
            (rows * 2 * inner) as f64 * es,
        ));

        // Exact GELU on the MLP hidden layer (in place: read + write).
        let mut hid = be.upload::<T>(&noise(rows * hidden, 11))?;
        let t = self.timer.time(be, w, r_, || {
            be.bias_gelu_fwd::<T>(&mut hid.as_view_mut(), None, rows, hidden, true)
        })?;
        out.push(self.with_bytes(
            self.row("kernel", "bias_gelu_fwd", mode, b, &t),
            2.0 * (rows * hidden) as f64 * es,
        ));

        // Patch im2col.
        let g = crate::ops::patch_embed::PatchGeometry {
            image_size: 256,
            win_h: 256,
            win_w: 192,
            col0: 32,
            patch: 16,
            pad: 2,
            rows: 16,
            cols: 12,
        };
        let img = be.upload::<f32>(&noise(b * 3 * 256 * 256, 12))?;
        let mut cols = be.upload::<T>(&noise(rows * 768, 13))?;
        let t = self.timer.time(be, w, r_, || {
            be.im2col_fwd::<T>(&img.as_view(), b, &g, &mut cols.as_view_mut())
        })?;
        out.push(self.with_bytes(
            self.row("kernel", "im2col_fwd", mode, b, &t),
            (b * 3 * 256 * 192) as f64 * 4.0 + (rows * 768) as f64 * es,
        ));

        // The biggest GEMM of a block (fc1) through cuBLASLt: 2·rows·1280·5120 FLOPs.
        let wfc = be.upload::<T>(&noise(hidden * c, 14))?;
        let xin = be.upload::<T>(&noise(rows * c, 15))?;
        let mut gemm = be.gemm()?;
        let t = self.timer.time(be, w, r_, || {
            gemm.linear::<T, T>(
                &xin.as_view(),
                &wfc.as_view(),
                None,
                &mut hid.as_view_mut(),
                rows,
                c,
                hidden,
            )
        })?;
        out.push(self.with_flops::<T>(
            self.row("kernel", "gemm_fc1", mode, b, &t),
            2.0 * (rows * c * hidden) as f64,
        ));

        // MANO and covariance run in f32 whatever the precision: measure them once.
        if T::NAME == "f32" {
            let dev = be.upload_mano(mano)?;
            let mut mws = be.mano_workspace(mano_batch)?;
            let mut rot = vec![0f32; mano_batch * 16 * 9];
            for (i, code) in noise(mano_batch * 16 * 6, 16).chunks(6).enumerate() {
                let c6 = [
                    code[0] + 1.0,
                    code[1],
                    code[2],
                    code[3],
                    code[4] + 1.0,
                    code[5],
                ];
                rot[i * 9..i * 9 + 9].copy_from_slice(&crate::ops::geometry::rot6d_to_rotmat(&c6));
            }
            let rot = be.upload::<f32>(&rot)?;
            let betas = be.upload::<f32>(&noise(mano_batch * 10, 17))?;
            let nv = mano.num_verts;
            let mut verts = be.upload::<f32>(&vec![0.0; mano_batch * nv * 3])?;
            let mut kp = be.upload::<f32>(&vec![0.0; mano_batch * 63])?;
            let t = self.timer.time(be, w, r_, || {
                be.mano_fwd(
                    &dev,
                    &mut mws,
                    &rot.as_view(),
                    &betas.as_view(),
                    &mut verts.as_view_mut(),
                    &mut kp.as_view_mut(),
                    mano_batch,
                )
            })?;
            out.push(self.row("kernel", "mano_fwd", "fp32", mano_batch, &t));
            // The backward: keypoint gradients only (training), then with a vertex gradient.
            let d_kp = be.upload::<f32>(&noise(mano_batch * 63, 20))?;
            let d_verts = be.upload::<f32>(&noise(mano_batch * nv * 3, 21))?;
            let mut d_rot = be.upload::<f32>(&vec![0.0; mano_batch * 16 * 9])?;
            let mut d_betas = be.upload::<f32>(&vec![0.0; mano_batch * 10])?;
            let mut scratch = be.zeros(CudaBackend::mano_bwd_scratch_len(mano_batch, nv))?;
            let dvv = d_verts.as_view();
            for (name, dv) in [("mano_bwd_kp", None), ("mano_bwd_verts", Some(&dvv))] {
                let t = self.timer.time(be, w, r_, || {
                    be.mano_bwd(
                        &dev,
                        &mut mws,
                        &rot.as_view(),
                        &betas.as_view(),
                        dv,
                        &d_kp.as_view(),
                        &mut d_rot.as_view_mut(),
                        &mut d_betas.as_view_mut(),
                        &mut scratch.as_view_mut(),
                        mano_batch,
                    )
                })?;
                out.push(self.row("kernel", name, "fp32", mano_batch, &t));
            }
            for (param, name) in [
                (CovParam::LowRank, "covariance_lowrank_fwd"),
                (CovParam::Full, "covariance_full_fwd"),
            ] {
                let raw = be.upload::<f32>(
                    &noise(mano_batch * param.raw_len(), 18)
                        .iter()
                        .map(|v| v * 0.1)
                        .collect::<Vec<_>>(),
                )?;
                let wcov = be.upload::<f32>(&noise(63 * 63, 19))?;
                let mut cov = be.upload::<f32>(&vec![0.0; mano_batch * 3969])?;
                let mut unc = be.upload::<f32>(&vec![0.0; mano_batch * 21])?;
                let wv = wcov.as_view();
                let t = self.timer.time(be, w, r_, || {
                    be.covariance_fwd(
                        param,
                        &raw.as_view(),
                        Some(&wv),
                        &mut cov.as_view_mut(),
                        &mut unc.as_view_mut(),
                        mano_batch,
                    )
                })?;
                out.push(self.row("kernel", name, "fp32", mano_batch, &t));
            }
        }
        Ok(out)
    }

    /// The whole forward of `model` on the GPU at batch `b` (CUDA graph replay; input copy
    /// included, outputs left on the device), with images/s, latency, MFU against the measured
    /// GEMM ceiling and the device memory in use.
    pub fn forward<T: Dtype>(
        &mut self,
        model: &HandModel,
        b: usize,
        gflop_per_image: f64,
    ) -> Result<BenchRow> {
        let be = self.be;
        // Freed buffers return to the driver only at a synchronisation (stream-ordered pool).
        be.synchronize()?;
        let mem0 = be.memory_used()?;
        let mut gpu = GpuModel::<T>::upload(be.share(), model)?;
        gpu.use_graph = true;
        let s = model.config.image_size;
        let img = noise(b * 3 * s * s, 20);
        gpu.launch(&img, b)?; // eager pass + capture
                              // Time the graph replay alone: the input copy from pageable host memory is a property of
                              // the caller's I/O, not of the engine.
        let (w, r_) = (self.warmup, self.runs);
        let t = self.timer.time(be, w, r_, || gpu.replay())?;
        let mem = be.memory_used()?.saturating_sub(mem0);
        let mut r = self.row("forward", "hamer_ours", precision_name::<T>(), b, &t);
        let secs = r.median_ms * 1e-3;
        r.images_per_s = Some(b as f64 / secs);
        let tflops = gflop_per_image * b as f64 / secs / 1e3;
        r.tflops = Some(tflops);
        r.mfu = self.ceilings.map(|c| {
            tflops
                / if T::NAME == "f32" {
                    c.gemm_f32_tflops
                } else {
                    c.gemm_bf16_tflops
                }
        });
        r.peak_mem_mib = Some(mem as f64 / (1 << 20) as f64);
        Ok(r)
    }
}

/// The `--precision` name of element type `T` (`fp32`, `bf16`): the mode of a row, as the
/// PyTorch benchmark labels its rows, so that compare_bench.py pairs the two engines' rows.
fn precision_name<T: Dtype>() -> &'static str {
    if T::NAME == "f32" {
        Precision::Fp32.name()
    } else {
        Precision::Bf16.name()
    }
}
