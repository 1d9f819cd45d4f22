//! GEMMs through cuBLASLt: the linear layer `y = x·Wᵀ (+ b)`, plus the host ↔ device copies
//! that convert between f32 and the element types. CPU twin: `crate::ops::linear::linear_cpu`.
//!
//! # The linear layer in cuBLASLt's terms
//!
//! cuBLASLt is column-major and computes `D = op(A)·op(B)` (here with alpha = 1, beta = 0), D
//! being m × n and the inner dimension k. A row-major matrix `M[r, c]` read column-major is its
//! transpose `Mᵀ[c, r]` with leading dimension `c`. Our row-major buffers therefore are, to
//! cuBLASLt:
//!
//! | buffer              | row-major (ours)   | column-major (cuBLASLt)    |
//! |---------------------|--------------------|----------------------------|
//! | x (activations)     | `[rows, d_in]`     | `xᵀ`: d_in × rows, ld d_in |
//! | W (PyTorch weight)  | `[d_out, d_in]`    | `Wᵀ`: d_in × d_out, ld d_in|
//! | y (output)          | `[rows, d_out]`    | `yᵀ`: d_out × rows, ld d_out|
//!
//! and `y = x·Wᵀ` is `yᵀ = W·xᵀ`. So D = `yᵀ` (m = d_out, n = rows, ld d_out), A = the W buffer
//! with TRANSA = T (stored k × m = d_in × d_out, ld d_in: op(A) = W), B = the x buffer with
//! TRANSB = N (stored k × n = d_in × rows, ld d_in), k = d_in. This is the "TN" form, the one
//! cuBLASLt's fastest kernels are written for. The bias epilogue adds a vector with one entry per
//! row of D, i.e. per output feature, broadcast over the columns (the tokens): exactly the
//! linear layer's bias. No copy, no transpose kernel.
//!
//! # What is set, and why
//!
//! - Matmul descriptor: compute type `CUBLAS_COMPUTE_32F` and scale type `CUDA_R_32F` for every
//!   supported combination. For f32 inputs that is true fp32 (not `..._FAST_TF32`: `--precision
//!   fp32` is the accuracy reference); for bf16 inputs it is bf16 tensor cores with fp32
//!   accumulation. TRANSA = T, TRANSB = N; EPILOGUE = `BIAS` with BIAS_POINTER when there is a
//!   bias, `DEFAULT` otherwise. Alpha and beta are host f32 scalars (pointer mode host, default).
//! - Bias type: cuBLASLt wants the bias in the type of D (`CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE`
//!   left unset means "Dtype"; the cuBLAS datatype table lists bias CUDA_R_32F for bf16 inputs
//!   with an f32 output and CUDA_R_16BF for a bf16 output). So the bias is taken in the output
//!   type `TOut`: f32 for f32 → f32 and bf16 → f32, bf16 for bf16 → bf16.
//! - No GELU epilogue: cuBLASLt's GELU is the tanh approximation, while the model (like PyTorch's
//!   `nn.GELU()` default) uses the exact erf GELU. GELU is a separate kernel of ours.
//! - C = D (same pointer and layout, in place); with beta = 0 the library does not read C.
//! - Preferences for the heuristic: the whole workspace (32 MiB on Hopper and later, 4 MiB
//!   before, NVIDIA's recommendation), the actual alignment of the A, B and C/D pointers
//!   (cuBLASLt assumes 256 bytes unless told; a view into the middle of a buffer is less aligned,
//!   and an algorithm that needs more would fail), and the split-K reduction schemes restricted
//!   to `COMPUTE_TYPE` (partial sums kept in fp32 in the workspace): `INPLACE` and `OUTPUT_TYPE`
//!   add partial sums in the output type, which for a bf16 output would round every partial sum.
//! - The bias pointer must be 16-byte aligned: the alignment preferences do not cover it and the
//!   heuristic may pick a kernel that reads it in 16-byte vectors (a misaligned-address fault,
//!   seen by PyTorch, pytorch/pytorch#194497). We refuse a less aligned bias with an error.
//!
//! A plan (matmul descriptor, three layouts, the algorithm the heuristic chose) is made on the
//! first call for a given (types, m, n, k, bias or not, pointer alignments) and reused; a
//! steady-state call sets the bias pointer on the cached descriptor and queues one
//! `cublasLtMatmul`. Descriptors are host-side structures read when the call is queued, so
//! changing the bias pointer afterwards does not affect work already queued.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::{size_of, MaybeUninit};
use std::sync::Arc;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::result::CublasError;
use cudarc::cublaslt::sys;
use cudarc::driver::DeviceSlice;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut};

use super::{cuda_err, CudaBackend, Dtype};
use crate::error::{Error, Result};

/// Workspace for Hopper (compute capability 9.x) and later, as NVIDIA recommends.
const WORKSPACE_HOPPER: usize = 32 << 20;
/// Workspace for older GPUs.
const WORKSPACE_OLDER: usize = 4 << 20;
/// cuBLASLt requires the workspace pointer to be 256-byte aligned.
const WORKSPACE_ALIGN: u64 = 256;
/// Bias pointers must be at least this aligned (see the module docs).
const BIAS_ALIGN: u32 = 16;
/// cuBLASLt's default alignment assumption, the largest alignment worth telling it about.
const MAX_ALIGN: u32 = 256;

/// The cuBLASLt functions this file calls. They are looked up in the library when a [`Gemm`] is
/// created, so that a library too old to have one is an error there instead of a panic (cudarc
/// panics on a missing symbol at the first call).
const SYMBOLS: [&str; 13] = [
    "cublasLtCreate",
    "cublasLtDestroy",
    "cublasLtMatmul",
    "cublasLtMatmulAlgoGetHeuristic",
    "cublasLtMatmulDescCreate",
    "cublasLtMatmulDescDestroy",
    "cublasLtMatmulDescSetAttribute",
    "cublasLtMatmulPreferenceCreate",
    "cublasLtMatmulPreferenceDestroy",
    "cublasLtMatmulPreferenceSetAttribute",
    "cublasLtMatrixLayoutCreate",
    "cublasLtMatrixLayoutDestroy",
    "cublasLtGetVersion",
];

/// The cuBLASLt data type of an element type.
fn lt_type<T: Dtype>() -> Result<sys::cudaDataType_t> {
    match (T::NAME, size_of::<T>()) {
        ("f32", 4) => Ok(sys::cudaDataType_t::CUDA_R_32F),
        ("bf16", 2) => Ok(sys::cudaDataType_t::CUDA_R_16BF),
        (name, _) => crate::input_err!("gemm: element type {name} has no cuBLASLt mapping here"),
    }
}

/// The largest power of two dividing the address `ptr`, capped at 256 (cuBLASLt's default
/// assumption, so nothing larger matters).
fn alignment(ptr: u64) -> u32 {
    1u32 << ptr.trailing_zeros().min(MAX_ALIGN.trailing_zeros())
}

/// A column-major matrix as a cuBLASLt layout describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MatShape {
    rows: u64,
    cols: u64,
    ld: i64,
}

/// The linear layer as a cuBLASLt problem `D[m, n] = op(A)·op(B)`, A and B as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LtProblem {
    m: u64,
    n: u64,
    k: u64,
    trans_a: bool,
    trans_b: bool,
    a: MatShape,
    b: MatShape,
    d: MatShape,
}

/// The mapping worked out in the module docs: A = W (TRANSA = T), B = x, D = y, m = d_out,
/// n = rows, k = d_in.
fn linear_problem(rows: u64, d_in: u64, d_out: u64) -> LtProblem {
    let ld_in = d_in as i64;
    LtProblem {
        m: d_out,
        n: rows,
        k: d_in,
        trans_a: true,
        trans_b: false,
        // W [d_out, d_in] row-major = Wᵀ column-major, d_in × d_out (k × m, as TRANSA = T wants).
        a: MatShape {
            rows: d_in,
            cols: d_out,
            ld: ld_in,
        },
        // x [rows, d_in] row-major = xᵀ column-major, d_in × rows (k × n).
        b: MatShape {
            rows: d_in,
            cols: rows,
            ld: ld_in,
        },
        // y [rows, d_out] row-major = yᵀ column-major, d_out × rows (m × n).
        d: MatShape {
            rows: d_out,
            cols: rows,
            ld: d_out as i64,
        },
    }
}

/// What a plan depends on. Pointer alignments are part of it because the heuristic filters
/// algorithms by them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    t_in: &'static str,
    t_out: &'static str,
    rows: u64,
    d_in: u64,
    d_out: u64,
    bias: bool,
    /// Alignment in bytes of W (A), x (B), y (C and D) and the bias (0 without one).
    align: [u32; 4],
}

impl PlanKey {
    fn describe(&self) -> String {
        format!(
            "linear {}→{}, rows {}, d_in {}, d_out {}, {}; pointer alignment W {} B, x {} B, \
             y {} B",
            self.t_in,
            self.t_out,
            self.rows,
            self.d_in,
            self.d_out,
            if self.bias { "with bias" } else { "no bias" },
            self.align[0],
            self.align[1],
            self.align[2]
        )
    }
}

/// Owned cuBLASLt handle.
struct Handle(sys::cublasLtHandle_t);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtCreate and destroyed only here. An error cannot be acted on
        // in drop; it is ignored rather than panicking.
        let _ = unsafe { lt::destroy_handle(self.0) };
    }
}

/// Owned matmul descriptor.
struct MatmulDesc(sys::cublasLtMatmulDesc_t);

impl MatmulDesc {
    fn new() -> std::result::Result<Self, CublasError> {
        lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map(MatmulDesc)
    }

    /// Sets `attr` to `value`; `V` must be the attribute's documented C type.
    fn set<V: Copy>(
        &self,
        attr: sys::cublasLtMatmulDescAttributes_t,
        value: &V,
    ) -> std::result::Result<(), CublasError> {
        // SAFETY: the descriptor is live; cuBLASLt copies `size_of::<V>()` bytes from `value`
        // and checks that size against the attribute's type.
        unsafe {
            lt::set_matmul_desc_attribute(
                self.0,
                attr,
                value as *const V as *const c_void,
                size_of::<V>(),
            )
        }
    }
}

impl Drop for MatmulDesc {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulDescCreate, destroyed only here.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

/// Owned matrix layout (column-major order, the default).
struct Layout(sys::cublasLtMatrixLayout_t);

impl Layout {
    fn new(ty: sys::cudaDataType_t, s: MatShape) -> std::result::Result<Self, CublasError> {
        lt::create_matrix_layout(ty, s.rows, s.cols, s.ld).map(Layout)
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatrixLayoutCreate, destroyed only here.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

/// Owned heuristic preferences (only alive while a plan is made).
struct Preference(sys::cublasLtMatmulPreference_t);

impl Preference {
    fn set<V: Copy>(
        &self,
        attr: sys::cublasLtMatmulPreferenceAttributes_t,
        value: &V,
    ) -> std::result::Result<(), CublasError> {
        // SAFETY: as MatmulDesc::set.
        unsafe {
            lt::set_matmul_pref_attribute(
                self.0,
                attr,
                value as *const V as *const c_void,
                size_of::<V>(),
            )
        }
    }
}

impl Drop for Preference {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulPreferenceCreate, destroyed only here.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

/// Everything `cublasLtMatmul` needs for one problem, made once.
struct Plan {
    desc: MatmulDesc,
    a: Layout,
    b: Layout,
    /// Layout of D, also used for C (in place, C = D).
    d: Layout,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Plan {
    /// Builds the descriptors for `key` and asks the heuristic for the best algorithm that fits
    /// `workspace_bytes` and the pointer alignments in `key`. `bias_ptr` is set on the
    /// descriptor before the query because the heuristic reads its alignment from it.
    fn new(
        handle: sys::cublasLtHandle_t,
        key: &PlanKey,
        t_in: sys::cudaDataType_t,
        t_out: sys::cudaDataType_t,
        bias_ptr: u64,
        workspace_bytes: usize,
    ) -> Result<Plan> {
        use sys::cublasLtMatmulDescAttributes_t as D;
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        let what = key.describe();
        let err = |step: &'static str| cuda_err(format!("cuBLASLt {step} for {what}"));

        let p = linear_problem(key.rows, key.d_in, key.d_out);
        // cublasOperation_t as int32_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
        let op = |t: bool| -> i32 { i32::from(t) };
        let desc = MatmulDesc::new().map_err(err("creating the matmul descriptor"))?;
        desc.set(D::CUBLASLT_MATMUL_DESC_TRANSA, &op(p.trans_a))
            .map_err(err("setting TRANSA"))?;
        desc.set(D::CUBLASLT_MATMUL_DESC_TRANSB, &op(p.trans_b))
            .map_err(err("setting TRANSB"))?;
        let epilogue = if key.bias {
            sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS
        } else {
            sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT
        };
        desc.set(D::CUBLASLT_MATMUL_DESC_EPILOGUE, &(epilogue as u32))
            .map_err(err("setting the epilogue"))?;
        if key.bias {
            desc.set(D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr)
                .map_err(err("setting the bias pointer"))?;
        }

        let a = Layout::new(t_in, p.a).map_err(err("creating the layout of W"))?;
        let b = Layout::new(t_in, p.b).map_err(err("creating the layout of x"))?;
        let d = Layout::new(t_out, p.d).map_err(err("creating the layout of y"))?;

        let pref = Preference(lt::create_matmul_pref().map_err(err("creating preferences"))?);
        pref.set(
            P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &(workspace_bytes as u64),
        )
        .map_err(err("setting the workspace size"))?;
        let [align_a, align_b, align_d, _] = key.align;
        for (attr, align) in [
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_d),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_d),
        ] {
            pref.set(attr, &align)
                .map_err(err("setting an alignment preference"))?;
        }
        let reduction = sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
        pref.set(
            P::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
            &(reduction as u32),
        )
        .map_err(err("setting the reduction-scheme mask"))?;

        let mut result = MaybeUninit::<sys::cublasLtMatmulHeuristicResult_t>::uninit();
        let mut count: std::ffi::c_int = 0;
        // SAFETY: all descriptors are live; room for exactly one result is passed and asked for.
        let status = unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(
                handle,
                desc.0,
                a.0,
                b.0,
                d.0,
                d.0,
                pref.0,
                1,
                result.as_mut_ptr(),
                &mut count,
            )
        };
        // The heuristic says "nothing fits" either with NOT_SUPPORTED or with zero results.
        if status == sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED
            || (status.result().is_ok() && count < 1)
        {
            return Err(Error::Cuda(format!(
                "cuBLASLt has no algorithm for {what} (this cuBLASLt build may not support the \
                 shape, types or alignment; a misaligned view can be copied to its own buffer)"
            )));
        }
        status.result().map_err(err("heuristic query"))?;
        // SAFETY: the call succeeded and wrote `count` >= 1 results.
        let result = unsafe { result.assume_init() };
        result.state.result().map_err(err("heuristic result"))?;
        if result.workspaceSize > workspace_bytes {
            return Err(Error::Cuda(format!(
                "cuBLASLt chose an algorithm for {what} that needs {} bytes of workspace, more \
                 than the {workspace_bytes} allowed",
                result.workspaceSize
            )));
        }
        Ok(Plan {
            desc,
            a,
            b,
            d,
            algo: result.algo,
        })
    }
}

/// cuBLASLt GEMMs on one backend's stream: the handle, a workspace, and a cache of plans.
/// Create one with [`CudaBackend::gemm`]. Calls take `&mut self` (the cache grows, and a cached
/// descriptor's bias pointer is updated per call).
pub struct Gemm {
    // Field order is drop order: plans (descriptors), then the workspace (freed in stream order,
    // after queued matmuls), then the handle.
    plans: HashMap<PlanKey, Plan>,
    workspace: CudaSlice<u8>,
    workspace_bytes: usize,
    handle: Handle,
    stream: Arc<CudaStream>,
}

impl Drop for Gemm {
    fn drop(&mut self) {
        // Runs before the fields are dropped: cublasLtDestroy and the workspace's free want the
        // context current on this thread. A failure here cannot be acted on.
        let _ = self.stream.context().bind_to_thread();
    }
}

// SAFETY: the raw cuBLASLt handle and descriptors are host objects that are not tied to the
// creating thread; every use goes through `&mut self` (no concurrent use), and each call binds
// the CUDA context to the calling thread first.
unsafe impl Send for Gemm {}

impl CudaBackend {
    /// A cuBLASLt GEMM engine on this backend's stream. Fails with `Error::Cuda` when libcublasLt
    /// cannot be loaded or lacks a function this crate calls.
    pub fn gemm(&self) -> Result<Gemm> {
        Gemm::new(self)
    }

    /// Copies a host f32 slice to a new device buffer of `T`, rounding to nearest-even for bf16.
    pub fn upload<T: Dtype>(&self, host: &[f32]) -> Result<CudaSlice<T>> {
        let converted: Vec<T> = host.iter().map(|&v| T::from_f32(v)).collect();
        self.stream
            .clone_htod(&converted)
            .map_err(cuda_err(format_args!(
                "copying {} {} values to the device",
                host.len(),
                T::NAME
            )))
    }

    /// Copies a device buffer of `T` back to the host as f32 (waits for the copy).
    pub fn download_f32<T: Dtype>(&self, dev: &CudaView<'_, T>) -> Result<Vec<f32>> {
        let raw: Vec<T> = self.stream.clone_dtoh(dev).map_err(cuda_err(format_args!(
            "copying {} {} values from the device",
            dev.len(),
            T::NAME
        )))?;
        Ok(raw.into_iter().map(T::to_f32).collect())
    }
}

impl Gemm {
    /// See [`CudaBackend::gemm`].
    pub fn new(backend: &CudaBackend) -> Result<Gemm> {
        // cudarc panics when the library is missing, so look before the first call.
        // SAFETY: only tries to dlopen libcublasLt (running its initialisers).
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Cuda(
                "libcublasLt could not be loaded (install the CUDA toolkit's cuBLAS or add its \
                 lib directory to LD_LIBRARY_PATH)"
                    .into(),
            ));
        }
        // SAFETY: the library is present (checked above), so culib() loads it without panicking;
        // looking a symbol up does not call it.
        let lib = unsafe { sys::culib() };
        for name in SYMBOLS {
            // SAFETY: the symbol is only looked up, never called through this pointer.
            if unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err() {
                return Err(Error::Cuda(format!(
                    "libcublasLt lacks {name}: the installed cuBLAS is too old for this build"
                )));
            }
        }

        let stream = backend.stream.clone();
        stream
            .context()
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context"))?;
        let handle = Handle(lt::create_handle().map_err(cuda_err("creating a cuBLASLt handle"))?);
        let (major, _) = backend.compute_capability()?;
        let workspace_bytes = if major >= 9 {
            WORKSPACE_HOPPER
        } else {
            WORKSPACE_OLDER
        };
        let workspace =
            stream
                .alloc_zeros::<u8>(workspace_bytes)
                .map_err(cuda_err(format_args!(
                    "allocating the {workspace_bytes}-byte cuBLASLt workspace"
                )))?;
        let (ws_ptr, record) = workspace.device_ptr(&stream);
        if ws_ptr % WORKSPACE_ALIGN != 0 {
            return Err(Error::Cuda(format!(
                "the cuBLASLt workspace at {ws_ptr:#x} is not 256-byte aligned"
            )));
        }
        drop(record);
        Ok(Gemm {
            plans: HashMap::new(),
            workspace,
            workspace_bytes,
            handle,
            stream,
        })
    }

    /// Number of plans made so far (one per distinct problem; a repeated call adds none).
    pub fn plans_cached(&self) -> usize {
        self.plans.len()
    }

    /// The linear layer `y = x·Wᵀ (+ bias)`, queued on the stream. `x` is `[rows, d_in]`, `w`
    /// is the PyTorch weight `[d_out, d_in]`, `y` is `[rows, d_out]`, all row-major; `bias`
    /// holds `d_out` values in the output type (cuBLASLt's rule, see the module docs) and must
    /// start on a 16-byte boundary. Supported (input → output): f32 → f32, bf16 → bf16,
    /// bf16 → f32, all accumulated in fp32 (no TF32). Bad lengths, unsupported types, a
    /// misaligned bias or views from another device are `Error::Input`.
    #[allow(clippy::too_many_arguments)] // the layer's own argument list
    pub fn linear<TIn: Dtype, TOut: Dtype>(
        &mut self,
        x: &CudaView<'_, TIn>,
        w: &CudaView<'_, TIn>,
        bias: Option<&CudaView<'_, TOut>>,
        y: &mut CudaViewMut<'_, TOut>,
        rows: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<()> {
        let (t_in, t_out) = (lt_type::<TIn>()?, lt_type::<TOut>()?);
        if TIn::NAME == "f32" && TOut::NAME != "f32" {
            return crate::input_err!(
                "linear: f32 inputs with a {} output are not supported (f32 → f32, bf16 → bf16 \
                 and bf16 → f32 are)",
                TOut::NAME
            );
        }
        let int_max = i32::MAX as usize;
        if rows > int_max || d_in > int_max || d_out > int_max {
            return crate::input_err!(
                "linear: rows {rows}, d_in {d_in}, d_out {d_out}: cuBLASLt takes dimensions up \
                 to {int_max}"
            );
        }
        if d_in == 0 {
            return crate::input_err!("linear: d_in must be at least 1");
        }
        let n_of = |a: usize, b: usize, what: &str| {
            a.checked_mul(b).ok_or_else(|| {
                Error::Input(format!(
                    "linear: {what} {a} × {b} overflows the address space"
                ))
            })
        };
        for (what, len, want) in [
            ("x", x.len(), n_of(rows, d_in, "x")?),
            ("w", w.len(), n_of(d_out, d_in, "w")?),
            ("y", y.len(), n_of(rows, d_out, "y")?),
            ("bias", bias.map_or(d_out, |b| b.len()), d_out),
        ] {
            if len != want {
                return crate::input_err!(
                    "linear: {what} holds {len} values but rows = {rows}, d_in = {d_in}, \
                     d_out = {d_out} needs {want}"
                );
            }
        }
        let ctx = self.stream.context();
        let foreign = |s: &Arc<CudaStream>| **s.context() != **ctx;
        if foreign(x.stream()) || foreign(w.stream()) || foreign(y.stream()) {
            return crate::input_err!("linear: an operand lives on another CUDA device");
        }
        if bias.is_some_and(|b| foreign(b.stream())) {
            return crate::input_err!("linear: the bias lives on another CUDA device");
        }
        if rows == 0 || d_out == 0 {
            return Ok(());
        }

        let stream = self.stream.clone();
        stream
            .context()
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context"))?;
        let (w_ptr, _w_rec) = w.device_ptr(&stream);
        let (x_ptr, _x_rec) = x.device_ptr(&stream);
        let bias_ptrs = bias.map(|b| b.device_ptr(&stream));
        let bias_ptr = bias_ptrs.as_ref().map_or(0, |(p, _)| *p);
        let (y_ptr, _y_rec) = y.device_ptr_mut(&stream);

        let align = [
            alignment(w_ptr),
            alignment(x_ptr),
            alignment(y_ptr),
            if bias.is_some() {
                alignment(bias_ptr)
            } else {
                0
            },
        ];
        for (what, a, elem) in [
            ("w", align[0], size_of::<TIn>()),
            ("x", align[1], size_of::<TIn>()),
            ("y", align[2], size_of::<TOut>()),
        ] {
            if (a as usize) < elem {
                return crate::input_err!("linear: {what} is not aligned to its element size");
            }
        }
        if bias.is_some() && align[3] < BIAS_ALIGN {
            return crate::input_err!(
                "linear: the bias starts at a {}-byte boundary but cuBLASLt's bias epilogue \
                 needs {BIAS_ALIGN}; copy it into its own buffer",
                align[3]
            );
        }

        let key = PlanKey {
            t_in: TIn::NAME,
            t_out: TOut::NAME,
            rows: rows as u64,
            d_in: d_in as u64,
            d_out: d_out as u64,
            bias: bias.is_some(),
            align,
        };
        let plan = match self.plans.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Plan::new(
                self.handle.0,
                &key,
                t_in,
                t_out,
                bias_ptr,
                self.workspace_bytes,
            )?),
        };
        if key.bias {
            plan.desc
                .set(
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &bias_ptr,
                )
                .map_err(|e| {
                    Error::Cuda(format!(
                        "cuBLASLt setting the bias pointer for {}: {e}",
                        key.describe()
                    ))
                })?;
        }

        let (alpha, beta) = (1.0f32, 0.0f32);
        let (ws_ptr, _ws_rec) = self.workspace.device_ptr(&stream);
        // SAFETY: the layouts describe exactly the buffers passed (lengths checked above: W is
        // d_in × d_out with ld d_in, x is d_in × rows with ld d_in, y is d_out × rows with
        // ld d_out, the bias d_out values of D's type); alpha/beta are host f32 as the scale
        // type and pointer mode say; the workspace is `workspace_bytes` long, 256-byte aligned
        // and at least what the chosen algorithm asked for; the pointer alignments are the ones
        // the algorithm was chosen for (they are in the plan key). `y` is borrowed mutably, so
        // it cannot alias `x`, `w` or the bias. All buffers belong to this stream's context.
        unsafe {
            lt::matmul(
                self.handle.0,
                plan.desc.0,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w_ptr as *const c_void,
                plan.a.0,
                x_ptr as *const c_void,
                plan.b.0,
                y_ptr as *const c_void,
                plan.d.0,
                y_ptr as *mut c_void,
                plan.d.0,
                &plan.algo,
                ws_ptr as *mut c_void,
                self.workspace_bytes,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| Error::Cuda(format!("cuBLASLt matmul for {}: {e}", key.describe())))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_the_largest_power_of_two_up_to_256() {
        assert_eq!(alignment(0), 256);
        assert_eq!(alignment(0x7f00_0000_0000), 256);
        assert_eq!(alignment(0x7f00_0000_0100), 256);
        assert_eq!(alignment(0x7f00_0000_0080), 128);
        assert_eq!(alignment(0x7f00_0000_0004), 4);
        assert_eq!(alignment(0x7f00_0000_0002), 2);
        assert_eq!(alignment(0x7f00_0000_0001), 1);
    }

    /// `D = op(A)·op(B) + bias` exactly as cuBLASLt defines it on column-major storage, with
    /// each layout checked against the dimensions the transposes imply.
    fn lt_reference(p: &LtProblem, a: &[f32], b: &[f32], bias: Option<&[f32]>, d: &mut [f32]) {
        let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
        let stored = |t: bool, r: u64, c: u64| if t { (c, r) } else { (r, c) };
        assert_eq!((p.a.rows, p.a.cols), stored(p.trans_a, p.m, p.k));
        assert_eq!((p.b.rows, p.b.cols), stored(p.trans_b, p.k, p.n));
        assert_eq!((p.d.rows, p.d.cols), (p.m, p.n));
        for s in [p.a, p.b, p.d] {
            assert!(s.ld >= s.rows as i64, "ld {} < rows {}", s.ld, s.rows);
        }
        let (lda, ldb, ldd) = (p.a.ld as usize, p.b.ld as usize, p.d.ld as usize);
        for j in 0..n {
            for i in 0..m {
                let mut acc = 0f64;
                for l in 0..k {
                    let av = if p.trans_a {
                        a[l + i * lda]
                    } else {
                        a[i + l * lda]
                    };
                    let bv = if p.trans_b {
                        b[j + l * ldb]
                    } else {
                        b[l + j * ldb]
                    };
                    acc += av as f64 * bv as f64;
                }
                // The bias epilogue: one value per row of D, broadcast over its columns.
                d[i + j * ldd] = (acc + bias.map_or(0.0, |bias| bias[i] as f64)) as f32;
            }
        }
    }

    /// The column-major mapping, checked on the host: handing our row-major buffers to
    /// cuBLASLt as `linear_problem` describes them must compute `y = x·Wᵀ + b` row-major.
    #[test]
    fn column_major_mapping_computes_the_linear_layer() {
        for &(rows, d_in, d_out) in &[(1usize, 3usize, 10usize), (7, 5, 3), (4, 1, 6), (3, 8, 1)] {
            let x: Vec<f32> = (0..rows * d_in).map(|i| (i % 7) as f32 - 3.0).collect();
            let w: Vec<f32> = (0..d_out * d_in)
                .map(|i| (i % 5) as f32 * 0.5 - 1.0)
                .collect();
            let b: Vec<f32> = (0..d_out).map(|i| i as f32 * 0.25).collect();
            let p = linear_problem(rows as u64, d_in as u64, d_out as u64);
            let mut y = vec![f32::NAN; rows * d_out];
            lt_reference(&p, &w, &x, Some(&b), &mut y);
            for r in 0..rows {
                for o in 0..d_out {
                    let want: f32 = b[o]
                        + (0..d_in)
                            .map(|l| x[r * d_in + l] * w[o * d_in + l])
                            .sum::<f32>();
                    let got = y[r * d_out + o];
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{rows}×{d_in}→{d_out}: y[{r},{o}] = {got}, want {want}"
                    );
                }
            }
        }
    }
}
