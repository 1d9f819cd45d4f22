//! Measuring on the device: CUDA-event timing with an L2 flush between runs, the memory in use,
//! and the two ceilings every figure is compared with (copy bandwidth, GEMM throughput).

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaSlice;

use super::{cuda_err, CudaBackend, Dtype};
use crate::error::Result;

/// Bytes written between timed runs to evict the L2 (50 MB on an H100; 4× that).
const FLUSH_BYTES: usize = 256 << 20;

/// Per-run times in milliseconds, sorted.
#[derive(Clone, Debug)]
pub struct Timings {
    pub ms: Vec<f32>,
}

impl Timings {
    pub fn median(&self) -> f32 {
        self.ms.get(self.ms.len() / 2).copied().unwrap_or(f32::NAN)
    }

    pub fn quantile(&self, q: f64) -> f32 {
        if self.ms.is_empty() {
            return f32::NAN;
        }
        let i = ((self.ms.len() - 1) as f64 * q).round() as usize;
        self.ms[i.min(self.ms.len() - 1)]
    }
}

/// Times closures that queue work on the backend's stream.
pub struct Timer {
    flush: Option<CudaSlice<u8>>,
}

impl CudaBackend {
    /// A timer; with `flush_l2` it overwrites a 256 MiB buffer before every timed run so that
    /// each run starts with a cold L2.
    pub fn timer(&self, flush_l2: bool) -> Result<Timer> {
        let flush = if flush_l2 {
            Some(
                self.stream
                    .alloc_zeros::<u8>(FLUSH_BYTES)
                    .map_err(cuda_err("allocating the L2 flush buffer"))?,
            )
        } else {
            None
        };
        Ok(Timer { flush })
    }

    /// Device memory in use (total − free), bytes.
    pub fn memory_used(&self) -> Result<usize> {
        let (free, total) = self
            .ctx
            .mem_get_info()
            .map_err(cuda_err("querying device memory"))?;
        Ok(total.saturating_sub(free))
    }

    /// Device-to-device copy bandwidth in GB/s (read + write bytes over time) on 1 GiB.
    pub fn copy_bandwidth_gbps(&self, timer: &mut Timer) -> Result<f64> {
        let n = 1usize << 28; // 2^28 f32 = 1 GiB
        let src = self
            .stream
            .alloc_zeros::<f32>(n)
            .map_err(cuda_err("allocating the bandwidth buffers"))?;
        let mut dst = self
            .stream
            .alloc_zeros::<f32>(n)
            .map_err(cuda_err("allocating the bandwidth buffers"))?;
        let t = timer.time(self, 3, 20, || {
            self.stream
                .memcpy_dtod(&src, &mut dst)
                .map_err(cuda_err("copying on the device"))
        })?;
        Ok(2.0 * (n * 4) as f64 / (t.median() as f64 * 1e-3) / 1e9)
    }

    /// GEMM throughput in TFLOP/s of the cuBLASLt linear layer at m = n = k = 8192 for input type
    /// `T` (f32 without TF32, or bf16).
    pub fn gemm_ceiling_tflops<T: Dtype>(&self, timer: &mut Timer) -> Result<f64> {
        let n = 8192usize;
        let x = self
            .stream
            .alloc_zeros::<T>(n * n)
            .map_err(cuda_err("allocating the GEMM ceiling buffers"))?;
        let w = self
            .stream
            .alloc_zeros::<T>(n * n)
            .map_err(cuda_err("allocating the GEMM ceiling buffers"))?;
        let mut y = self
            .stream
            .alloc_zeros::<T>(n * n)
            .map_err(cuda_err("allocating the GEMM ceiling buffers"))?;
        let mut gemm = self.gemm()?;
        let t = timer.time(self, 2, 10, || {
            gemm.linear::<T, T>(
                &x.as_view(),
                &w.as_view(),
                None,
                &mut y.as_view_mut(),
                n,
                n,
                n,
            )
        })?;
        Ok(2.0 * (n as f64).powi(3) / (t.median() as f64 * 1e-3) / 1e12)
    }
}

impl Timer {
    /// Runs `f` `warmup` times, then `runs` times between two timing events each (after an L2
    /// flush when enabled), and returns the per-run times.
    pub fn time(
        &mut self,
        be: &CudaBackend,
        warmup: usize,
        runs: usize,
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<Timings> {
        for _ in 0..warmup {
            f()?;
        }
        let mut ms = Vec::with_capacity(runs);
        for _ in 0..runs {
            if let Some(buf) = self.flush.as_mut() {
                be.stream
                    .memset_zeros(buf)
                    .map_err(cuda_err("flushing the L2"))?;
            }
            let start = be
                .stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(cuda_err("recording a timing event"))?;
            f()?;
            let end = be
                .stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(cuda_err("recording a timing event"))?;
            end.synchronize()
                .map_err(cuda_err("waiting for a timing event"))?;
            ms.push(
                start
                    .elapsed_ms(&end)
                    .map_err(cuda_err("reading a timing event"))?,
            );
        }
        ms.sort_by(f32::total_cmp);
        Ok(Timings { ms })
    }
}
