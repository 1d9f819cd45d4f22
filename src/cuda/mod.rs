//! CUDA backend: the context, one stream, the table of embedded PTX modules (loaded lazily on
//! first use), copies between host and device, and the kernel launchers. This module is the only
//! place in the crate that talks to cudarc.
//!
//! The PTX comes from build.rs, which compiles every `kernels/*.cu` with nvcc and writes
//! `$OUT_DIR/kernels.rs` (`PTX_MODULES`, `KERNELS_BUILT`). A build without nvcc has an empty
//! table; [`CudaBackend::new`] then fails with a clear error, and everything runs on the CPU twins.

pub mod adamw;
mod attention;
mod backward;
pub mod bench;
mod covariance;
mod elementwise;
mod forward;
mod gemm;
mod layernorm;
mod mano;
mod timing;
pub mod train;

pub use backward::*;
pub use forward::{GpuModel, GpuOutputs};
pub use gemm::*;
pub use mano::*;
pub use timing::{Timer, Timings};

use std::collections::HashMap;
use std::fmt::Display;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Element types the kernels come in. Activations fed to GEMMs are f32 (`--precision fp32`)
/// or bf16 (`--precision bf16`); statistics, the residual stream, MANO and covariance stay f32.
/// A launcher picks the kernel `<op>_<fwd|bwd>_<T::NAME>`.
pub trait Dtype:
    cudarc::driver::DeviceRepr
    + cudarc::driver::ValidAsZeroBits
    + Copy
    + Default
    + Send
    + Sync
    + 'static
{
    /// Kernel-name suffix: "f32" or "bf16".
    const NAME: &'static str;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Dtype for f32 {
    const NAME: &'static str = "f32";
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Dtype for half::bf16 {
    const NAME: &'static str = "bf16";
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

/// Picks the kernel name for dtype `T` among an op's static names.
pub(crate) fn by_dtype<T: Dtype>(f32_name: &'static str, bf16_name: &'static str) -> &'static str {
    if T::NAME == "f32" {
        f32_name
    } else {
        bf16_name
    }
}

/// Whether this build embeds the CUDA kernels (nvcc was found at build time).
pub fn kernels_built() -> bool {
    KERNELS_BUILT
}

/// Whether a CUDA driver library (libcuda) can be loaded on this machine. Calls nothing in it.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda (running its initialisers) and closes it again.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Names of the embedded PTX modules (one per `kernels/*.cu`, by file stem).
pub fn module_names() -> impl Iterator<Item = &'static str> {
    PTX_MODULES.iter().map(|(name, _)| *name)
}

/// Maps a cudarc error to [`Error::Cuda`], saying what was being done.
pub(crate) fn cuda_err<E: Display>(what: impl Display) -> impl FnOnce(E) -> Error {
    move |e| Error::Cuda(format!("{what}: {e}"))
}

/// One GPU: its context, the one stream all work is queued on, and the modules loaded so far.
///
/// All kernels, copies, allocations and frees go through `stream`, so stream order alone orders
/// every use of every buffer; cudarc's per-buffer event tracking (meant for several streams) is
/// turned off. Code that adds a second stream must synchronise the two explicitly.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Streaming multiprocessors on the device (launchers size small grids with it).
    num_sms: usize,
    /// PTX modules loaded so far, by module name.
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// Kernel functions looked up so far, by kernel name.
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
}

impl CudaBackend {
    /// Opens GPU `ordinal`. Fails (never panics) when the build has no kernels, when no CUDA
    /// driver can be loaded, when the device does not exist, or when the driver refuses.
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        if !kernels_built() {
            return Err(Error::Cuda(
                "built without CUDA kernels: nvcc was not found at build time; see README".into(),
            ));
        }
        // cudarc loads libcuda on the first driver call and panics if it is missing, so look for
        // the library before making any call.
        if !driver_present() {
            return Err(Error::Cuda(
                "no CUDA driver found (libcuda.so could not be loaded)".into(),
            ));
        }
        // A libcuda too old for the symbols cudarc binds would panic inside cudarc; turn that into
        // an error as well.
        match catch_unwind(AssertUnwindSafe(|| Self::open(ordinal))) {
            Ok(result) => result,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown panic");
                Err(Error::Cuda(format!(
                    "the CUDA driver could not be used (is it too old for CUDA 13?): {what}"
                )))
            }
        }
    }

    fn open(ordinal: usize) -> Result<CudaBackend> {
        let count = match CudaContext::device_count() {
            Ok(n) => n.max(0) as usize,
            Err(e) if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_NO_DEVICE => 0,
            Err(e) => return Err(Error::Cuda(format!("initialising the CUDA driver: {e}"))),
        };
        if count == 0 {
            return Err(Error::Cuda(
                "the CUDA driver reports 0 devices (no GPU visible; check CUDA_VISIBLE_DEVICES)"
                    .into(),
            ));
        }
        if ordinal >= count {
            return Err(Error::Cuda(format!(
                "CUDA device {ordinal} does not exist: the driver reports {count} device(s), \
                 numbered 0 to {}",
                count - 1
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err(format_args!(
            "creating a context on CUDA device {ordinal}"
        )))?;
        let num_sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(cuda_err("querying the multiprocessor count"))?
            .max(1) as usize;
        let stream = ctx
            .new_stream()
            .map_err(cuda_err("creating a CUDA stream"))?;
        // SAFETY: every buffer is allocated, used and freed on `stream` only (see the struct
        // docs), so stream order already orders all accesses; no buffer exists yet.
        unsafe { ctx.disable_event_tracking() };
        Ok(CudaBackend {
            ctx,
            stream,
            num_sms,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// Another handle on the same context and stream (module caches start empty): work queued
    /// through either is ordered on the one stream.
    pub fn share(&self) -> CudaBackend {
        CudaBackend {
            ctx: self.ctx.clone(),
            stream: self.stream.clone(),
            num_sms: self.num_sms,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        }
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> Result<String> {
        self.ctx
            .name()
            .map_err(cuda_err("querying the device name"))
    }

    /// The device's compute capability (major, minor).
    pub fn compute_capability(&self) -> Result<(i32, i32)> {
        self.ctx
            .compute_capability()
            .map_err(cuda_err("querying the compute capability"))
    }

    /// Number of streaming multiprocessors.
    pub fn num_sms(&self) -> usize {
        self.num_sms
    }

    /// The stream all work is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits until all queued work has finished; reports any asynchronous error.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(cuda_err("synchronizing the CUDA stream"))
    }

    /// Copies a host slice to a new device buffer.
    pub fn htod(&self, host: &[f32]) -> Result<CudaSlice<f32>> {
        self.stream.clone_htod(host).map_err(cuda_err(format_args!(
            "copying {} floats to the device",
            host.len()
        )))
    }

    /// Copies a device buffer back to the host (waits for the copy).
    pub fn dtoh(&self, dev: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.stream.clone_dtoh(dev).map_err(cuda_err(format_args!(
            "copying {} floats from the device",
            dev.len()
        )))
    }

    /// A new device buffer of `len` zeros.
    pub fn zeros(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.stream.alloc_zeros(len).map_err(cuda_err(format_args!(
            "allocating {len} floats on the device"
        )))
    }

    /// The PTX module `name` (a `kernels/<name>.cu`), loaded into the context on first use.
    fn module(&self, name: &'static str) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(name) {
            return Ok(m.clone());
        }
        let ptx = PTX_MODULES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, ptx)| *ptx)
            .ok_or_else(|| Error::Cuda(format!("no kernel module {name:?} in this build")))?;
        let module = self
            .ctx
            .load_module(Ptx::from_src(ptx))
            .map_err(cuda_err(format_args!(
                "loading kernel module {name:?} (a driver older than the nvcc that built it \
             rejects the PTX; rebuild with an older HANDCOV_CUDA_ARCH or update the driver)"
            )))?;
        modules.insert(name, module.clone());
        Ok(module)
    }

    /// Kernel `kernel` from module `module`, looked up once and cached.
    pub(crate) fn function(
        &self,
        module: &'static str,
        kernel: &'static str,
    ) -> Result<CudaFunction> {
        if let Some(f) = self
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(kernel)
        {
            return Ok(f.clone());
        }
        let f = self
            .module(module)?
            .load_function(kernel)
            .map_err(cuda_err(format_args!(
                "looking up kernel {kernel} in module {module}"
            )))?;
        self.functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(kernel, f.clone());
        Ok(f)
    }
}
